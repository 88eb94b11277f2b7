"""Campaign lifecycle use cases: create, update (DRAFT only, etags), and the state machine with the
maker-checker rule and risk's content check before approval. Owns its transactions; imports no grpc.

States and transitions are in domain.TRANSITIONS. A transition is a conditional update (WHERE state = from),
so two concurrent transitions, or two replicas' schedulers, can never both apply; every change is recorded
with its actor and reason. SCHEDULED campaigns start RUNNING when their start_time comes and RUNNING or PAUSED
ones complete at their end_time (`advance_schedules`, run periodically by every replica).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.campaign.db import CampaignUnitOfWork, TargetingJustificationRow
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import (
    APPROVED,
    COMPLETED,
    DRAFT,
    PAUSED,
    RUNNING,
    SCHEDULED,
    SUBMITTED,
    TRANSITIONS,
    Campaign,
    CampaignPage,
    campaign_from_json,
    campaign_to_json,
)
from services.campaign.fairness_gate import FairnessGate
from services.platform.db import utcnow
from services.platform.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent

log = logging.getLogger("lodestar.campaign.lifecycle")

CAMPAIGN_CODEC = Codec(encode=campaign_to_json, decode=campaign_from_json)
SCHEDULER_ACTOR = "system:scheduler"


@dataclass(frozen=True)
class ContentViolation:
    arm_id: str
    kind: str
    rule_id: str
    start: int
    end: int


class ContentChecker(Protocol):
    async def check_content(self, text: str, product_type: int) -> list[tuple[str, str, int, int]]:
        """(kind, rule_id, start, end) for every violation of `text` for this product type."""
        ...


def _name(campaign_id: str) -> str:
    return f"campaigns/{campaign_id}"


class CampaignLifecycle:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], content: ContentChecker) -> None:
        self.uow_factory = uow_factory
        self.content = content
        # The fairness gate of approval (fairness_gate.py); set by app.py, None = not checked.
        self.fairness: FairnessGate | None = None

    async def create(self, campaign: Campaign, actor: str, key: IdempotencyKey | None) -> Campaign:
        async def create(uow: CampaignUnitOfWork) -> Campaign:
            if await uow.campaigns.get(campaign.campaign_id) is not None:
                raise AlreadyExists("campaign", _name(campaign.campaign_id))
            await self._check_offers(uow, campaign.offer_ids)
            return await uow.campaigns.add(dataclasses.replace(campaign, state=DRAFT, created_by=actor))

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CAMPAIGN_CODEC, create)

    async def get(self, campaign_id: str) -> Campaign:
        async with self.uow_factory() as uow:
            campaign = await uow.campaigns.get(campaign_id)
        if campaign is None:
            raise NotFound("campaign", _name(campaign_id))
        return campaign

    async def list_page(self, *, after_id: str | None, page_size: int, state: str | None) -> CampaignPage:
        async with self.uow_factory() as uow:
            rows = await uow.campaigns.list_page(after_id=after_id, limit=page_size + 1, state=state)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return CampaignPage(rows, rows[-1].campaign_id if more and rows else None)

    async def update(self, changes: Campaign, paths: list[str], expected_etag: str,
                     key: IdempotencyKey | None) -> Campaign:
        async def update(uow: CampaignUnitOfWork) -> Campaign:
            current = await self._load(uow, changes.campaign_id, expected_etag)
            if current.state != DRAFT:
                raise FailedPrecondition("CAMPAIGN_NOT_EDITABLE", f"only a DRAFT campaign can change; this one is "
                                                                  f"{current.state}", metadata={"state": current.state})
            updated = dataclasses.replace(current)
            for path in paths:
                setattr(updated, path, getattr(changes, path))
            check_consistency(updated)
            if "offer_ids" in paths:
                await self._check_offers(uow, updated.offer_ids)
            return await uow.campaigns.save(updated)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CAMPAIGN_CODEC, update)

    async def transition(self, campaign_id: str, to_state: str, actor: str, *, expected_etag: str = "",
                         reason: str = "", key: IdempotencyKey | None = None) -> Campaign:
        async def move(uow: CampaignUnitOfWork) -> Campaign:
            current = await self._load(uow, campaign_id, expected_etag)
            if (current.state, to_state) not in TRANSITIONS:
                raise FailedPrecondition(
                    "INVALID_STATE_TRANSITION", f"a {current.state} campaign cannot become {to_state}",
                    metadata={"from_state": current.state, "to_state": to_state})
            approved_by = None
            if to_state == SUBMITTED:
                check_complete(current)
            elif to_state == APPROVED:
                if actor == current.created_by:
                    raise PermissionDenied("SELF_APPROVAL_FORBIDDEN",
                                           "a campaign must be approved by someone other than its maker")
                await self._check_content(uow, current)
                if self.fairness is not None:
                    justified = await uow.session.get(TargetingJustificationRow, campaign_id) is not None
                    await self.fairness.check(campaign_id, current.segment, justified)
                approved_by = actor
            elif to_state == SCHEDULED and current.end_time is not None and current.end_time <= utcnow():
                raise FailedPrecondition("CAMPAIGN_WINDOW_PASSED", "the campaign's end time has passed")
            if not await uow.campaigns.transition(campaign_id, current.state, to_state, actor, reason,
                                                  approved_by=approved_by):
                raise Aborted("CONCURRENT_CHANGE", "the campaign changed state meanwhile; read it again and retry")
            moved = await uow.campaigns.get(campaign_id)
            assert moved is not None
            return moved

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CAMPAIGN_CODEC, move)

    async def advance_schedules(self, now: datetime | None = None) -> list[tuple[str, str]]:
        """Starts due SCHEDULED campaigns and completes RUNNING/PAUSED ones past their end; returns the moves."""
        now = now or utcnow()
        moves: list[tuple[str, str]] = []
        async with self.uow_factory() as uow:
            for campaign_id in await uow.campaigns.due(SCHEDULED, "start_time", now):
                if await uow.campaigns.transition(campaign_id, SCHEDULED, RUNNING, SCHEDULER_ACTOR, "start time"):
                    moves.append((campaign_id, RUNNING))
            for state in (RUNNING, PAUSED):
                for campaign_id in await uow.campaigns.due(state, "end_time", now):
                    if await uow.campaigns.transition(campaign_id, state, COMPLETED, SCHEDULER_ACTOR, "end time"):
                        moves.append((campaign_id, COMPLETED))
            await uow.commit()
        for campaign_id, state in moves:
            log.info("campaign %s is now %s", _name(campaign_id), state)
        return moves

    async def _load(self, uow: CampaignUnitOfWork, campaign_id: str, expected_etag: str) -> Campaign:
        current = await uow.campaigns.get(campaign_id, for_update=True)
        if current is None:
            raise NotFound("campaign", _name(campaign_id))
        if expected_etag and expected_etag != current.etag:
            raise Aborted("ETAG_MISMATCH", "the campaign changed since it was read; read it again and retry")
        return current

    async def _check_offers(self, uow: CampaignUnitOfWork, offer_ids: list[str]) -> None:
        unknown = [FieldViolation(f"campaign.offer_ids[{i}]", "no such offer in the catalog")
                   for i, offer_id in enumerate(offer_ids) if await uow.offers.get(offer_id) is None]
        if unknown:
            raise InvalidArgument(unknown, reason="UNKNOWN_OFFER")

    async def _check_content(self, uow: CampaignUnitOfWork, campaign: Campaign) -> None:
        """Each arm's text as a customer will see it with each offer: the content, then the offer's disclosures
        (appended at delivery), checked against the rules for that offer's product type."""
        violations: list[ContentViolation] = []
        for offer_id in campaign.offer_ids:
            offer = await uow.offers.get(offer_id)
            if offer is None:
                raise InvalidArgument.field("campaign.offer_ids", f"offer {offer_id} left the catalog",
                                            reason="UNKNOWN_OFFER")
            disclosures = "\n".join(d.text for d in offer.disclosures)
            for arm in campaign.arms:
                text = f"{arm.content}\n\n{disclosures}" if disclosures else arm.content
                for kind, rule, start, end in await self.content.check_content(text, offer.product_type):
                    violations.append(ContentViolation(arm.arm_id, kind, rule, start, end))
        if violations:
            first = violations[0]
            raise FailedPrecondition(
                "CONTENT_VIOLATION",
                f"{len(violations)} content rule violation(s); first: arm {first.arm_id} {first.kind} "
                f"{first.rule_id} at {first.start}-{first.end}",
                metadata={"violations": str(len(violations)), "arm_id": first.arm_id, "rule_id": first.rule_id},
            )


