"""Responses to campaigns: attribution to campaign and arm, the one place outcomes are counted (docs/responses.md).

Owns its transactions; imports no grpc. A response event is attributed, by the first key it carries:

- `delivery_key`: the outbox message (its launch gives the campaign and the contact time, the message its arm
  and offer);
- `decision_id` (+ `offer_id`): the real-time arm assignment of that decision's customer in a campaign that
  chooses arms by Thompson sampling (bandit.py), else the most recent launched campaign presenting the offer that
  counted the customer as a member;
- `campaign_id` + `customer_id`: the customer's outbox message in the campaign's launch, else their membership of
  the launch (control, or an arm they were assigned to but not contacted: intention to treat), else their
  real-time arm assignment.

Then it is checked against the contact: not before it (BEFORE_CONTACT), not after the attribution window
(OUTSIDE_WINDOW), revenue only in the campaign currency (CURRENCY_MISMATCH). The table's uniqueness key
(campaign, customer, outcome) makes every outcome count once: a retry, a repeated callback or a second source is
a DUPLICATE. Other modules record through `record_in` (the dispatcher's opened/clicked callbacks:
`record_delivery_event`) and read through `outcome_counts` and `arm_outcomes`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from services.campaign import bandit
from services.campaign.db import (
    ArmAssignmentRow,
    CampaignRow,
    CampaignUnitOfWork,
    DecisionRow,
    LaunchRow,
    OutboxRow,
    ResponseRow,
)
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.platform.config import ConfigError, ServiceSettings
from services.platform.db import utcnow
from services.platform.errors import NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent

log = logging.getLogger("lodestar.campaign.responses")

OPENED, CLICKED, APPLIED, CONVERTED = "OPENED", "CLICKED", "APPLIED", "CONVERTED"
OUTCOMES = (OPENED, CLICKED, APPLIED, CONVERTED)
CONTROL = "control"
# Members of the persistent global holdout (holdout.py; launch group -2): never contacted by any campaign.
GLOBAL_HOLDOUT = "global_holdout"

RECORDED = "RECORDED"
DUPLICATE = "DUPLICATE"
UNKNOWN_DELIVERY = "UNKNOWN_DELIVERY"
NOT_ATTRIBUTED = "NOT_ATTRIBUTED"
BEFORE_CONTACT = "BEFORE_CONTACT"
OUTSIDE_WINDOW = "OUTSIDE_WINDOW"
CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
INVALID = "INVALID"
DISPOSITIONS = (RECORDED, DUPLICATE, UNKNOWN_DELIVERY, NOT_ATTRIBUTED, BEFORE_CONTACT, OUTSIDE_WINDOW,
                CURRENCY_MISMATCH, INVALID)

MAX_EVENTS_PER_STREAM = 50_000
MAX_REJECTIONS_REPORTED = 1000
# A response quoting a decision outside any Thompson campaign is looked up in this many most recent launches.
DECISION_LAUNCHES_SCANNED = 50
_DONE = "DONE"

# Settings (campaign service environment).
CURRENCY_SETTING = "CAMPAIGN_CURRENCY"
WINDOW_SETTING = "CAMPAIGN_ATTRIBUTION_WINDOW_DAYS"
DEFAULT_CURRENCY = "CNY"
DEFAULT_WINDOW_DAYS = 30


@dataclass(frozen=True)
class ResponseSettings:
    currency: str = DEFAULT_CURRENCY
    attribution_window: timedelta = timedelta(days=DEFAULT_WINDOW_DAYS)

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> ResponseSettings:
        check_settings(settings)
        return cls(settings.extra.get(CURRENCY_SETTING) or DEFAULT_CURRENCY,
                   timedelta(days=int(settings.extra.get(WINDOW_SETTING) or DEFAULT_WINDOW_DAYS)))


def check_settings(settings: ServiceSettings) -> None:
    currency = settings.extra.get(CURRENCY_SETTING)
    if currency is not None and not (len(currency) == 3 and currency.isalpha() and currency.isupper()):
        raise ConfigError(f"{CURRENCY_SETTING} must be an ISO 4217 code such as CNY, got {currency!r}")
    window = settings.extra.get(WINDOW_SETTING)
    if window is not None and (not window.isdigit() or not 1 <= int(window) <= 365):
        raise ConfigError(f"{WINDOW_SETTING} must be a whole number of days from 1 to 365, got {window!r}")


@dataclass(frozen=True)
class ResponseInput:
    """One event as the handler parsed it; `problem` is set (a reason code) when it is malformed."""

    outcome: str
    response_time: datetime | None
    delivery_key: str = ""
    decision_id: str = ""
    campaign_id: str = ""
    customer_id: str = ""
    revenue: float = 0.0
    currency_code: str = ""
    offer_id: str = ""
    event_id: str = ""
    problem: str = ""


@dataclass(frozen=True)
class Disposition:
    disposition: str
    reason: str = ""


@dataclass
class IntakeResult:
    received: int
    counts: dict[str, int]
    # (index in the stream, disposition, reason), stream order, at most MAX_REJECTIONS_REPORTED.
    rejections: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def recorded(self) -> int:
        return self.counts.get(RECORDED, 0)


@dataclass(frozen=True)
class Attribution:
    campaign_id: str
    arm_id: str
    customer_id: str
    offer_id: str
    contact_time: datetime
    delivery_key: str = ""
    decision_id: str = ""


@dataclass(frozen=True)
class OutcomeCount:
    """`outcome_counts` rows: customers with `outcome` in group `arm_id` ("control" for control) whose response
    fell on UTC `day` (YYYY-MM-DD), and their revenue (CONVERTED only, campaign currency)."""

    arm_id: str
    outcome: str
    day: str
    customers: int
    revenue: float


@dataclass
class ArmOutcomeView:
    arm_id: str
    assigned: int = 0
    contacted: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    revenue: float = 0.0
    posterior_alpha: float = 1.0
    posterior_beta: float = 1.0
    probability_best: float = 0.0


# --- launch membership (immutable once the launch is DONE, so cached) --------------------------------------------

_MEMBERS_CACHE: OrderedDict[str, tuple[np.ndarray, np.ndarray, np.ndarray | None]] = OrderedDict()
_MEMBERS_CACHE_SIZE = 8


async def launch_members(uow: CampaignUnitOfWork, launch_id: str, *, done: bool = True
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Every member of a launch, sorted by id, with their group (-1 control, else the arm's index) and, when the
    launch recorded them, the probability each group was picked with."""
    cached = _MEMBERS_CACHE.get(launch_id)
    if cached is not None:
        _MEMBERS_CACHE.move_to_end(launch_id)
        return cached
    from services.campaign.launch import partition_results  # launch imports this module's bandit hook

    parts = [part for _, part in await partition_results(uow.session, launch_id)]
    if parts:
        ids = np.concatenate([p.member_ids for p in parts])
        groups = np.concatenate([p.groups for p in parts]).astype(np.int16)
        has_probabilities = all(p.arm_probabilities is not None for p in parts)
        probabilities = (np.concatenate([p.arm_probabilities for p in parts])  # type: ignore[misc]
                         if has_probabilities else None)
    else:
        ids, groups, probabilities = np.zeros(0, dtype=str), np.zeros(0, dtype=np.int16), None
    order = np.argsort(ids, kind="stable")
    result = (ids[order], groups[order], probabilities[order] if probabilities is not None else None)
    if done:
        _MEMBERS_CACHE[launch_id] = result
        while len(_MEMBERS_CACHE) > _MEMBERS_CACHE_SIZE:
            _MEMBERS_CACHE.popitem(last=False)
    return result


