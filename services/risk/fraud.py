"""Fraud and abuse checks: velocity rules and an anomaly model over activity events. Pure code: no I/O, no clock.

Settings (read once when the service starts; a malformed value fails fast):

RISK_FRAUD_VELOCITY          velocity rules, e.g. "device:5/h,phone:3/h,ip:20/h,customer:3/h" (the default):
                             `<key>:<limit>/<period>`, key device, phone, ip or customer, period h (1 hour) or
                             d (24 hours), rolling; "" or "none" = no velocity rules
RISK_FRAUD_FLAG_DAYS         a customer with a denied or flagged event in the last N days is screened
                             FRAUD_SUSPECTED for every offer (default 30; 0 turns this off)
RISK_FRAUD_CONTAMINATION     the share of training events the anomaly model treats as anomalous; sets its
                             threshold (default 0.01, between 0.0001 and 0.5)
RISK_FRAUD_MIN_TRAINING      recorded events needed before the anomaly model is trained (default 200)
RISK_FRAUD_HASH_KEY          the key of the keyed hash (HMAC-SHA256) under which device ids, phone hashes and IP
                             addresses are stored; set it in production (the default is for development only)

Velocity rule: for each rule whose key the event carries, `observed` is the number of recorded events with the
same key whose time is within the rule's period of this event's time (|t - t'| < period: an event 61 minutes
away does not count towards an hourly rule, one 60 minutes away neither), this event included. Every attempt is
recorded, denied ones too, so a burst stays denied. observed > limit -> a hit; any hit -> DENY.

Anomaly model: an IsolationForest (scikit-learn, 100 trees, random_state 0) over FEATURES of each event,
computed when it is recorded from the events around it. It is trained once at least RISK_FRAUD_MIN_TRAINING
events are recorded, on the most recent MAX_TRAINING events among the first `training_size(count)` ones
(`min_training * 2**k`, so it is retrained each time the history doubles, and every replica trains the same
model from the same rows). score = -score_samples (higher is more anomalous); flagged when score > threshold,
threshold = -offset_ (the model's cut-off for the configured contamination). A flagged event without velocity
hits is REVIEW.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
from sklearn.ensemble import IsolationForest

from services.platform.config import ConfigError
from services.risk.domain import Reason, ScreeningResult, Verdict

VELOCITY = "RISK_FRAUD_VELOCITY"
FLAG_DAYS = "RISK_FRAUD_FLAG_DAYS"
CONTAMINATION = "RISK_FRAUD_CONTAMINATION"
MIN_TRAINING = "RISK_FRAUD_MIN_TRAINING"
HASH_KEY = "RISK_FRAUD_HASH_KEY"
FRAUD_SETTINGS = (VELOCITY, FLAG_DAYS, CONTAMINATION, MIN_TRAINING, HASH_KEY)

DEFAULT_VELOCITY = "device:5/h,phone:3/h,ip:20/h,customer:3/h"
DEFAULT_FLAG_DAYS = 30
DEFAULT_CONTAMINATION = 0.01
DEFAULT_MIN_TRAINING = 200
DEFAULT_HASH_KEY = "lodestar-fraud-dev-key"
MAX_TRAINING = 4096
RANDOM_STATE = 0
TREES = 100
PERIODS = {"h": timedelta(hours=1), "d": timedelta(days=1)}
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# How far around an event its features and rules look.
FEATURE_WINDOW = DAY

_RULE = re.compile(r"^\s*([a-z]+)\s*:\s*(\d{1,6})\s*/\s*([a-z]+)\s*$")


class ActivityKind(StrEnum):
    LEAD_SUBMISSION = "LEAD_SUBMISSION"
    OFFER_REDEMPTION = "OFFER_REDEMPTION"


class FraudDecision(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    REVIEW = "REVIEW"


class KeyKind(StrEnum):
    DEVICE = "device"
    PHONE = "phone"
    IP = "ip"
    CUSTOMER = "customer"


@dataclass(frozen=True)
class VelocityRule:
    key: KeyKind
    limit: int
    period: str  # "h" or "d"

    @property
    def rule_id(self) -> str:
        return f"{self.key.value}:{self.limit}/{self.period}"

    @property
    def length(self) -> timedelta:
        return PERIODS[self.period]


@dataclass(frozen=True)
class FraudPolicy:
    rules: tuple[VelocityRule, ...] = ()
    flag_period: timedelta = timedelta(days=DEFAULT_FLAG_DAYS)
    contamination: float = DEFAULT_CONTAMINATION
    min_training: int = DEFAULT_MIN_TRAINING
    hash_key: bytes = DEFAULT_HASH_KEY.encode()


@dataclass(frozen=True)
class ActivityEvent:
    kind: ActivityKind
    partner_id: str
    event_time: datetime
    customer_id: str = ""
    device_id: str = ""
    phone_hash: str = ""
    ip_address: str = ""


@dataclass(frozen=True)
class VelocityHit:
    rule_id: str
    key: KeyKind
    observed: int
    limit: int


@dataclass(frozen=True)
class Anomaly:
    scored: bool = False
    score: float = 0.0
    threshold: float = 0.0
    flagged: bool = False
    training_events: int = 0


@dataclass(frozen=True)
class FraudCheck:
    check_id: int
    decision: FraudDecision
    hits: tuple[VelocityHit, ...] = ()
    anomaly: Anomaly = field(default_factory=Anomaly)

    @property
    def suspected(self) -> bool:
        return self.decision != FraudDecision.ALLOW


@dataclass(frozen=True)
class Neighbour:
    """A recorded event near the checked one, as the rules and features see it."""

    event_time: datetime
    customer_id: str | None


# --- settings ----------------------------------------------------------------------------------------------

def parse_velocity(raw: str) -> tuple[VelocityRule, ...]:
    raw = raw.strip()
    if raw.lower() in ("", "none"):
        return ()
    rules: list[VelocityRule] = []
    keys = {k.value: k for k in KeyKind}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        match = _RULE.match(part.lower())
        if not match or match.group(1) not in keys or match.group(3) not in PERIODS or int(match.group(2)) < 1:
            raise ConfigError(f"{VELOCITY}: {part!r} must be <key>:<limit>/<period> with key device, phone, ip or "
                              "customer, limit >= 1 and period h or d")
        rules.append(VelocityRule(keys[match.group(1)], int(match.group(2)), match.group(3)))
    return tuple(rules)


def _number(name: str, raw: str | None, default: float, low: float, high: float, *, integer: bool) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw.strip()) if integer else float(raw.strip())
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigError(f"{name} must be {'a whole number' if integer else 'a number'} between {low} and "
                          f"{high}, got {raw!r}")
    return value


def policy_from(extra: Mapping[str, str]) -> FraudPolicy:
    velocity = extra.get(VELOCITY)
    return FraudPolicy(
        rules=parse_velocity(DEFAULT_VELOCITY if velocity is None else velocity),
        flag_period=timedelta(days=_number(FLAG_DAYS, extra.get(FLAG_DAYS), DEFAULT_FLAG_DAYS, 0, 3650,
                                           integer=True)),
        contamination=_number(CONTAMINATION, extra.get(CONTAMINATION), DEFAULT_CONTAMINATION, 0.0001, 0.5,
                              integer=False),
        min_training=int(_number(MIN_TRAINING, extra.get(MIN_TRAINING), DEFAULT_MIN_TRAINING, 10, 1_000_000,
                                 integer=True)),
        hash_key=(extra.get(HASH_KEY) or DEFAULT_HASH_KEY).encode(),
    )


# --- keys --------------------------------------------------------------------------------------------------

def keyed_hash(key: bytes, kind: KeyKind, value: str) -> str:
    """What is stored for a device id, phone hash or IP address: HMAC-SHA256 under the service's key."""
    return hmac.new(key, f"{kind.value}\0{value}".encode(), hashlib.sha256).hexdigest()


