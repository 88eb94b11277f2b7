"""Each computed-tag rule at its boundaries (docs/features.md)."""

from datetime import UTC, date, datetime

import pytest

from services.profile.features import CustomerFacts, FeatureSet
from services.profile.tags import (
    age_band,
    clv_estimate,
    compute_tags,
    income_tier,
    lifecycle_stage,
    region_tier,
    risk_preference,
    value_tier,
)

AS_OF = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(("features", "stage"), [
    ({"tenure_days": 89, "recency_days": 1}, "new"),
    ({"tenure_days": 89}, "new"),
    ({"tenure_days": 90}, "churned"),  # no debit transaction in 365 days
    ({}, "unknown"),
    ({"tenure_days": 400, "recency_days": 91}, "dormant"),
    ({"tenure_days": 400, "recency_days": 364}, "dormant"),
    ({"tenure_days": 364, "recency_days": 90, "frequency_90d": 1, "frequency_prev_90d": 5}, "growing"),
    ({"tenure_days": 400, "recency_days": 5, "frequency_90d": 6, "frequency_prev_90d": 4}, "growing"),
    ({"tenure_days": 400, "recency_days": 5, "frequency_90d": 5, "frequency_prev_90d": 4}, "mature"),
    ({"tenure_days": 365, "recency_days": 90, "frequency_90d": 0, "frequency_prev_90d": 0}, "mature"),
])
def test_lifecycle_stage(features, stage):
    assert lifecycle_stage(features).value == stage


@pytest.mark.parametrize(("spend", "tier"), [
    (0, "none"), (0.01, "low"), (4999.99, "low"), (5000, "medium"), (49999.99, "medium"), (50000, "high"),
])
def test_value_tier(spend, tier):
    assert value_tier({"monetary_365d": spend}).value == tier


@pytest.mark.parametrize(("features", "clv"), [
    # m = 0.02 * 10000 = 200; r = 0.85: 200 * 0.85 / 0.25 = 680
    ({"monetary_365d": 10000, "recency_days": 90}, "680.00"),
    # r = 0.60: 200 * 0.6 / 0.5 = 240
    ({"monetary_365d": 10000, "recency_days": 91}, "240.00"),
    # r = 0.85 - 0.20 = 0.65 when a repayment was > 30 days late: 200 * 0.65 / 0.45 = 288.888...
    ({"monetary_365d": 10000, "recency_days": 10, "repayment_max_days_late_365d": 31}, "288.89"),
    ({"monetary_365d": 10000, "recency_days": 10, "repayment_max_days_late_365d": 30}, "680.00"),
    ({"monetary_365d": 0}, "0.00"),
])
def test_clv_estimate(features, clv):
    assert clv_estimate(features).value == clv


@pytest.mark.parametrize(("score", "kind"), [
    (0, "conservative"), ("24.9", "conservative"), (25, "steady"), (49, "steady"), (50, "balanced"),
    ("74.99", "balanced"), (75, "aggressive"), (100, "aggressive"),
])
def test_risk_preference_from_the_questionnaire(score, kind):
    tag = risk_preference({"monetary_365d": 100, "spend_category_gambling_365d": 100},
                          {"risk_questionnaire_score": score})
    assert (tag.value, tag.source) == (kind, "questionnaire")


@pytest.mark.parametrize(("risky", "kind"), [
    (0, "conservative"), (9.99, "steady"), (10, "balanced"), (29.99, "balanced"), (30, "aggressive"),
])
def test_risk_preference_from_behaviour(risky, kind):
    features = {"monetary_365d": 100, "spend_category_securities_365d": risky / 2,
                "spend_category_crypto_365d": risky / 2}
    tag = risk_preference(features, {"risk_questionnaire_score": 101})  # out of range: ignored
    assert (tag.value, tag.source) == (kind, "behaviour")
    assert risk_preference({}, {}).value == "conservative"


@pytest.mark.parametrize(("birth", "band"), [
    (date(2008, 7, 1), "minor"), (date(2008, 6, 30), "18-24"), (date(2001, 7, 1), "18-24"),
    (date(2001, 6, 30), "25-34"), (date(1992, 6, 30), "25-34"), (date(1991, 6, 30), "35-44"),
    (date(1961, 7, 1), "55-64"), (date(1961, 6, 30), "65+"), (None, "unknown"),
])
def test_age_band(birth, band):
    assert age_band(birth, AS_OF).value == band


@pytest.mark.parametrize(("income", "tier"), [
    ("4999.99", "low"), ("5000", "middle"), (19999, "middle"), ("20000", "upper_middle"),
    ("49999.99", "upper_middle"), ("50000", "high"), (None, "unknown"), ("abc", "unknown"), ("-1", "unknown"),
])
def test_income_tier(income, tier):
    assert income_tier({} if income is None else {"income": income}).value == tier


@pytest.mark.parametrize(("region", "attributes", "tier", "source"), [
    ("CN-31", {}, "tier-1", "region"),
    ("CN-BJ", {}, "tier-1", "region"),
    ("CN-50", {}, "tier-2", "region"),
    ("CN-44", {"city": "Shenzhen"}, "tier-1", "city"),
    ("CN-51", {"city": "chengdu"}, "tier-2", "city"),
    ("CN-44", {}, "tier-3", "region_fallback"),
    ("CN-31", {"area_type": "rural"}, "rural", "area_type"),
    ("CN-44", {"area_type": "County", "city": "shenzhen"}, "county", "area_type"),
    ("", {"city": "atlantis"}, "unknown", "region"),
])
def test_region_tier(region, attributes, tier, source):
    tag = region_tier(region, attributes)
    assert (tag.value, tag.source) == (tier, source)


def test_compute_tags_gives_every_built_in_tag_once():
    facts = CustomerFacts("c-1", region="CN-31", birth_date=date(1990, 1, 1), attributes={"income": "30000"})
    tags = compute_tags(FeatureSet({"tenure_days": 10.0}, []), facts, AS_OF)
    assert {t.name: t.value for t in tags} == {
        "lifecycle_stage": "new", "value_tier": "none", "clv_estimate": "0.00", "risk_preference": "conservative",
        "age_band": "35-44", "income_tier": "upper_middle", "region_tier": "tier-1",
    }
