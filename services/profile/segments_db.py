"""Tables of segments and static-segment snapshots, on the profile service's `Base` (same database, same
migrations), and the queries of segments, audience export and clustering. The transaction belongs to the
service layer (services/profile/segments.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ForeignKey,
    Integer,
    Select,
    String,
    Text,
    delete,
    func,
    insert,
    literal,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.platform.db import UnitOfWork, UtcDateTime
from services.profile.db import AttributeRepository, Base, CustomerFeatureRow, CustomerRow, CustomerTagValueRow
from services.profile.events_db import CustomerTagRow

INSERT_CHUNK = 5000


class SegmentRow(Base):
    __tablename__ = "segments"

    segment_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(String(1000), default="")
    # "dynamic" or "static"
    kind: Mapped[str] = mapped_column(String(16))
    # The canonical text of the condition (services/profile/conditions: to_text / parse round-trip exactly).
    condition_text: Mapped[str] = mapped_column(Text)
    member_count: Mapped[int] = mapped_column(Integer, default=0)
    snapshot_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class SegmentMemberRow(Base):
    """The members of a static segment's current snapshot."""

    __tablename__ = "segment_members"

    segment_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("segments.segment_id", ondelete="CASCADE"), primary_key=True
    )
    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)


class SegmentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, segment_id: str) -> SegmentRow | None:
        return await self.session.get(SegmentRow, segment_id)

    async def list_page(self, *, after_id: str | None, limit: int) -> list[SegmentRow]:
        query = select(SegmentRow).order_by(SegmentRow.segment_id).limit(limit)
        if after_id is not None:
            query = query.where(SegmentRow.segment_id > after_id)
        return list(await self.session.scalars(query))

    async def add(self, row: SegmentRow) -> SegmentRow:
        self.session.add(row)
        await self.session.flush()
        return row

    async def delete(self, segment_id: str) -> None:
        # Members first: SQLite enforces the cascade only with foreign keys on, PostgreSQL always; be explicit.
        await self.session.execute(delete(SegmentMemberRow).where(SegmentMemberRow.segment_id == segment_id))
        await self.session.execute(delete(SegmentRow).where(SegmentRow.segment_id == segment_id))

    async def snapshot_condition(self, segment_id: str, where: ColumnElement[bool]) -> int:
        """Replaces the members with the customers matching `where`, in one INSERT ... SELECT; their count."""
        await self.session.execute(delete(SegmentMemberRow).where(SegmentMemberRow.segment_id == segment_id))
        members = select(literal(segment_id, String()).label("segment_id"), CustomerRow.customer_id).where(where)
        # A literal in the SELECT list: SQLAlchemy binds it, so no value reaches the SQL text.
        await self.session.execute(
            insert(SegmentMemberRow).from_select(["segment_id", "customer_id"], members)
        )
        count = await self.session.scalar(
            select(func.count()).select_from(SegmentMemberRow).where(SegmentMemberRow.segment_id == segment_id)
        )
        return int(count or 0)

    async def snapshot_ids(self, segment_id: str, customer_ids: Sequence[str]) -> int:
        await self.session.execute(delete(SegmentMemberRow).where(SegmentMemberRow.segment_id == segment_id))
        for start in range(0, len(customer_ids), INSERT_CHUNK):
            chunk = customer_ids[start:start + INSERT_CHUNK]
            await self.session.execute(
                insert(SegmentMemberRow), [{"segment_id": segment_id, "customer_id": c} for c in chunk]
            )
        return len(customer_ids)


class AudienceRepository:
    """Read-only queries over customers: counts, samples, keyset pages with values, tags of a page."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def count(self, where: ColumnElement[bool]) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(CustomerRow).where(where)) or 0)

    async def sample(self, where: ColumnElement[bool], limit: int) -> list[str]:
        query = select(CustomerRow.customer_id).where(where).order_by(CustomerRow.customer_id).limit(limit)
        return list(await self.session.scalars(query))

    @staticmethod
    def members_query(*, segment_id: str | None, where: ColumnElement[bool] | None) -> Select[Any]:
        """customer_id, region, time_zone, attributes of the members, ordered by customer_id."""
        query = select(CustomerRow.customer_id, CustomerRow.region, CustomerRow.time_zone, CustomerRow.attributes)
        if segment_id is not None:
            query = query.join(SegmentMemberRow, SegmentMemberRow.customer_id == CustomerRow.customer_id).where(
                SegmentMemberRow.segment_id == segment_id
            )
        if where is not None:
            query = query.where(where)
        return query.order_by(CustomerRow.customer_id)

    @staticmethod
    def values_query(values: Sequence[ColumnElement[Any]], *, segment_id: str | None,
                     where: ColumnElement[bool] | None) -> Select[Any]:
        """customer_id and the given value expressions of the members, ordered by customer_id."""
        query = select(CustomerRow.customer_id, *values)
        if segment_id is not None:
            query = query.join(SegmentMemberRow, SegmentMemberRow.customer_id == CustomerRow.customer_id).where(
                SegmentMemberRow.segment_id == segment_id
            )
        if where is not None:
            query = query.where(where)
        return query.order_by(CustomerRow.customer_id)

    async def page(self, query: Select[Any], *, after_id: str | None, limit: int) -> list[tuple[Any, ...]]:
        if after_id is not None:
            query = query.where(CustomerRow.customer_id > after_id)
        # Core execution on the session's connection: no ORM row processing, rows as plain tuples.
        connection = await self.session.connection()
        return [tuple(row) for row in await connection.execute(query.limit(limit))]

    async def random_sample(self, query: Select[Any], limit: int) -> list[tuple[Any, ...]]:
        sampled = query.order_by(None).order_by(func.random()).limit(limit)
        rows = [tuple(row) for row in await self.session.execute(sampled)]
        return sorted(rows, key=lambda row: row[0])

    async def count_query(self, query: Select[Any]) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0)

    async def tags(self, customer_ids: Sequence[str], names: Sequence[str]) -> dict[tuple[str, str], str]:
        if not customer_ids or not names:
            return {}
        out: dict[tuple[str, str], str] = {}
        for start in range(0, len(customer_ids), 1000):
            chunk = list(customer_ids[start:start + 1000])
            for table in (CustomerTagRow, CustomerTagValueRow):  # built-in; rule and external (tag_rules.py)
                query = select(table.customer_id, table.name, table.value).where(
                    table.customer_id.in_(chunk), table.name.in_(list(names))
                )
                for customer_id, name, value in await self.session.execute(query):
                    out[(customer_id, name)] = value
        return out


    async def features(self, customer_ids: Sequence[str], names: Sequence[str]) -> dict[tuple[str, str], float]:
        """Stored features (the feature store) of these customers, by (customer_id, name)."""
        if not customer_ids or not names:
            return {}
        out: dict[tuple[str, str], float] = {}
        for start in range(0, len(customer_ids), 1000):
            chunk = list(customer_ids[start:start + 1000])
            query = select(CustomerFeatureRow.customer_id, CustomerFeatureRow.name, CustomerFeatureRow.value).where(
                CustomerFeatureRow.customer_id.in_(chunk), CustomerFeatureRow.name.in_(list(names)))
            for customer_id, name, value in await self.session.execute(query):
                out[(customer_id, name)] = float(value)
        return out


class SegmentsUnitOfWork(UnitOfWork):
    segments: SegmentRepository
    audience: AudienceRepository
    attributes: AttributeRepository

    def _enter_repositories(self) -> None:
        self.segments = SegmentRepository(self.session)
        self.audience = AudienceRepository(self.session)
        self.attributes = AttributeRepository(self.session)