def group_name(group: int, arm_ids: Sequence[str]) -> str:
    """A launch group's name: an arm id, "control" (-1) or "global_holdout" (-2)."""
    if 0 <= group < len(arm_ids):
        return arm_ids[group]
    return GLOBAL_HOLDOUT if group == -2 else CONTROL


def member_group(members: tuple[np.ndarray, np.ndarray, np.ndarray | None], customer_id: str) -> int | None:
    ids, groups, _ = members
    i = int(np.searchsorted(ids, customer_id))
    if i < len(ids) and ids[i] == customer_id:
        return int(groups[i])
    return None


# --- attribution ----------------------------------------------------------------------------------------------


class _Attributor:
    """Looks up contacts for one batch, memoising campaigns and launches."""

    def __init__(self, uow: CampaignUnitOfWork) -> None:
        self.uow = uow
        self.campaigns: dict[str, CampaignRow | None] = {}
        self.launches: dict[str, LaunchRow | None] = {}
        self.launch_by_campaign: dict[str, LaunchRow | None] = {}

    async def campaign(self, campaign_id: str) -> CampaignRow | None:
        if campaign_id not in self.campaigns:
            self.campaigns[campaign_id] = await self.uow.session.get(CampaignRow, campaign_id)
        return self.campaigns[campaign_id]

    async def launch(self, launch_id: str) -> LaunchRow | None:
        if launch_id not in self.launches:
            self.launches[launch_id] = await self.uow.session.get(LaunchRow, launch_id)
        return self.launches[launch_id]

    async def campaign_launch(self, campaign_id: str) -> LaunchRow | None:
        if campaign_id not in self.launch_by_campaign:
            self.launch_by_campaign[campaign_id] = await self.uow.session.scalar(
                select(LaunchRow).where(LaunchRow.campaign_id == campaign_id))
        return self.launch_by_campaign[campaign_id]

    async def by_delivery(self, delivery_key: str) -> Attribution | Disposition:
        outbox = await self.uow.session.scalar(select(OutboxRow).where(OutboxRow.delivery_key == delivery_key))
        if outbox is None:
            return Disposition(UNKNOWN_DELIVERY, "DELIVERY_NOT_FOUND")
        launch = await self.launch(outbox.launch_id)
        if launch is None:
            return Disposition(UNKNOWN_DELIVERY, "DELIVERY_NOT_FOUND")
        return Attribution(launch.campaign_id, outbox.arm_id, outbox.customer_id, outbox.offer_id,
                           launch.contact_time, delivery_key=delivery_key)

    async def by_campaign(self, campaign_id: str, customer_id: str, offer_id: str) -> Attribution | Disposition:
        campaign = await self.campaign(campaign_id)
        if campaign is None:
            return Disposition(NOT_ATTRIBUTED, "CAMPAIGN_NOT_FOUND")
        launch = await self.campaign_launch(campaign_id)
        if launch is not None:
            key = f"{launch.launch_id}:{customer_id}"
            outbox = await self.uow.session.scalar(select(OutboxRow).where(OutboxRow.delivery_key == key))
            if outbox is not None:
                return Attribution(campaign_id, outbox.arm_id, customer_id, outbox.offer_id, launch.contact_time,
                                   delivery_key=key)
            if launch.state == _DONE:
                group = member_group(await launch_members(self.uow, launch.launch_id), customer_id)
                if group is not None:
                    arm = group_name(group, [a["arm_id"] for a in campaign.arms or []])
                    return Attribution(campaign_id, arm, customer_id, offer_id, launch.contact_time)
        assignment = await self.uow.session.scalar(select(ArmAssignmentRow).where(
            ArmAssignmentRow.campaign_id == campaign_id, ArmAssignmentRow.customer_id == customer_id))
        if assignment is not None:
            return Attribution(campaign_id, assignment.arm_id, customer_id, assignment.offer_id,
                               assignment.assign_time, decision_id=assignment.decision_id)
        return Disposition(NOT_ATTRIBUTED, "NO_ASSIGNMENT")

    async def by_decision(self, decision_id: str, customer_id: str, offer_id: str) -> Attribution | Disposition:
        decision = await self.uow.session.get(DecisionRow, decision_id)
        if decision is None:
            return Disposition(NOT_ATTRIBUTED, "DECISION_NOT_FOUND")
        if customer_id and customer_id != decision.customer_id:
            return Disposition(INVALID, "CUSTOMER_MISMATCH")
        query = select(ArmAssignmentRow).where(ArmAssignmentRow.customer_id == decision.customer_id,
                                               ArmAssignmentRow.assign_time <= decision.decision_time)
        if offer_id:
            query = query.where(ArmAssignmentRow.offer_id == offer_id)
        assignment = await self.uow.session.scalar(
            query.order_by(ArmAssignmentRow.assign_time.desc(), ArmAssignmentRow.id.desc()).limit(1))
        if assignment is not None:
            return Attribution(assignment.campaign_id, assignment.arm_id, decision.customer_id, assignment.offer_id,
                               assignment.assign_time, decision_id=decision_id)
        # Else the most recent launched campaign presenting this offer that counted the customer as a member
        # (contacted, control or arm) before the decision.
        launches = (await self.uow.session.execute(
            select(LaunchRow.campaign_id).where(LaunchRow.state == _DONE,
                                                LaunchRow.contact_time <= decision.decision_time)
            .order_by(LaunchRow.contact_time.desc()).limit(DECISION_LAUNCHES_SCANNED))).scalars().all()
        for campaign_id in launches:
            campaign = await self.campaign(campaign_id)
            if campaign is None or (offer_id and offer_id not in (campaign.offer_ids or [])):
                continue
            found = await self.by_campaign(campaign_id, decision.customer_id, offer_id)
            if isinstance(found, Attribution):
                return dataclasses.replace(found, decision_id=decision_id)
        return Disposition(NOT_ATTRIBUTED, "DECISION_NOT_IN_CAMPAIGN")


