"""The learning loop, closed by itself: finished campaigns become history, and history a challenger uplift model.

Every replica runs `LearningLoop.step()` periodically (app wiring: response_handlers.wire_responses). A campaign
is due when it is COMPLETED, or when its launch is DONE and the attribution window after its contact time has
passed. One replica claims it (a row in campaign_learning_runs, inserted or taken over after its lease, never a
coordinator) and:

1. turns its randomised assignments into campaign history (`campaign_ref` = the campaign id): every control (and
   global-holdout) member of the launch as an untreated row for each of the campaign's offers, every contacted
   arm member (outbox message) as a treated row for the offer and channel it was sent, every real-time Thompson
   assignment as a treated row; outcomes from the responses table (responded: any outcome; converted and
   revenue: CONVERTED); the probability each group was picked with in the row's context (`arm_probability`).
   Arm members who were assigned but not contacted (cut by the allocation) are left out. Rows are keyed like
   imported history, so a re-run adds nothing;
2. trains an uplift model version per offer that has both treated and control rows, as a CHALLENGER (idempotent
   per campaign and offer); it is promoted only when CAMPAIGN_LEARNING_AUTO_PROMOTE is true and its Qini beats
   the champion's (or there is none);
3. marks the run DONE with the number of history rows, the versions trained and why an offer was not trained.

Responses that arrive after the run still count in reports, not in that campaign's history.
"""

from __future__ import annotations

import hashlib
import logging
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.campaign import modeling
from services.campaign.db import (
    ArmAssignmentRow,
    CampaignRow,
    CampaignUnitOfWork,
    LaunchRow,
    LearningRunRow,
    ModelVersionRow,
    OutboxRow,
    ResponseRow,
)
from services.campaign.domain import COMPLETED
from services.campaign.learning import HistoryEntry, ImportOutcome, ModelVersionInfo, model_id_for
from services.campaign.responses import CONVERTED, GLOBAL_HOLDOUT, ResponseSettings, group_name, launch_members
from services.platform.config import ConfigError, ServiceSettings
from services.platform.db import utcnow
from services.platform.errors import DomainError, FailedPrecondition
from services.platform.idempotency import IdempotencyKey

log = logging.getLogger("lodestar.campaign.learning_loop")

RUNNING_RUN, DONE_RUN = "RUNNING", "DONE"
HISTORY_CHUNK = 2000
SOURCE = "learning-loop"

INTERVAL_SETTING = "CAMPAIGN_LEARNING_INTERVAL_SECONDS"
AUTO_PROMOTE_SETTING = "CAMPAIGN_LEARNING_AUTO_PROMOTE"
DEFAULT_INTERVAL_SECONDS = 60.0
FOLDS = 3


def check_settings(settings: ServiceSettings) -> None:
    raw = settings.extra.get(INTERVAL_SETTING)
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.05 <= value <= 86400:
            raise ConfigError(f"{INTERVAL_SETTING} must be a number of seconds between 0.05 and 86400, got {raw!r}")
    flag = settings.extra.get(AUTO_PROMOTE_SETTING)
    if flag is not None and flag.lower() not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(f"{AUTO_PROMOTE_SETTING} must be true or false, got {flag!r}")


def auto_promote(settings: ServiceSettings) -> bool:
    return (settings.extra.get(AUTO_PROMOTE_SETTING) or "false").lower() in ("true", "1", "yes")


class Learner(Protocol):
    async def import_history(self, entries: list[HistoryEntry], key: IdempotencyKey | None) -> ImportOutcome: ...

    async def train(self, kind: str, offer_id: str, folds: int, key: IdempotencyKey | None) -> ModelVersionInfo: ...

    async def promote(self, model_id: str, version: int, key: IdempotencyKey | None) -> ModelVersionInfo: ...


@dataclass(frozen=True)
class RunOutcome:
    campaign_id: str
    history_rows: int
    model_versions: list[str]
    status_message: str


def _key(method: str, *parts: str) -> IdempotencyKey:
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()
    return IdempotencyKey(method, f"loop-{digest[:40]}", digest)


