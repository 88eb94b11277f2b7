"""Point-in-time default labels from behaviour events.

Features describe a customer as of the cut-off; the label says whether the event (for example a 90-days-past-due
repayment event, or a charge-off) happened in the window after it: ``cutoff < occurred_at <= cutoff +
window_days``. An event at the cut-off itself belongs to the past (the features' side), never to the label.
The window must be fully observed (cut-off + window no later than the newest data), or late defaults are
missed and the PD is understated.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import pandas as pd

from services.risk.credit.errors import CreditDataError

EVENT_COLUMNS = ("customer_id", "event_type", "occurred_at")


def _utc(value: datetime | str | pd.Timestamp) -> pd.Timestamp:
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def label_from_events(
    events: pd.DataFrame,
    cutoff: datetime | str | pd.Timestamp,
    window_days: int,
    event_type: str,
    *,
    customers: Iterable[str] | None = None,
) -> pd.Series:
    """A boolean Series indexed by customer id (named `label`): True when `event_type` occurred in the window.

    `events` has columns customer_id, event_type, occurred_at (naive times are UTC). The population is
    `customers` when given (customers without events get False); otherwise every customer with at least one
    event, of any type, at or before the cut-off, i.e. known at the cut-off.
    """
    missing = [c for c in EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise CreditDataError("events", "MISSING_EVENT_COLUMNS", f"events lack the columns {', '.join(missing)}")
    if isinstance(window_days, bool) or not isinstance(window_days, int) or window_days <= 0:
        raise CreditDataError("window_days", "INVALID_WINDOW", "window_days must be a positive whole number of days")
    if not event_type:
        raise CreditDataError("event_type", "REQUIRED_FIELD_MISSING", "event_type is required")
    try:
        start = _utc(cutoff)
    except (ValueError, TypeError) as exc:
        raise CreditDataError("cutoff", "INVALID_CUTOFF", "cutoff must be a date-time") from exc
    end = start + pd.Timedelta(days=window_days)
    try:
        times = pd.to_datetime(events["occurred_at"], utc=True)
    except (ValueError, TypeError) as exc:
        raise CreditDataError("events.occurred_at", "INVALID_TIMESTAMP", "occurred_at must hold date-times") from exc
    if bool(times.isna().any()):
        raise CreditDataError("events.occurred_at", "INVALID_TIMESTAMP", "occurred_at has missing values")
    ids = events["customer_id"].astype(str)
    if customers is not None:
        population = pd.Index(dict.fromkeys(str(c) for c in customers), dtype=object)
    else:
        population = pd.Index(ids[(times <= start).to_numpy()].unique(), dtype=object)
    in_window = ((events["event_type"] == event_type) & (times > start) & (times <= end)).to_numpy()
    positives = set(ids[in_window])
    label = pd.Series([c in positives for c in population], index=population, dtype=bool, name="label")
    label.index.name = "customer_id"
    return label