def _check(event: ResponseInput) -> str:
    """A malformed event's reason code, or ''."""
    if event.problem:
        return event.problem
    if event.outcome not in OUTCOMES:
        return "OUTCOME_REQUIRED"
    if event.response_time is None:
        return "RESPONSE_TIME_REQUIRED"
    if not (event.delivery_key or event.decision_id or (event.campaign_id and event.customer_id)):
        return "ATTRIBUTION_KEY_REQUIRED"
    if not math.isfinite(event.revenue) or event.revenue < 0:
        return "INVALID_REVENUE"
    if event.revenue and event.outcome != CONVERTED:
        return "REVENUE_WITHOUT_CONVERSION"
    if event.revenue and not event.currency_code:
        return "CURRENCY_REQUIRED"
    return ""


async def record_in(uow: CampaignUnitOfWork, events: Sequence[ResponseInput], settings: ResponseSettings,
                    *, now: datetime | None = None) -> list[Disposition]:
    """Attributes and records `events` in the caller's transaction (no commit); one Disposition per event.

    Rows are inserted with ON CONFLICT DO NOTHING on the uniqueness key, so a concurrent twin can never make an
    outcome count twice."""
    now = now or utcnow()
    attributor = _Attributor(uow)
    results: list[Disposition] = []
    keys: list[tuple[str, str, str] | None] = []  # the uniqueness key of each event tentatively RECORDED
    pending: dict[tuple[str, str, str], dict[str, Any]] = {}
    for event in events:
        keys.append(None)
        problem = _check(event)
        if problem:
            results.append(Disposition(INVALID, problem))
            continue
        if event.delivery_key:
            found = await attributor.by_delivery(event.delivery_key)
        elif event.decision_id:
            found = await attributor.by_decision(event.decision_id, event.customer_id, event.offer_id)
        else:
            found = await attributor.by_campaign(event.campaign_id, event.customer_id, event.offer_id)
        if isinstance(found, Disposition):
            results.append(found)
            continue
        assert event.response_time is not None
        if event.response_time < found.contact_time:
            results.append(Disposition(BEFORE_CONTACT, "RESPONSE_BEFORE_CONTACT"))
            continue
        if event.response_time > found.contact_time + settings.attribution_window:
            results.append(Disposition(OUTSIDE_WINDOW, "RESPONSE_OUTSIDE_ATTRIBUTION_WINDOW"))
            continue
        if event.revenue and event.currency_code != settings.currency:
            results.append(Disposition(CURRENCY_MISMATCH, "CURRENCY_MISMATCH"))
            continue
        key = (found.campaign_id, found.customer_id, event.outcome)
        if key in pending:
            results.append(Disposition(DUPLICATE, "ALREADY_RECORDED"))
            continue
        pending[key] = {
            "campaign_id": found.campaign_id, "arm_id": found.arm_id, "customer_id": found.customer_id,
            "offer_id": found.offer_id or event.offer_id, "outcome": event.outcome,
            "response_time": event.response_time, "response_day": event.response_time.date().isoformat(),
            "contact_time": found.contact_time, "revenue": float(event.revenue),
            "currency_code": event.currency_code if event.revenue else "", "delivery_key": found.delivery_key,
            "decision_id": found.decision_id, "event_id": event.event_id[:200], "create_time": now,
        }
        keys[-1] = key
        results.append(Disposition(RECORDED))
    if pending:
        existing = await _existing(uow, list(pending))
        fresh = [row for key, row in pending.items() if key not in existing]
        if fresh:
            dialect = uow.session.bind.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await uow.session.execute(insert(ResponseRow).on_conflict_do_nothing(
                index_elements=["campaign_id", "customer_id", "outcome"]), fresh)
        for i, slot in enumerate(keys):
            if slot is not None and slot in existing:
                results[i] = Disposition(DUPLICATE, "ALREADY_RECORDED")
    return results


