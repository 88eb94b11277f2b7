"""The pure parts of decision re-evaluation: snapshots, their hash, synthetic birth dates, first differences."""

import json
from datetime import UTC, date, datetime, timedelta, timezone

import pytest

from services.campaign.domain import CustomerSnapshot
from services.campaign.scoring import age_at
from services.campaign.service import (
    HEURISTIC_ATTRIBUTES,
    DecisionDifference,
    OfferScore,
    birth_date_for_age,
    feature_snapshot,
    first_difference,
    snapshot_hash,
)

CUSTOMER = CustomerSnapshot("c-secret", date(1990, 2, 28), "CN-31", "Asia/Shanghai",
                            {"income": "8000", "risk_tolerance": "C3", "email_hint": "x@y.cn", "segment": "mass"})


def test_snapshot_keeps_only_the_attributes_scoring_read_and_the_age_not_the_birth_date():
    when = datetime(2026, 2, 28, 1, tzinfo=timezone(timedelta(hours=8)))
    scores = {"a": OfferScore(0.1, "heuristic-v1", "propensity", HEURISTIC_ATTRIBUTES),
              "b": OfferScore(0.2, "models/propensity-b/versions/1", "propensity", ("segment", "absent"))}
    snap = feature_snapshot(CUSTOMER, when, scores)
    assert snap == {"attributes": {"income": "8000", "risk_tolerance": "C3", "segment": "mass"},
                    "region": "CN-31", "time_zone": "Asia/Shanghai", "age": 36,
                    "decision_time": "2026-02-28T01:00:00+08:00"}
    assert "1990" not in json.dumps(snap) and "c-secret" not in json.dumps(snap)
    assert feature_snapshot(CUSTOMER, when, {})["attributes"] == {}


def test_snapshot_age_is_unknown_without_a_birth_date():
    customer = CustomerSnapshot("c", None, "", "", {})
    assert feature_snapshot(customer, datetime(2026, 1, 1, tzinfo=UTC), {})["age"] is None


def test_snapshot_hash_is_canonical_and_changes_with_any_value():
    a = {"attributes": {"x": 1, "y": "2"}, "age": 30}
    b = {"age": 30, "attributes": {"y": "2", "x": 1}}
    assert snapshot_hash(a) == snapshot_hash(b) and len(snapshot_hash(a)) == 64
    assert snapshot_hash(a) != snapshot_hash({**a, "age": 31})


@pytest.mark.parametrize("on", [date(2026, 3, 1), date(2024, 2, 29), date(2026, 12, 31), date(2026, 1, 1)])
@pytest.mark.parametrize("age", [0, 18, 41, 99])
def test_birth_date_for_age_gives_that_age_on_that_day(on, age):
    assert age_at(birth_date_for_age(age, on), on) == age


BASE = [
    {"offer_id": "a", "verdict": "ALLOW", "propensity": 0.1, "conversion_value": 100.0, "contact_cost": 1.0,
     "expected_value": 9.0, "model_version": "heuristic-v1", "basis": "propensity", "rank": 1},
    {"offer_id": "b", "verdict": "DENY", "reasons": ["UNSUITABLE"], "rank": 0},
]


def test_identical_candidates_have_no_difference_even_after_json():
    assert first_difference(BASE, json.loads(json.dumps(BASE))) is None


@pytest.mark.parametrize(("index", "key", "value", "expected"), [
    (0, "expected_value", 9.5, DecisionDifference("a", "expected_value", "9.0", "9.5")),
    (0, "propensity", 0.2, DecisionDifference("a", "probability", "0.1", "0.2")),
    (0, "rank", 2, DecisionDifference("a", "rank", "1", "2")),
    (0, "model_version", "models/m/versions/2", DecisionDifference("a", "model_version", "heuristic-v1",
                                                                   "models/m/versions/2")),
    (1, "reasons", ["UNSUITABLE", "AGE_UNKNOWN"], DecisionDifference("b", "risk_reasons", "UNSUITABLE",
                                                                     "UNSUITABLE,AGE_UNKNOWN")),
])
def test_first_difference_names_the_offer_and_the_field(index, key, value, expected):
    recomputed = [dict(x) for x in BASE]
    recomputed[index][key] = value
    assert first_difference(BASE, recomputed) == expected


def test_first_difference_reports_the_first_one_and_missing_candidates():
    recomputed = [dict(x) for x in BASE]
    recomputed[0]["rank"], recomputed[1]["verdict"] = 3, "ALLOW"
    assert first_difference(BASE, recomputed) == DecisionDifference("a", "rank", "1", "3")
    assert first_difference(BASE, BASE[:1]) == DecisionDifference("", "candidates", "2", "1")


def test_a_float_within_rounding_is_the_same():
    recomputed = [dict(x) for x in BASE]
    recomputed[0]["expected_value"] = 9.0 + 1e-12
    assert first_difference(BASE, recomputed) is None
