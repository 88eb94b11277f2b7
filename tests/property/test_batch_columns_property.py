"""Property: the batch path's column-at-a-time shortcuts give exactly what the per-customer definitions give.

- service.snapshot_hashes (a partition's snapshot hashes, assembled column by column) == service.snapshot_hash of
  each row's snapshot dictionary, byte for byte, on generated columns: text with escapes and non-ASCII, integers,
  floats (negative zero, huge, tiny, NaN), booleans, missing values, a column mixing kinds.
- modeling.frame_from_columns (a partition's scoring frame) == modeling.build_frame of one Example per customer,
  on generated attribute columns, ages and regions, for a spec inferred from other generated customers.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.campaign import modeling
from services.campaign.clients import proxy_birth_date
from services.campaign.service import snapshot_hash, snapshot_hashes

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=6)
NUMBER = st.floats(allow_nan=True, allow_infinity=False, width=64) | st.sampled_from([0.0, -0.0, 1e16, 5e-324])
VALUES = {
    "text": st.one_of(st.none(), TEXT, st.sampled_from(["C1", "C3", "", "\"", "é", "\n"])),
    "number": st.one_of(st.none(), NUMBER),
    "integer": st.one_of(st.none(), st.integers(-10**12, 10**12)),
    "flag": st.one_of(st.none(), st.booleans()),
    "mixed": st.one_of(st.none(), TEXT, NUMBER, st.booleans(), st.integers(-5, 5)),
}


@st.composite
def partitions(draw: st.DrawFn) -> tuple[dict[str, list[object]], list[str], list[str], list[int], dict]:
    n = draw(st.integers(1, 25))
    kinds = draw(st.lists(st.sampled_from(sorted(VALUES)), min_size=0, max_size=4))
    attributes = {f"{kind}_{k}": draw(st.lists(VALUES[kind], min_size=n, max_size=n)) for k, kind in enumerate(kinds)}
    regions = draw(st.lists(st.sampled_from(["", "CN-31", "CN-11", "Zürich"]), min_size=n, max_size=n))
    zones = draw(st.lists(st.sampled_from(["", "Asia/Shanghai", "Europe/Zurich"]), min_size=n, max_size=n))
    ages = draw(st.lists(st.integers(-1, 120), min_size=n, max_size=n))
    behaviour = {name: draw(st.lists(st.one_of(st.none(), st.floats(0, 1e7)), min_size=n, max_size=n))
                 for name in draw(st.lists(st.sampled_from(["monetary_365d", "recency_days", "é"]), unique=True))}
    return attributes, regions, zones, ages, behaviour


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(partitions())
def test_columnar_snapshot_hashes_equal_the_per_row_canonical_hash(partition):
    attributes, regions, zones, ages, behaviour = partition
    when = "2026-12-07T10:00:00+08:00"
    digests = snapshot_hashes(attributes, regions, zones, ages, when, features=behaviour)
    for i in range(len(regions)):
        snapshot = {"attributes": {k: v[i] for k, v in attributes.items() if v[i] is not None},
                    "region": regions[i], "time_zone": zones[i], "age": ages[i] if ages[i] >= 0 else None,
                    "decision_time": when}
        features = {k: v[i] for k, v in behaviour.items() if v[i] is not None}
        if features:  # as service.feature_snapshot: only when there are some
            snapshot["features"] = features
        assert digests[i].hex() == snapshot_hash(snapshot)


SPEC_VALUES = {
    "income": st.one_of(st.none(), st.floats(0, 1e6), st.integers(0, 10**6), st.sampled_from(["12", "x", "inf"])),
    "risk_tolerance": st.one_of(st.none(), st.sampled_from(["C1", "C2", "C5", ""])),
    "vip": st.one_of(st.none(), st.booleans()),
    "segment": st.one_of(st.none(), st.sampled_from(["a", "b", "c", "unseen"]), st.integers(0, 2)),
}


@st.composite
def customers(draw: st.DrawFn, n: int) -> tuple[dict[str, list[object]], list[float], list[str | None]]:
    columns = {f"attr.{name}": draw(st.lists(values, min_size=n, max_size=n)) for name, values in SPEC_VALUES.items()}
    ages = draw(st.lists(st.one_of(st.just(float("nan")), st.floats(-3, 130), st.integers(0, 99).map(float)),
                         min_size=n, max_size=n))
    regions = draw(st.lists(st.sampled_from([None, "", "CN-31", "CN-11"]), min_size=n, max_size=n))
    return columns, ages, regions


def examples(columns, ages, regions, when, on):
    births = [proxy_birth_date(age, on) for age in ages]
    return [modeling.Example({k.removeprefix("attr."): v[i] for k, v in columns.items() if v[i] is not None},
                             births[i], regions[i] or "", when, {}) for i in range(len(ages))]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_columnar_scoring_frame_equals_the_per_customer_frame(data):
    when = datetime(2026, 3, 1, 9, tzinfo=UTC)
    train = data.draw(customers(data.draw(st.integers(3, 20))))
    spec = modeling.infer_spec(examples(*train, when, when.date()))
    n = data.draw(st.integers(1, 20))
    columns, ages, regions = data.draw(customers(n))
    expected = modeling.build_frame(examples(columns, ages, regions, when, when.date()), spec)
    got = modeling.frame_from_columns(spec, columns, n, ages=np.array(ages, dtype=float), regions=regions,
                                      contact_time=when)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
