"""Every service's Alembic scripts: upgrade, downgrade, upgrade again; and no drift from the models."""

import importlib

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from services.platform import migrations
from services.platform.db import sync_url

SERVICES = ("profile", "campaign", "risk", "gateway")


def definition(name):
    return importlib.import_module(f"services.{name}.app").DEFINITION


def metadata(name):
    return importlib.import_module(f"services.{name}.db").Base.metadata


def tables(url):
    engine = create_engine(sync_url(url))
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.parametrize("service", SERVICES)
def test_upgrade_downgrade_upgrade(service, database_url):
    defn, url = definition(service), database_url(service)
    model_tables = set(metadata(service).tables)
    migrations.upgrade(url, defn.migrations)
    assert tables(url) == model_tables | {"alembic_version"}
    migrations.downgrade(url, defn.migrations, "base")
    assert tables(url) <= {"alembic_version"}
    migrations.upgrade(url, defn.migrations)
    assert tables(url) == model_tables | {"alembic_version"}


@pytest.mark.parametrize("service", SERVICES)
def test_models_and_migrations_do_not_drift(service, database_url):
    defn, url = definition(service), database_url(service)
    migrations.upgrade(url, defn.migrations)
    engine = create_engine(sync_url(url))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(context, metadata(service))
    finally:
        engine.dispose()
    assert diff == [], f"models and migrations of {service} differ: {diff}"


@pytest.mark.parametrize("service", SERVICES)
def test_single_head(service):
    assert len(migrations.head_revisions(definition(service).migrations)) == 1
