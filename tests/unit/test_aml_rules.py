"""The AML engine (services/risk/aml.py): one test per rule with its reason, the edges that must not alert, rule
validation and case transitions. Pure: no database, no server."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from services.risk import aml
from services.risk.aml import IN, OUT, AmlRule

T0 = int(datetime(2026, 6, 1, 10, tzinfo=UTC).timestamp())
HOUR, DAY = 3600, 86400
# The anomaly model needs a population; these tests switch it off unless they test it.
QUIET = replace(aml.DEFAULT_RULES, anomaly=aml.AnomalyRule(disabled=True))


def frame(rows: list[tuple[str, int, float, int, str, str]], *, new: list[bool] | None = None) -> pd.DataFrame:
    """rows: (customer, seconds after T0, amount, direction, country, counterparty)."""
    df = pd.DataFrame(rows, columns=["customer_id", "t", "amount", "direction", "country", "counterparty"])
    df["t"] += T0
    df.insert(0, "transaction_id", [f"tx-{n}" for n in range(len(rows))])
    if new is not None:
        df["new"] = new
    return df


def routine(customer: str, n: int = 10, *, start: int = -30 * DAY, amount: float = 500.0,
            country: str = "CN") -> list[tuple[str, int, float, int, str, str]]:
    """Ordinary history: n small payments to one counterparty, one every 3 days."""
    return [(customer, start + k * 3 * DAY, amount, OUT, country, "shop-1") for k in range(n)]


def of_rule(alerts: list[aml.Alert], rule: AmlRule) -> list[aml.Alert]:
    return [a for a in alerts if a.rule == rule]


def test_structuring_three_deposits_just_below_the_threshold() -> None:
    rows = [("c1", k * 10 * HOUR, 47_500.0 + k * 100, IN, "CN", "") for k in range(3)]
    [alert] = of_rule(aml.scan(frame(rows), QUIET), AmlRule.STRUCTURING)
    assert alert.customer_id == "c1" and alert.reasons == ("STRUCTURING_BELOW_THRESHOLD",)
    assert alert.transaction_ids == ("tx-0", "tx-1", "tx-2")
    assert alert.amount == pytest.approx(47_500 + 47_600 + 47_700)
    assert alert.window_start == datetime.fromtimestamp(T0, UTC)
    assert alert.window_end == datetime.fromtimestamp(T0 + 20 * HOUR, UTC)
    assert "3 transactions" in alert.detail and "c1" not in alert.detail


@pytest.mark.parametrize("rows", [
    # two only
    [("c1", k * HOUR, 48_000.0, IN, "CN", "") for k in range(2)],
    # three, but spread over more than the 3-day window
    [("c1", k * 2 * DAY, 48_000.0, IN, "CN", "") for k in range(3)],
    # three, but at or above the threshold (reported anyway, not structuring)
    [("c1", k * HOUR, 50_000.0, IN, "CN", "") for k in range(3)],
    # three, but not "just below" (under threshold x (1 - margin))
    [("c1", k * HOUR, 44_000.0, IN, "CN", "") for k in range(3)],
])
def test_structuring_does_not_fire_outside_its_definition(rows: list[tuple[str, int, float, int, str, str]]) -> None:
    assert of_rule(aml.scan(frame(rows), QUIET), AmlRule.STRUCTURING) == []


def test_rapid_movement_money_in_and_out_within_the_window() -> None:
    rows = [*routine("c2"), ("c2", 0, 30_000.0, IN, "CN", "payer"), ("c2", 5 * HOUR, 15_000.0, OUT, "CN", "a"),
            ("c2", 20 * HOUR, 12_000.0, OUT, "CN", "b")]
    [alert] = of_rule(aml.scan(frame(rows), QUIET), AmlRule.RAPID_MOVEMENT)
    assert alert.reasons == ("RAPID_IN_OUT",)
    assert alert.amount == pytest.approx(27_000.0)
    assert alert.transaction_ids[-3:] == ("tx-10", "tx-11", "tx-12")
    assert "30000.00 in and 27000.00 out (90%)" in alert.detail


def test_rapid_movement_not_when_the_money_stays_or_leaves_too_late() -> None:
    stays = [("c2", 0, 30_000.0, IN, "CN", ""), ("c2", HOUR, 10_000.0, OUT, "CN", "")]
    late = [("c3", 0, 30_000.0, IN, "CN", ""), ("c3", 3 * DAY, 29_000.0, OUT, "CN", "")]
    small = [("c4", 0, 3_000.0, IN, "CN", ""), ("c4", HOUR, 3_000.0, OUT, "CN", "")]
    assert of_rule(aml.scan(frame(stays + late + small), QUIET), AmlRule.RAPID_MOVEMENT) == []


def test_unusual_geography_high_risk_country() -> None:
    rows = [("c5", 0, 100.0, OUT, "KP", "x")]
    [alert] = of_rule(aml.scan(frame(rows), QUIET), AmlRule.UNUSUAL_GEOGRAPHY)
    assert alert.reasons == ("HIGH_RISK_COUNTRY",) and alert.transaction_ids == ("tx-0",)


def test_unusual_geography_first_seen_country_after_a_history() -> None:
    rows = [*routine("c6"), ("c6", 0, 15_000.0, OUT, "PT", "shop-1"), ("c6", HOUR, 200.0, OUT, "SG", "shop-1")]
    [alert] = of_rule(aml.scan(frame(rows), QUIET), AmlRule.UNUSUAL_GEOGRAPHY)
    # the small SG payment is below min_amount: only the PT one counts
    assert alert.reasons == ("FIRST_SEEN_COUNTRY",) and alert.transaction_ids == ("tx-10",)


def test_unusual_geography_not_without_history() -> None:
    rows = [("c7", 0, 15_000.0, OUT, "PT", "shop-1")]  # a first transaction is "first seen" by definition
    assert of_rule(aml.scan(frame(rows), QUIET), AmlRule.UNUSUAL_GEOGRAPHY) == []


def test_unusual_counterparties_fan_out_to_new_counterparties() -> None:
    rows = [*routine("c8"), *(("c8", k * HOUR, 900.0, OUT, "CN", f"mule-{k}") for k in range(8))]
    [alert] = of_rule(aml.scan(frame(rows), QUIET), AmlRule.UNUSUAL_COUNTERPARTIES)
    assert alert.reasons == ("NEW_COUNTERPARTIES",) and len(alert.transaction_ids) == 8
    assert alert.detail.startswith("8 new counterparties within 24h")


def test_unusual_counterparties_not_for_seven_or_known_ones() -> None:
    seven = [*routine("c9"), *(("c9", k * HOUR, 900.0, OUT, "CN", f"mule-{k}") for k in range(7))]
    known = [*routine("c10"), *(("c10", k * HOUR, 900.0, OUT, "CN", "shop-1") for k in range(12))]
    assert of_rule(aml.scan(frame(seven + known), QUIET), AmlRule.UNUSUAL_COUNTERPARTIES) == []


def test_volume_spike_against_the_customers_own_history() -> None:
    # nine weeks of 1,000 a week, then 30,000 in one week
    rows = [("c11", -week * 7 * DAY, 1_000.0, OUT, "CN", "shop-1") for week in range(9, 0, -1)]
    rows.append(("c11", 0, 30_000.0, OUT, "CN", "shop-1"))
    [alert] = of_rule(aml.scan(frame(rows), QUIET), AmlRule.VOLUME_SPIKE)
    assert alert.reasons == ("VOLUME_SPIKE",) and alert.amount == pytest.approx(30_000.0)
    assert alert.transaction_ids == ("tx-9",)
    assert "(30.0x)" in alert.detail


def test_volume_spike_not_without_a_full_baseline_or_a_big_enough_jump() -> None:
    young = [("c12", -2 * 7 * DAY, 1_000.0, OUT, "CN", "s"), ("c12", 0, 30_000.0, OUT, "CN", "s")]
    steady = [("c13", -week * 7 * DAY, 10_000.0, OUT, "CN", "s") for week in range(9, -1, -1)]
    assert of_rule(aml.scan(frame(young + steady), QUIET), AmlRule.VOLUME_SPIKE) == []


def test_only_patterns_ending_at_new_transactions_alert() -> None:
    rows = [("c1", k * HOUR, 48_000.0, IN, "CN", "") for k in range(3)]
    assert aml.scan(frame(rows, new=[False, False, False]), QUIET) == []
    [alert] = aml.scan(frame(rows, new=[False, False, True]), QUIET)
    assert alert.rule == AmlRule.STRUCTURING


def test_anomaly_score_flags_the_outlier_among_ordinary_customers() -> None:
    rng = np.random.default_rng(7)
    rows: list[tuple[str, int, float, int, str, str]] = []
    for c in range(300):
        for k in range(6):
            rows.append((f"n{c}", int(rng.integers(0, 20 * DAY)), float(rng.uniform(50, 400)), OUT, "CN", "shop"))
    # one customer: large amounts, money in, at night, many countries and counterparties
    rows += [("odd", k * 3 * HOUR + 2 * HOUR, 40_000.0, IN, ["SG", "HK", "PT", "GB"][k % 4], f"p{k}")
             for k in range(8)]
    rules = replace(aml.DEFAULT_RULES, anomaly=aml.AnomalyRule(contamination=0.003, min_customers=100))
    alerts = of_rule(aml.scan(frame(rows), rules), AmlRule.ANOMALY)
    assert [a.customer_id for a in alerts] == ["odd"]
    assert alerts[0].reasons == ("ANOMALOUS_BEHAVIOUR",) and 0.5 < alerts[0].anomaly_score <= 1


def test_anomaly_needs_a_population() -> None:
    rows = [("odd", k * HOUR, 40_000.0, IN, "SG", f"p{k}") for k in range(3)]
    rules = replace(aml.DEFAULT_RULES, anomaly=aml.AnomalyRule(min_customers=200))
    assert of_rule(aml.scan(frame(rows), rules), AmlRule.ANOMALY) == []


def test_disabled_rules_do_not_alert() -> None:
    rows = [("c1", k * HOUR, 48_000.0, IN, "KP", "") for k in range(3)]
    rules = replace(QUIET, structuring=aml.StructuringRule(disabled=True),
                    geography=aml.GeographyRule(disabled=True))
    assert aml.scan(frame(rows), rules) == []


def test_validate_rules_names_every_bad_field() -> None:
    rules = replace(aml.DEFAULT_RULES,
                    structuring=aml.StructuringRule(window=timedelta(0), margin=1.5),
                    rapid_movement=aml.RapidMovementRule(window=timedelta(days=91)),
                    geography=aml.GeographyRule(high_risk_countries=("kp",)))
    fields = [v.field for v in aml.validate_rules(rules)]
    assert fields == ["rules.structuring.margin", "rules.structuring.window", "rules.rapid_movement.window",
                      "rules.geography.high_risk_countries[0]"]
    assert aml.validate_rules(aml.DEFAULT_RULES) == []


def test_rules_round_trip_through_json() -> None:
    rules = replace(aml.DEFAULT_RULES, structuring=aml.StructuringRule(reporting_threshold=10_000,
                                                                      window=timedelta(hours=36)))
    back = aml.rules_from_json(aml.rules_to_json(rules), version="3", update_time=None, actor="ops")
    assert back.structuring == rules.structuring and back.geography == rules.geography
    assert (back.version, back.actor) == ("3", "ops")


@pytest.mark.parametrize(("current", "target", "allowed"), [
    (aml.CaseState.OPEN, aml.CaseState.INVESTIGATING, True),
    (aml.CaseState.OPEN, aml.CaseState.REPORTED, True),
    (aml.CaseState.INVESTIGATING, aml.CaseState.CLOSED, True),
    (aml.CaseState.REPORTED, aml.CaseState.CLOSED, True),
    (aml.CaseState.CLOSED, aml.CaseState.OPEN, True),
    (aml.CaseState.CLOSED, aml.CaseState.REPORTED, False),
    (aml.CaseState.INVESTIGATING, aml.CaseState.OPEN, False),
    (aml.CaseState.REPORTED, aml.CaseState.INVESTIGATING, False),
    (aml.CaseState.OPEN, aml.CaseState.OPEN, False),
])
def test_case_transitions(current: aml.CaseState, target: aml.CaseState, allowed: bool) -> None:
    assert (target in aml.TRANSITIONS[current]) is allowed
