"""Feature definitions on a hand-built customer, expected values computed by hand; point in time; batch ==
real time."""

import math
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest

from services.profile.events_db import EVENT_COLUMNS
from services.profile.features import (
    CustomerFacts,
    compute_batch,
    compute_one,
    compute_points,
    records_frame,
    time_of_day,
)

AS_OF = datetime(2026, 6, 30, 12, 0, tzinfo=UTC)  # a Tuesday


def at(text):
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def record(customer, kind, occurred, *, recorded=None, amount=None, direction="", category="", channel="",
           action="", days_late=None, product="", response=""):
    occurred_at = at(occurred)
    row = {
        "customer_id": customer, "kind": kind, "occurred_at": occurred_at,
        "recorded_at": at(recorded) if recorded else occurred_at + timedelta(hours=1),
        "amount": Decimal(amount) if amount is not None else None, "direction": direction,
        "merchant_category": category, "channel": channel, "action": action, "days_late": days_late,
        "product": product, "response_kind": response,
    }
    return tuple(row[c] for c in EVENT_COLUMNS)


def txn(customer, occurred, amount, category, channel, direction="debit", **kw):
    return record(customer, "transaction", occurred, amount=amount, direction=direction, category=category,
                  channel=channel, **kw)


def fixture_records(c="c-1"):
    return [
        txn(c, "2026-06-29T02:00", "100.00", "groceries", "pos"),  # Shanghai: Mon 10:00, 1.4 days ago
        txn(c, "2026-06-10T15:00", "250.50", "travel", "online"),  # Wed 23:00, 20 days
        txn(c, "2026-05-01T20:00", "40.00", "groceries", "pos"),  # Sat 05-02 04:00, 60 days
        txn(c, "2026-01-15T06:00", "1000", "travel", "online"),  # Thu 14:00, 166 days: previous 90 days
        txn(c, "2026-06-25T09:00", "5000", "salary", "transfer", direction="credit"),  # not spend
        txn(c, "2025-03-01T00:00", "300", "groceries", "pos"),  # 486 days: only tenure sees it
        record(c, "repayment", "2026-04-01T00:00", amount="500", days_late=0, product="consumer_loan"),
        record(c, "repayment", "2026-05-01T00:00", amount="500", days_late=12, product="consumer_loan"),
        record(c, "repayment", "2025-05-01T00:00", amount="200", days_late=45, product="credit_card"),  # 425 d
        record(c, "digital_activity", "2026-06-28T00:00", action="login", channel="app"),
        record(c, "digital_activity", "2026-06-20T00:00", action="view", channel="web"),
        record(c, "digital_activity", "2026-05-01T00:00", action="login", channel="app"),  # 60 days
        record(c, "campaign_response", "2026-06-01T00:00", response="clicked"),
        record(c, "campaign_response", "2026-06-02T00:00", response="converted"),
        # Known only after AS_OF (a late event), and one that has not happened yet at AS_OF:
        txn(c, "2026-06-29T03:00", "999", "luxury", "pos", recorded="2026-07-01T00:00"),
        txn(c, "2026-07-01T00:00", "777", "luxury", "pos", recorded="2026-07-01T00:00"),
    ]


FACTS = CustomerFacts("c-1", time_zone="Asia/Shanghai", attributes={"products_held": "deposit, Credit_Card"})

EXPECTED = {
    "frequency_90d": 3, "monetary_90d": 390.5, "frequency_365d": 4, "monetary_365d": 1390.5,
    "frequency_prev_90d": 1, "recency_days": 1, "tenure_days": 486,
    "spend_category_groceries_30d": 100, "spend_category_travel_30d": 250.5,
    "spend_category_groceries_90d": 140, "spend_category_travel_90d": 250.5,
    "spend_category_groceries_365d": 140, "spend_category_travel_365d": 1250.5,
    "spend_channel_pos_30d": 100, "spend_channel_online_30d": 250.5,
    "spend_channel_pos_90d": 140, "spend_channel_online_90d": 250.5,
    "spend_channel_pos_365d": 140, "spend_channel_online_365d": 1250.5,
    "spend_tod_morning_30d": 100, "spend_tod_evening_30d": 250.5,
    "spend_tod_morning_90d": 100, "spend_tod_evening_90d": 250.5, "spend_tod_night_90d": 40,
    "spend_tod_morning_365d": 100, "spend_tod_evening_365d": 250.5, "spend_tod_night_365d": 40,
    "spend_tod_afternoon_365d": 1000,
    "spend_weekday_mon_30d": 100, "spend_weekday_wed_30d": 250.5,
    "spend_weekday_mon_90d": 100, "spend_weekday_wed_90d": 250.5, "spend_weekday_sat_90d": 40,
    "spend_weekday_mon_365d": 100, "spend_weekday_wed_365d": 250.5, "spend_weekday_sat_365d": 40,
    "spend_weekday_thu_365d": 1000,
    "repayment_count_365d": 2, "repayment_late_count_365d": 1, "repayment_max_days_late_365d": 12,
    "digital_login_count_30d": 1, "digital_view_count_30d": 1, "digital_click_count_30d": 0,
    "digital_application_count_30d": 0,
    "response_clicked_count_365d": 1, "response_converted_count_365d": 1,
    "products_held_count": 3, "product_consumer_loan": 1, "product_credit_card": 1, "product_deposit": 1,
}


