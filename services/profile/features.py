"""Feature definitions, point-in-time correct, and their two executors.

`AGGREGATES` (plus recency, tenure and products held below) is the one definition of every feature. Two
executors run it: `compute_one` in plain Python over one customer's records (real-time decisions: no pandas
overhead) and `compute_batch` in pandas over a frame of many customers (campaigns, training sets), all as of one
time, or `compute_points` over many (customer, as_of) points, each as of its own time (BatchGetFeatures: training
rows as of their contact times) — the same pandas code, keyed by point instead of customer. All take
the same flat records (`events_db.EVENT_COLUMNS`) and drop anything not known at `as_of` (recorded_at >
as_of) or not yet happened (occurred_at > as_of), whatever the loader did. tests/unit/test_profile_features*.py
prove that they agree. Definitions: docs/features.md.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from services.profile.events_db import EVENT_COLUMNS

FEATURE_VERSION = "1"
WINDOWS = (30, 90, 365)
# Every feature looks back at most this far (tenure aside, which uses the first event ever).
LOOKBACK_DAYS = 365
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DIGITAL_ACTIONS = ("view", "click", "application", "login")
# Attribute names read by features (values are the customer's current attributes).
ATTR_CUSTOMER_SINCE = "customer_since"
ATTR_PRODUCTS_HELD = "products_held"


def time_of_day(hour: int) -> str:
    """night [00:00, 06:00), morning [06:00, 12:00), afternoon [12:00, 18:00), evening [18:00, 24:00)."""
    if hour < 6:
        return "night"
    if hour < 12:
        return "morning"
    if hour < 18:
        return "afternoon"
    return "evening"


@dataclass(frozen=True)
class Aggregate:
    """count/sum/max of events of `kind` that occurred in (as_of - offset - window, as_of - offset]."""

    name: str  # "{key}" is replaced by the group's value when `by` is set
    kind: str
    op: Literal["count", "sum", "max"]
    window_days: int
    measure: str | None = None
    by: str | None = None
    where: tuple[str, str, Any] | None = None  # (column, "==" or ">", value)
    offset_days: int = 0


_DEBIT = ("direction", "==", "debit")


def _definitions() -> tuple[Aggregate, ...]:
    out: list[Aggregate] = []
    for w in (90, 365):
        out.append(Aggregate(f"frequency_{w}d", "transaction", "count", w, where=_DEBIT))
        out.append(Aggregate(f"monetary_{w}d", "transaction", "sum", w, "amount", where=_DEBIT))
    out.append(Aggregate("frequency_prev_90d", "transaction", "count", 90, where=_DEBIT, offset_days=90))
    for w in WINDOWS:
        for column, label in (("merchant_category", "category"), ("channel", "channel"),
                              ("time_of_day", "tod"), ("weekday", "weekday")):
            out.append(Aggregate(f"spend_{label}_{{key}}_{w}d", "transaction", "sum", w, "amount", by=column,
                                 where=_DEBIT))
    out.append(Aggregate("repayment_count_365d", "repayment", "count", 365))
    out.append(Aggregate("repayment_late_count_365d", "repayment", "count", 365, where=("days_late", ">", 0)))
    out.append(Aggregate("repayment_max_days_late_365d", "repayment", "max", 365, "days_late"))
    for action in DIGITAL_ACTIONS:
        out.append(Aggregate(f"digital_{action}_count_30d", "digital_activity", "count", 30,
                             where=("action", "==", action)))
    out.append(Aggregate("response_{key}_count_365d", "campaign_response", "count", 365, by="response_kind"))
    return tuple(out)


AGGREGATES = _definitions()


@dataclass(frozen=True)
class CustomerFacts:
    """What features and tags read from the customer record (current values, not versioned in time)."""

    customer_id: str
    time_zone: str = ""
    region: str = ""
    birth_date: date | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    exists: bool = True

    def zone(self) -> ZoneInfo:
        """The customer's time zone; UTC when unknown or invalid."""
        if self.time_zone:
            try:
                return ZoneInfo(self.time_zone)
            except (ZoneInfoNotFoundError, ValueError):
                pass
        return ZoneInfo("UTC")


@dataclass
class FeatureSet:
    values: dict[str, float]
    products_held: list[str]


# -- shared pieces -----------------------------------------------------------------------------------------


def _customer_since(facts: CustomerFacts) -> date | None:
    raw = facts.attributes.get(ATTR_CUSTOMER_SINCE)
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw[:10])
        except ValueError:
            return None
    return None


