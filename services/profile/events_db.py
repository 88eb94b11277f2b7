"""Tables of behaviour events and computed tags, on the profile service's `Base` (same database, same
migrations). Repositories here; the transaction belongs to the service layer (services/profile/events.py)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Date, Index, Integer, Numeric, String, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from services.platform.db import UnitOfWork, UtcDateTime
from services.profile.db import Base, CustomerRepository

# Columns of the flat event record, in the order the feature executors read them.
EVENT_COLUMNS = (
    "customer_id", "kind", "occurred_at", "recorded_at", "amount", "direction", "merchant_category", "channel",
    "action", "days_late", "product", "response_kind",
)


class EventRow(Base):
    """One event of any kind: the common columns, then the columns of each kind (empty or NULL otherwise)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_customer_id_occurred_at", "customer_id", "occurred_at"),
        Index("ix_events_recorded_at", "recorded_at"),
    )

    event_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    # transaction, digital_activity, repayment, campaign_response
    kind: Mapped[str] = mapped_column(String(24))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime())
    amount: Mapped[Decimal | None] = mapped_column(Numeric(18, 4), nullable=True)
    currency: Mapped[str] = mapped_column(String(3), default="")
    direction: Mapped[str] = mapped_column(String(8), default="")
    merchant_category: Mapped[str] = mapped_column(String(64), default="")
    channel: Mapped[str] = mapped_column(String(32), default="")
    action: Mapped[str] = mapped_column(String(16), default="")
    target: Mapped[str] = mapped_column(String(128), default="")
    due_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    days_late: Mapped[int | None] = mapped_column(Integer, nullable=True)
    product: Mapped[str] = mapped_column(String(64), default="")
    campaign_id: Mapped[str] = mapped_column(String(128), default="")
    offer_id: Mapped[str] = mapped_column(String(128), default="")
    response_kind: Mapped[str] = mapped_column(String(16), default="")


class CustomerTagRow(Base):
    """The latest computed value of each built-in tag of a customer."""

    __tablename__ = "customer_tags"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(32), default="")
    rule_version: Mapped[str] = mapped_column(String(16))
    as_of: Mapped[datetime] = mapped_column(UtcDateTime())
    computed_at: Mapped[datetime] = mapped_column(UtcDateTime())


_EMPTY_EVENT: dict[str, Any] = {
    "amount": None, "currency": "", "direction": "", "merchant_category": "", "channel": "", "action": "",
    "target": "", "due_date": None, "days_late": None, "product": "", "campaign_id": "", "offer_id": "",
    "response_kind": "",
}


def _point_in_time(as_of: datetime) -> list[Any]:
    return [EventRow.recorded_at <= as_of, EventRow.occurred_at <= as_of]


class EventRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def insert_new(self, rows: Sequence[dict[str, Any]]) -> int:
        """Inserts the rows whose event_id is not stored yet; returns how many were inserted."""
        if not rows:
            return 0
        dialect = self.session.bind.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # A multi-row VALUES needs the same keys in every row: start each from the empty event.
        full = [{**_EMPTY_EVENT, **row} for row in rows]
        statement = insert(EventRow).values(full).on_conflict_do_nothing(index_elements=["event_id"])
        result = await self.session.execute(statement.returning(EventRow.event_id))
        return len(result.all())

    async def known_at(self, customer_ids: Sequence[str], as_of: datetime, since: datetime) -> list[tuple[Any, ...]]:
        """The flat records (EVENT_COLUMNS) of these customers known at as_of that occurred after `since`."""
        columns = [getattr(EventRow, name) for name in EVENT_COLUMNS]
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(customer_ids), 500):
            chunk = list(customer_ids[start:start + 500])
            query = select(*columns).where(
                EventRow.customer_id.in_(chunk), EventRow.occurred_at > since, *_point_in_time(as_of)
            )
            out.extend(tuple(row) for row in await self.session.execute(query))
        return out

    async def first_occurred(self, customer_ids: Sequence[str], as_of: datetime) -> dict[str, datetime]:
        """The earliest occurred_at of each customer's events known at as_of (for tenure)."""
        out: dict[str, datetime] = {}
        for start in range(0, len(customer_ids), 500):
            chunk = list(customer_ids[start:start + 500])
            query = (
                select(EventRow.customer_id, func.min(EventRow.occurred_at))
                .where(EventRow.customer_id.in_(chunk), *_point_in_time(as_of))
                .group_by(EventRow.customer_id)
            )
            for customer_id, first in await self.session.execute(query):
                out[customer_id] = first
        return out

    async def first_occurred_by_recording(self, customer_ids: Sequence[str], as_of: datetime
                                          ) -> dict[str, list[tuple[datetime, datetime]]]:
        """Per customer, (recorded_at, earliest occurred_at) of each ingest time known at as_of. The first event
        known at any t <= as_of is the least earliest-occurred_at of the pairs with recorded_at <= t and earliest
        <= t: tenure for many points in time from one query (events.EventsService.features_at)."""
        out: dict[str, list[tuple[datetime, datetime]]] = {}
        for start in range(0, len(customer_ids), 500):
            chunk = list(customer_ids[start:start + 500])
            query = (
                select(EventRow.customer_id, EventRow.recorded_at, func.min(EventRow.occurred_at))
                .where(EventRow.customer_id.in_(chunk), *_point_in_time(as_of))
                .group_by(EventRow.customer_id, EventRow.recorded_at)
            )
            for customer_id, recorded, first in await self.session.execute(query):
                out.setdefault(customer_id, []).append((recorded, first))
        return out


class TagRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def replace(self, customer_id: str, rows: Sequence[CustomerTagRow]) -> None:
        await self.session.execute(delete(CustomerTagRow).where(CustomerTagRow.customer_id == customer_id))
        self.session.add_all(rows)

    async def of(self, customer_id: str) -> list[CustomerTagRow]:
        query = select(CustomerTagRow).where(CustomerTagRow.customer_id == customer_id).order_by(CustomerTagRow.name)
        return list(await self.session.scalars(query))


class EventsUnitOfWork(UnitOfWork):
    events: EventRepository
    tags: TagRepository
    customers: CustomerRepository

    def _enter_repositories(self) -> None:
        self.events = EventRepository(self.session)
        self.tags = TagRepository(self.session)
        self.customers = CustomerRepository(self.session)