async def _existing(uow: CampaignUnitOfWork, keys: list[tuple[str, str, str]]) -> set[tuple[str, str, str]]:
    found: set[tuple[str, str, str]] = set()
    by_campaign: dict[str, set[str]] = {}
    for campaign_id, customer_id, _ in keys:
        by_campaign.setdefault(campaign_id, set()).add(customer_id)
    for campaign_id, customers in by_campaign.items():
        ids = sorted(customers)
        for start in range(0, len(ids), 1000):
            rows = await uow.session.execute(select(ResponseRow.campaign_id, ResponseRow.customer_id,
                                                    ResponseRow.outcome).where(
                ResponseRow.campaign_id == campaign_id, ResponseRow.customer_id.in_(ids[start:start + 1000])))
            found.update((a, b, c) for a, b, c in rows.tuples())
    return found & set(keys)


async def record_delivery_event(uow: CampaignUnitOfWork, delivery_key: str, outcome: str, event_time: datetime,
                                settings: ResponseSettings | None = None, *, event_id: str = "") -> Disposition:
    """For the dispatcher's provider callbacks (OPENED, CLICKED): records the outcome of an outbox message in the
    caller's transaction (no commit), through the same attribution and uniqueness as RecordResponses, so an
    outcome is counted in one place, once."""
    (result,) = await record_in(uow, [ResponseInput(outcome=outcome, response_time=event_time,
                                                    delivery_key=delivery_key, event_id=event_id)],
                                settings or ResponseSettings())
    return result


