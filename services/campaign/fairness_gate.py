"""The fairness gate of ApproveCampaign and the per-customer groups the report's fairness tables need.

At approval the campaign's audience (its segment) is compared with the whole customer base, per protected
dimension — age band, gender, region tier: for each group, rate = members of the group in the audience / members
of the group in the base, ratio = rate / the best group's rate (evaluation.fairness, the four-fifths rule). A group
whose ratio is below the threshold (CAMPAIGN_FAIRNESS_THRESHOLD, default 0.8) makes the targeting disparate, and
approval is refused with FAILED_PRECONDITION TARGETING_DISPARATE (metadata: the dimensions, the groups with their
ratios, the threshold) unless a justification is recorded on the campaign (RecordTargetingJustification). A
dimension profile cannot measure (a field it refuses to export) is left out and named in the log.

Owns no transaction; imports no grpc. The counts come from a CompositionSource (composition_client.py: profile's
ExportAudience and PreviewSegment).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.campaign.evaluation import FOUR_FIFTHS, FairnessDimension, GroupCounts, fairness
from services.platform.errors import DeadlineExceeded, FailedPrecondition, NotFound, Unavailable

log = logging.getLogger("lodestar.campaign.fairness")

THRESHOLD_SETTING = "CAMPAIGN_FAIRNESS_THRESHOLD"
DEFAULT_THRESHOLD = FOUR_FIFTHS
DIMENSIONS = ("age_band", "gender", "region_tier")


@dataclass(frozen=True)
class Composition:
    """One dimension: group -> (members in the audience, members in the whole base)."""

    dimension: str
    groups: Mapping[str, tuple[int, int]]


class CompositionSource(Protocol):
    async def composition(self, segment: str) -> list[Composition]: ...


def parse_threshold(raw: str | None) -> float:
    if raw is None or raw.strip() == "":
        return DEFAULT_THRESHOLD
    value = float(raw)
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{THRESHOLD_SETTING} must be in (0, 1], got {raw!r}")
    return value


def assess(compositions: Sequence[Composition], threshold: float) -> list[FairnessDimension]:
    """Allocation rate = audience / base per group; groups absent from the base are left out (no rate)."""
    out = []
    for comp in compositions:
        groups = [GroupCounts(group=g, eligible=base, targeted=min(audience, base))
                  for g, (audience, base) in sorted(comp.groups.items()) if base > 0]
        if groups:
            out.append(fairness(comp.dimension, groups, threshold=threshold))
    return out


def disparate_error(dimensions: Sequence[FairnessDimension]) -> FailedPrecondition | None:
    bad = [(d.dimension, g) for d in dimensions for g in d.groups if g.disparate]
    if not bad:
        return None
    threshold = dimensions[0].threshold
    groups = ";".join(f"{dim}:{g.group}={g.allocation_ratio:.3f}" for dim, g in bad)
    worst = min(g.allocation_ratio or 0.0 for _, g in bad)
    return FailedPrecondition(
        "TARGETING_DISPARATE",
        f"the audience under-represents {len(bad)} group(s) against the customer base (disparity ratio below "
        f"{threshold:g}); record a justification on the campaign or change its audience",
        metadata={"dimensions": ",".join(sorted({d for d, _ in bad})), "groups": groups,
                  "threshold": f"{threshold:g}", "worst_ratio": f"{worst:.3f}"})


class FairnessGate:
    def __init__(self, source: CompositionSource, threshold: float = DEFAULT_THRESHOLD, *,
                 fail_closed: bool = False) -> None:
        self.source = source
        self.threshold = threshold
        self.fail_closed = fail_closed

    async def check(self, campaign_id: str, segment: str, justified: bool) -> list[FairnessDimension]:
        """The assessment; raises TARGETING_DISPARATE when disparate and not justified.

        Profile unreachable (UNAVAILABLE, DEADLINE_EXCEEDED) or the segment unknown to it: the audience cannot be
        measured, the approval goes ahead and a warning is logged (`fairness not assessed`). This keeps approvals
        possible while profile is down; docs/triggers.md says how to make it fail closed instead."""
        try:
            compositions = await self.source.composition(segment)
        except (Unavailable, DeadlineExceeded, NotFound) as unmeasured:
            if self.fail_closed:
                raise
            log.warning("campaigns/%s approved without a fairness assessment: %s", campaign_id, unmeasured.reason)
            return []
        dimensions = assess(compositions, self.threshold)
        error = disparate_error(dimensions)
        if error is not None:
            if not justified:
                raise error
            log.info("campaigns/%s: disparate targeting approved with a recorded justification (%s)", campaign_id,
                     error.metadata["groups"])
        return dimensions