def _tenure(facts: CustomerFacts, first_seen: datetime | None, as_of: datetime) -> float | None:
    since = _customer_since(facts)
    if since is not None and since <= as_of.astimezone(UTC).date():
        return float((as_of.astimezone(UTC).date() - since).days)
    if first_seen is not None and first_seen <= as_of:
        return float((as_of - first_seen) // timedelta(days=1))
    return None


def _attribute_products(facts: CustomerFacts) -> set[str]:
    raw = facts.attributes.get(ATTR_PRODUCTS_HELD)
    if not isinstance(raw, str):
        return set()
    return {part.strip().lower() for part in raw.split(",") if part.strip()}


def _finish(values: dict[str, float], products: set[str], facts: CustomerFacts, first_seen: datetime | None,
            last_debit: datetime | None, as_of: datetime) -> FeatureSet:
    tenure = _tenure(facts, first_seen, as_of)
    if tenure is not None:
        values["tenure_days"] = tenure
    if last_debit is not None:
        values["recency_days"] = float((as_of - last_debit) // timedelta(days=1))
    held = sorted(products | _attribute_products(facts))
    values["products_held_count"] = float(len(held))
    for product in held:
        values[f"product_{product}"] = 1.0
    return FeatureSet({k: round(v, 4) for k, v in sorted(values.items())}, held)


_TIME_OF_DAY = np.array(["night", "morning", "afternoon", "evening"], dtype=object)  # hour // 6
_WEEKDAY = np.array(WEEKDAYS, dtype=object)


def _dense_defaults() -> dict[str, float]:
    return {a.name: 0.0 for a in AGGREGATES if a.by is None}


def _matches(value: Any, op: str, target: Any) -> bool:
    if op == "==":
        return bool(value == target)
    return value is not None and value > target


# -- real time: one customer, plain Python -----------------------------------------------------------------


def compute_one(records: Iterable[Sequence[Any]], facts: CustomerFacts, first_seen: datetime | None,
                as_of: datetime) -> FeatureSet:
    """The features of one customer from its flat records (EVENT_COLUMNS order)."""
    zone = facts.zone()
    rows: list[dict[str, Any]] = []
    for record in records:
        row = dict(zip(EVENT_COLUMNS, record, strict=True))
        if row["recorded_at"] > as_of or row["occurred_at"] > as_of:
            continue
        if row["amount"] is not None:
            row["amount"] = float(row["amount"])
        local = row["occurred_at"].astimezone(zone)
        row["time_of_day"], row["weekday"] = time_of_day(local.hour), WEEKDAYS[local.weekday()]
        rows.append(row)
    values = _dense_defaults()
    for agg in AGGREGATES:
        low = as_of - timedelta(days=agg.window_days + agg.offset_days)
        high = as_of - timedelta(days=agg.offset_days)
        groups: dict[str, list[float]] = defaultdict(list)
        for row in rows:
            if row["kind"] != agg.kind or not low < row["occurred_at"] <= high:
                continue
            if agg.where is not None and not _matches(row[agg.where[0]], agg.where[1], agg.where[2]):
                continue
            measure = 1.0 if agg.measure is None else row[agg.measure]
            if measure is None:
                continue
            groups[row[agg.by] if agg.by else ""].append(float(measure))
        for key, items in groups.items():
            name = agg.name.format(key=key) if agg.by else agg.name
            if agg.op == "count":
                values[name] = float(len(items))
            elif agg.op == "sum":
                values[name] = math.fsum(items)
            else:
                values[name] = max(items)
    debits = [r["occurred_at"] for r in rows if r["kind"] == "transaction" and r["direction"] == "debit"
              and r["occurred_at"] > as_of - timedelta(days=LOOKBACK_DAYS)]
    products = {r["product"] for r in rows if r["kind"] == "repayment" and r["product"]
                and r["occurred_at"] > as_of - timedelta(days=365)}
    return _finish(values, products, facts, first_seen, max(debits) if debits else None, as_of)


# -- batch: many customers, pandas ------------------------------------------------------------------------


def records_frame(records: Iterable[Sequence[Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(list(records), columns=list(EVENT_COLUMNS))
    for column in ("occurred_at", "recorded_at"):
        frame[column] = pd.to_datetime(frame[column], utc=True)
    frame["amount"] = frame["amount"].map(lambda v: float(v) if isinstance(v, Decimal) else v).astype("float64")
    frame["days_late"] = frame["days_late"].astype("float64")
    return frame


def compute_batch(frame: pd.DataFrame, facts: Mapping[str, CustomerFacts],
                  first_seen: Mapping[str, datetime], as_of: datetime) -> dict[str, FeatureSet]:
    """The features of every customer in `facts`, from a frame of their records (see records_frame)."""
    targets = {c: _Target(f, first_seen.get(c), as_of) for c, f in facts.items()}
    return _compute_keyed(frame, "customer_id", targets, pd.Timestamp(as_of))


def compute_points(frame: pd.DataFrame, points: Sequence[tuple[str, datetime]],
                   facts: Mapping[str, CustomerFacts], first_seen: Sequence[datetime | None]) -> list[FeatureSet]:
    """The features of each (customer_id, as_of) point, each as of its own as_of, in one pass over a frame of the
    customers' records (records_frame; loaded up to the latest as_of). `first_seen[i]`: the customer's first
    event known at point i's as_of. A customer with several points gets its records once per point."""
    keys = pd.DataFrame({
        "customer_id": pd.Series([c for c, _ in points], dtype=object),
        "point": np.arange(len(points), dtype=np.int64),
        "stamp": pd.to_datetime(pd.Series([a for _, a in points], dtype=object), utc=True),
    })
    merged = frame.merge(keys, on="customer_id", how="inner", sort=False)
    # A point sees LOOKBACK_DAYS back at most (tenure is first_seen's business): drop the rest early.
    merged = merged[merged["occurred_at"] > merged["stamp"] - pd.Timedelta(days=LOOKBACK_DAYS)]
    targets = {i: _Target(facts[c], first_seen[i], a) for i, (c, a) in enumerate(points)}
    out = _compute_keyed(merged, "point", targets, None)
    return [out[i] for i in range(len(points))]


@dataclass(frozen=True)
class _Target:
    """What one computation is about: whose facts, the first event known then, and as of when."""

    facts: CustomerFacts
    first_seen: datetime | None
    as_of: datetime


def _compute_keyed(frame: pd.DataFrame, key: str, targets: Mapping[Any, _Target],
                   stamp: pd.Timestamp | None) -> dict[Any, FeatureSet]:
    """The batch executor. Each record belongs to the target named by its `key` column; the target's as_of is
    `stamp` for all (compute_batch) or each record's `stamp` column (compute_points)."""
    def at(part: pd.DataFrame) -> Any:
        return stamp if stamp is not None else part["stamp"]

    frame = frame[(frame["recorded_at"] <= at(frame)) & (frame["occurred_at"] <= at(frame))].copy()
    frame["time_of_day"] = ""
    frame["weekday"] = ""
    transactions = frame["kind"] == "transaction"  # only spend is split by time of day and weekday
    zone_of = {k: t.facts.zone().key for k, t in targets.items()}
    zones = frame.loc[transactions, key].map(lambda k: zone_of.get(k, "UTC"))
    for zone_name, index in frame.loc[transactions].groupby(zones).groups.items():
        local = frame.loc[index, "occurred_at"].dt.tz_convert(ZoneInfo(str(zone_name)))
        frame.loc[index, "time_of_day"] = _TIME_OF_DAY[local.dt.hour.to_numpy() // 6]
        frame.loc[index, "weekday"] = _WEEKDAY[local.dt.day_of_week.to_numpy()]
    by_kind = {kind: part for kind, part in frame.groupby("kind", sort=False)}
    empty = frame.iloc[0:0]
    values: dict[Any, dict[str, float]] = {k: _dense_defaults() for k in targets}
    for agg in AGGREGATES:
        part = by_kind.get(agg.kind, empty)
        if part.empty:
            continue  # nothing of this kind: the dense defaults stand, grouped features are absent
        low = at(part) - pd.Timedelta(days=agg.window_days + agg.offset_days)
        high = at(part) - pd.Timedelta(days=agg.offset_days)
        mask = (part["occurred_at"] > low) & (part["occurred_at"] <= high)
        if agg.where is not None:
            column, op, target = agg.where
            mask &= (part[column] == target) if op == "==" else (part[column] > target)
        if agg.measure is not None:
            mask &= part[agg.measure].notna()
        sub = part[mask]
        if agg.by is None:
            grouped = sub.groupby(key, sort=False)
            series = grouped.size() if agg.op == "count" else grouped[agg.measure].agg(agg.op)
            for owner, value in series.items():
                if owner in values:
                    values[owner][agg.name] = float(value)
        else:
            grouped = sub.groupby([key, agg.by], sort=False)
            series = grouped.size() if agg.op == "count" else grouped[agg.measure].agg(agg.op)
            for (owner, group), value in series.items():
                if owner in values:
                    values[owner][agg.name.format(key=group)] = float(value)
    lookback = at(frame) - pd.Timedelta(days=LOOKBACK_DAYS)
    debits = frame[(frame["kind"] == "transaction") & (frame["direction"] == "debit")
                   & (frame["occurred_at"] > lookback)]
    last_debit = debits.groupby(key)["occurred_at"].max()
    year_ago = at(frame) - pd.Timedelta(days=365)
    repaid = frame[(frame["kind"] == "repayment") & (frame["product"] != "") & (frame["occurred_at"] > year_ago)]
    products = repaid.groupby(key)["product"].agg(set)
    out: dict[Any, FeatureSet] = {}
    for owner, target in targets.items():
        last = last_debit.get(owner)
        out[owner] = _finish(
            values[owner], set(products.get(owner, set())), target.facts, target.first_seen,
            last.to_pydatetime() if last is not None else None, target.as_of,
        )
    return out
