"""The pre-approved limit band: a documented, monotone function of the PD.

Bands are checked in order: the first whose `max_pd` is above the applicant's PD applies, and the pre-approved
limit is at most `income_multiple` times the applicant's monthly income. A PD at or above the last band's
`max_pd` (the cut-off) gets no limit: band DECLINED with reason CREDIT_DECLINED.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.risk.credit.errors import CreditDataError

DECLINED = "DECLINED"
CREDIT_DECLINED = "CREDIT_DECLINED"


@dataclass(frozen=True)
class LimitBandRule:
    band: str
    max_pd: float  # applies when PD < max_pd
    income_multiple: float  # max pre-approved limit = multiple x monthly income


# Multiples of monthly income. The cut-off (0.15) sits below 1/6, where approving costs more than it saves
# under a 5:1 cost of a bad approval against a good rejection (the German credit codebook's matrix).
DEFAULT_LIMIT_BANDS: tuple[LimitBandRule, ...] = (
    LimitBandRule("A", 0.02, 8.0),
    LimitBandRule("B", 0.05, 5.0),
    LimitBandRule("C", 0.10, 3.0),
    LimitBandRule("D", 0.15, 1.0),
)


@dataclass(frozen=True)
class LimitBand:
    band: str  # A, B, ... or DECLINED
    income_multiple: float
    max_limit: float | None  # income_multiple x income when an income was given
    declined: bool
    reason: str | None  # CREDIT_DECLINED when declined

    def to_dict(self) -> dict[str, Any]:
        return {
            "band": self.band,
            "income_multiple": self.income_multiple,
            "max_limit": self.max_limit,
            "declined": self.declined,
            "reason": self.reason,
        }


def check_bands(bands: Sequence[LimitBandRule], field: str = "limit_bands") -> tuple[LimitBandRule, ...]:
    """Bands must have distinct names, rising max_pd in (0, 1] and non-increasing non-negative multiples."""
    rules = tuple(bands)
    if not rules:
        raise CreditDataError(field, "INVALID_LIMIT_BANDS", "at least one band is required")
    names = [r.band for r in rules]
    if len(set(names)) != len(names) or DECLINED in names or not all(names):
        raise CreditDataError(field, "INVALID_LIMIT_BANDS", f"band names must be distinct, non-empty, not {DECLINED}")
    for prev, cur in itertools.pairwise(rules):
        if not cur.max_pd > prev.max_pd:
            raise CreditDataError(field, "INVALID_LIMIT_BANDS", "max_pd must rise from band to band")
        if cur.income_multiple > prev.income_multiple:
            raise CreditDataError(field, "INVALID_LIMIT_BANDS", "a riskier band cannot have a larger multiple")
    if not (0.0 < rules[0].max_pd and rules[-1].max_pd <= 1.0) or any(r.income_multiple < 0 for r in rules):
        raise CreditDataError(field, "INVALID_LIMIT_BANDS", "max_pd must be in (0, 1] and multiples non-negative")
    return rules


def limit_band(
    pd_value: float, income: float | None = None, bands: Sequence[LimitBandRule] = DEFAULT_LIMIT_BANDS
) -> LimitBand:
    """The band for a PD; with a monthly income, the maximum pre-approved limit too."""
    if income is not None and not income >= 0:
        raise CreditDataError("income", "INVALID_INCOME", "income must be a non-negative number")
    for rule in bands:
        if pd_value < rule.max_pd:
            limit = None if income is None else rule.income_multiple * income
            return LimitBand(rule.band, rule.income_multiple, limit, False, None)
    return LimitBand(DECLINED, 0.0, None if income is None else 0.0, True, CREDIT_DECLINED)