def event_keys(event: ActivityEvent, hash_key: bytes) -> dict[KeyKind, str]:
    """The stored value of each key the event carries (customer ids as they are: risk keys its tables by them)."""
    keys: dict[KeyKind, str] = {}
    if event.device_id:
        keys[KeyKind.DEVICE] = keyed_hash(hash_key, KeyKind.DEVICE, event.device_id)
    if event.phone_hash:
        keys[KeyKind.PHONE] = keyed_hash(hash_key, KeyKind.PHONE, event.phone_hash.lower())
    if event.ip_address:
        keys[KeyKind.IP] = keyed_hash(hash_key, KeyKind.IP, event.ip_address)
    if event.customer_id:
        keys[KeyKind.CUSTOMER] = event.customer_id
    return keys


# --- velocity ----------------------------------------------------------------------------------------------

def _within(neighbours: Sequence[Neighbour], at: datetime, length: timedelta) -> int:
    return sum(1 for n in neighbours if abs(n.event_time - at) < length)


def velocity_hits(at: datetime, neighbours: Mapping[KeyKind, Sequence[Neighbour]],
                  rules: Sequence[VelocityRule]) -> list[VelocityHit]:
    """The rules an event at `at` exceeds; `neighbours` are the recorded events sharing each key (the event
    itself not among them)."""
    hits = []
    for rule in rules:
        if rule.key not in neighbours:
            continue
        observed = _within(neighbours[rule.key], at, rule.length) + 1
        if observed > rule.limit:
            hits.append(VelocityHit(rule.rule_id, rule.key, observed, rule.limit))
    return hits


