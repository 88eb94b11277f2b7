"""Behaviour features in campaign's frames: `feature.<name>` columns, which of them a spec keeps, and the
point-in-time request the learning service makes for them."""

import math
from datetime import UTC, datetime, timedelta

from services.campaign import modeling
from services.campaign.learning import features_as_of

T0 = datetime(2026, 3, 2, 9, tzinfo=UTC)


def example(features, converted=False, i=0):
    return modeling.Example(attributes={"segment": "mass"}, birth_date=None, region="CN-31",
                            contact_time=T0 + timedelta(hours=i), context={}, converted=converted, features=features)


def test_features_become_numeric_feature_columns_only_when_they_vary_or_go_missing():
    examples = [
        example({"monetary_90d": 0.0, "frequency_90d": 0.0, "spend_category_travel_90d": 500.0 * i,
                 **({"recency_days": 3.0} if i % 2 else {})}, i=i)
        for i in range(6)
    ]
    spec = modeling.infer_spec(examples)
    # monetary/frequency are 0 on every row (nothing to learn): no column; travel varies; recency is 3 or absent
    assert [c for c in spec.columns if c.startswith("feature.")] == [
        "feature.recency_days", "feature.spend_category_travel_90d"]
    assert "feature.spend_category_travel_90d" in spec.numeric
    assert modeling.event_features(spec) == ["recency_days", "spend_category_travel_90d"]
    frame = modeling.build_frame(examples, spec)
    assert frame["feature.spend_category_travel_90d"].tolist() == [0.0, 500.0, 1000.0, 1500.0, 2000.0, 2500.0]
    recency = frame["feature.recency_days"].tolist()
    assert [math.isnan(v) for v in recency] == [True, False, True, False, True, False]  # absent: missing


def test_a_history_without_events_gives_no_feature_columns():
    examples = [example({"monetary_90d": 0.0, "products_held_count": 0.0}, i=i) for i in range(5)]
    assert modeling.event_features(modeling.infer_spec(examples)) == []
    assert modeling.event_features(modeling.infer_spec([example({}, i=i) for i in range(5)])) == []


class Source:
    def __init__(self):
        self.asked = []

    async def features_at(self, points, *, timeout=None):
        self.asked.append((list(points), timeout))
        return [{"monetary_90d": 1.0} if c != "ghost" else None for c, _ in points]


async def test_features_are_asked_as_of_each_point_and_never_after_now():
    source = Source()
    future = datetime.now(UTC) + timedelta(days=3)
    got = await features_as_of(source, [("c-1", T0), ("ghost", T0), ("c-2", future)], timeout=7.0)
    assert got == [{"monetary_90d": 1.0}, {}, {"monetary_90d": 1.0}]
    (points, timeout), = source.asked
    assert points[:2] == [("c-1", T0), ("ghost", T0)] and timeout == 7.0
    assert points[2][0] == "c-2" and points[2][1] <= datetime.now(UTC)  # a future time is asked as of now
    assert await features_as_of(None, [("c-1", T0)]) == [{}]
    assert await features_as_of(source, []) == [] and len(source.asked) == 1
