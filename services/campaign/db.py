"""The campaign service's database: models, repositories, unit of work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.campaign.domain import Arm, Campaign, Disclosure, Offer, StateChange
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
    # What re-evaluation needs (service.py, "explain"); empty on records written before revision 0005.
    # The snapshot holds the scoring attributes, region, time zone, the age at decision time (never the birth
    # date) and the decision time as requested; snapshot_hash is the sha256 of its canonical JSON.
    snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    snapshot_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    max_offers: Mapped[int | None] = mapped_column(Integer, nullable=True)
    action_probability: Mapped[float | None] = mapped_column(Float, nullable=True)


class CampaignRow(Base):
    __tablename__ = "campaigns"

    campaign_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    segment: Mapped[str] = mapped_column(String(200), default="")
    offer_ids: Mapped[list[Any]] = mapped_column(JSON, default=list)
    channels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    start_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    end_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    budget: Mapped[float] = mapped_column(Float, default=0.0)
    capacities: Mapped[list[Any]] = mapped_column(JSON, default=list)
    control_share: Mapped[float] = mapped_column(Float, default=0.0)
    arms: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_by: Mapped[str] = mapped_column(String(128))
    approved_by: Mapped[str] = mapped_column(String(128), default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CampaignStateChangeRow(Base):
    """Every state change of every campaign: who, when, from what to what, and why."""

    __tablename__ = "campaign_state_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.campaign_id", ondelete="CASCADE"), index=True)
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    change_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class HistoryRow(Base):
    """A past contact (or control non-contact) and its outcome; the training data of models."""

    __tablename__ = "campaign_history"
    __table_args__ = (UniqueConstraint("customer_id", "campaign_ref", "offer_id", "contact_time",
                                       name="uq_campaign_history_contact"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    campaign_ref: Mapped[str] = mapped_column(String(128))
    offer_id: Mapped[str] = mapped_column(String(128), index=True)
    arm: Mapped[str] = mapped_column(String(64), default="")
    treated: Mapped[bool] = mapped_column(Boolean)
    contact_time: Mapped[datetime] = mapped_column(UtcDateTime())
    channel: Mapped[int] = mapped_column(Integer, default=0)
    responded: Mapped[bool] = mapped_column(Boolean, default=False)
    converted: Mapped[bool] = mapped_column(Boolean, default=False)
    revenue: Mapped[float] = mapped_column(Float, default=0.0)
    context: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    import_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ModelVersionRow(Base):
    """A trained model version: its features, training window, cross-validated metrics and artefact."""

    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_id: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    offer_id: Mapped[str] = mapped_column(String(128))
    features: Mapped[list[Any]] = mapped_column(JSON)
    window_start: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    window_end: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))
    algorithm: Mapped[str] = mapped_column(String(64))
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdempotencyKey(IdempotencyKeyMixin, Base):
    pass


class LaunchRow(Base):
    """A batch launch of a campaign (one per campaign). Its own claim (claimed_by, lease_until) serialises the
    plan and allocate phases across replicas; partitions have their own claims (launch.py)."""

    __tablename__ = "campaign_launches"

    launch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    campaign_id: Mapped[str] = mapped_column(String(128), unique=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    actor: Mapped[str] = mapped_column(String(128))
    as_of: Mapped[datetime] = mapped_column(UtcDateTime())
    contact_time: Mapped[datetime] = mapped_column(UtcDateTime())
    fields: Mapped[list[Any]] = mapped_column(JSON, default=list)
    partitions_total: Mapped[int] = mapped_column(Integer, default=0)
    partitions_done: Mapped[int] = mapped_column(Integer, default=0)
    audience_size: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    report: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    status_message: Mapped[str] = mapped_column(Text, default="")
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    done_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class LaunchPartitionRow(Base):
    """A slice of a launch's audience (an id range and the export resume token before it). Its results — the
    treated candidates with their value terms and every member's assignment, one compressed blob — are written
    in the transaction that marks it DONE."""

    __tablename__ = "campaign_launch_partitions"
    __table_args__ = (UniqueConstraint("launch_id", "number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    launch_id: Mapped[str] = mapped_column(ForeignKey("campaign_launches.launch_id", ondelete="CASCADE"),
                                           index=True)
    number: Mapped[int] = mapped_column(Integer)
    first_id: Mapped[str] = mapped_column(String(128))
    last_id: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(Integer)
    resume_token: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[str] = mapped_column(String(16), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    results: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    done_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class OutboxRow(Base):
    """One contact to deliver; the delivery key ("{launch_id}:{customer_id}") makes writing it idempotent."""

    __tablename__ = "campaign_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_key: Mapped[str] = mapped_column(String(200), unique=True)
    launch_id: Mapped[str] = mapped_column(String(32), index=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    offer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[int] = mapped_column(Integer)
    arm_id: Mapped[str] = mapped_column(String(64))
    expected_value: Mapped[float] = mapped_column(Float)
    probability: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="PENDING")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


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


def _campaign(row: CampaignRow, history: list[CampaignStateChangeRow]) -> Campaign:
    return Campaign(
        campaign_id=row.campaign_id, display_name=row.display_name, description=row.description, state=row.state,
        segment=row.segment, offer_ids=list(row.offer_ids or []), channels=list(row.channels or []),
        start_time=row.start_time, end_time=row.end_time, budget=row.budget,
        capacities={int(c): int(n) for c, n in row.capacities or []}, control_share=row.control_share,
        arms=[Arm(a["arm_id"], a["share"], a["content"]) for a in row.arms or []], created_by=row.created_by,
        approved_by=row.approved_by, version=row.version, create_time=row.create_time, update_time=row.update_time,
        history=[StateChange(h.from_state, h.to_state, h.actor, h.reason, h.change_time) for h in history],
    )


def _write_fields(row: CampaignRow, campaign: Campaign) -> None:
    row.display_name, row.description, row.segment = campaign.display_name, campaign.description, campaign.segment
    row.offer_ids, row.channels = list(campaign.offer_ids), list(campaign.channels)
    row.start_time, row.end_time, row.budget = campaign.start_time, campaign.end_time, campaign.budget
    row.capacities = [[c, n] for c, n in sorted(campaign.capacities.items())]
    row.control_share = campaign.control_share
    row.arms = [{"arm_id": a.arm_id, "share": a.share, "content": a.content} for a in campaign.arms]


class CampaignRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def _history(self, campaign_id: str) -> list[CampaignStateChangeRow]:
        query = select(CampaignStateChangeRow).where(CampaignStateChangeRow.campaign_id == campaign_id).order_by(
            CampaignStateChangeRow.id)
        return list(await self.session.scalars(query))

    async def get(self, campaign_id: str, *, for_update: bool = False) -> Campaign | None:
        row = await self.session.get(CampaignRow, campaign_id, with_for_update=for_update)
        return _campaign(row, await self._history(campaign_id)) if row else None

    async def list_page(self, *, after_id: str | None, limit: int, state: str | None) -> list[Campaign]:
        query = select(CampaignRow).order_by(CampaignRow.campaign_id).limit(limit)
        if after_id is not None:
            query = query.where(CampaignRow.campaign_id > after_id)
        if state:
            query = query.where(CampaignRow.state == state)
        return [_campaign(row, await self._history(row.campaign_id)) for row in await self.session.scalars(query)]

    async def add(self, campaign: Campaign) -> Campaign:
        now = utcnow()
        row = CampaignRow(campaign_id=campaign.campaign_id, state=campaign.state, created_by=campaign.created_by,
                          approved_by="", version=1, create_time=now, update_time=now)
        _write_fields(row, campaign)
        self.session.add(row)
        await self.session.flush()
        return _campaign(row, [])

    async def save(self, campaign: Campaign) -> Campaign:
        """Writes the editable fields, bumping the version."""
        row = await self.session.get(CampaignRow, campaign.campaign_id)
        assert row is not None
        _write_fields(row, campaign)
        row.version += 1
        row.update_time = utcnow()
        await self.session.flush()
        return _campaign(row, await self._history(campaign.campaign_id))

    async def transition(self, campaign_id: str, from_state: str, to_state: str, actor: str, reason: str, *,
                         approved_by: str | None = None) -> bool:
        """Moves the campaign from `from_state` to `to_state` if it is still in `from_state` (a conditional
        update, so concurrent transitions and replicas never both win), and records the change."""
        values: dict[str, Any] = {"state": to_state, "version": CampaignRow.version + 1, "update_time": utcnow()}
        if approved_by is not None:
            values["approved_by"] = approved_by
        result = await self.session.execute(
            update(CampaignRow).where(CampaignRow.campaign_id == campaign_id, CampaignRow.state == from_state)
            .values(**values).execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            return False
        self.session.add(CampaignStateChangeRow(campaign_id=campaign_id, from_state=from_state, to_state=to_state,
                                                actor=actor, reason=reason, change_time=utcnow()))
        await self.session.flush()
        return True

    async def due(self, state: str, time_column: str, now: datetime) -> list[str]:
        """Ids of campaigns in `state` whose start_time/end_time has passed."""
        column = CampaignRow.start_time if time_column == "start_time" else CampaignRow.end_time
        query = select(CampaignRow.campaign_id).where(CampaignRow.state == state, column.is_not(None), column <= now)
        return list(await self.session.scalars(query))


class CampaignUnitOfWork(UnitOfWork):
    offers: OfferRepository
    decisions: DecisionRepository
    campaigns: CampaignRepository

    def _enter_repositories(self) -> None:
        self.offers = OfferRepository(self.session)
        self.decisions = DecisionRepository(self.session)
        self.campaigns = CampaignRepository(self.session)
