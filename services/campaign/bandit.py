"""Thompson sampling over campaign arms (opt-in per always-on campaign: `arm_selection = THOMPSON_SAMPLING`).

Each arm's conversion rate per contact has a Beta posterior, Beta(1 + converted, 1 + contacted - converted), from
the counts `responses.arm_outcomes` reads (the same ones GetArmOutcomes returns). Thompson sampling picks an
arm with the probability that it is the best under the posteriors; that probability is estimated once per
refresh by Monte Carlo (`probability_best`, seeded, so the same counts always give the same numbers), and the
arm is drawn from it with a uniform number derived from hash(campaign, customer): deterministic on every replica
and retry, and the probability recorded with the choice is exactly the one the arm was drawn with (what
off-policy evaluation needs).

Control keeps its fixed share (by the launch's hash, `launch.assign`), so uplift stays measurable. Real-time
assignments (Decide) are sticky: a customer keeps the arm of their first assignment in a campaign.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite

from services.campaign.db import ArmAssignmentRow, CampaignRow, CampaignUnitOfWork
from services.campaign.domain import RUNNING, Campaign
from services.platform.masking import customer_token

log = logging.getLogger("lodestar.campaign.bandit")

THOMPSON = "THOMPSON_SAMPLING"
FIXED = "FIXED_SHARES"
DRAWS = 20_000
CAMPAIGNS_CACHE_SECONDS = 5.0
POSTERIOR_CACHE_SECONDS = 30.0


def posterior(converted: int, contacted: int) -> tuple[float, float]:
    """Beta(1 + converted, 1 + contacted - converted): a uniform prior updated by conversions per contact."""
    converted = max(int(converted), 0)
    return 1.0 + converted, 1.0 + max(int(contacted) - converted, 0)


def probability_best(alphas: Sequence[float], betas: Sequence[float], *, draws: int = DRAWS, seed: int = 0
                     ) -> np.ndarray:
    """P(arm i has the highest rate) under independent Beta posteriors, by seeded Monte Carlo; sums to 1."""
    k = len(alphas)
    if k == 0:
        return np.zeros(0)
    if k == 1:
        return np.ones(1)
    rng = np.random.default_rng(seed)
    samples = rng.beta(np.asarray(alphas, dtype=float), np.asarray(betas, dtype=float), size=(draws, k))
    wins = np.bincount(np.argmax(samples, axis=1), minlength=k).astype(float)
    return wins / wins.sum()


def uniform(key: str) -> float:
    """A number in [0, 1) from sha256(key): the same key, the same number, everywhere."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2.0 ** 64


def draw(probabilities: Sequence[float] | np.ndarray, u: float) -> int:
    """The index whose cumulative-probability interval holds u."""
    bounds = np.cumsum(np.asarray(probabilities, dtype=float))
    return int(min(np.searchsorted(bounds, u * bounds[-1], side="right"), len(bounds) - 1))


def draw_many(probabilities: Sequence[float] | np.ndarray, us: np.ndarray) -> np.ndarray:
    bounds = np.cumsum(np.asarray(probabilities, dtype=float))
    return np.minimum(np.searchsorted(bounds, us * bounds[-1], side="right"), len(bounds) - 1)


def arm_key(campaign_id: str, customer_id: str) -> str:
    return f"{campaign_id}:{customer_id}:arm"


@dataclass(frozen=True)
class ArmChoice:
    campaign_id: str
    arm_id: str
    offer_id: str
    probability: float
    new: bool


@dataclass(frozen=True)
class _BanditCampaign:
    campaign_id: str
    offer_ids: tuple[str, ...]
    channels: tuple[int, ...]
    arm_ids: tuple[str, ...]


