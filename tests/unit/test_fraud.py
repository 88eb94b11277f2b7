"""The pure fraud rules (services/risk/fraud.py): settings, velocity windows and limits, features, the anomaly
model on synthetic traffic, and FRAUD_SUSPECTED in screening results."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from services.platform.config import ConfigError
from services.risk import fraud
from services.risk.domain import OfferVerdict, Reason, ScreeningResult, Verdict
from services.risk.fraud import KeyKind, Neighbour, VelocityHit, VelocityRule

T = datetime(2026, 12, 3, 14, 0, tzinfo=UTC)
RULES = fraud.parse_velocity(fraud.DEFAULT_VELOCITY)


def _near(*minutes: float, customer: str | None = None) -> list[Neighbour]:
    return [Neighbour(T - timedelta(minutes=m), customer) for m in minutes]


def test_default_velocity_rules_parse() -> None:
    assert RULES == (VelocityRule(KeyKind.DEVICE, 5, "h"), VelocityRule(KeyKind.PHONE, 3, "h"),
                     VelocityRule(KeyKind.IP, 20, "h"), VelocityRule(KeyKind.CUSTOMER, 3, "h"))
    assert [r.rule_id for r in RULES] == ["device:5/h", "phone:3/h", "ip:20/h", "customer:3/h"]
    assert fraud.parse_velocity("none") == ()
    assert fraud.parse_velocity(" Device : 2 / d ") == (VelocityRule(KeyKind.DEVICE, 2, "d"),)


@pytest.mark.parametrize("raw", ["device:0/h", "email:3/h", "device:3/week", "device 3/h", "device:3"])
def test_bad_velocity_rules_fail_fast(raw: str) -> None:
    with pytest.raises(ConfigError, match=fraud.VELOCITY):
        fraud.parse_velocity(raw)


@pytest.mark.parametrize(("name", "raw"), [(fraud.FLAG_DAYS, "-1"), (fraud.CONTAMINATION, "0.9"),
                                           (fraud.CONTAMINATION, "x"), (fraud.MIN_TRAINING, "5")])
def test_bad_numbers_fail_fast(name: str, raw: str) -> None:
    with pytest.raises(ConfigError, match=name):
        fraud.policy_from({name: raw})


def test_policy_defaults() -> None:
    policy = fraud.policy_from({})
    assert policy.rules == RULES
    assert policy.flag_period == timedelta(days=30)
    assert policy.contamination == 0.01
    assert policy.min_training == 200


@pytest.mark.parametrize(("kind", "limit"), [(KeyKind.DEVICE, 5), (KeyKind.PHONE, 3), (KeyKind.IP, 20),
                                              (KeyKind.CUSTOMER, 3)])
def test_each_rule_at_and_over_its_limit(kind: KeyKind, limit: int) -> None:
    at_limit = {kind: _near(*range(1, limit))}  # limit - 1 recorded + this one = limit
    assert fraud.velocity_hits(T, at_limit, RULES) == []
    over = {kind: _near(*range(1, limit + 1))}
    assert fraud.velocity_hits(T, over, RULES) == [VelocityHit(f"{kind.value}:{limit}/h", kind, limit + 1, limit)]


def test_every_rule_hit_is_reported() -> None:
    near = {KeyKind.DEVICE: _near(*range(1, 6)), KeyKind.PHONE: _near(1, 2, 3), KeyKind.IP: _near(1)}
    assert [h.rule_id for h in fraud.velocity_hits(T, near, RULES)] == ["device:5/h", "phone:3/h"]


def test_an_event_61_or_60_minutes_away_does_not_count() -> None:
    rules = (VelocityRule(KeyKind.PHONE, 1, "h"),)
    assert fraud.velocity_hits(T, {KeyKind.PHONE: _near(61)}, rules) == []
    assert fraud.velocity_hits(T, {KeyKind.PHONE: _near(60)}, rules) == []
    assert fraud.velocity_hits(T, {KeyKind.PHONE: _near(-61)}, rules) == []
    [hit] = fraud.velocity_hits(T, {KeyKind.PHONE: _near(59)}, rules)
    assert (hit.observed, hit.limit) == (2, 1)


def test_a_daily_rule_looks_a_day_around() -> None:
    rules = (VelocityRule(KeyKind.DEVICE, 2, "d"),)
    assert fraud.velocity_hits(T, {KeyKind.DEVICE: _near(23 * 60, 25 * 60)}, rules) == []
    assert len(fraud.velocity_hits(T, {KeyKind.DEVICE: _near(23 * 60, 60)}, rules)) == 1


def test_rules_for_a_key_the_event_lacks_do_not_apply() -> None:
    assert fraud.velocity_hits(T, {KeyKind.IP: _near(1)}, RULES) == []


def test_features() -> None:
    near = {KeyKind.DEVICE: [*_near(10, customer="a"), *_near(20, customer="b"), *_near(120, customer="a")],
            KeyKind.IP: _near(30, 25 * 60)}
    assert fraud.features(T, near) == [2, 3, 0, 0, 1, 1, 0, 0, 2, 14]
    assert len(fraud.FEATURES) == 10


def test_keyed_hash_hides_the_value_and_depends_on_the_key() -> None:
    a = fraud.keyed_hash(b"k1", KeyKind.IP, "203.0.113.7")
    assert "203.0.113.7" not in a and len(a) == 64
    assert a != fraud.keyed_hash(b"k2", KeyKind.IP, "203.0.113.7")
    assert a != fraud.keyed_hash(b"k1", KeyKind.DEVICE, "203.0.113.7")
    event = fraud.ActivityEvent(fraud.ActivityKind.LEAD_SUBMISSION, "p1", T, customer_id="c1", ip_address="::1")
    assert set(fraud.event_keys(event, b"k")) == {KeyKind.IP, KeyKind.CUSTOMER}


def test_training_size_doubles() -> None:
    assert [fraud.training_size(n, 200) for n in (0, 199, 200, 399, 400, 799, 800, 1700)] == [
        0, 0, 200, 200, 400, 400, 800, 1600]


def _normal_traffic(rng: random.Random, n: int) -> list[list[float]]:
    rows = []
    for _ in range(n):
        d1 = rng.choice([0, 0, 0, 1])
        p1 = rng.choice([0, 0, 1])
        ip1 = rng.randint(0, 3)
        c1 = rng.choice([0, 0, 1])
        rows.append([d1, d1 + rng.randint(0, 2), p1, p1 + rng.randint(0, 1), ip1, ip1 + rng.randint(0, 6), c1,
                     c1 + rng.randint(0, 1), rng.choice([0, 1, 1, 1]), rng.randint(8, 22)])
    return rows


def test_the_anomaly_model_separates_a_planted_burst_from_normal_traffic() -> None:
    rng = random.Random(7)
    model = fraud.train_anomaly_model(_normal_traffic(rng, 600), 0.01)
    assert model.training_events == 600
    normal = [model.assess(row) for row in _normal_traffic(rng, 200)]
    # A device hammering leads at 3 a.m. for many customers.
    burst = [model.assess([12 + i, 30 + i, 6, 10, 25, 80, 0, 0, 9 + i, 3]) for i in range(20)]
    assert all(a.scored for a in normal + burst)
    assert all(a.flagged for a in burst)
    assert sum(a.flagged for a in normal) <= 10  # about the 1 % contamination
    # Ranked like an AUC: nearly every (burst, normal) pair puts the burst event higher.
    pairs = [(b.score, n.score) for b in burst for n in normal]
    assert sum(b > n for b, n in pairs) / len(pairs) >= 0.98
    assert min(a.score for a in burst) > sorted(a.score for a in normal)[-5]
    # Deterministic: the same rows train the same model.
    again = fraud.train_anomaly_model(_normal_traffic(random.Random(7), 600), 0.01)
    assert again.threshold == model.threshold
    assert again.assess([12, 30, 6, 10, 25, 80, 0, 0, 9, 3]) == burst[0]


def test_decide() -> None:
    hit = VelocityHit("device:5/h", KeyKind.DEVICE, 6, 5)
    flagged = fraud.Anomaly(True, 0.8, 0.6, True, 200)
    assert fraud.decide([hit], fraud.Anomaly()) == fraud.FraudDecision.DENY
    assert fraud.decide([hit], flagged) == fraud.FraudDecision.DENY
    assert fraud.decide([], flagged) == fraud.FraudDecision.REVIEW
    assert fraud.decide([], fraud.Anomaly(True, 0.5, 0.6, False, 200)) == fraud.FraudDecision.ALLOW


def test_check_json_round_trips() -> None:
    check = fraud.FraudCheck(7, fraud.FraudDecision.DENY, (VelocityHit("ip:20/h", KeyKind.IP, 21, 20),),
                             fraud.Anomaly(True, 0.7, 0.6, True, 400))
    assert fraud.check_from_json(fraud.check_to_json(check)) == check


def test_mark_suspected_denies_every_offer() -> None:
    result = ScreeningResult((OfferVerdict("a", Verdict.ALLOW, ()),
                              OfferVerdict("b", Verdict.HOLD, (Reason.QUIET_HOURS,)),
                              OfferVerdict("c", Verdict.DENY, (Reason.UNSUITABLE,))), "v")
    marked = fraud.mark_suspected(result)
    assert [(v.verdict, v.reasons) for v in marked.verdicts] == [
        (Verdict.DENY, (Reason.FRAUD_SUSPECTED,)),
        (Verdict.DENY, (Reason.QUIET_HOURS, Reason.FRAUD_SUSPECTED)),
        (Verdict.DENY, (Reason.UNSUITABLE, Reason.FRAUD_SUSPECTED)),
    ]
