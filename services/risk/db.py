"""The risk service's database: models, repositories, unit of work.

consent_records is an append-only ledger; the consent in force for (customer, channel, purpose) is its latest
record, found through ix_consent_records_latest. screening_decisions keeps one audit row per Screen call,
written in the call's transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.platform.db import IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow
from services.risk.domain import (
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    HistoryPosition,
    ScreeningRequest,
    ScreeningResult,
)


class Base(DeclarativeBase):
    metadata = new_metadata()


class ConsentRecordRow(Base):
    __tablename__ = "consent_records"
    __table_args__ = (
        # The latest record per customer x channel x purpose (Screen).
        Index("ix_consent_records_latest", "customer_id", "channel", "purpose", "record_time"),
        # A customer's history, newest first (ListConsentHistory).
        Index("ix_consent_records_history", "customer_id", "record_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64), default="")
    record_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ScreeningDecisionRow(Base):
    __tablename__ = "screening_decisions"
    __table_args__ = (Index("ix_screening_decisions_customer", "customer_id", "create_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    contact_time: Mapped[datetime] = mapped_column(UtcDateTime())
    policy_version: Mapped[str] = mapped_column(String(32))
    # [{"offer_id": ..., "verdict": "DENY", "reasons": ["CONSENT_MISSING", ...]}, ...] in request order.
    verdicts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdempotencyKey(IdempotencyKeyMixin, Base):
    pass


def _to_domain(row: ConsentRecordRow) -> ConsentRecord:
    return ConsentRecord(
        customer_id=row.customer_id, channel=Channel(row.channel), purpose=ConsentPurpose(row.purpose),
        action=ConsentAction(row.action), source=row.source, actor=row.actor, record_time=row.record_time,
        expire_time=row.expire_time, record_id=row.id,
    )


_NEWEST_FIRST = (ConsentRecordRow.record_time.desc(), ConsentRecordRow.id.desc())


class ConsentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def latest(
        self, customer_id: str, channel: Channel, purpose: ConsentPurpose
    ) -> ConsentRecord | None:
        """The record in force for (customer, channel, purpose): one indexed query."""
        row = await self.session.scalar(
            select(ConsentRecordRow)
            .where(
                ConsentRecordRow.customer_id == customer_id,
                ConsentRecordRow.channel == channel.value,
                ConsentRecordRow.purpose == purpose.value,
            )
            .order_by(*_NEWEST_FIRST)
            .limit(1)
        )
        return _to_domain(row) if row else None

    async def history(
        self, customer_id: str, *, channel: Channel | None, after: HistoryPosition | None, limit: int
    ) -> list[ConsentRecord]:
        query = select(ConsentRecordRow).where(ConsentRecordRow.customer_id == customer_id)
        if channel is not None:
            query = query.where(ConsentRecordRow.channel == channel.value)
        if after is not None:
            query = query.where(
                or_(
                    ConsentRecordRow.record_time < after.record_time,
                    and_(
                        ConsentRecordRow.record_time == after.record_time,
                        ConsentRecordRow.id < after.record_id,
                    ),
                )
            )
        rows = await self.session.scalars(query.order_by(*_NEWEST_FIRST).limit(limit))
        return [_to_domain(row) for row in rows]

    async def add(self, record: ConsentRecord) -> ConsentRecord:
        row = ConsentRecordRow(
            customer_id=record.customer_id, channel=record.channel.value, purpose=record.purpose.value,
            action=record.action.value, source=record.source, actor=record.actor,
            record_time=record.record_time or utcnow(), expire_time=record.expire_time,
        )
        self.session.add(row)
        await self.session.flush()
        return _to_domain(row)


class ScreeningDecisionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, request: ScreeningRequest, result: ScreeningResult) -> None:
        self.session.add(
            ScreeningDecisionRow(
                customer_id=request.customer_id, channel=request.channel.value,
                contact_time=request.contact_time, policy_version=result.policy_version,
                verdicts=[
                    {"offer_id": v.offer_id, "verdict": v.verdict.value,
                     "reasons": [r.value for r in v.reasons]}
                    for v in result.verdicts
                ],
                create_time=utcnow(),
            )
        )


class RiskUnitOfWork(UnitOfWork):
    consents: ConsentRepository
    decisions: ScreeningDecisionRepository

    def _enter_repositories(self) -> None:
        self.consents = ConsentRepository(self.session)
        self.decisions = ScreeningDecisionRepository(self.session)
