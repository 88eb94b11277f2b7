"""Database access shared by every service: engine, declarative base, unit of work.

Each service owns its database and its models; this module only gives them the same machinery. SQLite (the
embedded default) gets WAL, a busy timeout and foreign keys; PostgreSQL is reached through psycopg 3. Engines
are created by the service at start-up, never at import time.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

from sqlalchemy import DateTime, LargeBinary, MetaData, String, Table, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.pool import NullPool
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    return MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class IdempotencyKeyMixin:
    """A request id and the response it produced, written in the same transaction as the change (AIP-155).

    Each service declares `class IdempotencyKey(IdempotencyKeyMixin, Base)` in its own models.
    """

    __tablename__ = "idempotency_keys"

    method: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    response: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (Alembic runs synchronously)."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    elif parsed.drivername in ("postgresql", "postgresql+asyncpg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def async_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.drivername == "sqlite":
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


BULK_INSERT_CHUNK = 20_000


async def insert_columns(session: AsyncSession, table: Table, columns: Mapping[str, Sequence[Any]], *,
                         constants: Mapping[str, Any] | None = None, ignore_conflicts_on: Sequence[str] = (),
                         chunk: int = BULK_INSERT_CHUNK) -> None:
    """Rows given column by column (every column holds one value per row), written in the caller's transaction
    with one DBAPI executemany of a plain INSERT per `chunk` rows: values go through the columns' own bind
    processors (UTC datetimes, ...), without per-row statement compilation or ORM bookkeeping. With
    `ignore_conflicts_on`, a row whose key already exists is skipped (`ON CONFLICT (...) DO NOTHING`, on SQLite
    and PostgreSQL alike): re-running the same rows is idempotent. Names come from the table; values are
    always parameters. `constants` are columns with one value for every row (processed once)."""
    names = list(columns)
    if not names:
        return
    total = len(columns[names[0]])
    constants = dict(constants or {})
    if any(len(columns[n]) != total for n in names):
        raise ValueError("insert_columns: every column must hold one value per row")
    if not total:
        return
    connection = await session.connection()
    dialect = connection.dialect
    processed = []
    for name in names:
        process = table.c[name].type.bind_processor(dialect)
        values = columns[name]
        processed.append(list(values) if process is None else [process(v) for v in values])
    for name, value in constants.items():
        process = table.c[name].type.bind_processor(dialect)
        processed.append([value if process is None else process(value)] * total)
    names += list(constants)
    mark = "%s" if dialect.name == "postgresql" else "?"
    sql = (f"INSERT INTO {table.name} ({', '.join(table.c[n].name for n in names)}) "  # noqa: S608  # nosec B608
           f"VALUES ({', '.join([mark] * len(names))})")
    if ignore_conflicts_on:
        sql += f" ON CONFLICT ({', '.join(table.c[n].name for n in ignore_conflicts_on)}) DO NOTHING"
    rows = list(zip(*processed, strict=True))
    for start in range(0, total, chunk):
        await connection.exec_driver_sql(sql, rows[start:start + chunk])


async def insert_rows(session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], *,
                      chunk: int = BULK_INSERT_CHUNK) -> None:
    """insert_columns for rows given as dictionaries (all with the keys of the first)."""
    if rows:
        await insert_columns(session, table, {name: [row[name] for row in rows] for name in rows[0]}, chunk=chunk)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def create_engine_for(url: str, *, pool_size: int = 10) -> AsyncEngine:
    url = async_url(url)
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(url, poolclass=NullPool if database == ":memory:" else None)
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True, pool_timeout=5,
        connect_args={"connect_timeout": 5},
    )


class Database:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)

    @classmethod
    def from_url(cls, url: str) -> Database:
        return cls(create_engine_for(url))

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
            return True
        except Exception:
            return False

    async def dispose(self) -> None:
        await self.engine.dispose()


class UnitOfWork:
    """One transaction. Nothing is written unless `commit()` is called; leaving the block rolls back.

    Services subclass it to expose their repositories, built on `self.session`.
    """

    session: AsyncSession

    def __init__(self, database: Database) -> None:
        self._database = database

    async def __aenter__(self) -> Self:
        self.session = self._database.sessionmaker()
        self._enter_repositories()
        return self

    def _enter_repositories(self) -> None:
        """Override to build repositories on self.session."""

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: types.TracebackType | None
    ) -> None:
        # Shielded: a caller's deadline cancels the request's task, possibly in the middle of a statement; the
        # rollback and the connection's return must still happen, or the open transaction keeps SQLite's write
        # lock (every later writer then waits out busy_timeout) or a PostgreSQL connection idle in transaction.
        await asyncio.shield(self._finish())

    async def _finish(self) -> None:
        try:
            await self.session.rollback()
        finally:
            await self.session.close()

    async def commit(self) -> None:
        await self.session.commit()
