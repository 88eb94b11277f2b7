"""The campaign service's database: models, repositories, unit of work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, Integer, String, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.campaign.domain import Disclosure, Offer
from services.platform.db import IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow


class Base(DeclarativeBase):
    metadata = new_metadata()


class OfferRow(Base):
    __tablename__ = "offers"

    offer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    product_type: Mapped[int] = mapped_column(Integer)
    risk_level: Mapped[int] = mapped_column(Integer)
    conversion_value: Mapped[float] = mapped_column(Float)
    contact_cost: Mapped[float] = mapped_column(Float)
    disclosures: Mapped[list[Any]] = mapped_column(JSON, default=list)
    valid_from: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    valid_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class DecisionRow(Base):
    """Every real-time decision: the request, the candidates with their value terms, every risk verdict and
    the model and rule versions, so it can be explained later."""

    __tablename__ = "decisions"

    decision_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    channel: Mapped[int] = mapped_column(Integer)
    partner_id: Mapped[str] = mapped_column(String(128), default="")
    placement: Mapped[str] = mapped_column(String(128), default="")
    decision_time: Mapped[datetime] = mapped_column(UtcDateTime())
    model_version: Mapped[str] = mapped_column(String(64))
    policy_version: Mapped[str] = mapped_column(String(64))
    candidates: Mapped[list[Any]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdempotencyKey(IdempotencyKeyMixin, Base):
    pass


def _offer(row: OfferRow) -> Offer:
    return Offer(
        offer_id=row.offer_id, title=row.title, product_type=row.product_type, risk_level=row.risk_level,
        conversion_value=row.conversion_value, contact_cost=row.contact_cost,
        disclosures=[Disclosure(d["kind"], d["text"]) for d in row.disclosures or []],
        valid_from=row.valid_from, valid_until=row.valid_until, version=row.version, create_time=row.create_time,
    )


class OfferRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, offer_id: str) -> Offer | None:
        row = await self.session.get(OfferRow, offer_id)
        return _offer(row) if row else None

    async def list_page(self, *, after_id: str | None, limit: int) -> list[Offer]:
        query = select(OfferRow).order_by(OfferRow.offer_id).limit(limit)
        if after_id is not None:
            query = query.where(OfferRow.offer_id > after_id)
        return [_offer(row) for row in await self.session.scalars(query)]

    async def active(self, at: datetime) -> list[Offer]:
        query = select(OfferRow).where(
            or_(OfferRow.valid_from.is_(None), OfferRow.valid_from <= at),
            or_(OfferRow.valid_until.is_(None), OfferRow.valid_until > at),
        ).order_by(OfferRow.offer_id)
        return [_offer(row) for row in await self.session.scalars(query)]

    async def add(self, offer: Offer) -> Offer:
        row = OfferRow(
            offer_id=offer.offer_id, title=offer.title, product_type=offer.product_type,
            risk_level=offer.risk_level, conversion_value=offer.conversion_value, contact_cost=offer.contact_cost,
            disclosures=[{"kind": d.kind, "text": d.text} for d in offer.disclosures],
            valid_from=offer.valid_from, valid_until=offer.valid_until, version=1, create_time=utcnow(),
        )
        self.session.add(row)
        await self.session.flush()
        return _offer(row)


class DecisionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    def add(self, row: DecisionRow) -> None:
        self.session.add(row)

    async def get(self, decision_id: str) -> DecisionRow | None:
        return await self.session.get(DecisionRow, decision_id)


class CampaignUnitOfWork(UnitOfWork):
    offers: OfferRepository
    decisions: DecisionRepository

    def _enter_repositories(self) -> None:
        self.offers = OfferRepository(self.session)
        self.decisions = DecisionRepository(self.session)
