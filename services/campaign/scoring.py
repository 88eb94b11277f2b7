"""Propensity scoring for Decide.

Until trained models exist (response history, the model registry), Decide uses `HeuristicPropensityModel`: a
fixed logistic score from a product base rate and a few customer facts. It is deterministic and documented so
that a decision can be explained and re-computed; its version is recorded with every decision.

    logit = base[product] + age_term + income_term + tolerance_term
    base:      credit card -2.2, consumer loan -2.8, instalment -2.4, savings bond -3.0, deposit -2.0,
               wealth -3.2
    age:       -0.02 x |age - 38| (interest peaks mid-career); 0 when the age is unknown
    income:    with t = log10(monthly income / 1000) clipped to [-1.5, 2]: +0.35 x t for deposit, bond and
               wealth products; -0.2 x t for loans and instalments (richer customers borrow less)
    tolerance: for wealth and bond products +0.25 x (C-level - 3)
"""

from __future__ import annotations

import math
from datetime import date

from lodestar.common.v1 import common_pb2
from services.campaign.domain import CustomerSnapshot, Offer

_BASE: dict[int, float] = {
    common_pb2.PRODUCT_TYPE_CREDIT_CARD: -2.2,
    common_pb2.PRODUCT_TYPE_CONSUMER_LOAN: -2.8,
    common_pb2.PRODUCT_TYPE_INSTALMENT: -2.4,
    common_pb2.PRODUCT_TYPE_SAVINGS_BOND: -3.0,
    common_pb2.PRODUCT_TYPE_DEPOSIT: -2.0,
    common_pb2.PRODUCT_TYPE_WEALTH: -3.2,
}
_SAVINGS = {common_pb2.PRODUCT_TYPE_DEPOSIT, common_pb2.PRODUCT_TYPE_SAVINGS_BOND, common_pb2.PRODUCT_TYPE_WEALTH}
_BORROWING = {common_pb2.PRODUCT_TYPE_CONSUMER_LOAN, common_pb2.PRODUCT_TYPE_INSTALMENT}
_INVESTMENT = {common_pb2.PRODUCT_TYPE_SAVINGS_BOND, common_pb2.PRODUCT_TYPE_WEALTH}


def age_at(birth_date: date | None, on: date) -> int | None:
    if birth_date is None:
        return None
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))


def tolerance_level(value: object) -> int | None:
    """'C3' -> 3; anything else -> None."""
    if isinstance(value, str) and len(value) == 2 and value[0] == "C" and value[1] in "12345":
        return int(value[1])
    return None


class HeuristicPropensityModel:
    version = "heuristic-v1"

    def score(self, customer: CustomerSnapshot, offer: Offer, on: date) -> float:
        logit = _BASE.get(offer.product_type, -3.0)
        age = age_at(customer.birth_date, on)
        if age is not None:
            logit -= 0.02 * abs(age - 38)
        income = _as_float(customer.attributes.get("income"))
        if income and income > 0:
            t = max(-1.5, min(2.0, math.log10(income / 1000)))
            if offer.product_type in _SAVINGS:
                logit += 0.35 * t
            elif offer.product_type in _BORROWING:
                logit -= 0.2 * t
        level = tolerance_level(customer.attributes.get("risk_tolerance"))
        if level is not None and offer.product_type in _INVESTMENT:
            logit += 0.25 * (level - 3)
        return 1.0 / (1.0 + math.exp(-logit))


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None
