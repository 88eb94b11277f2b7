"""Server bootstrap and lifecycle, the same for every service.

`start_service` binds (port 0 allowed), serves health (NOT_SERVING until the database answers and its
migrations are at head) and reflection, and returns a handle whose `stop()` does the graceful shutdown:
NOT_SERVING, drain, `server.stop(grace)`, close clients and the database. `main` wraps it for
`python -m services.<svc> serve|migrate`, with SIGTERM/SIGINT handling and span flushing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry import metrics as otel_metrics
from opentelemetry.instrumentation.grpc import aio_server_interceptor, filters
from opentelemetry.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from services.platform import migrations
from services.platform.config import TLS_CLIENT_AUTH_REQUIRED, ConfigError, ServiceSettings, TlsSettings
from services.platform.db import Database
from services.platform.interceptors import ServiceInterceptor
from services.platform.logs import configure_logging
from services.platform.telemetry import (
    MeterSetup,
    ServiceMetrics,
    create_meter_provider,
    create_tracer_provider,
    instrument_engine,
)

log = logging.getLogger("lodestar.server")

READINESS_INTERVAL_SECONDS = 5.0


class StartupError(RuntimeError):
    """The service cannot start (e.g. its port is taken); the message says why, without a traceback."""
# Health service name for liveness probes: SERVING while the process runs, whatever the database does, so a
# database outage makes pods unready (no traffic) without making Kubernetes restart them.
LIVENESS_SERVICE = "liveness"


@dataclass
class Runtime:
    """What a service's `register` hook gets to build its servicers from."""

    settings: ServiceSettings
    database: Database
    tracer_provider: TracerProvider
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Free-form slots a service may use to expose its objects to tests (e.g. its service layer).
    components: dict[str, Any] = field(default_factory=dict)
    # The platform's metric instruments on this service's MeterProvider (telemetry.METRICS lists them).
    metrics: ServiceMetrics = field(default_factory=ServiceMetrics)
    # Loops started by run_in_background; cancelled at shutdown before the closers run (their clients close then).
    background: list[asyncio.Task[None]] = field(default_factory=list)

    def run_in_background(self, name: str, step: Callable[[], Awaitable[Any]], interval: float) -> None:
        """Runs `step` on every replica until shutdown: again at once while it reports work (a truthy result),
        else after `interval` seconds. Work is claimed through the database, so replicas never need to talk. An
        exception is logged and retried on the next tick: a database blip must not kill the loop."""
        self.background.append(asyncio.create_task(_background_loop(name, step, interval), name=name))


async def _background_loop(name: str, step: Callable[[], Awaitable[Any]], interval: float) -> None:
    while True:
        try:
            busy = await step()
        except Exception:
            log.warning("%s: step failed", name, exc_info=True)
            busy = False
        if not busy:
            await asyncio.sleep(interval)


@dataclass(frozen=True)
class ServiceDefinition:
    name: str
    # Fully-qualified gRPC service names served, for health and reflection.
    service_names: tuple[str, ...]
    migrations: Path
    register: Callable[[grpc.aio.Server, Runtime], Awaitable[None]]
    dependencies: tuple[str, ...] = ()
    extra_settings: tuple[str, ...] = ()
    # Parses the service's own settings (from `extra`), raising ConfigError, so a bad value stops the service
    # before it migrates or listens, with exit 2 and the variable's name.
    validate_settings: Callable[[ServiceSettings], object] | None = None

    def settings_from_env(self, env: dict[str, str] | None = None) -> ServiceSettings:
        settings = ServiceSettings.from_env(
            self.name, dependencies=self.dependencies, extra=self.extra_settings, env=env
        )
        if self.validate_settings is not None:
            self.validate_settings(settings)
        return settings


class RunningService:
    def __init__(self, definition: ServiceDefinition, server: grpc.aio.Server, port: int,
                 health_servicer: health.aio.HealthServicer, runtime: Runtime) -> None:
        self.definition = definition
        self.server = server
        self.port = port
        self.health = health_servicer
        self.runtime = runtime
        self._readiness: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def check_ready(self) -> bool:
        database = self.runtime.database
        try:
            ready = await database.ping() and await migrations.schema_is_compatible(
                database.engine, self.definition.migrations)
        except Exception:
            ready = False
        status = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", *self.definition.service_names):
            await self.health.set(name, status)
        return ready

    async def _watch_readiness(self) -> None:
        was_ready: bool | None = None
        while True:
            ready = await self.check_ready()
            if ready != was_ready:
                log.info("readiness changed", extra={"serving": ready})
                was_ready = ready
            await asyncio.sleep(READINESS_INTERVAL_SECONDS if ready else 0.2)

    def start_readiness(self) -> None:
        self._readiness = asyncio.create_task(self._watch_readiness())

    async def stop(self, drain_seconds: float | None = None, grace_seconds: float | None = None) -> None:
        if self._stopped:
            return
        self._stopped = True
        settings = self.runtime.settings
        if self._readiness:
            self._readiness.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._readiness
        await self.health.enter_graceful_shutdown()
        drain = settings.drain_seconds if drain_seconds is None else drain_seconds
        if drain > 0:
            await asyncio.sleep(drain)  # let load balancers see NOT_SERVING before we refuse calls
        await self.server.stop(settings.shutdown_grace_seconds if grace_seconds is None else grace_seconds)
        for task in self.runtime.background:
            task.cancel()
        for task in self.runtime.background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for close in reversed(self.runtime.closers):
            with contextlib.suppress(Exception):
                await close()
        await self.runtime.database.dispose()


