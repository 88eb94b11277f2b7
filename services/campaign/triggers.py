"""Triggered campaigns: follow profile's event feed and, for each event matching a RUNNING campaign's trigger,
run Decide for that customer and write one outbox row (docs/triggers.md). Owns its transactions; no grpc.

- The trigger is a condition in profile's condition language over the event's own fields (`kind`, `amount`,
  `direction`, `merchant_category`, `channel`, `action`, `target`, `days_late`, `product`, `due_date`,
  `campaign_id`, `offer_id`, `response_kind`, `currency`); `txn.amount` / `event.amount` are accepted for
  `amount`. It is evaluated in memory by the same evaluator segments use (services.profile.conditions).
- One replica follows the feed at a time: it claims the cursor row (`campaign_feed_cursors`) with a lease.
  A batch of events is read after the stored cursor; the decisions are made (Decide stores its own decision
  records); then ONE transaction writes the firings (unique per campaign and event), the outbox rows
  (delivery key "trigger:{campaign_id}:{event_id}", ON CONFLICT DO NOTHING) and the new cursor, only if the
  claim is still held. A crash before that commit re-reads the same events: no event is skipped, and nothing
  is written twice (a repeated Decide only leaves an extra decision record).
- Per customer and campaign, at most one contact per `dedupe_hours` (FIRED firings in the window); the
  campaign's control share (hash assignment, as in batch launches) is recorded as CONTROL and never contacted;
  members of the global holdout are recorded as GLOBAL_HOLDOUT.
"""

from __future__ import annotations

import hashlib
import logging
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.campaign.db import (
    CampaignRow,
    CampaignTriggerRow,
    CampaignUnitOfWork,
    FeedCursorRow,
    OutboxRow,
    TriggerFiringRow,
)
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import DRAFT, RUNNING, Campaign, Decision, DecisionContext
from services.campaign.holdout import GlobalHoldout
from services.campaign.launch import assign
from services.platform.db import utcnow
from services.platform.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.profile.conditions import AttributeInfo, Catalog, ConditionError, Node, evaluate, parse_condition
from services.profile.conditions import to_invalid_argument as condition_error
from services.profile.conditions import to_text as condition_text

log = logging.getLogger("lodestar.campaign.triggers")

FEED = "profile-events"
DEFAULT_DEDUPE_HOURS = 24
MAX_DEDUPE_HOURS = 24 * 365
FIRED, DEDUPED, NO_OFFER, CONTROL, HOLDOUT, UNKNOWN_CUSTOMER = (
    "FIRED", "DEDUPED", "NO_OFFER", "CONTROL", "GLOBAL_HOLDOUT", "CUSTOMER_UNKNOWN")
# Decide is asked for this many offers; the best one among the campaign's own offers is delivered.
DECIDE_MAX_OFFERS = 20

# The event's fields and their type in the condition language.
EVENT_FIELDS: dict[str, str] = {
    "kind": "string", "amount": "decimal", "currency": "string", "direction": "string",
    "merchant_category": "string", "channel": "string", "action": "string", "target": "string",
    "days_late": "int", "product": "string", "due_date": "date", "campaign_id": "string", "offer_id": "string",
    "response_kind": "string",
}
_CATALOG = Catalog(attributes={name: AttributeInfo(kind) for name, kind in EVENT_FIELDS.items()}, features=(),
                   events={})
# `txn.amount`, `event.amount`, `transaction.amount`, ... -> `amount` (outside string literals).
_PREFIXED = re.compile(r'("(?:[^"\\]|\\.)*")|\b(?:txn|event|transaction|repayment|activity|response)\.([a-z_]+)\b')


@dataclass(frozen=True)
class FeedEvent:
    """One event of profile's feed, flattened: `fields` holds the values of EVENT_FIELDS it has."""

    event_id: str
    customer_id: str
    occurred_at: datetime
    recorded_at: datetime
    fields: dict[str, Any] = field(default_factory=dict)


class EventFeedSource(Protocol):
    async def events_since(self, cursor: str, limit: int) -> tuple[list[FeedEvent], str]: ...


class Decider(Protocol):
    async def decide(self, customer_id: str, context: DecisionContext, max_offers: int) -> Decision: ...


@dataclass(frozen=True)
class TriggerView:
    campaign_id: str
    condition: str
    canonical_condition: str
    dedupe_hours: int
    update_time: datetime
    firings: dict[str, int]


