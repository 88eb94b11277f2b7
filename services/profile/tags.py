"""Built-in computed tags: pure rules over a customer's features (features.py) and record. docs/features.md
documents every rule and threshold; RULE_VERSION changes whenever one does."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from services.profile.features import CustomerFacts, FeatureSet

RULE_VERSION = "1"
UNKNOWN = "unknown"
# The names compute_tags writes: reserved, a rule or external tag may not use them (docs/tags.md).
BUILTIN_TAGS = frozenset({"lifecycle_stage", "value_tier", "clv_estimate", "risk_preference", "age_band",
                          "income_tier", "region_tier"})

# Attributes read by tags.
ATTR_INCOME = "income"  # monthly income, in the bank's reporting currency
ATTR_RISK_SCORE = "risk_questionnaire_score"  # 0-100, from the suitability questionnaire
ATTR_CITY = "city"  # lower-case city name, e.g. "shenzhen"
ATTR_AREA_TYPE = "area_type"  # "urban", "county" or "rural"

# Merchant categories counted as risk-seeking behaviour when no questionnaire score is known.
RISKY_CATEGORIES = frozenset({"securities", "investment", "crypto", "gambling", "lottery"})

# Region tier lookup: ISO 3166-2 codes (numeric and letter forms for China), then cities.
REGION_TIERS: Mapping[str, str] = {
    "CN-11": "tier-1", "CN-BJ": "tier-1", "CN-31": "tier-1", "CN-SH": "tier-1",
    "CN-12": "tier-2", "CN-TJ": "tier-2", "CN-50": "tier-2", "CN-CQ": "tier-2",
    "PT-11": "tier-1", "PT-13": "tier-2",
}
CITY_TIERS: Mapping[str, str] = {
    **dict.fromkeys(("beijing", "shanghai", "guangzhou", "shenzhen"), "tier-1"),
    **dict.fromkeys(("chengdu", "hangzhou", "wuhan", "nanjing", "chongqing", "tianjin", "suzhou", "xian",
                     "changsha", "shenyang", "qingdao", "zhengzhou", "dongguan", "foshan", "ningbo"), "tier-2"),
    **dict.fromkeys(("lisbon", "lisboa"), "tier-1"),
    **dict.fromkeys(("porto",), "tier-2"),
}


@dataclass(frozen=True)
class TagValue:
    name: str
    value: str
    source: str


def lifecycle_stage(features: Mapping[str, float]) -> TagValue:
    """new: tenure < 90 days; churned: no debit transaction in 365 days (or none at all); dormant: last one more
    than 90 days ago; growing: tenure < 365 days, or transactions in the last 90 days more than 1.25 x the 90
    days before; else mature."""
    tenure = features.get("tenure_days")
    recency = features.get("recency_days")
    if tenure is not None and tenure < 90:
        return TagValue("lifecycle_stage", "new", "tenure")
    if recency is None:
        return TagValue("lifecycle_stage", "churned" if tenure is not None else UNKNOWN, "recency")
    if recency > 90:
        return TagValue("lifecycle_stage", "dormant", "recency")
    recent, previous = features.get("frequency_90d", 0.0), features.get("frequency_prev_90d", 0.0)
    if (tenure is not None and tenure < 365) or recent > 1.25 * previous:
        return TagValue("lifecycle_stage", "growing", "frequency_trend")
    return TagValue("lifecycle_stage", "mature", "frequency_trend")


def value_tier(features: Mapping[str, float]) -> TagValue:
    """By debit spend over 365 days: high >= 50,000; medium >= 5,000; low > 0; none = 0."""
    spend = features.get("monetary_365d", 0.0)
    tier = "high" if spend >= 50_000 else "medium" if spend >= 5_000 else "low" if spend > 0 else "none"
    return TagValue("value_tier", tier, "monetary_365d")


MARGIN_RATE = 0.02
DISCOUNT_RATE = 0.10


def clv_estimate(features: Mapping[str, float]) -> TagValue:
    """CLV = m x r / (1 + d - r): m = 2% of 365-day spend (annual margin), d = 10% discount rate, retention r =
    0.85 when the last transaction is at most 90 days old, 0.60 when at most 365 days, else 0; r is lowered by
    0.20 when a repayment was more than 30 days late in the last 365 days (not below 0)."""
    margin = MARGIN_RATE * features.get("monetary_365d", 0.0)
    recency = features.get("recency_days")
    retention = 0.0 if recency is None else 0.85 if recency <= 90 else 0.60
    if features.get("repayment_max_days_late_365d", 0.0) > 30:
        retention = max(0.0, retention - 0.20)
    clv = margin * retention / (1 + DISCOUNT_RATE - retention)
    return TagValue("clv_estimate", f"{clv:.2f}", "formula")


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def risk_preference(features: Mapping[str, float], attributes: Mapping[str, Any]) -> TagValue:
    """Questionnaire score (0-100) when present: < 25 conservative, < 50 steady, < 75 balanced, else aggressive.
    Otherwise behaviour, the share of 365-day spend in RISKY_CATEGORIES: 0 (or no spend) conservative, < 10%
    steady, < 30% balanced, else aggressive."""
    score = _decimal(attributes.get(ATTR_RISK_SCORE))
    if score is not None and 0 <= score <= 100:
        kind = ("conservative" if score < 25 else "steady" if score < 50 else "balanced" if score < 75
                else "aggressive")
        return TagValue("risk_preference", kind, "questionnaire")
    total = features.get("monetary_365d", 0.0)
    risky = sum(features.get(f"spend_category_{c}_365d", 0.0) for c in RISKY_CATEGORIES)
    share = risky / total if total > 0 else 0.0
    kind = ("conservative" if share == 0 else "steady" if share < 0.10 else "balanced" if share < 0.30
            else "aggressive")
    return TagValue("risk_preference", kind, "behaviour")


AGE_BANDS = ((18, "minor"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (55, "45-54"), (65, "55-64"))


def age_band(birth_date: date | None, as_of: datetime) -> TagValue:
    """Age in whole years at as_of (UTC date): under 18 minor, 18-24, 25-34, 35-44, 45-54, 55-64, 65+."""
    if birth_date is None:
        return TagValue("age_band", UNKNOWN, "birth_date")
    today = as_of.astimezone(UTC).date()
    age = today.year - birth_date.year - ((today.month, today.day) < (birth_date.month, birth_date.day))
    for limit, band in AGE_BANDS:
        if age < limit:
            return TagValue("age_band", band, "birth_date")
    return TagValue("age_band", "65+", "birth_date")


def income_tier(attributes: Mapping[str, Any]) -> TagValue:
    """Monthly `income` attribute: < 5,000 low; < 20,000 middle; < 50,000 upper_middle; else high."""
    income = _decimal(attributes.get(ATTR_INCOME))
    if income is None or income < 0:
        return TagValue("income_tier", UNKNOWN, "income")
    tier = ("low" if income < 5_000 else "middle" if income < 20_000 else "upper_middle" if income < 50_000
            else "high")
    return TagValue("income_tier", tier, "income")


def region_tier(region: str, attributes: Mapping[str, Any]) -> TagValue:
    """`area_type` county/rural wins; then the `city` attribute (CITY_TIERS); then the region code
    (REGION_TIERS); a region code not in the table falls back to tier-3; no region and no city: unknown."""
    area = str(attributes.get(ATTR_AREA_TYPE, "")).strip().lower()
    if area in ("county", "rural"):
        return TagValue("region_tier", area, "area_type")
    city = str(attributes.get(ATTR_CITY, "")).strip().lower().replace(" ", "").replace("'", "")
    if city in CITY_TIERS:
        return TagValue("region_tier", CITY_TIERS[city], "city")
    if region in REGION_TIERS:
        return TagValue("region_tier", REGION_TIERS[region], "region")
    if region:
        return TagValue("region_tier", "tier-3", "region_fallback")
    return TagValue("region_tier", UNKNOWN, "region")


def compute_tags(features: FeatureSet, facts: CustomerFacts, as_of: datetime) -> list[TagValue]:
    values = features.values
    return [
        lifecycle_stage(values), value_tier(values), clv_estimate(values),
        risk_preference(values, facts.attributes), age_band(facts.birth_date, as_of),
        income_tier(facts.attributes), region_tier(facts.region, facts.attributes),
    ]