# --- features and the anomaly model -----------------------------------------------------------------------

FEATURES = (
    "device_1h", "device_24h", "phone_1h", "phone_24h", "ip_1h", "ip_24h", "customer_1h", "customer_24h",
    "device_customers_24h", "hour_of_day",
)


def features(at: datetime, neighbours: Mapping[KeyKind, Sequence[Neighbour]]) -> list[float]:
    """FEATURES of an event at `at` (UTC hour of day): counts of the other events sharing each key within an hour
    and a day (0 for a key the event lacks), and the distinct customers seen on its device within a day."""
    out: list[float] = []
    for kind in (KeyKind.DEVICE, KeyKind.PHONE, KeyKind.IP, KeyKind.CUSTOMER):
        near = neighbours.get(kind, ())
        out += [float(_within(near, at, HOUR)), float(_within(near, at, DAY))]
    device = neighbours.get(KeyKind.DEVICE, ())
    out.append(float(len({n.customer_id for n in device if n.customer_id and abs(n.event_time - at) < DAY})))
    out.append(float(at.hour))
    return out


def training_size(count: int, min_training: int) -> int:
    """How many of the first recorded events the model is trained on: min_training * 2**k <= count (0: none)."""
    if count < min_training:
        return 0
    size = min_training
    while size * 2 <= count:
        size *= 2
    return size


@dataclass(frozen=True)
class AnomalyModel:
    forest: Any
    threshold: float
    training_events: int

    def assess(self, vector: Sequence[float]) -> Anomaly:
        score = float(-self.forest.score_samples(np.asarray([vector], dtype=float))[0])
        return Anomaly(True, round(score, 6), round(self.threshold, 6), score > self.threshold,
                       self.training_events)


def train_anomaly_model(rows: Sequence[Sequence[float]], contamination: float) -> AnomalyModel:
    """An IsolationForest over feature rows, deterministic (random_state fixed)."""
    forest = IsolationForest(n_estimators=TREES, contamination=contamination, random_state=RANDOM_STATE)
    forest.fit(np.asarray(rows, dtype=float))
    return AnomalyModel(forest, float(-forest.offset_), len(rows))


def decide(hits: Sequence[VelocityHit], anomaly: Anomaly) -> FraudDecision:
    if hits:
        return FraudDecision.DENY
    if anomaly.flagged:
        return FraudDecision.REVIEW
    return FraudDecision.ALLOW


# --- screening ---------------------------------------------------------------------------------------------

def mark_suspected(result: ScreeningResult) -> ScreeningResult:
    """Every offer of a customer with a recent fraud flag: DENY, FRAUD_SUSPECTED added to its reasons."""
    verdicts = tuple(
        replace(v, verdict=Verdict.DENY, reasons=tuple(dict.fromkeys([*v.reasons, Reason.FRAUD_SUSPECTED])))
        for v in result.verdicts
    )
    return replace(result, verdicts=verdicts)


def check_to_json(check: FraudCheck) -> dict[str, Any]:
    return {
        "id": check.check_id, "decision": check.decision.value,
        "hits": [{"rule": h.rule_id, "key": h.key.value, "observed": h.observed, "limit": h.limit}
                 for h in check.hits],
        "anomaly": {"scored": check.anomaly.scored, "score": check.anomaly.score,
                    "threshold": check.anomaly.threshold, "flagged": check.anomaly.flagged,
                    "training_events": check.anomaly.training_events},
    }


def check_from_json(data: Mapping[str, Any]) -> FraudCheck:
    a = data["anomaly"]
    return FraudCheck(
        int(data["id"]), FraudDecision(data["decision"]),
        tuple(VelocityHit(h["rule"], KeyKind(h["key"]), int(h["observed"]), int(h["limit"])) for h in data["hits"]),
        Anomaly(bool(a["scored"]), float(a["score"]), float(a["threshold"]), bool(a["flagged"]),
                int(a["training_events"])),
    )