TRIGGER_CODEC = Codec(
    encode=lambda v: "\x1f".join([v.campaign_id, v.condition, v.canonical_condition, str(v.dedupe_hours),
                                  v.update_time.isoformat()]).encode(),
    decode=lambda raw: (lambda p: TriggerView(p[0], p[1], p[2], int(p[3]), datetime.fromisoformat(p[4]), {}))(
        raw.decode().split("\x1f")),
)


def compile_trigger(text: str) -> Node:
    """The checked condition tree, or INVALID_ARGUMENT on `trigger.condition` with its position."""
    rewritten = _PREFIXED.sub(lambda m: m.group(1) or m.group(2), text)
    try:
        return parse_condition(rewritten, _CATALOG)
    except ConditionError as error:
        invalid = condition_error(error)
        invalid.violations[0] = type(invalid.violations[0])("trigger.condition", invalid.violations[0].description)
        invalid.metadata["field"] = "trigger.condition"
        raise invalid from None


@dataclass(frozen=True)
class _Value:
    kind: str
    value: Any


def _typed(name: str, value: Any) -> _Value | None:
    if value is None or value == "":
        return None
    kind = EVENT_FIELDS[name]
    if kind == "decimal":
        return _Value(kind, Decimal(str(value)))
    if kind == "int":
        return _Value(kind, int(value))
    if kind == "date":
        return _Value(kind, value.isoformat() if isinstance(value, date) else str(value))
    return _Value(kind, str(value))


def matches(node: Node, event: FeedEvent) -> bool:
    """Whether the event satisfies the trigger (true, not null: a missing field never matches)."""
    from services.profile.conditions import CustomerFacts

    attributes = {name: v for name in EVENT_FIELDS if (v := _typed(name, event.fields.get(name))) is not None}
    return evaluate(node, CustomerFacts(attributes=attributes), as_of=event.occurred_at)


def trigger_delivery_key(campaign_id: str, event_id: str) -> str:
    return f"trigger:{campaign_id}:{event_id}"


def trigger_launch_id(campaign_id: str) -> str:
    """The outbox's launch_id of a campaign's triggered contacts (32 characters, like a launch id; the same for
    every firing of the campaign): "t" + sha256(campaign_id)[:31]."""
    return "t" + hashlib.sha256(campaign_id.encode()).hexdigest()[:31]


@dataclass
class _Firing:
    campaign_id: str
    event_id: str
    customer_id: str
    outcome: str
    decision_id: str = ""
    outbox: dict[str, Any] | None = None


