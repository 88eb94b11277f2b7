"""services.platform.db.insert_columns on the test database (SQLite, or PostgreSQL with TEST_DATABASE_URL): the
exact rows, values through the columns' own types (UTC datetimes), constants, chunks, conflicts skipped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import Float, Integer, String, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.platform.db import Database, UtcDateTime, insert_columns, new_metadata


class Base(DeclarativeBase):
    metadata = new_metadata()


class Row(Base):
    __tablename__ = "bulk_rows"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)
    amount: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcDateTime())


@pytest.fixture
async def database(database_url):
    db = Database.from_url(database_url("bulk"))
    async with db.engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield db
    await db.dispose()


async def stored(db):
    async with db.sessionmaker() as session:
        return [(r.key, r.amount, r.state, r.at) for r in await session.scalars(select(Row).order_by(Row.key))]


async def test_rows_are_written_exactly_in_chunks_with_constants_and_utc_times(database):
    when = datetime(2026, 12, 7, 18, 30, tzinfo=timezone(timedelta(hours=8)))
    async with database.sessionmaker() as session:
        await insert_columns(session, Row.__table__, {"key": [f"k{i}" for i in range(5)],
                                                      "amount": [0.5 * i for i in range(5)]},
                             constants={"state": "PENDING", "at": when}, chunk=2)
        await session.commit()
    assert await stored(database) == [(f"k{i}", 0.5 * i, "PENDING", datetime(2026, 12, 7, 10, 30, tzinfo=UTC))
                                      for i in range(5)]


async def test_conflicting_keys_are_skipped_and_the_rest_written(database):
    when = datetime(2026, 1, 1, tzinfo=UTC)
    async with database.sessionmaker() as session:
        await insert_columns(session, Row.__table__, {"key": ["a", "b"], "amount": [1.0, 2.0]},
                             constants={"state": "FIRST", "at": when})
        await session.commit()
    async with database.sessionmaker() as session:  # a re-run after a crash: "b" again, and one new row
        await insert_columns(session, Row.__table__, {"key": ["b", "c"], "amount": [20.0, 3.0]},
                             constants={"state": "SECOND", "at": when}, ignore_conflicts_on=("key",))
        await session.commit()
    assert [(k, a, s) for k, a, s, _ in await stored(database)] == [("a", 1.0, "FIRST"), ("b", 2.0, "FIRST"),
                                                                    ("c", 3.0, "SECOND")]


async def test_columns_of_unequal_length_are_refused_before_anything_is_written(database):
    async with database.sessionmaker() as session:
        with pytest.raises(ValueError, match="one value per row"):
            await insert_columns(session, Row.__table__, {"key": ["a", "b"], "amount": [1.0]},
                                 constants={"state": "X", "at": datetime.now(UTC)})
    assert await stored(database) == []