class ThompsonArms:
    """The arm chooser Decide and the launch call; posteriors are refreshed every POSTERIOR_CACHE_SECONDS."""

    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], *,
                 monotonic: Callable[[], float] = time.monotonic,
                 posterior_seconds: float = POSTERIOR_CACHE_SECONDS) -> None:
        self.uow_factory = uow_factory
        self.monotonic = monotonic
        self.posterior_seconds = posterior_seconds
        self._campaigns: tuple[float, list[_BanditCampaign]] | None = None
        self._posteriors: dict[str, tuple[float, dict[str, float]]] = {}

    async def _running(self) -> list[_BanditCampaign]:
        now = self.monotonic()
        if self._campaigns is not None and now - self._campaigns[0] < CAMPAIGNS_CACHE_SECONDS:
            return self._campaigns[1]
        async with self.uow_factory() as uow:
            rows = list(await uow.session.scalars(select(CampaignRow).where(
                CampaignRow.state == RUNNING, CampaignRow.arm_selection == THOMPSON).order_by(CampaignRow.campaign_id)))
            found = [_BanditCampaign(r.campaign_id, tuple(r.offer_ids or ()), tuple(r.channels or ()),
                                     tuple(a["arm_id"] for a in r.arms or [])) for r in rows if r.arms]
        self._campaigns = (now, found)
        return found

    async def arm_probabilities(self, campaign_id: str) -> dict[str, float]:
        """arm id -> the probability Thompson sampling picks it now (P(best) under the posteriors)."""
        now = self.monotonic()
        cached = self._posteriors.get(campaign_id)
        if cached is not None and now - cached[0] < self.posterior_seconds:
            return cached[1]
        from services.campaign.responses import CONTROL, GLOBAL_HOLDOUT, arm_outcomes  # (a circular import)

        async with self.uow_factory() as uow:
            arms = [a for a in await arm_outcomes(uow, campaign_id) if a.arm_id not in (CONTROL, GLOBAL_HOLDOUT)]
        probabilities = {a.arm_id: a.probability_best for a in arms}
        self._posteriors[campaign_id] = (now, probabilities)
        return probabilities

    async def choose_for_decision(self, customer_id: str, ranked_offer_ids: Sequence[str], channel: int,
                                  decision_id: str, when: datetime) -> ArmChoice | None:
        """For the best-ranked offer that a running Thompson campaign presents on this channel: the customer's
        arm in that campaign (their earlier assignment, else a new draw, stored)."""
        campaigns = await self._running()
        target: tuple[_BanditCampaign, str] | None = None
        for offer_id in ranked_offer_ids:
            target = next(((c, offer_id) for c in campaigns if offer_id in c.offer_ids
                           and (not c.channels or channel in c.channels)), None)
            if target:
                break
        if target is None:
            return None
        campaign, offer_id = target
        async with self.uow_factory() as uow:
            existing = await uow.session.scalar(select(ArmAssignmentRow).where(
                ArmAssignmentRow.campaign_id == campaign.campaign_id, ArmAssignmentRow.customer_id == customer_id))
            if existing is not None:
                return ArmChoice(campaign.campaign_id, existing.arm_id, existing.offer_id, existing.probability,
                                 False)
        probabilities = await self.arm_probabilities(campaign.campaign_id)
        weights = np.array([probabilities.get(a, 0.0) for a in campaign.arm_ids])
        if weights.sum() <= 0:
            weights = np.ones(len(campaign.arm_ids))
        weights = weights / weights.sum()
        index = draw(weights, uniform(arm_key(campaign.campaign_id, customer_id)))
        async with self.uow_factory() as uow:
            dialect = uow.session.bind.dialect.name
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await uow.session.execute(insert(ArmAssignmentRow).values(
                campaign_id=campaign.campaign_id, customer_id=customer_id, arm_id=campaign.arm_ids[index],
                offer_id=offer_id, channel=channel, probability=float(weights[index]), decision_id=decision_id,
                assign_time=when).on_conflict_do_nothing(index_elements=["campaign_id", "customer_id"]))
            await uow.commit()
            stored = await uow.session.scalar(select(ArmAssignmentRow).where(
                ArmAssignmentRow.campaign_id == campaign.campaign_id, ArmAssignmentRow.customer_id == customer_id))
            assert stored is not None
            choice = ArmChoice(campaign.campaign_id, stored.arm_id, stored.offer_id, stored.probability,
                               stored.decision_id == decision_id)
        log.info("arm assigned", extra={"campaign": f"campaigns/{campaign.campaign_id}", "arm": choice.arm_id,
                                        "customer_token": customer_token(customer_id)})
        return choice

    async def launch_groups(self, campaign: Campaign, customer_ids: Sequence[str], control_groups: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """A launch's groups for a Thompson campaign: control members (-1 in `control_groups`, by the fixed hash)
        stay control; every other member gets an arm drawn from the current P(best). Returns the groups and the
        probability each member's group was picked with (control: control_share; an arm: (1 - control_share) x
        its P(best))."""
        probabilities = await self.arm_probabilities(campaign.campaign_id)
        weights = np.array([probabilities.get(a.arm_id, 0.0) for a in campaign.arms])
        if weights.sum() <= 0:
            weights = np.ones(len(campaign.arms))
        weights = weights / weights.sum()
        us = np.fromiter((uniform(arm_key(campaign.campaign_id, c)) for c in customer_ids), dtype=np.float64,
                         count=len(customer_ids))
        drawn = draw_many(weights, us).astype(np.int16)
        control = control_groups < 0
        groups = np.where(control, np.int16(-1), drawn).astype(np.int16)
        picked = np.where(control, campaign.control_share, (1.0 - campaign.control_share) * weights[drawn])
        return groups, picked


def fixed_probabilities(campaign: Campaign, groups: np.ndarray) -> np.ndarray:
    """The probability of each member's group under fixed shares: control_share, or the arm's share."""
    shares = np.array([a.share for a in campaign.arms] or [0.0])
    return np.where(groups < 0, campaign.control_share, shares[np.clip(groups, 0, len(shares) - 1)])