def first_seen(records, as_of=AS_OF):
    known = [r[2] for r in records if r[3] <= as_of and r[2] <= as_of]
    return min(known) if known else None


def test_every_feature_of_the_hand_built_customer():
    records = fixture_records()
    features = compute_one(records, FACTS, first_seen(records), AS_OF)
    assert features.values == pytest.approx({k: float(v) for k, v in EXPECTED.items()})
    assert features.products_held == ["consumer_loan", "credit_card", "deposit"]


def test_time_of_day_boundaries():
    assert [time_of_day(h) for h in (0, 5, 6, 11, 12, 17, 18, 23)] == [
        "night", "night", "morning", "morning", "afternoon", "afternoon", "evening", "evening"]


def test_without_a_time_zone_time_of_day_and_weekday_are_utc():
    records = [txn("c-1", "2026-06-29T02:00", "100", "groceries", "pos")]  # UTC Mon 02:00
    features = compute_one(records, CustomerFacts("c-1"), first_seen(records), AS_OF).values
    assert features["spend_tod_night_30d"] == 100 and features["spend_weekday_mon_30d"] == 100
    assert "spend_tod_morning_30d" not in features


def test_window_edges_are_open_at_the_start_and_closed_at_as_of():
    records = [
        txn("c-1", "2026-05-31T12:00", "1", "a", "pos"),  # exactly 30 days before: outside 30d
        txn("c-1", "2026-05-31T12:00:01", "2", "a", "pos"),  # just inside
        txn("c-1", "2026-06-30T12:00", "4", "a", "pos", recorded="2026-06-30T12:00"),  # at as_of: inside
    ]
    features = compute_one(records, CustomerFacts("c-1"), first_seen(records), AS_OF).values
    assert features["spend_category_a_30d"] == 6
    assert features["recency_days"] == 0


def test_customer_since_attribute_wins_over_the_first_event_and_empty_customers_have_no_recency():
    facts = CustomerFacts("c-1", attributes={"customer_since": "2020-06-30"})
    features = compute_one([], facts, None, AS_OF).values
    assert features["tenure_days"] == 2191  # 2020-06-30 .. 2026-06-30, two leap days
    assert "recency_days" not in features
    assert features["frequency_90d"] == 0 and features["monetary_365d"] == 0
    assert "tenure_days" not in compute_one([], CustomerFacts("c-1"), None, AS_OF).values


def test_a_late_event_recorded_after_as_of_does_not_change_features_as_of_then():
    records = fixture_records()
    before = compute_one(records[:-2], FACTS, first_seen(records[:-2]), AS_OF)
    with_late = compute_one(records, FACTS, first_seen(records), AS_OF)
    assert with_late == before
    later = AS_OF + timedelta(days=2)
    after = compute_one(records, FACTS, first_seen(records, later), later).values
    assert after["spend_category_luxury_30d"] == 999 + 777


def test_batch_gives_the_hand_computed_values_too():
    records = fixture_records()
    batch = compute_batch(records_frame(records), {"c-1": FACTS}, {"c-1": first_seen(records)}, AS_OF)
    assert batch["c-1"].values == pytest.approx({k: float(v) for k, v in EXPECTED.items()})
    assert batch["c-1"].products_held == ["consumer_loan", "credit_card", "deposit"]