async def outcome_counts(uow: CampaignUnitOfWork, campaign_id: str) -> list[OutcomeCount]:
    """Recorded outcomes of a campaign per arm ("control" for control), outcome and UTC day, sorted by those
    three: the customers (each counts once per outcome) and their revenue (CONVERTED; campaign currency)."""
    rows = await uow.session.execute(
        select(ResponseRow.arm_id, ResponseRow.outcome, ResponseRow.response_day, func.count(),
               func.coalesce(func.sum(ResponseRow.revenue), 0.0))
        .where(ResponseRow.campaign_id == campaign_id)
        .group_by(ResponseRow.arm_id, ResponseRow.outcome, ResponseRow.response_day)
        .order_by(ResponseRow.arm_id, ResponseRow.outcome, ResponseRow.response_day))
    return [OutcomeCount(arm, outcome, day, int(n), float(revenue)) for arm, outcome, day, n, revenue in rows.tuples()]


async def arm_outcomes(uow: CampaignUnitOfWork, campaign_id: str) -> list[ArmOutcomeView]:
    """Per arm (in the campaign's order, then "control"): assigned, contacted, outcomes, revenue, the Beta
    posterior of conversions per contact and the probability of being the best arm."""
    campaign = await uow.session.get(CampaignRow, campaign_id)
    if campaign is None:
        raise NotFound("campaign", f"campaigns/{campaign_id}")
    arm_ids = [a["arm_id"] for a in campaign.arms or []]
    views: dict[str, ArmOutcomeView] = {arm: ArmOutcomeView(arm) for arm in arm_ids}
    control = ArmOutcomeView(CONTROL)
    holdout = ArmOutcomeView(GLOBAL_HOLDOUT)

    def view(arm_id: str) -> ArmOutcomeView:
        if arm_id in (CONTROL, GLOBAL_HOLDOUT):
            return control if arm_id == CONTROL else holdout
        return views.setdefault(arm_id, ArmOutcomeView(arm_id))

    launch = await uow.session.scalar(select(LaunchRow).where(LaunchRow.campaign_id == campaign_id))
    if launch is not None and launch.state == _DONE:
        _, groups, _ = await launch_members(uow, launch.launch_id)
        values, sizes = np.unique(groups, return_counts=True)
        for group, n in zip(values.tolist(), sizes.tolist(), strict=True):
            view(group_name(int(group), arm_ids)).assigned += int(n)
        for arm_id, n in (await uow.session.execute(
                select(OutboxRow.arm_id, func.count()).where(OutboxRow.launch_id == launch.launch_id)
                .group_by(OutboxRow.arm_id))).tuples():
            view(arm_id).contacted += int(n)
    for arm_id, n in (await uow.session.execute(
            select(ArmAssignmentRow.arm_id, func.count()).where(ArmAssignmentRow.campaign_id == campaign_id)
            .group_by(ArmAssignmentRow.arm_id))).tuples():
        view(arm_id).assigned += int(n)
        view(arm_id).contacted += int(n)
    for count in await outcome_counts(uow, campaign_id):
        target = view(count.arm_id)
        target.outcomes[count.outcome] = target.outcomes.get(count.outcome, 0) + count.customers
        target.revenue += count.revenue
    arms = list(views.values())
    for arm in arms:
        arm.posterior_alpha, arm.posterior_beta = bandit.posterior(arm.outcomes[CONVERTED], arm.contacted)
    if arms:
        best = bandit.probability_best([a.posterior_alpha for a in arms], [a.posterior_beta for a in arms])
        for arm, p in zip(arms, best, strict=True):
            arm.probability_best = float(p)
    if control.assigned or any(control.outcomes.values()) or campaign.control_share > 0:
        arms.append(control)
    if holdout.assigned or any(holdout.outcomes.values()):
        arms.append(holdout)
    return arms


