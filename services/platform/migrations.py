"""Alembic, driven from code: each service keeps its scripts in `services/<svc>/migrations/`.

`upgrade(url, script_location)` brings a database to head (the migration Job and AUTO_MIGRATE use it);
`is_at_head` is what readiness checks before reporting SERVING.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, engine_from_config, pool
from sqlalchemy.ext.asyncio import AsyncEngine

from services.platform.db import sync_url


def alembic_config(url: str, script_location: str | Path) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    config.set_main_option("sqlalchemy.url", sync_url(url).replace("%", "%%"))
    return config


def upgrade(url: str, script_location: str | Path, revision: str = "heads") -> None:
    # "heads", not "head": while parallel branches await their merge revision every head is applied.
    command.upgrade(alembic_config(url, script_location), revision)


def downgrade(url: str, script_location: str | Path, revision: str = "base") -> None:
    command.downgrade(alembic_config(url, script_location), revision)


def head_revisions(script_location: str | Path) -> set[str]:
    return set(ScriptDirectory(str(script_location)).get_heads())


async def current_revisions(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda sync_conn: set(MigrationContext.configure(sync_conn).get_current_heads()))


async def is_at_head(engine: AsyncEngine, script_location: str | Path) -> bool:
    return await current_revisions(engine) == head_revisions(script_location)


async def schema_is_compatible(engine: AsyncEngine, script_location: str | Path) -> bool:
    """Ready to serve: the database is at this code's head, or ahead of it.

    "Ahead" means every current revision is unknown to this code: a newer release migrated the database and
    this (older) release was rolled back onto it. Migrations are written expand-then-contract so that the
    previous release keeps working on the newer schema; refusing to serve would turn every rollback into an
    outage. A database *behind* the code (migration Job not yet run) is never ready.
    """
    current = await current_revisions(engine)
    if current == head_revisions(script_location):
        return True
    script = ScriptDirectory(str(script_location))

    def known(revision: str) -> bool:
        try:
            return script.get_revision(revision) is not None
        except Exception:  # alembic raises ResolutionError/CommandError for a revision it does not have
            return False

    return bool(current) and not any(known(revision) for revision in current)


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's migrations/env.py."""
    from alembic import context

    config = context.config
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True,
            render_as_batch=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connectable = engine_from_config(config.get_section(config.config_ini_section) or {}, prefix="sqlalchemy.",
                                     poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                          compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    connectable.dispose()