def random_records(rng, customers, n):
    out = []
    kinds = ("transaction", "transaction", "transaction", "repayment", "digital_activity", "campaign_response")
    for i in range(n):
        customer = rng.choice(customers)
        occurred = AS_OF - timedelta(seconds=rng.randrange(-3 * 86400, 420 * 86400))
        recorded = occurred + timedelta(seconds=rng.choice((0, 60, 86400, 5 * 86400)))
        kind = rng.choice(kinds)
        text = (occurred.replace(tzinfo=None).isoformat(), recorded.replace(tzinfo=None).isoformat())
        if kind == "transaction":
            out.append(txn(customer, text[0], f"{rng.randrange(1, 10**6) / 100:.2f}",
                           rng.choice(("groceries", "travel", "securities", "dining")),
                           rng.choice(("pos", "online", "atm")), rng.choice(("debit", "debit", "credit")),
                           recorded=text[1]))
        elif kind == "repayment":
            out.append(record(customer, kind, text[0], recorded=text[1], amount="100",
                              days_late=rng.choice((0, 0, 3, 40)), product=rng.choice(("", "card", "loan"))))
        elif kind == "digital_activity":
            out.append(record(customer, kind, text[0], recorded=text[1],
                              action=rng.choice(("view", "click", "application", "login")), channel="app"))
        else:
            out.append(record(customer, kind, text[0], recorded=text[1],
                              response=rng.choice(("opened", "clicked", "converted"))))
        del i
    return out


@pytest.mark.parametrize("seed", range(5))
def test_batch_equals_real_time_for_every_customer(seed):
    rng = random.Random(seed)
    customers = [f"c-{i}" for i in range(25)]
    zones = ("", "Asia/Shanghai", "Europe/Lisbon", "America/New_York", "Not/AZone")
    facts = {c: CustomerFacts(c, time_zone=rng.choice(zones),
                              attributes={"products_held": "deposit"} if rng.random() < 0.3 else {},
                              birth_date=date(1990, 1, 1)) for c in customers}
    records = random_records(rng, customers[:-2], 600)  # the last two customers have no events at all
    as_of = AS_OF - timedelta(days=rng.randrange(0, 30))
    seen = {c: first_seen([r for r in records if r[0] == c], as_of) for c in customers}
    batch = compute_batch(records_frame(records), facts, {c: s for c, s in seen.items() if s}, as_of)
    assert set(batch) == set(customers)
    for c in customers:
        one = compute_one([r for r in records if r[0] == c], facts[c], seen[c], as_of)
        assert set(one.values) == set(batch[c].values), c
        for name, value in one.values.items():
            assert math.isclose(value, batch[c].values[name], rel_tol=1e-9, abs_tol=1e-6), (c, name)
        assert one.products_held == batch[c].products_held


@pytest.mark.parametrize("seed", range(3))
def test_points_each_equal_real_time_at_their_own_as_of(seed):
    """compute_points (BatchGetFeatures) over one frame: every (customer, as_of) point equals compute_one as of
    that point, repeated customers and window edges included."""
    rng = random.Random(100 + seed)
    customers = [f"c-{i}" for i in range(12)]
    zones = ("", "Asia/Shanghai", "Europe/Lisbon", "America/New_York")
    facts = {c: CustomerFacts(c, time_zone=rng.choice(zones),
                              attributes={"products_held": "deposit"} if rng.random() < 0.3 else {})
             for c in customers}
    records = random_records(rng, customers[:-1], 500)
    points = [(rng.choice(customers), AS_OF - timedelta(days=rng.randrange(0, 400), hours=rng.randrange(24)))
              for _ in range(60)]
    points += [(customers[0], AS_OF - timedelta(days=90)), (customers[0], AS_OF)]  # one customer, many times
    edge = next(r for r in records if r[0] == customers[1])
    points.append((customers[1], edge[2]))  # as_of exactly at an event's occurred_at
    points.append((customers[1], edge[3]))  # ... and at its recorded_at
    seen = [first_seen([r for r in records if r[0] == c], a) for c, a in points]
    got = compute_points(records_frame(records), points, facts, seen)
    assert len(got) == len(points)
    for (c, as_of), first, batch in zip(points, seen, got, strict=True):
        one = compute_one([r for r in records if r[0] == c], facts[c], first, as_of)
        assert set(one.values) == set(batch.values), (c, as_of)
        for name, value in one.values.items():
            assert math.isclose(value, batch.values[name], rel_tol=1e-9, abs_tol=1e-6), (c, as_of, name)
        assert one.products_held == batch.products_held