class TriggerService:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], feed: EventFeedSource, decider: Decider, *,
                 holdout: GlobalHoldout | None = None, worker_id: str | None = None, batch_size: int = 200,
                 lease_seconds: float = 30.0, retry_seconds: float = 5.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.feed = feed
        self.decider = decider
        self.holdout = holdout or GlobalHoldout()
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.batch_size = batch_size
        self.lease = timedelta(seconds=lease_seconds)
        self.retry = timedelta(seconds=retry_seconds)
        self.clock = clock
        self._compiled: dict[str, tuple[str, Node]] = {}

    # --- use cases ------------------------------------------------------------------------------------------

    async def set_trigger(self, campaign_id: str, condition: str, dedupe_hours: int, actor: str,
                          key: IdempotencyKey | None) -> TriggerView:
        node = compile_trigger(condition)
        if not 0 <= dedupe_hours <= MAX_DEDUPE_HOURS:
            raise InvalidArgument.field("trigger.dedupe_hours", f"must be between 0 and {MAX_DEDUPE_HOURS}")
        hours = dedupe_hours or DEFAULT_DEDUPE_HOURS

        async def write(uow: CampaignUnitOfWork) -> TriggerView:
            campaign = await uow.campaigns.get(campaign_id, for_update=True)
            if campaign is None:
                raise NotFound("campaign", f"campaigns/{campaign_id}")
            if campaign.state != DRAFT:
                raise FailedPrecondition("CAMPAIGN_NOT_EDITABLE", f"only a DRAFT campaign's trigger can change; "
                                                                  f"this one is {campaign.state}",
                                         metadata={"state": campaign.state})
            now = self.clock()
            row = await uow.session.get(CampaignTriggerRow, campaign_id)
            if row is None:
                row = CampaignTriggerRow(campaign_id=campaign_id)
                uow.session.add(row)
            row.condition, row.canonical_condition = condition, condition_text(node)
            row.dedupe_hours, row.actor, row.update_time = hours, actor, now
            await uow.session.flush()
            return TriggerView(campaign_id, condition, row.canonical_condition, hours, now, {})

        view = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, TRIGGER_CODEC, write)
        log.info("campaigns/%s trigger set by %s", campaign_id, actor)
        return view

    async def get_trigger(self, campaign_id: str) -> TriggerView:
        async with self.uow_factory() as uow:
            row = await uow.session.get(CampaignTriggerRow, campaign_id)
            if row is None:
                raise NotFound("trigger", f"campaigns/{campaign_id}", reason="TRIGGER_NOT_FOUND")
            counts = dict((await uow.session.execute(
                select(TriggerFiringRow.outcome, func.count()).where(TriggerFiringRow.campaign_id == campaign_id)
                .group_by(TriggerFiringRow.outcome))).tuples().all())
            return TriggerView(row.campaign_id, row.condition, row.canonical_condition, row.dedupe_hours,
                               row.update_time, {str(k): int(v) for k, v in counts.items()})

    # --- the follower ---------------------------------------------------------------------------------------

    async def step(self) -> bool:
        """Reads one batch of the feed and acts on it; False when there was nothing new (or another replica
        holds the feed)."""
        cursor = await self._claim()
        if cursor is None:
            return False
        try:
            events, next_cursor = await self.feed.events_since(cursor, self.batch_size)
        except DomainError as error:
            await self._release(f"feed waits: {error.reason}: {error.message}")
            return False
        if not events:
            return False
        try:
            firings = await self._fire(events)
        except DomainError as error:  # a dependency down: nothing is written, the same events are read again
            await self._release(f"decisions wait: {error.reason}: {error.message}")
            return False
        return await self._commit(cursor, next_cursor, firings)

    async def run_until_idle(self, max_steps: int = 1000) -> int:
        steps = 0
        while steps < max_steps and await self.step():
            steps += 1
        return steps

    async def _claim(self) -> str | None:
        """The stored cursor if this worker holds (or now takes) the feed's lease; None otherwise."""
        now = self.clock()
        async with self.uow_factory() as uow:
            dialect = uow.session.bind.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await uow.session.execute(insert(FeedCursorRow).values(
                feed=FEED, cursor="", status_message="", update_time=now).on_conflict_do_nothing(
                index_elements=["feed"]))
            claimed = await uow.session.execute(
                update(FeedCursorRow).where(
                    FeedCursorRow.feed == FEED,
                    (FeedCursorRow.lease_until.is_(None)) | (FeedCursorRow.lease_until < now)
                    | (FeedCursorRow.claimed_by == self.worker_id))
                .values(claimed_by=self.worker_id, lease_until=now + self.lease)
                .execution_options(synchronize_session=False))
            cursor = await uow.session.scalar(select(FeedCursorRow.cursor).where(FeedCursorRow.feed == FEED))
            await uow.commit()
        return (cursor or "") if claimed.rowcount == 1 else None  # type: ignore[attr-defined]

    async def _release(self, message: str) -> None:
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(FeedCursorRow).where(FeedCursorRow.feed == FEED, FeedCursorRow.claimed_by == self.worker_id)
                .values(claimed_by=None, lease_until=self.clock() + self.retry, status_message=message,
                        update_time=self.clock()).execution_options(synchronize_session=False))
            await uow.commit()
        log.warning("trigger feed: %s", message)

    async def _triggered_campaigns(self) -> list[tuple[Campaign, CampaignTriggerRow]]:
        async with self.uow_factory() as uow:
            rows = list((await uow.session.execute(
                select(CampaignTriggerRow).join(CampaignRow, CampaignRow.campaign_id == CampaignTriggerRow.campaign_id)
                .where(CampaignRow.state == RUNNING).order_by(CampaignTriggerRow.campaign_id))).scalars())
            out = []
            for row in rows:
                uow.session.expunge(row)
                campaign = await uow.campaigns.get(row.campaign_id)
                if campaign is not None:
                    out.append((campaign, row))
        return out

    def _node(self, row: CampaignTriggerRow) -> Node:
        cached = self._compiled.get(row.campaign_id)
        if cached is None or cached[0] != row.condition:
            cached = (row.condition, compile_trigger(row.condition))
            self._compiled[row.campaign_id] = cached
        return cached[1]

    async def _fire(self, events: Sequence[FeedEvent]) -> list[_Firing]:
        triggered = await self._triggered_campaigns()
        out: list[_Firing] = []
        fired_now: dict[tuple[str, str], datetime] = {}
        for event in events:
            for campaign, trigger in triggered:
                if not matches(self._node(trigger), event):
                    continue
                firing = _Firing(campaign.campaign_id, event.event_id, event.customer_id, FIRED)
                out.append(firing)
                if self.holdout.contains(event.customer_id):
                    firing.outcome = HOLDOUT
                    continue
                group = int(assign(campaign.campaign_id, [event.customer_id], campaign.control_share,
                                   [a.share for a in campaign.arms])[0])
                if group < 0 or not campaign.arms:
                    firing.outcome = CONTROL
                    continue
                now = self.clock()
                window = timedelta(hours=trigger.dedupe_hours)
                key = (campaign.campaign_id, event.customer_id)
                if (key in fired_now and fired_now[key] > now - window) or await self._fired_since(
                        campaign.campaign_id, event.customer_id, now - window):
                    firing.outcome = DEDUPED
                    continue
                context = DecisionContext(channel=campaign.channels[0] if campaign.channels else 0, partner_id="",
                                          placement=f"trigger:{campaign.campaign_id}", decision_time=now)
                try:
                    decision = await self.decider.decide(event.customer_id, context, DECIDE_MAX_OFFERS)
                except NotFound:
                    firing.outcome = UNKNOWN_CUSTOMER
                    continue
                firing.decision_id = decision.decision_id
                best = next((r for r in decision.offers if r.offer.offer_id in campaign.offer_ids), None)
                if best is None:
                    firing.outcome = NO_OFFER
                    continue
                fired_now[key] = now
                firing.outbox = {
                    "delivery_key": trigger_delivery_key(campaign.campaign_id, event.event_id),
                    "launch_id": trigger_launch_id(campaign.campaign_id), "customer_id": event.customer_id,
                    "offer_id": best.offer.offer_id, "channel": context.channel,
                    "arm_id": campaign.arms[group].arm_id, "expected_value": float(best.expected_value),
                    "probability": float(best.propensity), "state": "PENDING", "create_time": now,
                }
                log.info("campaigns/%s triggered by event for %s", campaign.campaign_id,
                         customer_token(event.customer_id))
        return out

    async def _fired_since(self, campaign_id: str, customer_id: str, since: datetime) -> bool:
        async with self.uow_factory() as uow:
            found = await uow.session.scalar(select(TriggerFiringRow.id).where(
                TriggerFiringRow.campaign_id == campaign_id, TriggerFiringRow.customer_id == customer_id,
                TriggerFiringRow.outcome == FIRED, TriggerFiringRow.fire_time > since).limit(1))
        return found is not None

    async def _commit(self, cursor: str, next_cursor: str, firings: Sequence[_Firing]) -> bool:
        """Firings, outbox rows and the new cursor in one transaction, only while this worker holds the feed
        and only for campaigns still RUNNING (a campaign cancelled or paused meanwhile gets nothing)."""
        now = self.clock()
        async with self.uow_factory() as uow:
            dialect = uow.session.bind.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            moved = await uow.session.execute(
                update(FeedCursorRow).where(FeedCursorRow.feed == FEED, FeedCursorRow.claimed_by == self.worker_id,
                                            FeedCursorRow.cursor == cursor)
                .values(cursor=next_cursor, lease_until=now + self.lease, status_message="", update_time=now)
                .execution_options(synchronize_session=False))
            if moved.rowcount != 1:  # type: ignore[attr-defined]
                log.warning("trigger feed: claim lost, batch discarded (the holder re-reads it)")
                return False
            campaigns = {f.campaign_id for f in firings}
            query = select(CampaignRow.campaign_id).where(CampaignRow.campaign_id.in_(campaigns),
                                                          CampaignRow.state == RUNNING)
            if dialect == "postgresql":  # a concurrent cancel/pause waits for this commit, or wins before it
                query = query.with_for_update(read=True)
            running = set(await uow.session.scalars(query)) if campaigns else set()
            rows, outbox = [], []
            for f in firings:
                if f.campaign_id not in running:
                    continue
                rows.append({"campaign_id": f.campaign_id, "event_id": f.event_id, "customer_id": f.customer_id,
                             "outcome": f.outcome, "decision_id": f.decision_id,
                             "delivery_key": f.outbox["delivery_key"] if f.outbox else "", "fire_time": now})
                if f.outbox is not None:
                    outbox.append(f.outbox)
            if rows:
                await uow.session.execute(insert(TriggerFiringRow).values(rows).on_conflict_do_nothing(
                    index_elements=["campaign_id", "event_id"]))
            if outbox:
                await uow.session.execute(insert(OutboxRow).values(outbox).on_conflict_do_nothing(
                    index_elements=["delivery_key"]))
            await uow.commit()
        return True
