"""Batch campaign launch: audience -> score -> screen -> assign -> allocate -> outbox (docs/campaign.md).

Owns its transactions; imports no grpc. Every replica runs `LaunchService.step()` in a loop; the work is shared
through the database, never a coordinator:

- plan (one claimant, the launch row's lease): stream the segment from profile's ExportAudience in batches of
  `partition_size`; each batch becomes a partition (its first and last id and the resume token *before* it;
  the export's as_of is fixed for the launch). Partitions and the move to SELECTING commit together.
- select (every replica): claim a PENDING partition whose lease is free or expired — on PostgreSQL
  `SELECT ... FOR UPDATE SKIP LOCKED` then a conditional UPDATE, on SQLite the conditional UPDATE alone —
  export its members from its resume token, score every (customer, offer) in one vectorised pass per model,
  screen them with ScreenBatch per channel, assign each customer to control or an arm by
  hash(campaign_id, customer_id), and commit its decision records — which are its results — in the
  transaction that marks the partition DONE, conditional on still holding the claim: a partition is never
  counted twice. Column by column throughout: nothing is built per member. A failure (profile or risk
  unavailable) releases the claim with a back-off and is shown as the launch's status.
- allocate (one claimant): all candidates, read back from the partitions' records -> allocation.allocate()
  under budget, channel capacities and one contact per customer -> outbox rows in chunks, one executemany each
  (ON CONFLICT DO NOTHING on the delivery key, so a crashed allocation resumes without duplicates) -> DONE with
  the allocation report.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import os
import socket
import uuid
from bisect import bisect_right
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from lodestar.common.v1 import common_pb2
from services.campaign import allocation, bandit, batch_decisions
from services.campaign.clients import AudienceBatch, ScreenedBatch, ScreeningSubjects
from services.campaign.db import (
    BatchDecisionRow,
    CampaignRow,
    CampaignUnitOfWork,
    LaunchPartitionRow,
    LaunchRow,
    OutboxRow,
)
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import (
    APPROVED,
    CANCELLED,
    PAUSED,
    RUNNING,
    SCHEDULED,
    TERMINAL_STATES,
    Campaign,
    Offer,
)
from services.campaign.holdout import GlobalHoldout, positions
from services.campaign.learning import FEATURE_FETCH_TIMEOUT_SECONDS, FeatureSource, features_as_of
from services.campaign.modeling import FEATURE_PREFIX, TrainedModel, event_features, frame_from_columns
from services.campaign.scoring import _BASE, _BORROWING, _INVESTMENT, _SAVINGS, HeuristicPropensityModel
from services.campaign.service import HEURISTIC_ATTRIBUTES
from services.platform.db import insert_columns, utcnow
from services.platform.errors import Aborted, DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent

log = logging.getLogger("lodestar.campaign.launch")

PLANNING, SELECTING, ALLOCATING, DONE = "PLANNING", "SELECTING", "ALLOCATING", "DONE"
# The campaign was cancelled before its launch finished: nothing more is claimed or written.
CANCELLED_LAUNCH = "CANCELLED"
FINISHED = (DONE, CANCELLED_LAUNCH)
# A partition member's group: -1 the campaign's control, -2 the global holdout (holdout.py), else the arm index.
CONTROL_GROUP, HOLDOUT_GROUP = -1, -2
PENDING = "PENDING"
LAUNCH_ACTOR_REASON = "batch launch"
# Attributes the heuristic scorer and risk's screening read; champion models add their own.
BASE_ATTRIBUTES = ("income", "risk_tolerance", "in_collections", "vulnerable")
OUTBOX_CHUNK = 20_000
# Partitions at least this large are scored in a worker thread, with the cores shared among the partitions a
# step selects side by side; smaller ones inline (a thread costs more than it saves).
THREADED_SCORING_ROWS = 2000


class AudienceSource(Protocol):
    def export_audience(self, segment: str, fields: Sequence[str], *, batch_size: int = 5000,
                        as_of: datetime | None = None, resume_token: str = "") -> AsyncIterator[AudienceBatch]: ...


class BatchScreener(Protocol):
    async def screen_subjects(self, offers: Sequence[Offer], channel: int, contact_time: datetime,
                              subjects: ScreeningSubjects) -> ScreenedBatch: ...


class ChampionSource(Protocol):
    async def champion(self, offer_id: str, kind: str = "propensity") -> tuple[TrainedModel, str] | None: ...


@dataclass(frozen=True)
class Scorer:
    """What scores an offer in a launch: its champion model (None: the heuristic), the version and basis its
    decision records name, and the attributes and behaviour features it reads."""

    model: TrainedModel | None
    version: str
    basis: str  # "uplift" | "propensity"
    attributes: tuple[str, ...]
    features: tuple[str, ...]


@dataclass
class LaunchView:
    launch_id: str
    campaign_id: str
    state: str
    actor: str
    as_of: datetime
    fields: list[str]
    partitions_total: int
    partitions_done: int
    audience_size: int
    counts: dict[str, int]
    report: dict[str, Any]
    status_message: str
    create_time: datetime
    update_time: datetime
    done_time: datetime | None
    outbox_messages: int = 0


@dataclass(frozen=True)
class OutboxEntry:
    launch_id: str
    customer_id: str
    offer_id: str
    channel: int
    arm_id: str
    delivery_key: str
    state: str
    expected_value: float
    probability: float


@dataclass
class PartitionResult:
    """A partition's selection as the allocation reads it: every member's group (-1 control, else the arm's
    index) and the treated members' value terms per option (offer x channel). Stored as the partition's decision
    records (from_decisions); launches selected before those held everything stored it as a blob (from_blob)."""

    member_ids: np.ndarray
    groups: np.ndarray
    candidate_ids: np.ndarray
    values: np.ndarray  # candidates x options; NaN where risk did not allow it
    probabilities: np.ndarray  # candidates x offers
    counts: dict[str, int] = field(default_factory=dict)
    # Per member: the probability their group was picked with (bandit.py); absent in older blobs.
    arm_probabilities: np.ndarray | None = None
    # The partition's decision records (batch_decisions.py), encoded: what complete_partition stores.
    decisions: bytes | None = None

    def to_blob(self) -> bytes:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = {"member_ids": self.member_ids, "groups": self.groups,
                                  "candidate_ids": self.candidate_ids, "values": self.values,
                                  "probabilities": self.probabilities}
        if self.arm_probabilities is not None:
            arrays["arm_probabilities"] = self.arm_probabilities
        np.savez_compressed(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_decisions(cls, doc: dict[str, Any]) -> PartitionResult:
        """From the partition's decision records (batch_decisions.py), which hold everything the allocation
        needs: the members, their groups and probabilities, risk's verdicts and the offers' terms as they were
        when the partition was selected (so its values are the ones computed then)."""
        ids = np.asarray(doc["ids"], dtype=str) if len(doc["ids"]) else np.zeros(0, dtype="U1")
        n, offers, channels = len(ids), len(doc["offers"]), len(doc["channels"])
        groups = np.asarray(doc["groups"], dtype=np.int16).reshape(n)
        probabilities = np.asarray(doc["probability"], dtype=float).reshape(n, offers)  # v1: None -> NaN
        verdicts = np.asarray(doc["verdicts"], dtype=np.int8).reshape(n, offers * channels)
        reasons = np.asarray(doc["reasons"], dtype=np.int64).reshape(n, offers * channels)
        allowed = batch_decisions.selectable_codes(verdicts, reasons, doc["reason_sets"])
        terms = np.asarray(doc["terms"], dtype=float).reshape(offers, 2)
        per_offer = probabilities * terms[:, 0] - terms[:, 1]
        values = np.where(allowed, np.repeat(per_offer, channels, axis=1), np.nan)  # option = offer x channels + k
        treated = groups >= 0
        arm_probabilities = np.asarray(doc["group_probability"], dtype=float).reshape(n)
        return cls(ids, groups, ids[treated], values[treated], probabilities[treated],
                   arm_probabilities=arm_probabilities)

    @classmethod
    def from_blob(cls, raw: bytes) -> PartitionResult:
        with np.load(io.BytesIO(raw), allow_pickle=False) as data:
            return cls(data["member_ids"], data["groups"], data["candidate_ids"], data["values"],
                       data["probabilities"], arm_probabilities=(
                           data["arm_probabilities"] if "arm_probabilities" in data.files else None))


async def partition_results(session: AsyncSession, launch_id: str) -> list[tuple[int, PartitionResult]]:
    """(number, selection) of every done partition of a launch, in order, from its decision records
    (batch_decisions.py); partitions selected before the records held everything (the results blob of older
    launches) from that blob."""
    rows = (await session.execute(
        select(LaunchPartitionRow.number, LaunchPartitionRow.results, BatchDecisionRow.records)
        .outerjoin(BatchDecisionRow, and_(BatchDecisionRow.launch_id == LaunchPartitionRow.launch_id,
                                          BatchDecisionRow.number == LaunchPartitionRow.number))
        .where(LaunchPartitionRow.launch_id == launch_id, LaunchPartitionRow.state == DONE)
        .order_by(LaunchPartitionRow.number))).all()
    return [(number, PartitionResult.from_decisions(batch_decisions.unpack(records, snapshot=False))
             if records is not None else PartitionResult.from_blob(blob))
            for number, blob, records in rows if records is not None or blob is not None]


def _name(campaign_id: str) -> str:
    return f"campaigns/{campaign_id}"


def channel_name(channel: int) -> str:
    return common_pb2.Channel.Name(channel) if channel in common_pb2.Channel.values() else str(channel)  # type: ignore[arg-type]


# --- pure steps: assignment, scoring, values ----------------------------------------------------------------


def assign(campaign_id: str, customer_ids: Sequence[str], control_share: float, arm_shares: Sequence[float]
           ) -> np.ndarray:
    """-1 for control, else the arm's index: u = sha256("{campaign_id}:{customer_id}")[:8] / 2^64 falls into
    [0, control_share) for control, then consecutive intervals of each arm's share. Deterministic: the same
    customer always lands in the same group of a campaign, on every replica and every retry."""
    if not len(customer_ids):
        return np.zeros(0, dtype=np.int16)
    u = positions(customer_ids, campaign_id)
    bounds = np.cumsum([control_share, *arm_shares])
    index = np.searchsorted(bounds, u, side="right")
    groups = index.astype(np.int16) - 1
    return np.minimum(groups, max(len(arm_shares) - 1, -1)).astype(np.int16)


def _numbers(values: Sequence[Any]) -> np.ndarray:
    return np.asarray(pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce"), dtype=float)


def heuristic_probabilities(offer: Offer, income: np.ndarray, tolerance: np.ndarray,
                            ages: np.ndarray | None = None) -> np.ndarray:
    """HeuristicPropensityModel (scoring.py) vectorised: the same number, customer for customer, as the
    per-customer heuristic. `ages` are profile's exported whole-year ages (NaN where unknown: no age term)."""
    logit = np.full(len(income), _BASE.get(offer.product_type, -3.0))
    if ages is not None:
        logit = logit - np.where(np.isfinite(ages), 0.02 * np.abs(ages - 38), 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.clip(np.log10(income / 1000.0), -1.5, 2.0)
    has_income = np.isfinite(income) & (income > 0)
    if offer.product_type in _SAVINGS:
        logit = logit + np.where(has_income, 0.35 * t, 0.0)
    elif offer.product_type in _BORROWING:
        logit = logit - np.where(has_income, 0.2 * t, 0.0)
    if offer.product_type in _INVESTMENT:
        logit = logit + np.where(np.isfinite(tolerance), 0.25 * (tolerance - 3), 0.0)
    return np.asarray(1.0 / (1.0 + np.exp(-logit)))


def _tolerance_levels(values: Sequence[Any]) -> np.ndarray:
    """The level 1-5 of risk tolerances "C1".."C5" (NaN for anything else), once per distinct value."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object), use_na_sentinel=True)
    levels = [int(v[1]) if isinstance(v, str) and len(v) == 2 and v[0] == "C" and v[1] in "12345" else np.nan
              for v in uniques.tolist()]
    return np.asarray([*levels, np.nan], dtype=float)[codes]


def option_values(probabilities: np.ndarray, offers: Sequence[Offer], channels: Sequence[int],
                  allowed: dict[int, np.ndarray]) -> np.ndarray:
    """customers x (offers x channels): p x conversion_value - contact_cost where risk allowed it, else NaN."""
    n = probabilities.shape[0]
    out = np.full((n, len(offers) * len(channels)), np.nan)
    for j, offer in enumerate(offers):
        value = probabilities[:, j] * offer.conversion_value - offer.contact_cost
        for k, channel in enumerate(channels):
            out[:, j * len(channels) + k] = np.where(allowed[channel][:, j], value, np.nan)
    return out


# --- the service --------------------------------------------------------------------------------------------


class LaunchService:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], audience: AudienceSource,
                 risk: BatchScreener, champions: ChampionSource | None = None, *, worker_id: str | None = None,
                 partition_size: int = 5000, lease_seconds: float = 120.0, retry_seconds: float = 5.0,
                 clock: Callable[[], datetime] = utcnow, allocation_method: str = "auto",
                 features: FeatureSource | None = None, concurrency: int = 1) -> None:
        self.uow_factory = uow_factory
        self.audience = audience
        self.risk = risk
        self.champions = champions
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.partition_size = partition_size
        self.lease = timedelta(seconds=lease_seconds)
        self.retry = timedelta(seconds=retry_seconds)
        self.clock = clock
        self.allocation_method = allocation_method
        # Profile's behaviour features, asked per partition as of the launch's as_of when a champion reads some.
        self.features = features
        # Partitions a step selects side by side (CAMPAIGN_LAUNCH_CONCURRENCY); LightGBM gets the cores shared.
        self.concurrency = max(1, concurrency)
        self.scoring_threads = max(1, (os.cpu_count() or 1) // self.concurrency)
        # The persistent global holdout (holdout.py); app.py sets the configured share.
        self.holdout = GlobalHoldout(0.0)
        # Thompson sampling of arms for campaigns that opted in (bandit.py); app.py sets it.
        self.arms: bandit.ThompsonArms | None = None
        # Per launch being selected: its row, campaign and offers (see _context).
        self._contexts: dict[str, tuple[LaunchRow, Campaign, list[Offer]]] = {}
        # Per launch: the partitions this worker is selecting (see _select).
        self._inflight: dict[str, set[asyncio.Task[None]]] = {}

    # --- use cases ------------------------------------------------------------------------------------------

    async def launch(self, campaign_id: str, actor: str, key: IdempotencyKey | None) -> LaunchView:
        async def start(uow: CampaignUnitOfWork) -> str:
            campaign = await uow.campaigns.get(campaign_id, for_update=True)
            if campaign is None:
                raise NotFound("campaign", _name(campaign_id))
            existing = await uow.session.scalar(select(LaunchRow.launch_id).where(
                LaunchRow.campaign_id == campaign_id))
            if existing is not None:
                return existing
            if campaign.state not in (APPROVED, SCHEDULED):
                raise FailedPrecondition("CAMPAIGN_NOT_APPROVED",
                                         f"only an APPROVED or SCHEDULED campaign can be launched; this one is "
                                         f"{campaign.state}", metadata={"state": campaign.state})
            if not await uow.campaigns.transition(campaign_id, campaign.state, RUNNING, actor, LAUNCH_ACTOR_REASON):
                raise Aborted("CONCURRENT_CHANGE", "the campaign changed state meanwhile; read it again and retry")
            now = self.clock()
            contact = campaign.start_time if campaign.start_time and campaign.start_time > now else now
            launch_id = uuid.uuid4().hex
            uow.session.add(LaunchRow(launch_id=launch_id, campaign_id=campaign_id, state=PLANNING, actor=actor,
                                      as_of=now, contact_time=contact, fields=[], partitions_total=0,
                                      partitions_done=0, audience_size=0, counts={}, report={}, status_message="",
                                      create_time=now, update_time=now))
            await uow.session.flush()
            return launch_id

        launch_id = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key,
                                         Codec(encode=str.encode, decode=bytes.decode), start)
        log.info("campaign %s launched as launches/%s", _name(campaign_id), launch_id)
        return await self.get(launch_id)

    async def get(self, launch_id: str | None = None, *, campaign_id: str | None = None) -> LaunchView:
        async with self.uow_factory() as uow:
            query = select(LaunchRow)
            query = (query.where(LaunchRow.launch_id == launch_id) if launch_id is not None
                     else query.where(LaunchRow.campaign_id == campaign_id))
            row = await uow.session.scalar(query)
            if row is None:
                raise NotFound("launch", f"launches/{launch_id}" if launch_id else _name(campaign_id or ""),
                               reason="LAUNCH_NOT_FOUND")
            counts: Counter[str] = Counter()
            for part in await uow.session.scalars(select(LaunchPartitionRow.counts).where(
                    LaunchPartitionRow.launch_id == row.launch_id, LaunchPartitionRow.state == DONE)):
                counts.update(part or {})
            outbox = await uow.session.scalar(select(func.count()).select_from(OutboxRow).where(
                OutboxRow.launch_id == row.launch_id))
            return LaunchView(row.launch_id, row.campaign_id, row.state, row.actor, row.as_of, list(row.fields or []),
                              row.partitions_total, row.partitions_done, row.audience_size, dict(counts),
                              dict(row.report or {}), row.status_message, row.create_time, row.update_time,
                              row.done_time, int(outbox or 0))

    async def list_outbox(self, launch_id: str, *, after_customer: str | None, page_size: int
                          ) -> tuple[list[OutboxEntry], str | None]:
        async with self.uow_factory() as uow:
            if await uow.session.get(LaunchRow, launch_id) is None:
                raise NotFound("launch", f"launches/{launch_id}", reason="LAUNCH_NOT_FOUND")
            query = select(OutboxRow).where(OutboxRow.launch_id == launch_id).order_by(OutboxRow.customer_id)
            if after_customer is not None:
                query = query.where(OutboxRow.customer_id > after_customer)
            rows = list(await uow.session.scalars(query.limit(page_size + 1)))
            entries = [OutboxEntry(r.launch_id, r.customer_id, r.offer_id, r.channel, r.arm_id, r.delivery_key,
                                   r.state, r.expected_value, r.probability) for r in rows]
        more = len(entries) > page_size
        entries = entries[:page_size]
        return entries, (entries[-1].customer_id if more and entries else None)

    # --- the worker -----------------------------------------------------------------------------------------

    async def step(self) -> bool:
        """One unit of work on any unfinished launch (a plan, a partition or an allocation); False when there
        was nothing this worker could take."""
        async with self.uow_factory() as uow:
            launches = list((await uow.session.execute(
                select(LaunchRow.launch_id, LaunchRow.state, CampaignRow.state)
                .join(CampaignRow, CampaignRow.campaign_id == LaunchRow.campaign_id)
                .where(LaunchRow.state.not_in(FINISHED))
                .order_by(LaunchRow.create_time))).all())
        for launch_id, state, campaign_state in launches:
            # A cancelled campaign's launch stops for good; a paused one's waits (nothing is claimed meanwhile).
            if campaign_state in TERMINAL_STATES:
                await self._cancel(launch_id, campaign_state)
                continue
            if campaign_state == PAUSED:
                continue
            if state == PLANNING and await self._plan(launch_id):
                return True
            if state == SELECTING and await self._select(launch_id):
                return True
            if state == ALLOCATING and await self._allocate(launch_id):
                return True
        return False

    async def stop(self) -> None:
        """Cancels the partitions in selection (at shutdown, before the clients they use close): their claims
        lapse with their leases and another replica, or this one after a restart, selects them again."""
        tasks = [task for inflight in self._inflight.values() for task in inflight]
        self._inflight.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_until_idle(self, max_steps: int = 100_000) -> int:
        steps = 0
        while steps < max_steps and await self.step():
            steps += 1
        return steps

    async def _cancel(self, launch_id: str, campaign_state: str = CANCELLED) -> None:
        now = self.clock()
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == launch_id, LaunchRow.state.not_in(FINISHED))
                .values(state=CANCELLED_LAUNCH, claimed_by=None, lease_until=None, update_time=now, done_time=now,
                        status_message=f"the campaign is {campaign_state}; the launch stopped")
                .execution_options(synchronize_session=False))
            await uow.commit()
        log.info("launches/%s stopped: its campaign is %s", launch_id, campaign_state)

    async def _campaign_state(self, uow: CampaignUnitOfWork, campaign_id: str) -> str | None:
        """The campaign's state, read in `uow`'s transaction; on PostgreSQL with a share lock, so a concurrent
        pause or cancel (a conditional UPDATE of the row) waits for this transaction's writes or comes first."""
        query = select(CampaignRow.state).where(CampaignRow.campaign_id == campaign_id)
        if uow.session.bind.dialect.name == "postgresql":
            query = query.with_for_update(read=True)
        state: str | None = await uow.session.scalar(query)
        return state

    # --- claims ---------------------------------------------------------------------------------------------

    def _free(self, column_lease: Any, column_owner: Any, now: datetime) -> Any:
        return or_(column_lease.is_(None), column_lease < now, column_owner == self.worker_id)

    async def _claim_launch(self, launch_id: str, state: str) -> bool:
        now = self.clock()
        async with self.uow_factory() as uow:
            result = await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == launch_id, LaunchRow.state == state,
                                        self._free(LaunchRow.lease_until, LaunchRow.claimed_by, now))
                .values(claimed_by=self.worker_id, lease_until=now + self.lease)
                .execution_options(synchronize_session=False))
            await uow.commit()
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    async def _renew_launch(self, launch_id: str) -> bool:
        async with self.uow_factory() as uow:
            result = await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == launch_id, LaunchRow.claimed_by == self.worker_id)
                .values(lease_until=self.clock() + self.lease).execution_options(synchronize_session=False))
            await uow.commit()
        return result.rowcount == 1  # type: ignore[attr-defined,no-any-return]

    async def _release_launch(self, launch_id: str, message: str) -> None:
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == launch_id, LaunchRow.claimed_by == self.worker_id)
                .values(claimed_by=None, lease_until=self.clock() + self.retry, status_message=message,
                        update_time=self.clock()).execution_options(synchronize_session=False))
            await uow.commit()

    async def _claim_partition(self, launch_id: str) -> LaunchPartitionRow | None:
        """The next free partition: SKIP LOCKED on PostgreSQL (claimants never wait on each other), then a
        conditional UPDATE (the only guard on SQLite, where writers are serialised anyway)."""
        now = self.clock()
        free = and_(LaunchPartitionRow.launch_id == launch_id, LaunchPartitionRow.state == PENDING,
                    or_(LaunchPartitionRow.lease_until.is_(None), LaunchPartitionRow.lease_until < now))
        async with self.uow_factory() as uow:
            query = select(LaunchPartitionRow.id).where(free).order_by(LaunchPartitionRow.number).limit(8)
            if uow.session.bind.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            for partition_id in list(await uow.session.scalars(query)):
                result = await uow.session.execute(
                    update(LaunchPartitionRow).where(LaunchPartitionRow.id == partition_id, free)
                    .values(claimed_by=self.worker_id, lease_until=now + self.lease,
                            attempts=LaunchPartitionRow.attempts + 1)
                    .execution_options(synchronize_session=False))
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    await uow.commit()
                    row = await uow.session.get(LaunchPartitionRow, partition_id)
                    assert row is not None
                    uow.session.expunge(row)
                    return row
        return None

    # --- phases ---------------------------------------------------------------------------------------------

    async def _context(self, launch_id: str) -> tuple[LaunchRow, Campaign, list[Offer]]:
        """The launch, its campaign and offers. Once planned, what a partition reads of them no longer changes
        (a campaign is edited only as a DRAFT; the launch's fields, as_of and contact time are set by the plan),
        so they are kept per launch for the next partitions; the states that do change are read where they
        matter (claims, the campaign state between outbox chunks)."""
        cached = self._contexts.get(launch_id)
        if cached is not None:
            return cached
        async with self.uow_factory() as uow:
            launch = await uow.session.get(LaunchRow, launch_id)
            assert launch is not None
            uow.session.expunge(launch)  # a detached snapshot: leaving the unit of work must not expire it
            campaign = await uow.campaigns.get(launch.campaign_id)
            assert campaign is not None
            offers = [o for o in [await uow.offers.get(i) for i in campaign.offer_ids] if o is not None]
        if launch.state == SELECTING:
            self._contexts[launch_id] = (launch, campaign, offers)
            while len(self._contexts) > 16:
                self._contexts.pop(next(iter(self._contexts)))
        return launch, campaign, offers

    async def _wanted_fields(self, offers: Sequence[Offer]) -> list[str]:
        attributes = set(BASE_ATTRIBUTES)
        for offer in offers:
            attributes |= set((await self._scorer(offer)).attributes)
        # "age": whole years at as_of, computed by profile (the birth date itself is never exported).
        return ["region", "time_zone", "age", *(f"attr.{a}" for a in sorted(attributes))]

    async def _scorer(self, offer: Offer) -> Scorer:
        """The offer's champion (uplift, else propensity), else the heuristic: looked up once per partition, so
        its scores and its decision records name the same model even if a champion changes meanwhile."""
        if self.champions is not None:
            uplift = await self.champions.champion(offer.offer_id, "uplift")
            found = uplift or await self.champions.champion(offer.offer_id, "propensity")
            if found is not None:
                model, version = found
                return Scorer(model, version, "uplift" if uplift else "propensity", tuple(
                    c.removeprefix("attr.") for c in model.spec.columns if c.startswith("attr.")),
                    tuple(event_features(model.spec)))
        return Scorer(None, HeuristicPropensityModel.version, "propensity", HEURISTIC_ATTRIBUTES, ())

    async def _behaviour(self, launch: LaunchRow, ids: Sequence[str], names: Sequence[str]
                         ) -> dict[str, list[float | None]]:
        """name -> one value per member (None where absent) of the behaviour features the champions read, as of
        the launch's as_of (profile's BatchGetFeatures: the definitions training and Decide use). Asked per
        partition rather than exported, because the plan's export would compute them a second time."""
        if not names or not ids:
            return {}
        got = await features_as_of(self.features, [(c, launch.as_of) for c in ids],
                                   timeout=FEATURE_FETCH_TIMEOUT_SECONDS)
        return {name: [row.get(name) for row in got] for name in names}

    async def _plan(self, launch_id: str) -> bool:
        if not await self._claim_launch(launch_id, PLANNING):
            return False
        try:
            launch, campaign, offers = await self._context(launch_id)
            fields = await self._wanted_fields(offers)
            partitions: list[tuple[str, str, int, str]] = []
            for _attempt in range(len(fields) + 1):
                try:
                    partitions = []
                    token = ""  # nosec B105 - an empty resume token (the start), not a password
                    async for batch in self.audience.export_audience(campaign.segment, fields,
                                                                     batch_size=self.partition_size,
                                                                     as_of=launch.as_of):
                        if batch.customer_ids:
                            partitions.append((batch.customer_ids[0], batch.customer_ids[-1],
                                               len(batch.customer_ids), token))
                        token = batch.resume_token
                    break
                except InvalidArgument as error:
                    # Fields profile cannot export (not registered, personal data) are left out, the rest kept.
                    bad = {v.field for v in error.violations if v.field.startswith("fields[")}
                    kept = [f for i, f in enumerate(fields) if f"fields[{i}]" not in bad]
                    if not bad or kept == fields:
                        raise
                    fields = kept
            async with self.uow_factory() as uow:
                result = await uow.session.execute(
                    update(LaunchRow).where(LaunchRow.launch_id == launch_id, LaunchRow.state == PLANNING,
                                            LaunchRow.claimed_by == self.worker_id)
                    .values(state=SELECTING if partitions else ALLOCATING, fields=fields,
                            partitions_total=len(partitions), audience_size=sum(p[2] for p in partitions),
                            claimed_by=None, lease_until=None, status_message="", update_time=self.clock())
                    .execution_options(synchronize_session=False))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    return True  # the lease was lost; whoever holds it now plans
                for number, (first, last, size, token) in enumerate(partitions, start=1):
                    uow.session.add(LaunchPartitionRow(
                        launch_id=launch_id, number=number, first_id=first, last_id=last, size=size,
                        resume_token=token, state=PENDING, attempts=0, last_error="", counts={}))
                await uow.commit()
            log.info("launches/%s planned: %d partitions", launch_id, len(partitions))
        except DomainError as error:
            await self._release_launch(launch_id, f"planning waits: {error.reason}: {error.message}")
        except Exception:
            log.exception("launches/%s planning failed", launch_id)
            await self._release_launch(launch_id, "planning failed unexpectedly; retrying")
        return True

    async def _select(self, launch_id: str) -> bool:
        """Keeps up to `concurrency` of the launch's partitions in selection side by side — while one waits on
        profile, risk or its scoring (LightGBM runs in a thread, without the GIL), another runs its Python — and
        returns once one of them is done, so the next step claims its successor at once (no step waits for the
        slowest of a batch). False when there is nothing to claim and nothing in flight."""
        inflight = self._inflight.setdefault(launch_id, set())
        while len(inflight) < self.concurrency:
            partition = await self._claim_partition(launch_id)
            if partition is None:
                break
            inflight.add(asyncio.create_task(self._select_claimed(launch_id, partition),
                                             name=f"launches/{launch_id} partition {partition.number}"))
        if not inflight:
            self._inflight.pop(launch_id, None)
            return False
        done, pending = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
        self._inflight[launch_id] = set(pending)
        for task in done:
            task.result()  # failures are released inside; anything else is the loop's to log
        return True

    async def _select_claimed(self, launch_id: str, partition: LaunchPartitionRow) -> None:
        try:
            launch, campaign, offers = await self._context(launch_id)
            result = await self.process_partition(launch, campaign, offers, partition)
        except Exception as error:
            if isinstance(error, DomainError):
                message = f"partition {partition.number} waits: {error.reason}: {error.message}"
            else:
                log.exception("launches/%s partition %d failed", launch_id, partition.number)
                message = f"partition {partition.number} failed unexpectedly; retrying"
            await self._release_partition(partition, message)
            return
        await self.complete_partition(partition, result)

    async def _release_partition(self, partition: LaunchPartitionRow, message: str) -> None:
        now = self.clock()
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(LaunchPartitionRow).where(LaunchPartitionRow.id == partition.id,
                                                 LaunchPartitionRow.claimed_by == self.worker_id,
                                                 LaunchPartitionRow.state == PENDING)
                .values(claimed_by=None, lease_until=now + self.retry, last_error=message)
                .execution_options(synchronize_session=False))
            await uow.session.execute(update(LaunchRow).where(LaunchRow.launch_id == partition.launch_id)
                                      .values(status_message=message, update_time=now)
                                      .execution_options(synchronize_session=False))
            await uow.commit()
        log.warning("launches/%s: %s", partition.launch_id, message)

    async def complete_partition(self, partition: LaunchPartitionRow, result: PartitionResult) -> bool:
        """Stores the results and marks the partition DONE in one transaction, only if this worker still holds
        its claim (else another replica took it over after the lease expired, and its results count)."""
        now = self.clock()
        async with self.uow_factory() as uow:
            marked = await uow.session.execute(
                update(LaunchPartitionRow).where(LaunchPartitionRow.id == partition.id,
                                                 LaunchPartitionRow.claimed_by == self.worker_id,
                                                 LaunchPartitionRow.state == PENDING)
                .values(state=DONE, results=None if result.decisions is not None else result.to_blob(),
                        counts=result.counts, done_time=now,
                        claimed_by=None, lease_until=None, last_error="")
                .execution_options(synchronize_session=False))
            if marked.rowcount != 1:  # type: ignore[attr-defined]
                log.warning("launches/%s partition %d: claim lost, results discarded", partition.launch_id,
                            partition.number)
                return False
            if result.decisions is not None:
                uow.session.add(BatchDecisionRow(launch_id=partition.launch_id, number=partition.number,
                                                 first_id=partition.first_id, last_id=partition.last_id,
                                                 records=result.decisions))
            await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == partition.launch_id)
                .values(partitions_done=LaunchRow.partitions_done + 1, status_message="", update_time=now)
                .execution_options(synchronize_session=False))
            await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == partition.launch_id, LaunchRow.state == SELECTING,
                                        LaunchRow.partitions_done >= LaunchRow.partitions_total)
                .values(state=ALLOCATING, claimed_by=None, lease_until=None)
                .execution_options(synchronize_session=False))
            await uow.commit()
        return True

    async def _export_partition(self, launch: LaunchRow, campaign: Campaign, partition: LaunchPartitionRow
                                ) -> tuple[list[str], dict[str, list[Any]]]:
        """The partition's members (ids ascending, up to its last id) and their exported columns."""
        ids: list[str] = []
        columns: dict[str, list[Any]] = {f: [] for f in launch.fields}
        async for batch in self.audience.export_audience(campaign.segment, launch.fields,
                                                         batch_size=min(max(partition.size, 1), 10_000),
                                                         as_of=launch.as_of, resume_token=partition.resume_token):
            keep = bisect_right(batch.customer_ids, partition.last_id)  # ascending ids: a prefix is ours
            ids.extend(batch.customer_ids[:keep])
            for name in launch.fields:
                column = batch.columns.get(name)
                columns[name].extend(column[:keep] if column is not None else [None] * keep)
            if keep < len(batch.customer_ids) or (ids and ids[-1] >= partition.last_id):
                break
        return ids, columns

    async def process_partition(self, launch: LaunchRow, campaign: Campaign, offers: Sequence[Offer],
                                partition: LaunchPartitionRow) -> PartitionResult:
        """Export, score, screen and assign one partition (no database writes), column by column: no object is
        built per member, so the cost per member is a few array operations and its decision record's hash."""
        ids, columns = await self._export_partition(launch, campaign, partition)
        n = len(ids)
        groups = assign(campaign.campaign_id, ids, campaign.control_share, [a.share for a in campaign.arms])
        groups, arm_probabilities = await self._arm_groups(campaign, ids, groups)  # bandit.py
        groups = np.where(self.holdout.mask(ids), np.int16(HOLDOUT_GROUP), groups).astype(np.int16)
        attrs = {f.removeprefix("attr."): columns[f] for f in launch.fields if f.startswith("attr.")}
        regions = columns.get("region") or [None] * n
        zones = columns.get("time_zone") or [None] * n
        ages = _numbers(columns.get("age") or [None] * n)
        scorers = [await self._scorer(offer) for offer in offers]
        behaviour = await self._behaviour(launch, ids, sorted({f for s in scorers for f in s.features}))
        columns = {**columns, **{FEATURE_PREFIX + name: values for name, values in behaviour.items()}}
        probabilities = await self._score(launch, offers, scorers, n, columns, attrs, regions, ages)
        subjects = ScreeningSubjects(ids, regions, zones, attrs, ages, launch.contact_time.date())
        screened = await self._screen(launch, offers, campaign.channels, subjects)
        allowed = {channel: batch_decisions.selectable_mask(answer) for channel, answer in screened.items()}
        values = option_values(probabilities, offers, campaign.channels, allowed)
        treated = groups >= 0
        candidate = treated & np.any(np.nan_to_num(values, nan=0.0) > 0, axis=1)
        id_array = np.asarray(ids, dtype=str) if n else np.zeros(0, dtype="U1")
        decisions = batch_decisions.encode_partition(
            launch_id=launch.launch_id, campaign_id=campaign.campaign_id, contact_time=launch.contact_time,
            offers=offers, channels=campaign.channels, ids=ids, groups=groups, group_probabilities=arm_probabilities,
            probabilities=probabilities, versions=[(s.version, s.basis) for s in scorers],
            features=sorted({f for s in scorers for f in s.attributes}), attrs=attrs, behaviour=behaviour,
            regions=regions, zones=zones, ages=ages, screened=screened,
            policy_version=next((a.policy_version for a in screened.values() if a.policy_version), ""))
        return PartitionResult(
            member_ids=id_array, groups=groups, candidate_ids=id_array[treated], values=values[treated],
            probabilities=probabilities[treated], arm_probabilities=arm_probabilities, decisions=decisions,
            counts={"customers": n, "control": int((groups == CONTROL_GROUP).sum()), "treated": int(treated.sum()),
                    "candidates": int(candidate.sum()), "global_holdout": int((groups == HOLDOUT_GROUP).sum())})

    async def _arm_groups(self, campaign: Campaign, ids: Sequence[str], groups: np.ndarray
                          ) -> tuple[np.ndarray, np.ndarray]:
        """Arms by Thompson sampling for a campaign that opted in (control keeps its hash), else the fixed shares;
        with the probability each member's group was picked with (bandit.py)."""
        if campaign.arm_selection == bandit.THOMPSON and self.arms is not None and len(ids) and campaign.arms:
            return await self.arms.launch_groups(campaign, ids, groups)
        return groups, bandit.fixed_probabilities(campaign, groups)

    async def _score(self, launch: LaunchRow, offers: Sequence[Offer], scorers: Sequence[Scorer], n: int,
                     columns: dict[str, list[Any]], attrs: dict[str, list[Any]], regions: Sequence[Any],
                     ages: np.ndarray) -> np.ndarray:
        """customers x offers: each offer's champion (uplift, else propensity) over the partition's columns in
        one pass (modeling.frame_from_columns), else the heuristic, vectorised."""
        out = np.zeros((n, len(offers)))
        if n == 0:
            return out
        income = _numbers(attrs.get("income", [None] * n))
        tolerance = _tolerance_levels(attrs.get("risk_tolerance", [None] * n))
        for j, (offer, scorer) in enumerate(zip(offers, scorers, strict=True)):
            model = scorer.model
            if model is not None:
                frame = frame_from_columns(model.spec, columns, n, ages=ages, regions=regions,
                                           contact_time=launch.as_of)
                if n >= THREADED_SCORING_ROWS:  # off the event loop: the other partitions go on meanwhile
                    scores = await asyncio.to_thread(model.score, frame, threads=self.scoring_threads)
                else:
                    scores = model.score(frame)
                out[:, j] = np.clip(scores, 0.0, 1.0)
            else:
                out[:, j] = heuristic_probabilities(offer, income, tolerance, ages)
        return out

    async def _screen(self, launch: LaunchRow, offers: Sequence[Offer], channels: Sequence[int],
                      subjects: ScreeningSubjects) -> dict[int, ScreenedBatch]:
        """Risk's verdicts and reason codes per channel (ScreenBatch), as arrays. Which of them a selection may
        use is batch_decisions.selectable_mask: ALLOW, or HOLD for quiet hours only (the dispatcher defers those
        to the customer's morning); no verdict is no."""
        out: dict[int, ScreenedBatch] = {}
        for channel in channels:
            if len(subjects):
                out[channel] = await self.risk.screen_subjects(offers, channel, launch.contact_time, subjects)
            else:
                out[channel] = ScreenedBatch(np.zeros((0, len(offers)), dtype=np.int8),
                                             np.zeros((0, len(offers)), dtype=np.int32), [""])
        return out

    async def _allocate(self, launch_id: str) -> bool:
        if not await self._claim_launch(launch_id, ALLOCATING):
            return False
        try:
            await self._allocate_claimed(launch_id)
        except Exception as error:
            if isinstance(error, DomainError):
                message = f"allocation waits: {error.reason}: {error.message}"
            else:
                log.exception("launches/%s allocation failed", launch_id)
                message = "allocation failed unexpectedly; retrying"
            await self._release_launch(launch_id, message)
        return True

    async def _allocate_claimed(self, launch_id: str) -> None:
        _launch, campaign, offers = await self._context(launch_id)
        async with self.uow_factory() as uow:
            numbered = await partition_results(uow.session, launch_id)
        parts = [part for _, part in numbered]
        numbers = [(number, len(part.candidate_ids)) for number, part in numbered]
        channels = list(campaign.channels)
        width = len(offers) * len(channels)
        ids = np.concatenate([p.candidate_ids for p in parts]) if parts else np.zeros(0, dtype=str)
        values = np.vstack([p.values for p in parts]) if parts else np.zeros((0, width))
        probabilities = np.vstack([p.probabilities for p in parts]) if parts else np.zeros((0, len(offers)))
        # A partition's candidates are its treated members (group >= 0), in member order.
        groups = (np.concatenate([p.groups[p.groups >= 0] for p in parts]) if parts
                  else np.zeros(0, dtype=np.int16))
        option_offer = np.array([j for j in range(len(offers)) for _ in channels], dtype=np.int64)
        option_channel = np.array([c for _ in offers for c in channels], dtype=np.int64)
        costs = np.broadcast_to(np.array([offers[j].contact_cost for j in option_offer], dtype=float),
                                (len(ids), width))
        conversions = probabilities[:, option_offer] if len(ids) else np.zeros((0, width))
        capacity = {channel_name(c): n for c, n in campaign.capacities.items() if c in channels}
        budget = campaign.budget if campaign.budget > 0 else None
        result = allocation.allocate(values, costs, [channel_name(int(c)) for c in option_channel], budget=budget,
                                     capacity=capacity, per_customer_cap=1, conversions=conversions,
                                     method=self.allocation_method)
        chosen = np.flatnonzero(result.assignment >= 0)
        option = result.assignment[chosen]
        offer_index = option_offer[option]
        chosen_ids = ids[chosen].tolist()
        outbox: dict[str, list[Any]] = {
            "delivery_key": [f"{launch_id}:{c}" for c in chosen_ids], "customer_id": chosen_ids,
            "offer_id": np.array([o.offer_id for o in offers], dtype=object)[offer_index].tolist(),
            "channel": option_channel[option].tolist(),
            "arm_id": np.array([a.arm_id for a in campaign.arms], dtype=object)[groups[chosen]].tolist(),
            "expected_value": values[chosen, option].tolist(),
            "probability": probabilities[chosen, offer_index].tolist(),
        }
        now = self.clock()
        stopped: str | None = None
        for start in range(0, len(chosen), OUTBOX_CHUNK):
            if not await self._renew_launch(launch_id):
                return  # the lease was lost: the new holder writes (duplicates are impossible by the key)
            async with self.uow_factory() as uow:
                # Only for a RUNNING campaign: a pause or cancel stops the writing between chunks.
                campaign_state = await self._campaign_state(uow, campaign.campaign_id)
                if campaign_state != RUNNING:
                    stopped = campaign_state
                    break
                await insert_columns(uow.session, OutboxRow.__table__,  # type: ignore[arg-type]
                                     {k: v[start:start + OUTBOX_CHUNK] for k, v in outbox.items()},
                                     constants={"launch_id": launch_id, "state": PENDING, "create_time": now},
                                     ignore_conflicts_on=("delivery_key",))
                await uow.commit()
        if stopped is not None:
            if stopped in TERMINAL_STATES:
                await self._cancel(launch_id, stopped)
            else:
                await self._release_launch(launch_id, f"the campaign is {stopped}: the outbox waits")
            return
        cut = Counter(r for r in result.cut_by if r)
        report = {
            "objective": result.objective, "method": result.method, "spend": result.spend,
            "contacts_by_channel": result.contacts_by_channel, "binding": result.binding,
            "constraint_costs": [{"constraint": c.constraint, "step": c.step, "value_gain": c.value_gain,
                                  "conversions_gain": c.conversions_gain} for c in result.constraint_costs],
            "cut_by": dict(cut), "expected_conversions": float(sum(outbox["probability"])),
            "outbox_messages": len(chosen),
        }
        now = self.clock()
        async with self.uow_factory() as uow:
            finished = await uow.session.execute(
                update(LaunchRow).where(LaunchRow.launch_id == launch_id, LaunchRow.state == ALLOCATING,
                                        LaunchRow.claimed_by == self.worker_id)
                .values(state=DONE, report=_finite(report), claimed_by=None, lease_until=None, status_message="",
                        update_time=now, done_time=now).execution_options(synchronize_session=False))
            if finished.rowcount == 1:  # type: ignore[attr-defined]
                # Each candidate's allocated option or the constraint that cut it (batch_decisions.py).
                await uow.session.merge(BatchDecisionRow(
                    launch_id=launch_id, number=batch_decisions.ALLOCATION_NUMBER, first_id="", last_id="",
                    records=batch_decisions.encode_allocation(numbers, result.assignment, result.cut_by)))
            await uow.commit()
        log.info("launches/%s done: %d outbox messages, objective %.2f (%s)", launch_id, len(chosen),
                 result.objective, result.method)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value

