"""Shared fixtures: a fresh database per service per test (SQLite, or PostgreSQL when TEST_DATABASE_URL is
set), in-process services on port 0 with in-memory span exporters."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy.engine import make_url

from services.platform.server import RunningService, ServiceDefinition, start_service

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "").strip()


def _admin_connect() -> Any:
    import psycopg

    url = make_url(TEST_DATABASE_URL)
    return psycopg.connect(
        host=url.host or "127.0.0.1", port=url.port or 5432, user=url.username or "postgres",
        password=url.password, dbname=url.database or "postgres", autocommit=True,
    )


@pytest.fixture
def database_url(tmp_path: Any) -> Iterator[Callable[[str], str]]:
    """A factory: database_url("profile") -> the URL of a new, empty database for this test."""
    created: list[str] = []

    def make(name: str) -> str:
        if not TEST_DATABASE_URL:
            return f"sqlite+aiosqlite:///{tmp_path / (name + '-' + uuid.uuid4().hex[:6] + '.db')}"
        db_name = f"t_{name}_{uuid.uuid4().hex[:10]}"
        with _admin_connect() as conn:
            conn.execute(f'CREATE DATABASE "{db_name}"')
        created.append(db_name)
        return make_url(TEST_DATABASE_URL).set(drivername="postgresql+psycopg", database=db_name).render_as_string(
            hide_password=False
        )

    yield make
    if created:
        with _admin_connect() as conn:
            for db_name in created:
                conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


@pytest.fixture
def span_exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def tracer_provider_for(service: str, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.fixture
async def start(
    database_url: Callable[[str], str], span_exporter: InMemorySpanExporter
) -> AsyncIterator[Callable[..., Any]]:
    """A factory: `await start(DEFINITION, PROFILE_SERVICE_ADDR=..., ...)` -> a RunningService on port 0 with
    its own fresh database; every span goes to `span_exporter`. All are stopped at the end of the test."""
    running: list[RunningService] = []

    async def _start(definition: ServiceDefinition, **env: str) -> RunningService:
        settings_env = {
            "DATABASE_URL": database_url(definition.name), "GRPC_PORT": "0", "LISTEN_HOST": "127.0.0.1",
            "DRAIN_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "1",
            # No global holdout unless a test asks for one: fixtures pick their customers by hand.
            "CAMPAIGN_GLOBAL_HOLDOUT_SHARE": "0", **env,
        }
        settings = definition.settings_from_env(settings_env)
        service = await start_service(definition, settings, tracer_provider_for(definition.name, span_exporter))
        running.append(service)
        return service

    yield _start
    for service in reversed(running):
        await service.stop(drain_seconds=0, grace_seconds=0.5)
