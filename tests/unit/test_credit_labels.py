"""Point-in-time default labels: an event of one type in the window (cutoff, cutoff + window_days]."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pandas as pd
import pytest

from services.risk.credit import CreditDataError, label_from_events

CUTOFF = datetime(2025, 1, 1, tzinfo=UTC)


def events(rows: list[tuple[str, str, datetime | str | None]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["customer_id", "event_type", "occurred_at"])


def test_only_the_event_type_inside_the_window_counts() -> None:
    ev = events(
        [
            ("c1", "account_opened", CUTOFF - timedelta(days=400)),
            ("c1", "dpd90", CUTOFF + timedelta(days=30)),  # in the window
            ("c2", "account_opened", CUTOFF - timedelta(days=10)),
            ("c2", "dpd90", CUTOFF),  # at the cut-off: the past, not the label
            ("c3", "account_opened", CUTOFF - timedelta(days=10)),
            ("c3", "dpd90", CUTOFF + timedelta(days=90)),  # exactly at the end: inside
            ("c4", "account_opened", CUTOFF - timedelta(days=10)),
            ("c4", "dpd90", CUTOFF + timedelta(days=90, seconds=1)),  # just after the end: outside
            ("c5", "account_opened", CUTOFF - timedelta(days=10)),
            ("c5", "late_payment", CUTOFF + timedelta(days=5)),  # another event type
            ("c6", "account_opened", CUTOFF + timedelta(days=1)),  # unknown at the cut-off: not in the population
            ("c6", "dpd90", CUTOFF + timedelta(days=2)),
        ]
    )
    label = label_from_events(ev, CUTOFF, 90, "dpd90")
    assert label.name == "label" and label.index.name == "customer_id" and label.dtype == bool
    assert label.to_dict() == {"c1": True, "c2": False, "c3": True, "c4": False, "c5": False}


def test_an_explicit_population_includes_customers_without_events() -> None:
    ev = events([("c1", "dpd90", CUTOFF + timedelta(days=3)), ("c9", "dpd90", CUTOFF + timedelta(days=3))])
    label = label_from_events(ev, CUTOFF, 30, "dpd90", customers=["c1", "c2"])
    assert label.to_dict() == {"c1": True, "c2": False}


def test_time_zones_are_compared_as_instants() -> None:
    shanghai = timezone(timedelta(hours=8))
    ev = events(
        [
            ("c1", "opened", "2024-12-01T00:00:00Z"),
            # 2025-01-01 07:00 in Shanghai is 2024-12-31 23:00 UTC: before a UTC midnight cut-off
            ("c1", "dpd90", datetime(2025, 1, 1, 7, 0, tzinfo=shanghai)),
            ("c2", "opened", "2024-12-01T00:00:00Z"),
            ("c2", "dpd90", datetime(2025, 1, 1, 9, 0, tzinfo=shanghai)),  # 01:00 UTC: inside
        ]
    )
    label = label_from_events(ev, "2025-01-01T00:00:00", 30, "dpd90")  # a naive cut-off is UTC
    assert label.to_dict() == {"c1": False, "c2": True}


def test_labels_join_a_feature_frame_as_of_the_cutoff() -> None:
    ev = events([("a", "opened", CUTOFF - timedelta(days=5)), ("b", "opened", CUTOFF - timedelta(days=5)),
                 ("b", "charge_off", CUTOFF + timedelta(days=100))])
    features = pd.DataFrame({"utilisation": [0.2, 0.9]}, index=pd.Index(["a", "b"], name="customer_id"))
    frame = features.join(label_from_events(ev, CUTOFF, 365, "charge_off"))
    assert frame["label"].tolist() == [False, True]


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"window_days": 0}, "window_days", "INVALID_WINDOW"),
        ({"window_days": 1.5}, "window_days", "INVALID_WINDOW"),
        ({"event_type": ""}, "event_type", "REQUIRED_FIELD_MISSING"),
        ({"cutoff": "not a date"}, "cutoff", "INVALID_CUTOFF"),
        ({"events": events([]).drop(columns="event_type")}, "events", "MISSING_EVENT_COLUMNS"),
        ({"events": events([("c1", "x", "yesterday-ish")])}, "events.occurred_at", "INVALID_TIMESTAMP"),
        ({"events": events([("c1", "x", None)])}, "events.occurred_at", "INVALID_TIMESTAMP"),
    ],
)
def test_bad_input_names_the_field(kwargs: dict[str, object], field: str, reason: str) -> None:
    args: dict[str, object] = {"events": events([("c1", "dpd90", CUTOFF)]), "cutoff": CUTOFF, "window_days": 30,
                               "event_type": "dpd90", **kwargs}
    with pytest.raises(CreditDataError) as info:
        label_from_events(**args)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    assert (info.value.field, info.value.reason) == (field, reason)