# --- the service ------------------------------------------------------------------------------------------------


def _result_to_json(result: IntakeResult) -> bytes:
    import json

    return json.dumps({"received": result.received, "counts": result.counts,
                       "rejections": result.rejections}).encode()


def _result_from_json(raw: bytes) -> IntakeResult:
    import json

    data = json.loads(raw)
    return IntakeResult(data["received"], dict(data["counts"]), [tuple(r) for r in data["rejections"]])  # type: ignore[misc]


INTAKE_CODEC = Codec(encode=_result_to_json, decode=_result_from_json)


class ResponseService:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], settings: ResponseSettings | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.settings = settings or ResponseSettings()
        self.clock = clock

    async def record(self, events: Sequence[ResponseInput], key: IdempotencyKey | None) -> IntakeResult:
        """Every event in one transaction (the request id's stored answer with it)."""

        async def run(uow: CampaignUnitOfWork) -> IntakeResult:
            dispositions = await record_in(uow, events, self.settings, now=self.clock())
            counts = Counter(d.disposition for d in dispositions)
            rejections = [(i, d.disposition, d.reason) for i, d in enumerate(dispositions)
                          if d.disposition != RECORDED][:MAX_REJECTIONS_REPORTED]
            return IntakeResult(len(events), dict(sorted(counts.items())), rejections)

        result = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, INTAKE_CODEC, run)
        log.info("responses recorded", extra={"received": result.received, "counts": result.counts})
        return result

    async def arm_outcomes(self, campaign_id: str) -> list[ArmOutcomeView]:
        async with self.uow_factory() as uow:
            return await arm_outcomes(uow, campaign_id)