async def start_service(definition: ServiceDefinition, settings: ServiceSettings,
                        tracer_provider: TracerProvider, meter_provider: MeterProvider | None = None
                        ) -> RunningService:
    """`meter_provider` defaults to the global one (what `main` sets; a no-op provider until then)."""
    metrics = ServiceMetrics(meter_provider)
    database = Database.from_url(settings.database_url)
    instrument_engine(database.engine, tracer_provider)
    if settings.auto_migrate:
        await asyncio.to_thread(migrations.upgrade, settings.database_url, definition.migrations)
    server = grpc.aio.server(
        interceptors=[
            aio_server_interceptor(tracer_provider=tracer_provider, filter_=filters.negate(filters.health_check())),
            ServiceInterceptor(error_domain=f"lodestar.{definition.name}", metrics=metrics),
        ],
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)],
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", *definition.service_names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_servicer.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*definition.service_names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    runtime = Runtime(settings=settings, database=database, tracer_provider=tracer_provider, metrics=metrics)
    await definition.register(server, runtime)
    try:
        credentials = _server_credentials(settings.tls) if settings.tls is not None else None
        if credentials is None:
            port = server.add_insecure_port(settings.listen_address)
        else:
            port = server.add_secure_port(settings.listen_address, credentials)
    except OSError as error:
        await database.dispose()
        raise StartupError(f"cannot read the TLS files: {error}") from None
    except RuntimeError:
        await database.dispose()
        raise StartupError(f"cannot listen on {settings.listen_address}: the port is in use or not permitted") from None
    await server.start()
    running = RunningService(definition, server, port, health_servicer, runtime)
    if settings.port_file:
        _write_port_file(settings.port_file, port)
    await running.check_ready()
    running.start_readiness()
    log.info("listening", extra={"port": port, "host": settings.listen_host,
                                 "tls": settings.tls.client_auth if settings.tls else "off"})
    return running


def _server_credentials(tls: TlsSettings) -> grpc.ServerCredentials:
    """TLS with the configured chain; with client auth "required", every client must present a certificate
    signed by TLS_CLIENT_CA_FILE (it then appears in `context.auth_context()` as x509_pem_cert)."""
    key = Path(tls.key_file).read_bytes()
    chain = Path(tls.cert_file).read_bytes()
    required = tls.client_auth == TLS_CLIENT_AUTH_REQUIRED
    root = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file and required else None
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=root, require_client_auth=required)


def _write_port_file(path: str, port: int) -> None:
    tmp = Path(path + ".tmp")
    tmp.write_text(str(port))
    tmp.replace(path)  # atomic: a reader never sees a half-written port


async def _serve(definition: ServiceDefinition, settings: ServiceSettings, provider: TracerProvider,
                 meter_provider: MeterProvider | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    running = await start_service(definition, settings, provider, meter_provider)
    await stop.wait()
    log.info("shutting down", extra={"drain_seconds": settings.drain_seconds,
                                     "grace_seconds": settings.shutdown_grace_seconds})
    await running.stop()
    log.info("stopped")


def main(definition: ServiceDefinition, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m services.{definition.name}")
    parser.add_argument("command", nargs="?", default="serve", choices=["serve", "migrate"],
                        help="serve: run the gRPC server (default); migrate: bring the database to head and exit")
    args = parser.parse_args(argv)
    try:
        settings = definition.settings_from_env(dict(os.environ))
        configure_logging(definition.name, settings.log_level)
        provider = create_tracer_provider(definition.name)
    except ConfigError as error:
        print(f"{definition.name}: configuration error: {error}", file=sys.stderr)
        return 2
    if args.command == "migrate":
        migrations.upgrade(settings.database_url, definition.migrations)
        log.info("migrated to head")
        provider.shutdown()
        return 0
    try:
        meters: MeterSetup = create_meter_provider(definition.name)
    except ConfigError as error:
        print(f"{definition.name}: configuration error: {error}", file=sys.stderr)
        provider.shutdown()
        return 2
    # Global too, so code that records through telemetry.service_metrics() reaches the same exporters.
    otel_metrics.set_meter_provider(meters.provider)
    if meters.prometheus is not None:
        log.info("metrics endpoint", extra={"port": meters.prometheus.port, "host": meters.prometheus.host})
    try:
        asyncio.run(_serve(definition, settings, provider, meters.provider))
    except StartupError as error:
        log.error("cannot start: %s", error)
        return 1
    finally:
        meters.shutdown()  # stops the Prometheus endpoint, flushes the periodic metric readers
        provider.shutdown()  # flushes the batch span processors
    return 0