def check_consistency(campaign: Campaign) -> None:
    """Rules between fields; raised as INVALID_ARGUMENT naming each field."""
    problems: list[FieldViolation] = []
    if campaign.arms:
        total = sum(arm.share for arm in campaign.arms) + campaign.control_share
        if abs(total - 1.0) > 1e-9:
            problems.append(FieldViolation("campaign.arms", f"arm shares plus control_share must sum to 1, "
                                                            f"got {total:g}"))
    if campaign.start_time and campaign.end_time and campaign.end_time <= campaign.start_time:
        problems.append(FieldViolation("campaign.end_time", "must be after start_time"))
    if campaign.arm_selection == "THOMPSON_SAMPLING":  # bandit.py: opt-in, always-on campaigns only
        if campaign.end_time is not None:
            problems.append(FieldViolation("campaign.arm_selection", "Thompson sampling is for always-on campaigns "
                                                                     "(no end_time)"))
        if len(campaign.arms) == 1:
            problems.append(FieldViolation("campaign.arm_selection", "Thompson sampling needs at least two arms"))
    if problems:
        raise InvalidArgument(problems, reason="INCONSISTENT_CAMPAIGN")


def check_complete(campaign: Campaign) -> None:
    """What a campaign needs before it can be submitted for approval."""
    missing = [FieldViolation(f"campaign.{name}", "is required before submission") for name, present in (
        ("segment", bool(campaign.segment)), ("offer_ids", bool(campaign.offer_ids)),
        ("channels", bool(campaign.channels)), ("arms", bool(campaign.arms)),
        ("start_time", campaign.start_time is not None)) if not present]
    if missing:
        raise FailedPrecondition("CAMPAIGN_INCOMPLETE",
                                 "; ".join(f"{v.field} {v.description}" for v in missing),
                                 metadata={"fields": ",".join(v.field for v in missing)})