class LearningLoop:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], learner: Learner, *,
                 settings: ResponseSettings | None = None, auto_promote: bool = False, folds: int = FOLDS,
                 worker_id: str | None = None, lease_seconds: float = 900.0, retry_seconds: float = 60.0,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.learner = learner
        self.settings = settings or ResponseSettings()
        self.auto_promote = auto_promote
        self.folds = folds
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.lease = timedelta(seconds=lease_seconds)
        self.retry = timedelta(seconds=retry_seconds)
        self.clock = clock

    async def due(self) -> list[str]:
        """Campaigns whose learning run is not DONE: COMPLETED ones, and those with a DONE launch whose
        attribution window has passed."""
        now = self.clock()
        async with self.uow_factory() as uow:
            completed = set(await uow.session.scalars(select(CampaignRow.campaign_id).where(
                CampaignRow.state == COMPLETED)))
            settled = set(await uow.session.scalars(select(LaunchRow.campaign_id).where(
                LaunchRow.state == "DONE", LaunchRow.contact_time <= now - self.settings.attribution_window)))
            done = set(await uow.session.scalars(select(LearningRunRow.campaign_id).where(
                LearningRunRow.state == DONE_RUN)))
        return sorted((completed | settled) - done)

    async def step(self) -> bool:
        """Runs one due campaign this worker could claim; False when there was none."""
        for campaign_id in await self.due():
            if await self._claim(campaign_id):
                await self.run(campaign_id)
                return True
        return False

    async def run_until_idle(self, max_steps: int = 1000) -> int:
        steps = 0
        while steps < max_steps and await self.step():
            steps += 1
        return steps

    async def _claim(self, campaign_id: str) -> bool:
        now = self.clock()
        async with self.uow_factory() as uow:
            dialect = uow.session.bind.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            inserted = await uow.session.execute(insert(LearningRunRow).values(
                campaign_id=campaign_id, state=RUNNING_RUN, claimed_by=self.worker_id, lease_until=now + self.lease,
                history_rows=0, model_versions=[], status_message="", create_time=now,
            ).on_conflict_do_nothing(index_elements=["campaign_id"]))
            claimed = inserted.rowcount == 1  # type: ignore[attr-defined]
            if not claimed:
                taken = await uow.session.execute(
                    update(LearningRunRow).where(
                        LearningRunRow.campaign_id == campaign_id, LearningRunRow.state == RUNNING_RUN,
                        or_(LearningRunRow.lease_until.is_(None), LearningRunRow.lease_until < now,
                            LearningRunRow.claimed_by == self.worker_id))
                    .values(claimed_by=self.worker_id, lease_until=now + self.lease)
                    .execution_options(synchronize_session=False))
                claimed = taken.rowcount == 1  # type: ignore[attr-defined]
            await uow.commit()
        return claimed

    async def run(self, campaign_id: str) -> RunOutcome | None:
        """Builds and imports the campaign's history, trains challengers, marks the run DONE (this worker must
        hold the claim). A dependency failure releases the claim for a retry after `retry_seconds`."""
        try:
            entries = await self.history_entries(campaign_id)
            for start in range(0, len(entries), HISTORY_CHUNK):
                await self.learner.import_history(entries[start:start + HISTORY_CHUNK], None)
            versions, notes = await self._train(campaign_id, entries)
        except DomainError as error:  # profile unavailable, a database blip: retried after retry_seconds
            await self._release(campaign_id, f"waits: {error.reason}")
            log.warning("learning run of campaigns/%s waits: %s", campaign_id, error.reason)
            return None
        outcome = RunOutcome(campaign_id, len(entries), versions, "; ".join(notes))
        now = self.clock()
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(LearningRunRow).where(LearningRunRow.campaign_id == campaign_id,
                                             LearningRunRow.claimed_by == self.worker_id,
                                             LearningRunRow.state == RUNNING_RUN)
                .values(state=DONE_RUN, claimed_by=None, lease_until=None, history_rows=outcome.history_rows,
                        model_versions=outcome.model_versions, status_message=outcome.status_message,
                        done_time=now).execution_options(synchronize_session=False))
            await uow.commit()
        log.info("learning run of campaigns/%s done", campaign_id,
                 extra={"history_rows": outcome.history_rows, "model_versions": outcome.model_versions})
        return outcome

    async def _release(self, campaign_id: str, message: str) -> None:
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(LearningRunRow).where(LearningRunRow.campaign_id == campaign_id,
                                             LearningRunRow.claimed_by == self.worker_id)
                .values(claimed_by=None, lease_until=self.clock() + self.retry, status_message=message)
                .execution_options(synchronize_session=False))
            await uow.commit()

    async def _train(self, campaign_id: str, entries: list[HistoryEntry]) -> tuple[list[str], list[str]]:
        versions: list[str] = []
        notes: list[str] = []
        for offer_id in sorted({e.offer_id for e in entries}):
            rows = [e for e in entries if e.offer_id == offer_id]
            if all(e.treated for e in rows) or not any(e.treated for e in rows):
                notes.append(f"{offer_id}: no randomised treated and control rows")
                continue
            try:
                info = await self.learner.train("uplift", offer_id, self.folds,
                                                _key("LearningLoop.Train", campaign_id, offer_id))
            except FailedPrecondition as error:
                notes.append(f"{offer_id}: {error.reason}")
                continue
            versions.append(f"models/{info.model_id}/versions/{info.version}")
            if self.auto_promote and await self._beats_champion(info):
                await self.learner.promote(info.model_id, info.version,
                                           _key("LearningLoop.Promote", campaign_id, offer_id, str(info.version)))
                notes.append(f"{offer_id}: version {info.version} promoted")
        return versions, notes

    async def _beats_champion(self, info: ModelVersionInfo) -> bool:
        async with self.uow_factory() as uow:
            champion = await uow.session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model_id == model_id_for("uplift", info.offer_id),
                ModelVersionRow.status == "CHAMPION"))
        if champion is None:
            return True
        return info.metrics.qini > modeling.metrics_from_json(champion.metrics).qini

    async def history_entries(self, campaign_id: str) -> list[HistoryEntry]:
        """The campaign's randomised assignments with their attributed outcomes, as history rows."""
        async with self.uow_factory() as uow:
            campaign = await uow.session.get(CampaignRow, campaign_id)
            if campaign is None:
                return []
            arm_ids = [a["arm_id"] for a in campaign.arms or []]
            offer_ids = list(campaign.offer_ids or [])
            responses: dict[str, dict[str, tuple[str, float]]] = {}
            for customer_id, outcome, offer_id, revenue in (await uow.session.execute(
                    select(ResponseRow.customer_id, ResponseRow.outcome, ResponseRow.offer_id, ResponseRow.revenue)
                    .where(ResponseRow.campaign_id == campaign_id))).tuples():
                responses.setdefault(customer_id, {})[outcome] = (offer_id, float(revenue or 0.0))
            entries: list[HistoryEntry] = []

            def entry(customer_id: str, offer_id: str, arm: str, treated: bool, when: datetime, channel: int,
                      probability: float | None) -> HistoryEntry:
                got = responses.get(customer_id, {})
                conversion = got.get(CONVERTED)
                converted = conversion is not None and conversion[0] in ("", offer_id)
                context = {"source": SOURCE}
                if probability is not None:
                    context["arm_probability"] = f"{probability:.6f}"
                return HistoryEntry(customer_id, campaign_id, offer_id, arm, treated, when, channel, bool(got),
                                    converted, conversion[1] if converted and conversion else 0.0, context)

            launch = await uow.session.scalar(select(LaunchRow).where(LaunchRow.campaign_id == campaign_id))
            if launch is not None and launch.state == "DONE":
                ids, groups, probabilities = await launch_members(uow, launch.launch_id)
                sent = {r.customer_id: (r.offer_id, r.channel, r.arm_id) for r in await uow.session.scalars(
                    select(OutboxRow).where(OutboxRow.launch_id == launch.launch_id))}
                for i, (customer, group) in enumerate(zip(ids.tolist(), groups.tolist(), strict=True)):
                    p = float(probabilities[i]) if probabilities is not None else None
                    if group < 0:
                        arm = group_name(group, arm_ids)
                        for offer_id in offer_ids:
                            entries.append(entry(customer, offer_id, arm, False, launch.contact_time, 0,
                                                 None if arm == GLOBAL_HOLDOUT else p))
                    elif customer in sent:
                        offer_id, channel, arm = sent[customer]
                        entries.append(entry(customer, offer_id, arm, True, launch.contact_time, channel, p))
            for assignment in await uow.session.scalars(select(ArmAssignmentRow).where(
                    ArmAssignmentRow.campaign_id == campaign_id).order_by(ArmAssignmentRow.id)):
                entries.append(entry(assignment.customer_id, assignment.offer_id, assignment.arm_id, True,
                                     assignment.assign_time, assignment.channel, assignment.probability))
        return entries
