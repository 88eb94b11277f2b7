"""Anti-money-laundering monitoring: the rules, the anomaly score, cases, and the use cases (docs/aml.md).

The engine (`scan`) is vectorised over a frame of transactions sorted by customer and time: every rolling
window is found with one `searchsorted` over a composite key (customer code x span + seconds), and window sums
with cumulative sums, so millions of transactions are scanned without a Python loop per row or per customer.
Rules (each alert carries its rule, machine-readable reasons and a detail without personal data):

- STRUCTURING: >= min_count transactions in [threshold x (1 - margin), threshold) within `window`, together
  reaching the threshold (reason STRUCTURING_BELOW_THRESHOLD).
- RAPID_MOVEMENT: an outgoing transaction that brings the money out within `window` to >= out_ratio x the money
  in within the same window, the money in being >= min_amount (reason RAPID_IN_OUT).
- UNUSUAL_GEOGRAPHY: a transaction with a high-risk country (HIGH_RISK_COUNTRY), or with a country first seen
  for a customer with >= min_history earlier transactions, for >= min_amount (FIRST_SEEN_COUNTRY).
- UNUSUAL_COUNTERPARTIES: >= min_new_counterparties counterparties first seen within `window`, after
  >= min_history earlier transactions (reason NEW_COUNTERPARTIES).
- VOLUME_SPIKE: a period's volume >= multiplier x the customer's mean over the baseline_periods before it and
  >= min_amount, for a customer whose history reaches back over the whole baseline (reason VOLUME_SPIKE).
- ANOMALY: an isolation forest over per-customer features of the customers in the scan; the `contamination`
  most unusual raise an alert (reason ANOMALOUS_BEHAVIOUR), when there are >= min_customers customers.

Only patterns that end at a transaction marked `new` raise alerts (history gives context, not alerts again);
per customer and rule, flagged transactions within one window of each other form one episode and one alert.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy.exc

from services.platform.errors import Aborted, FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.risk import audit
from services.risk.db import AmlAlertRow, AmlCaseRow, AmlRepository, AmlRuleSetRow, RiskUnitOfWork
from services.risk.db import IdempotencyKey as IdempotencyKeyRow

log = logging.getLogger("lodestar.risk.aml")

MAX_WINDOW = timedelta(days=90)
MAX_IDS_PER_ALERT = 50
IN, OUT = 1, 2


class AmlRule(StrEnum):
    STRUCTURING = "STRUCTURING"
    RAPID_MOVEMENT = "RAPID_MOVEMENT"
    UNUSUAL_GEOGRAPHY = "UNUSUAL_GEOGRAPHY"
    UNUSUAL_COUNTERPARTIES = "UNUSUAL_COUNTERPARTIES"
    VOLUME_SPIKE = "VOLUME_SPIKE"
    ANOMALY = "ANOMALY"


class CaseState(StrEnum):
    OPEN = "OPEN"
    INVESTIGATING = "INVESTIGATING"
    CLOSED = "CLOSED"
    REPORTED = "REPORTED"


# Allowed case transitions: anything else is FAILED_PRECONDITION (INVALID_CASE_TRANSITION).
TRANSITIONS: Mapping[CaseState, frozenset[CaseState]] = {
    CaseState.OPEN: frozenset({CaseState.INVESTIGATING, CaseState.CLOSED, CaseState.REPORTED}),
    CaseState.INVESTIGATING: frozenset({CaseState.CLOSED, CaseState.REPORTED}),
    CaseState.REPORTED: frozenset({CaseState.CLOSED}),
    CaseState.CLOSED: frozenset({CaseState.OPEN}),
}


# --- rules -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class StructuringRule:
    disabled: bool = False
    reporting_threshold: float = 50_000.0
    margin: float = 0.1
    min_count: int = 3
    window: timedelta = timedelta(days=3)


@dataclass(frozen=True)
class RapidMovementRule:
    disabled: bool = False
    min_amount: float = 20_000.0
    out_ratio: float = 0.8
    window: timedelta = timedelta(hours=48)


@dataclass(frozen=True)
class GeographyRule:
    disabled: bool = False
    high_risk_countries: tuple[str, ...] = ("IR", "KP", "MM")
    min_amount: float = 10_000.0
    min_history: int = 5


@dataclass(frozen=True)
class CounterpartyRule:
    disabled: bool = False
    min_new_counterparties: int = 8
    window: timedelta = timedelta(days=1)
    min_history: int = 5


@dataclass(frozen=True)
class VolumeSpikeRule:
    disabled: bool = False
    period: timedelta = timedelta(days=7)
    baseline_periods: int = 8
    multiplier: float = 5.0
    min_amount: float = 20_000.0


@dataclass(frozen=True)
class AnomalyRule:
    disabled: bool = False
    contamination: float = 0.005
    min_customers: int = 200


@dataclass(frozen=True)
class AmlRules:
    structuring: StructuringRule = field(default_factory=StructuringRule)
    rapid_movement: RapidMovementRule = field(default_factory=RapidMovementRule)
    geography: GeographyRule = field(default_factory=GeographyRule)
    counterparties: CounterpartyRule = field(default_factory=CounterpartyRule)
    volume_spike: VolumeSpikeRule = field(default_factory=VolumeSpikeRule)
    anomaly: AnomalyRule = field(default_factory=AnomalyRule)
    version: str = "default"
    update_time: datetime | None = None
    actor: str = ""

    @property
    def lookback(self) -> timedelta:
        """How much history before a new transaction the rules read."""
        spike = self.volume_spike.period * (self.volume_spike.baseline_periods + 1)
        return max(self.structuring.window, self.rapid_movement.window, self.counterparties.window, spike)


DEFAULT_RULES = AmlRules()
_SECTIONS = ("structuring", "rapid_movement", "geography", "counterparties", "volume_spike", "anomaly")


def validate_rules(rules: AmlRules) -> list[FieldViolation]:
    """Every problem of a rule set, each naming its field as in SetAmlRulesRequest ("rules.structuring.window")."""
    out: list[FieldViolation] = []

    def bad(path: str, description: str) -> None:
        out.append(FieldViolation(f"rules.{path}", description))

    def window(path: str, value: timedelta) -> None:
        if value <= timedelta(0) or value > MAX_WINDOW or value.microseconds:
            bad(path, "must be a whole number of seconds, more than 0 and at most 90 days")

    def positive(path: str, value: float) -> None:
        if not np.isfinite(value) or value <= 0:
            bad(path, "must be more than 0")

    def count(path: str, value: int, low: int, high: int) -> None:
        if not low <= value <= high:
            bad(path, f"must be between {low} and {high}")

    s = rules.structuring
    positive("structuring.reporting_threshold", s.reporting_threshold)
    if not 0 < s.margin < 1:
        bad("structuring.margin", "must be a fraction between 0 and 1 (exclusive)")
    count("structuring.min_count", s.min_count, 2, 1000)
    window("structuring.window", s.window)
    r = rules.rapid_movement
    positive("rapid_movement.min_amount", r.min_amount)
    if not 0 < r.out_ratio <= 1:
        bad("rapid_movement.out_ratio", "must be a fraction more than 0 and at most 1")
    window("rapid_movement.window", r.window)
    g = rules.geography
    for n, code in enumerate(g.high_risk_countries):
        if len(code) != 2 or not code.isascii() or not code.isalpha() or not code.isupper():
            bad(f"geography.high_risk_countries[{n}]", "must be an ISO 3166-1 alpha-2 code such as IR")
    positive("geography.min_amount", g.min_amount)
    count("geography.min_history", g.min_history, 0, 100_000)
    c = rules.counterparties
    count("counterparties.min_new_counterparties", c.min_new_counterparties, 2, 100_000)
    window("counterparties.window", c.window)
    count("counterparties.min_history", c.min_history, 0, 100_000)
    v = rules.volume_spike
    window("volume_spike.period", v.period)
    count("volume_spike.baseline_periods", v.baseline_periods, 1, 52)
    if v.period * v.baseline_periods > timedelta(days=366):
        bad("volume_spike.baseline_periods", "period x baseline_periods must be at most 366 days")
    if not np.isfinite(v.multiplier) or v.multiplier <= 1:
        bad("volume_spike.multiplier", "must be more than 1")
    positive("volume_spike.min_amount", v.min_amount)
    a = rules.anomaly
    if not 0 < a.contamination <= 0.5:
        bad("anomaly.contamination", "must be more than 0 and at most 0.5")
    count("anomaly.min_customers", a.min_customers, 10, 10_000_000)
    return out


def rules_to_json(rules: AmlRules) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in _SECTIONS:
        section = dataclasses.asdict(getattr(rules, name))
        out[name] = {k: (v.total_seconds() if isinstance(v, timedelta) else list(v) if isinstance(v, tuple) else v)
                     for k, v in section.items()}
    return out


def rules_from_json(data: Mapping[str, Any], *, version: str, update_time: datetime | None,
                    actor: str) -> AmlRules:
    sections: dict[str, Any] = {}
    for name in _SECTIONS:
        kind = type(getattr(DEFAULT_RULES, name))
        values = dict(data.get(name, {}))
        for f in dataclasses.fields(kind):
            if f.name in values and isinstance(getattr(getattr(DEFAULT_RULES, name), f.name), timedelta):
                values[f.name] = timedelta(seconds=values[f.name])
            elif f.name in values and isinstance(getattr(getattr(DEFAULT_RULES, name), f.name), tuple):
                values[f.name] = tuple(values[f.name])
        sections[name] = kind(**values)
    return AmlRules(**sections, version=version, update_time=update_time, actor=actor)


# --- the engine --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Alert:
    customer_id: str
    rule: AmlRule
    reasons: tuple[str, ...]
    detail: str
    amount: float
    window_start: datetime
    window_end: datetime
    transaction_ids: tuple[str, ...]
    anomaly_score: float = 0.0


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g}h"


class _Frame:
    """The scan's arrays, sorted by customer then time."""

    def __init__(self, frame: pd.DataFrame, max_window: int) -> None:
        codes, customers = pd.factorize(frame["customer_id"], sort=False)
        t = frame["t"].to_numpy(dtype=np.int64)
        order = np.lexsort((t, codes))  # by customer code, then time: the codes never decrease along the rows
        self.customer_codes = codes[order]
        self.customers = np.asarray(customers)
        n = len(order)

        def column(name: str, dtype: Any = None) -> np.ndarray:
            if name not in frame:
                return np.full(n, "", dtype=object)
            return frame[name].to_numpy(dtype=dtype)[order]

        self.t = t[order]
        self.amount = column("amount", np.float64)
        self.direction = column("direction", np.int8)
        self.new = frame["new"].to_numpy(dtype=bool)[order] if "new" in frame else np.ones(n, dtype=bool)
        self.ids = column("transaction_id")
        self.country = column("country")
        self.counterparty = column("counterparty")
        self.n = n
        self.cache: dict[tuple[str, str], Any] = {}
        t0 = int(self.t.min()) if self.n else 0
        self.span = (int(self.t.max()) - t0 if self.n else 0) + max_window + 1
        self.key = self.customer_codes.astype(np.int64) * self.span + (self.t - t0)
        # index of each customer's first row
        starts = np.flatnonzero(np.r_[True, self.customer_codes[1:] != self.customer_codes[:-1]]) if self.n else \
            np.zeros(0, dtype=np.int64)
        self.group_start = np.repeat(starts, np.diff(np.r_[starts, self.n])) if self.n else starts
        self.position = np.arange(self.n) - self.group_start  # earlier transactions of the same customer

    def codes(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(codes, labels) of the country (upper-cased) or counterparty column: labels[codes] is each row's value
        as text, "" when missing or empty. Factorised once per column."""
        cached = self.cache.get(("codes", name))
        if cached is None:
            codes, uniques = pd.factorize(self.country if name == "country" else self.counterparty)
            text = ["" if u is None else str(u) for u in uniques]
            if name == "country":
                text = [t.upper() for t in text]
            merged, labels = pd.factorize(np.array([*text, ""], dtype=object))  # small: one per distinct value
            cached = (merged[codes], np.asarray(labels, dtype=object))  # code -1 (missing) -> the trailing ""
            self.cache[("codes", name)] = cached
        return cached

    def when(self, seconds: int) -> datetime:
        return datetime.fromtimestamp(int(seconds), UTC)


def _window_start(keys: np.ndarray, window: int) -> np.ndarray:
    """For each row, the first row of the same customer within (t - window, t]."""
    return np.searchsorted(keys, keys - window, side="right")


def _episodes(keys: np.ndarray, flagged: np.ndarray, window: int) -> np.ndarray:
    """Indices of the flagged rows that start an episode: no flagged row of the customer within `window` before."""
    rows = np.flatnonzero(flagged)
    if not len(rows):
        return rows
    gaps = np.diff(keys[rows])
    return rows[np.r_[True, gaps >= window]]


def _ids(ids: np.ndarray, rows: np.ndarray) -> tuple[str, ...]:
    return tuple(str(i) for i in ids[rows[-MAX_IDS_PER_ALERT:]])


def _structuring(fr: _Frame, rule: StructuringRule) -> list[Alert]:
    lower = rule.reporting_threshold * (1 - rule.margin)
    near = np.flatnonzero((fr.amount >= lower) & (fr.amount < rule.reporting_threshold))
    if len(near) < rule.min_count:
        return []
    window = int(rule.window.total_seconds())
    keys = fr.key[near]
    start = _window_start(keys, window)
    index = np.arange(len(near))
    count = index - start + 1
    csum = np.r_[0.0, np.cumsum(fr.amount[near])]
    total = csum[index + 1] - csum[start]
    flagged = (count >= rule.min_count) & (total >= rule.reporting_threshold) & fr.new[near]
    out = []
    for i in _episodes(keys, flagged, window):
        rows = near[start[i]:i + 1]
        out.append(Alert(
            str(fr.customers[fr.customer_codes[near[i]]]), AmlRule.STRUCTURING, ("STRUCTURING_BELOW_THRESHOLD",),
            f"{count[i]} transactions in [{lower:.2f}, {rule.reporting_threshold:.2f}) totalling {total[i]:.2f} "
            f"within {_hours(window)}", float(total[i]), fr.when(fr.t[rows[0]]), fr.when(fr.t[rows[-1]]),
            _ids(fr.ids, rows)))
    return out


def _rapid_movement(fr: _Frame, rule: RapidMovementRule) -> list[Alert]:
    window = int(rule.window.total_seconds())
    start = _window_start(fr.key, window)
    index = np.arange(fr.n)
    cin = np.r_[0.0, np.cumsum(np.where(fr.direction == IN, fr.amount, 0.0))]
    cout = np.r_[0.0, np.cumsum(np.where(fr.direction == OUT, fr.amount, 0.0))]
    money_in = cin[index + 1] - cin[start]
    money_out = cout[index + 1] - cout[start]
    flagged = ((fr.direction == OUT) & (money_in >= rule.min_amount) & (money_out >= rule.out_ratio * money_in)
               & fr.new)
    out = []
    for i in _episodes(fr.key, flagged, window):
        rows = np.arange(start[i], i + 1)
        out.append(Alert(
            str(fr.customers[fr.customer_codes[i]]), AmlRule.RAPID_MOVEMENT, ("RAPID_IN_OUT",),
            f"{money_in[i]:.2f} in and {money_out[i]:.2f} out ({money_out[i] / money_in[i]:.0%}) within "
            f"{_hours(window)}", float(money_out[i]), fr.when(fr.t[rows[0]]), fr.when(fr.t[i]), _ids(fr.ids, rows)))
    return out


def _first_seen(fr: _Frame, name: str) -> np.ndarray:
    """Rows whose (customer, value of column `name`) pair appears for the first time (in time order); empty
    values never. Cached per column: several rules ask."""
    cached = fr.cache.get(("first", name))
    if cached is None:
        codes, labels = fr.codes(name)
        pairs = fr.customer_codes.astype(np.int64) * (len(labels) + 1) + codes
        cached = ~pd.Series(pairs).duplicated().to_numpy() & (labels[codes] != "")
        fr.cache[("first", name)] = cached
    return cached


def _grouped(fr: _Frame, flagged: np.ndarray, rule: AmlRule, reasons_of: Callable[[np.ndarray], list[str]],
             detail: Callable[[np.ndarray], str]) -> list[Alert]:
    """One alert per customer over its flagged rows."""
    rows = np.flatnonzero(flagged)
    out: list[Alert] = []
    if not len(rows):
        return out
    bounds = np.flatnonzero(np.r_[True, fr.customer_codes[rows][1:] != fr.customer_codes[rows][:-1], True])
    for a, b in itertools.pairwise(bounds):
        group = rows[a:b]
        out.append(Alert(str(fr.customers[fr.customer_codes[group[0]]]), rule, tuple(reasons_of(group)),
                         detail(group), float(fr.amount[group].sum()), fr.when(fr.t[group[0]]),
                         fr.when(fr.t[group[-1]]), _ids(fr.ids, group)))
    return out


def _geography(fr: _Frame, rule: GeographyRule) -> list[Alert]:
    codes, labels = fr.codes("country")
    risky = np.isin(labels, list(rule.high_risk_countries))[codes] & fr.new
    first = (_first_seen(fr, "country") & (fr.position >= rule.min_history) & (fr.amount >= rule.min_amount)
             & fr.new)

    def reasons(group: np.ndarray) -> list[str]:
        out = []
        if risky[group].any():
            out.append("HIGH_RISK_COUNTRY")
        if first[group].any():
            out.append("FIRST_SEEN_COUNTRY")
        return out

    def detail(group: np.ndarray) -> str:
        return (f"{int(risky[group].sum())} transactions with high-risk countries, "
                f"{int(first[group].sum())} with a first-seen country")

    return _grouped(fr, risky | first, AmlRule.UNUSUAL_GEOGRAPHY, reasons, detail)


def _counterparties(fr: _Frame, rule: CounterpartyRule) -> list[Alert]:
    first = np.flatnonzero(_first_seen(fr, "counterparty") & (fr.position >= rule.min_history))
    if len(first) < rule.min_new_counterparties:
        return []
    window = int(rule.window.total_seconds())
    keys = fr.key[first]
    start = _window_start(keys, window)
    count = np.arange(len(first)) - start + 1
    flagged = (count >= rule.min_new_counterparties) & fr.new[first]
    out = []
    for i in _episodes(keys, flagged, window):
        rows = first[start[i]:i + 1]
        out.append(Alert(
            str(fr.customers[fr.customer_codes[first[i]]]), AmlRule.UNUSUAL_COUNTERPARTIES, ("NEW_COUNTERPARTIES",),
            f"{count[i]} new counterparties within {_hours(window)}", float(fr.amount[rows].sum()),
            fr.when(fr.t[rows[0]]), fr.when(fr.t[rows[-1]]), _ids(fr.ids, rows)))
    return out


def _volume_spike(fr: _Frame, rule: VolumeSpikeRule) -> list[Alert]:
    if not fr.n:
        return []
    period = int(rule.period.total_seconds())
    t0 = int(fr.t.min())
    bucket = (fr.t - t0) // period
    buckets = int(bucket.max()) + rule.baseline_periods + 2
    bkey = fr.customer_codes.astype(np.int64) * buckets + bucket
    keys, inverse = np.unique(bkey, return_inverse=True)  # sorted: customer, then period
    volume = np.bincount(inverse, weights=fr.amount)
    has_new = np.bincount(inverse, weights=fr.new.astype(np.float64)) > 0
    csum = np.r_[0.0, np.cumsum(volume)]
    lo = np.searchsorted(keys, keys - rule.baseline_periods, side="left")
    hi = np.arange(len(keys))  # periods strictly before this one
    baseline = (csum[hi] - csum[lo]) / rule.baseline_periods
    customer = keys // buckets
    first = np.flatnonzero(np.r_[True, customer[1:] != customer[:-1]])
    first_bucket = np.repeat(keys[first] % buckets, np.diff(np.r_[first, len(keys)]))
    full_history = (keys % buckets) - first_bucket >= rule.baseline_periods
    flagged = (full_history & has_new & (volume >= rule.min_amount) & (volume >= rule.multiplier * baseline))
    out = []
    row_order = np.argsort(inverse, kind="stable")
    row_bounds = np.r_[0, np.cumsum(np.bincount(inverse, minlength=len(keys)))]
    for j in np.flatnonzero(flagged):
        rows = row_order[row_bounds[j]:row_bounds[j + 1]]
        ratio = f"{volume[j] / baseline[j]:.1f}x" if baseline[j] > 0 else "no volume before"
        start = t0 + int(keys[j] % buckets) * period
        out.append(Alert(
            str(fr.customers[customer[j]]), AmlRule.VOLUME_SPIKE, ("VOLUME_SPIKE",),
            f"{volume[j]:.2f} in {_hours(period)} against a mean of {baseline[j]:.2f} over "
            f"{rule.baseline_periods} periods ({ratio})", float(volume[j]), fr.when(start),
            fr.when(start + period), _ids(fr.ids, rows)))
    return out


ANOMALY_FEATURES = ("log_count", "log_total", "log_max", "in_share", "countries", "counterparty_share",
                    "near_threshold_share", "night_share")


def customer_features(fr: _Frame, rules: AmlRules) -> tuple[np.ndarray, np.ndarray]:
    """(customer codes, features) over the rows of the customers with new transactions."""
    codes = fr.customer_codes
    m = int(codes.max()) + 1 if fr.n else 0
    count = np.bincount(codes, minlength=m).astype(np.float64)
    total = np.bincount(codes, weights=fr.amount, minlength=m)
    biggest = np.zeros(m)
    np.maximum.at(biggest, codes, fr.amount)
    money_in = np.bincount(codes, weights=np.where(fr.direction == IN, fr.amount, 0.0), minlength=m)
    countries = np.bincount(codes[_first_seen(fr, "country")], minlength=m)
    counterparties = np.bincount(codes[_first_seen(fr, "counterparty")], minlength=m)
    s = rules.structuring
    near = (fr.amount >= s.reporting_threshold * (1 - s.margin)) & (fr.amount < s.reporting_threshold)
    near_count = np.bincount(codes, weights=near.astype(np.float64), minlength=m)
    hour = (fr.t // 3600) % 24
    night = np.bincount(codes, weights=((hour < 6) | (hour >= 23)).astype(np.float64), minlength=m)
    wanted = np.flatnonzero(np.bincount(codes, weights=fr.new.astype(np.float64), minlength=m) > 0)
    safe = np.maximum(count, 1)
    matrix = np.column_stack([np.log1p(count), np.log1p(total), np.log1p(biggest), money_in / np.maximum(total, 1e-9),
                              countries, counterparties / safe, near_count / safe, night / safe])
    return wanted, matrix[wanted]


def _anomaly(fr: _Frame, rules: AmlRules) -> tuple[list[Alert], dict[str, float]]:
    rule = rules.anomaly
    wanted, features = customer_features(fr, rules)
    if len(wanted) < rule.min_customers:
        return [], {}
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(n_estimators=100, max_samples=min(256, len(wanted)), contamination=rule.contamination,
                             random_state=0)
    forest.fit(features)
    scores = -forest.score_samples(features)  # 0..1, higher = more unusual
    flagged = scores > -forest.offset_  # what predict() calls an outlier, without scoring twice
    by_customer = {str(fr.customers[c]): float(s) for c, s in zip(wanted, scores, strict=True)}
    out = []
    if flagged.any():
        first_row = np.searchsorted(fr.customer_codes, wanted[flagged], side="left")
        last_row = np.searchsorted(fr.customer_codes, wanted[flagged], side="right") - 1
        for code, score, a, b in zip(wanted[flagged], scores[flagged], first_row, last_row, strict=True):
            rows = np.arange(a, b + 1)
            rows = rows[fr.new[rows]]
            out.append(Alert(str(fr.customers[code]), AmlRule.ANOMALY, ("ANOMALOUS_BEHAVIOUR",),
                             f"anomaly score {score:.3f} among {len(wanted)} customers", float(fr.amount[rows].sum()),
                             fr.when(fr.t[rows[0]]), fr.when(fr.t[rows[-1]]), _ids(fr.ids, rows), float(score)))
    return out, by_customer


def scan(frame: pd.DataFrame, rules: AmlRules = DEFAULT_RULES) -> list[Alert]:
    """Alerts over `frame`: columns transaction_id, customer_id, t (epoch seconds), amount, direction (1 in,
    2 out), country, counterparty, and optionally new (bool; default all new). Any order."""
    if frame.empty:
        return []
    windows = [rules.structuring.window, rules.rapid_movement.window, rules.counterparties.window]
    fr = _Frame(frame, int(max(windows).total_seconds()) + 1)
    alerts: list[Alert] = []
    if not rules.structuring.disabled:
        alerts += _structuring(fr, rules.structuring)
    if not rules.rapid_movement.disabled:
        alerts += _rapid_movement(fr, rules.rapid_movement)
    if not rules.geography.disabled:
        alerts += _geography(fr, rules.geography)
    if not rules.counterparties.disabled:
        alerts += _counterparties(fr, rules.counterparties)
    if not rules.volume_spike.disabled:
        alerts += _volume_spike(fr, rules.volume_spike)
    scores: dict[str, float] = {}
    if not rules.anomaly.disabled:
        anomalies, scores = _anomaly(fr, rules)
        alerts += anomalies
    if scores:
        alerts = [a if a.anomaly_score else dataclasses.replace(a, anomaly_score=scores.get(a.customer_id, 0.0))
                  for a in alerts]
    return alerts


# --- the use cases -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transaction:
    transaction_id: str
    customer_id: str
    occurred_at: datetime
    amount: float
    currency: str
    direction: int
    country: str
    counterparty: str
    channel: str


@dataclass(frozen=True)
class MonitorOutcome:
    accepted: int = 0
    duplicates: int = 0
    alerts: int = 0
    cases_opened: int = 0
    rules_version: str = "default"


@dataclass(frozen=True)
class Case:
    case_id: int
    customer_id: str
    state: CaseState
    alert_count: int
    rules: tuple[str, ...]
    create_time: datetime
    update_time: datetime
    actor: str
    version: int

    @property
    def etag(self) -> str:
        return f'"{self.version}"'


@dataclass(frozen=True)
class StoredAlert:
    alert_id: int
    case_id: int
    rules_version: str
    create_time: datetime
    alert: Alert


def case_to_json(case: Case) -> bytes:
    return json.dumps({**dataclasses.asdict(case), "create_time": case.create_time.isoformat(),
                       "update_time": case.update_time.isoformat()}).encode()


def case_from_json(data: bytes) -> Case:
    d = json.loads(data)
    return Case(d["case_id"], d["customer_id"], CaseState(d["state"]), d["alert_count"], tuple(d["rules"]),
                datetime.fromisoformat(d["create_time"]), datetime.fromisoformat(d["update_time"]), d["actor"],
                d["version"])


def rules_to_bytes(rules: AmlRules) -> bytes:
    return json.dumps({"rules": rules_to_json(rules), "version": rules.version, "actor": rules.actor,
                       "update_time": rules.update_time.isoformat() if rules.update_time else None}).encode()


def rules_from_bytes(data: bytes) -> AmlRules:
    d = json.loads(data)
    return rules_from_json(d["rules"], version=d["version"], actor=d["actor"],
                           update_time=datetime.fromisoformat(d["update_time"]) if d["update_time"] else None)


CASE_CODEC = Codec(encode=case_to_json, decode=case_from_json)
RULES_CODEC = Codec(encode=rules_to_bytes, decode=rules_from_bytes)


def counterparty_key(value: str, hash_key: bytes) -> str:
    return hmac.new(hash_key, f"counterparty\0{value}".encode(), hashlib.sha256).hexdigest() if value else ""


class AmlMonitor:
    """AmlService's use cases; owns the transactions; every alert and change is appended to the audit log."""

    def __init__(self, uow_factory: Callable[[], RiskUnitOfWork], *, hash_key: bytes,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.uow_factory = uow_factory
        self.hash_key = hash_key
        self.clock = clock

    @staticmethod
    def _repo(uow: RiskUnitOfWork) -> AmlRepository:
        return AmlRepository(uow.session)

    async def rules(self) -> AmlRules:
        async with self.uow_factory() as uow:
            return await self._rules(uow)

    async def _rules(self, uow: RiskUnitOfWork) -> AmlRules:
        row = await self._repo(uow).latest_rules()
        if row is None:
            return DEFAULT_RULES
        return rules_from_json(row.rules, version=str(row.version), update_time=row.create_time, actor=row.actor)

    async def set_rules(self, rules: AmlRules, actor: str, key: IdempotencyKey | None) -> AmlRules:
        violations = validate_rules(rules)
        if violations:
            reason = ("INVALID_WINDOW" if any(v.field.endswith((".window", ".period")) for v in violations)
                      else "INVALID_AML_RULE")
            raise InvalidArgument(violations, reason=reason)
        async def change(uow: RiskUnitOfWork) -> AmlRules:
            now = self.clock()
            body = rules_to_json(rules)
            await uow.audit.append(now, [("AML_RULES", actor, "amlRules", {"actor": actor},
                                          audit.payload_hash(body))])
            repo = self._repo(uow)
            latest = await repo.latest_rules()
            version = (latest.version if latest else 0) + 1
            await repo.add_rules(AmlRuleSetRow(version=version, rules=body, actor=actor, create_time=now))
            return dataclasses.replace(rules, version=str(version), update_time=now, actor=actor)

        result: AmlRules = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, RULES_CODEC, change)
        log.info("aml rules set", extra={"rules_version": result.version})
        return result

    async def monitor(self, transactions: Sequence[Transaction]) -> MonitorOutcome:
        """Stores the batch's new transactions, scans them with their customers' history, stores the alerts, opens
        or extends cases and audits each alert, in one transaction. A concurrent batch storing one of the same
        transaction ids first makes this one start again (its copy is then a duplicate)."""
        try:
            return await self._monitor(transactions)
        except sqlalchemy.exc.IntegrityError:
            return await self._monitor(transactions)

    async def _monitor(self, transactions: Sequence[Transaction]) -> MonitorOutcome:
        now = self.clock()
        async with self.uow_factory() as uow:
            repo = self._repo(uow)
            rules = await self._rules(uow)
            ids = [t.transaction_id for t in transactions]
            existing = await repo.existing_transactions(ids)
            fresh: dict[str, Transaction] = {}
            for t in transactions:
                if t.transaction_id not in existing and t.transaction_id not in fresh:
                    fresh[t.transaction_id] = t
            duplicates = len(transactions) - len(fresh)
            if not fresh:
                return MonitorOutcome(0, duplicates, 0, 0, rules.version)
            new = list(fresh.values())
            customers = list(dict.fromkeys(t.customer_id for t in new))
            since = min(t.occurred_at for t in new) - rules.lookback
            history = await repo.history(customers, since)
            keys = [counterparty_key(t.counterparty, self.hash_key) for t in new]
            await repo.add_transactions([{
                "transaction_id": t.transaction_id, "customer_id": t.customer_id, "occurred_at": t.occurred_at,
                "amount": t.amount, "currency": t.currency, "direction": "IN" if t.direction == IN else "OUT",
                "country": t.country, "counterparty_key": k, "channel": t.channel, "create_time": now,
            } for t, k in zip(new, keys, strict=True)])
            frame = pd.DataFrame({
                "transaction_id": [h[0] for h in history] + [t.transaction_id for t in new],
                "customer_id": [h[1] for h in history] + [t.customer_id for t in new],
                "t": [int(h[2].timestamp()) for h in history] + [int(t.occurred_at.timestamp()) for t in new],
                "amount": [float(h[3]) for h in history] + [t.amount for t in new],
                "direction": [IN if h[4] == "IN" else OUT for h in history] + [t.direction for t in new],
                "country": [h[5] for h in history] + [t.country for t in new],
                "counterparty": [h[6] for h in history] + keys,
                "new": [False] * len(history) + [True] * len(new),
            })
            alerts = await asyncio.to_thread(scan, frame, rules)
            # an episode already alerted in an earlier batch (same customer and rule, overlapping window) is not
            # alerted again
            ends = await repo.last_alert_ends(customers) if alerts else {}
            alerts = [a for a in alerts if (a.customer_id, a.rule.value) not in ends
                      or ends[(a.customer_id, a.rule.value)] < a.window_start]
            opened = 0
            if alerts:
                cases = await repo.active_cases(list(dict.fromkeys(a.customer_id for a in alerts)))
                for a in alerts:
                    case = cases.get(a.customer_id)
                    if case is None:
                        case = cases[a.customer_id] = await repo.add_case(AmlCaseRow(
                            customer_id=a.customer_id, state=CaseState.OPEN.value, alert_count=0, rules=[],
                            actor="risk", version=1, create_time=now, update_time=now))
                        opened += 1
                    case.alert_count += 1
                    if a.rule.value not in case.rules:
                        case.rules = [*case.rules, a.rule.value]
                    case.update_time = now
                rows = await repo.add_alerts([AmlAlertRow(
                    customer_id=a.customer_id, case_id=cases[a.customer_id].id, rule=a.rule.value,
                    reasons=list(a.reasons), detail=a.detail[:256], amount=a.amount, anomaly_score=a.anomaly_score,
                    window_start=a.window_start, window_end=a.window_end, transaction_ids=list(a.transaction_ids),
                    rules_version=rules.version, create_time=now) for a in alerts])
                await uow.audit.append(now, [(
                    "AML_ALERT", "risk", customer_token(row.customer_id),
                    {"alert": f"amlAlerts/{row.id}", "case": f"amlCases/{row.case_id}", "rule": row.rule,
                     "reasons": row.reasons, "rules_version": rules.version},
                    audit.payload_hash({"detail": row.detail, "amount": row.amount,
                                        "transactions": row.transaction_ids,
                                        "window": [row.window_start.isoformat(), row.window_end.isoformat()]}),
                ) for row in rows])
            await uow.commit()
        log.info("aml monitored", extra={"accepted": len(new), "duplicates": duplicates, "alerts": len(alerts),
                                         "cases_opened": opened, "rules_version": rules.version})
        return MonitorOutcome(len(new), duplicates, len(alerts), opened, rules.version)

    async def list_alerts(self, *, customer_id: str | None, rule: AmlRule | None, case_id: int | None,
                          before_id: int | None, page_size: int) -> tuple[list[StoredAlert], int | None]:
        async with self.uow_factory() as uow:
            rows = await self._repo(uow).alerts_page(customer_id=customer_id, rule=rule.value if rule else None,
                                                     case_id=case_id, before_id=before_id, limit=page_size + 1)
            more = len(rows) > page_size
            rows = rows[:page_size]
            out = [StoredAlert(r.id, r.case_id, r.rules_version, r.create_time, Alert(
                r.customer_id, AmlRule(r.rule), tuple(r.reasons), r.detail, r.amount, r.window_start, r.window_end,
                tuple(r.transaction_ids), r.anomaly_score)) for r in rows]
            return out, (rows[-1].id if more and rows else None)

    async def list_cases(self, *, state: CaseState | None, customer_id: str | None, before_id: int | None,
                         page_size: int) -> tuple[list[Case], int | None]:
        async with self.uow_factory() as uow:
            rows = await self._repo(uow).cases_page(state=state.value if state else None, customer_id=customer_id,
                                                    before_id=before_id, limit=page_size + 1)
            more = len(rows) > page_size
            rows = rows[:page_size]
            return [_case(r) for r in rows], (rows[-1].id if more and rows else None)

    async def update_case(self, case_id: int, target: CaseState, *, actor: str, note: str, etag: str,
                          key: IdempotencyKey | None) -> Case:
        async def change(uow: RiskUnitOfWork) -> Case:
            now = self.clock()
            row = await self._repo(uow).case(case_id, for_update=True)
            if row is None:
                raise NotFound("amlCase", f"amlCases/{case_id}", reason="AML_CASE_NOT_FOUND")
            current = CaseState(row.state)
            if etag and etag != _case(row).etag:
                raise Aborted("ETAG_MISMATCH", "the case changed since it was read; read it again",
                              metadata={"etag": _case(row).etag})
            if target not in TRANSITIONS[current]:
                raise FailedPrecondition(
                    "INVALID_CASE_TRANSITION", f"a {current.value.lower()} case cannot become {target.value.lower()}",
                    metadata={"state": current.value, "target": target.value})
            await uow.audit.append(now, [(
                "AML_CASE", actor, customer_token(row.customer_id),
                {"case": f"amlCases/{row.id}", "from": current.value, "to": target.value},
                audit.payload_hash({"note": note, "case": row.id, "to": target.value}))])
            row.state = target.value
            row.actor = actor
            row.version += 1
            row.update_time = now
            await uow.session.flush()
            return _case(row)

        result: Case = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CASE_CODEC, change)
        log.info("aml case updated", extra={"case": f"amlCases/{case_id}", "state": result.state.value,
                                            "customer_token": customer_token(result.customer_id)})
        return result


def _case(row: Any) -> Case:
    return Case(row.id, row.customer_id, CaseState(row.state), row.alert_count, tuple(row.rules), row.create_time,
                row.update_time, row.actor, row.version)
