"""The campaign service's database: models, repositories, unit of work."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
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
    # "FIXED_SHARES" or "THOMPSON_SAMPLING" (bandit.py; revision 0007).
    arm_selection: Mapped[str] = mapped_column(String(24), default="FIXED_SHARES", server_default="FIXED_SHARES")
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
    """A slice of a launch's audience (an id range and the export resume token before it). Its results are its
    decision records (BatchDecisionRow with the same number), written in the transaction that marks it DONE;
    `results` holds them only for partitions selected before the records held everything (a compressed blob)."""

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


# --- delivery (issue 6: services/campaign/dispatch.py, delivery_handlers.py; revision 0006) -------------------
# The dispatcher's queue state lives in its own table keyed by the outbox row's delivery key; OutboxRow only gets
# an index on (state, id) so that "PENDING rows not yet taken by the dispatcher" is found without a scan.
Index("ix_campaign_outbox_state_id", OutboxRow.state, OutboxRow.id)


class DeliveryRow(Base):
    """One outbox message as the dispatcher drives it: QUEUED (due at next_attempt_time) -> SENDING (claimed,
    lease) -> SENT (the provider accepted it) or DEAD (dead letter, with its reason). `in_flight` is set, and
    committed, just before the provider is called: from then on a send may have happened, so the delivery is
    only ever completed by re-sending under the same idempotency key, never re-decided (dispatch.py)."""

    __tablename__ = "campaign_deliveries"

    delivery_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    outbox_id: Mapped[int] = mapped_column(Integer, unique=True)
    launch_id: Mapped[str] = mapped_column(String(32), index=True)
    channel: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))
    next_attempt_time: Mapped[datetime] = mapped_column(UtcDateTime())
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    in_flight: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    deferrals: Mapped[int] = mapped_column(Integer, default=0)
    reservation_generation: Mapped[int] = mapped_column(Integer, default=0)
    last_reason: Mapped[str] = mapped_column(String(64), default="")
    provider_message_id: Mapped[str] = mapped_column(String(200), default="", index=True)
    sent_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    dead_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    # Status callbacks (RecordDeliveryStatus): the first of each kind counts, later ones are ignored and counted.
    delivery_status: Mapped[str] = mapped_column(String(16), default="")
    delivery_status_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    opened_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    clicked_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    ignored_callbacks: Mapped[int] = mapped_column(Integer, default=0)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


Index("ix_campaign_deliveries_state_next_attempt_time", DeliveryRow.state, DeliveryRow.next_attempt_time)


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
        arm_selection=row.arm_selection or "FIXED_SHARES",
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
    row.arm_selection = campaign.arm_selection


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


# --- responses, real-time arm assignments and the learning loop (responses.py, bandit.py, learning_loop.py;
# revision 0007) ------------------------------------------------------------------------------------------------


class ResponseRow(Base):
    """One attributed response. The uniqueness key (campaign, customer, outcome) makes it the single place an
    outcome is counted: a retry, a repeated callback or a second source of the same outcome is a DUPLICATE."""

    __tablename__ = "campaign_responses"
    __table_args__ = (UniqueConstraint("campaign_id", "customer_id", "outcome"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(String(128), index=True)
    # The arm, or "control".
    arm_id: Mapped[str] = mapped_column(String(64))
    customer_id: Mapped[str] = mapped_column(String(128))
    offer_id: Mapped[str] = mapped_column(String(128), default="")
    # "OPENED", "CLICKED", "APPLIED" or "CONVERTED".
    outcome: Mapped[str] = mapped_column(String(16))
    response_time: Mapped[datetime] = mapped_column(UtcDateTime())
    # The UTC day of response_time (YYYY-MM-DD): daily counts group on it, the same SQL on every backend.
    response_day: Mapped[str] = mapped_column(String(10))
    contact_time: Mapped[datetime] = mapped_column(UtcDateTime())
    revenue: Mapped[float] = mapped_column(Float, default=0.0)
    currency_code: Mapped[str] = mapped_column(String(3), default="")
    delivery_key: Mapped[str] = mapped_column(String(200), default="")
    decision_id: Mapped[str] = mapped_column(String(32), default="")
    event_id: Mapped[str] = mapped_column(String(200), default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ArmAssignmentRow(Base):
    """A real-time (Decide) arm assignment of a customer in a campaign choosing arms by Thompson sampling:
    sticky (the first one holds), with the probability the arm was picked with."""

    __tablename__ = "campaign_arm_assignments"
    __table_args__ = (UniqueConstraint("campaign_id", "customer_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(String(128), index=True)
    customer_id: Mapped[str] = mapped_column(String(128), index=True)
    arm_id: Mapped[str] = mapped_column(String(64))
    offer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[int] = mapped_column(Integer, default=0)
    probability: Mapped[float] = mapped_column(Float)
    decision_id: Mapped[str] = mapped_column(String(32))
    assign_time: Mapped[datetime] = mapped_column(UtcDateTime())


class LearningRunRow(Base):
    """The learning loop's record of a finished campaign turned into history and a challenger model: claimed
    with a lease (like launches), DONE once; what makes the loop idempotent across replicas and restarts."""

    __tablename__ = "campaign_learning_runs"

    campaign_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    history_rows: Mapped[int] = mapped_column(Integer, default=0)
    model_versions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status_message: Mapped[str] = mapped_column(Text, default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    done_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


# --- triggered campaigns, the global holdout, fairness justifications (triggers.py, holdout.py, fairness) ------


class CampaignTriggerRow(Base):
    """A campaign's trigger: a condition over one profile event (docs/triggers.md)."""

    __tablename__ = "campaign_triggers"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.campaign_id", ondelete="CASCADE"),
                                             primary_key=True)
    condition: Mapped[str] = mapped_column(Text)
    canonical_condition: Mapped[str] = mapped_column(Text)
    dedupe_hours: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(128))
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TriggerFiringRow(Base):
    """What a trigger did with one matching event: FIRED (an outbox row), DEDUPED, NO_OFFER, CONTROL,
    GLOBAL_HOLDOUT or CUSTOMER_UNKNOWN. One per (campaign, event): the feed may deliver an event twice after a
    crash, the firing is written once."""

    __tablename__ = "campaign_trigger_firings"
    __table_args__ = (UniqueConstraint("campaign_id", "event_id"),
                      Index("ix_campaign_trigger_firings_dedupe", "campaign_id", "customer_id", "fire_time"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    campaign_id: Mapped[str] = mapped_column(String(128))
    event_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str] = mapped_column(String(128))
    outcome: Mapped[str] = mapped_column(String(24))
    decision_id: Mapped[str] = mapped_column(String(32), default="")
    delivery_key: Mapped[str] = mapped_column(String(300), default="")
    fire_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class FeedCursorRow(Base):
    """How far this service has followed another service's feed (profile's events). Advanced in the transaction
    that writes what the events caused, so a restart neither skips nor repeats; one replica follows at a time
    (claimed_by + lease_until)."""

    __tablename__ = "campaign_feed_cursors"

    feed: Mapped[str] = mapped_column(String(64), primary_key=True)
    cursor: Mapped[str] = mapped_column(Text, default="")
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    status_message: Mapped[str] = mapped_column(Text, default="")
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


# --- cross-sell, churn and pricing (issue 10: recommend.py, churn.py, pricing.py, personalisation.py; revision
# 0009). Versions of the cross-sell recommender and of the churn model (artefacts as JSON / LightGBM text, never
# pickle), and the approved price band of an offer with its fitted price response.
class CrossSellModelRow(Base):
    __tablename__ = "cross_sell_models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ChurnModelRow(Base):
    __tablename__ = "churn_models"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    features: Mapped[list[Any]] = mapped_column(JSON)
    cutoff_time: Mapped[datetime] = mapped_column(UtcDateTime())
    horizon_days: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    algorithm: Mapped[str] = mapped_column(String(64))
    artifact: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class PriceBandRow(Base):
    __tablename__ = "offer_price_bands"

    offer_id: Mapped[str] = mapped_column(ForeignKey("offers.offer_id", ondelete="CASCADE"), primary_key=True)
    rate_min: Mapped[float] = mapped_column(Float)
    rate_max: Mapped[float] = mapped_column(Float)
    rate_step: Mapped[float] = mapped_column(Float, default=0.0)
    fee_waiver_allowed: Mapped[bool] = mapped_column(Boolean, default=False)
    fee_amount: Mapped[float] = mapped_column(Float, default=0.0)
    # segment -> [intercept, slope, fee_coefficient, contacts] (pricing.PriceResponse), from FitPriceResponse.
    response: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TargetingJustificationRow(Base):
    """Why a campaign's targeting may be disparate: with one, ApproveCampaign is not blocked by
    TARGETING_DISPARATE (fairness_gate.py). Recorded before approval, by whom and when."""

    __tablename__ = "campaign_targeting_justifications"

    campaign_id: Mapped[str] = mapped_column(ForeignKey("campaigns.campaign_id", ondelete="CASCADE"),
                                             primary_key=True)
    justification: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String(128))
    record_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class BatchDecisionRow(Base):
    """The decision records of a batch launch, compactly (batch_decisions.py): one columnar document per
    partition (number >= 1: every member's verdicts with reason codes, probabilities, the offers' terms, model
    versions, feature snapshot and its hash, group and assignment probability — also the partition's result, read
    by the allocation), written in the transaction that marks the partition DONE, and one for the allocation
    (number 0: each candidate's chosen option or the constraint that cut it), written with the launch's DONE."""

    __tablename__ = "campaign_batch_decisions"

    launch_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    first_id: Mapped[str] = mapped_column(String(128), default="")
    last_id: Mapped[str] = mapped_column(String(128), default="")
    records: Mapped[bytes] = mapped_column(LargeBinary)
