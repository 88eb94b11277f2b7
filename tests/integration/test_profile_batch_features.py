# ruff: noqa: F811 - the `profile` fixture imported from test_profile_events is redefined as a parameter
"""EventService.BatchGetFeatures through a real aio server, a real stub and a real database: each (customer, as_of)
point answered exactly as GetFeatures answers it, point in time (no leakage), in a bounded number of queries."""

import math
import random
from datetime import UTC, timedelta

import grpc
from sqlalchemy import event

from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as pb
from lodestar.profile.v1 import profile_service_pb2 as ppb
from services.platform.db import utcnow
from tests.helpers import expect_error
from tests.integration.test_profile_events import profile, ts  # noqa: F401 - the fixture

INVALID = grpc.StatusCode.INVALID_ARGUMENT


def txn(event_id, customer, occurred, amount="100.00", category="groceries", channel="pos", **kw):
    return pb.Event(event_id=event_id, customer_id=customer, occurred_at=ts(occurred),
                    transaction=pb.Transaction(amount=amount, currency="CNY", merchant_category=category,
                                               channel=channel, **kw))


async def ingest_at(svc, stub, recorded_at, events):
    """Ingests `events` as if profile's clock read `recorded_at` (events.recorded_at is the server's clock)."""
    service = svc.runtime.components["events"]
    service.clock = lambda: recorded_at
    try:
        return await stub.IngestEvents(pb.IngestEventsRequest(events=events))
    finally:
        service.clock = utcnow


def point(customer_id, as_of=None):
    out = pb.FeaturePoint(customer_id=customer_id)
    if as_of is not None:
        out.as_of.CopyFrom(ts(as_of))
    return out


async def test_each_point_sees_only_what_was_recorded_and_happened_by_its_as_of(profile):
    svc, stub, _ = profile
    now = utcnow()
    contact = now - timedelta(days=30)
    # Known before the contact: counts as of the contact.
    await ingest_at(svc, stub, contact - timedelta(days=2), [
        txn("e-before", "c-1", contact - timedelta(days=3), amount="100")])
    # Happened before the contact but recorded after it (a late event): must not count as of the contact.
    await ingest_at(svc, stub, contact + timedelta(days=1), [
        txn("e-late", "c-1", contact - timedelta(days=1), amount="40")])
    # Happened after the contact: must not count as of the contact.
    await ingest_at(svc, stub, contact + timedelta(days=5), [
        txn("e-after", "c-1", contact + timedelta(days=4), amount="7")])
    response = await stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[
        point("c-1", contact), point("c-1", contact + timedelta(days=2)), point("c-1"),
        point("c-1", contact - timedelta(days=10))]))
    at_contact, after_late, latest, before_all = response.results
    assert (at_contact.customer_id, at_contact.as_of.ToDatetime(tzinfo=UTC), at_contact.found) == ("c-1", contact, True)
    assert at_contact.features["monetary_90d"] == 100 and at_contact.features["frequency_90d"] == 1
    assert at_contact.features["recency_days"] == 3 and at_contact.features["tenure_days"] == 3
    assert after_late.features["monetary_90d"] == 140 and after_late.features["recency_days"] == 3
    assert latest.features["monetary_90d"] == 147 and latest.found
    # Nothing known yet: not found, like GetFeatures' NOT_FOUND.
    assert (before_all.found, dict(before_all.features)) == (False, {})
    await expect_error(stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1",
                                                              as_of=ts(contact - timedelta(days=10)))),
                       grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    assert abs(latest.as_of.ToDatetime(tzinfo=UTC) - utcnow()) < timedelta(minutes=1)  # unset as_of: now


async def test_batch_agrees_with_get_features_point_by_point(profile):
    svc, stub, customers = profile
    rng = random.Random(11)
    now = utcnow()
    ids = [f"c-{i}" for i in range(10)]
    for i, cid in enumerate(ids[:7]):  # c-7..c-9 exist only through their events (or not at all: c-9)
        customer = customer_pb2.Customer(customer_id=cid, region="CN-31",
                                         time_zone=("Asia/Shanghai", "Europe/Lisbon", "", "America/New_York")[i % 4])
        if i % 2:
            customer.attributes["products_held"].string_value = "deposit,card"
        if i == 3:
            customer.attributes["customer_since"].date_value = (now - timedelta(days=900)).date().isoformat()
        await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    # Four ingests at different server times, each with late events (occurred long before they were recorded).
    ingest_times = [now - timedelta(days=d) for d in (420, 200, 60, 0)]
    n = 0
    for recorded in ingest_times:
        events = []
        for _ in range(120):
            occurred = recorded - timedelta(seconds=rng.randrange(60, 500 * 86400))
            cid = rng.choice(ids[:-1])
            kind = n % 6
            if kind == 4:
                events.append(pb.Event(event_id=f"r-{n}", customer_id=cid, occurred_at=ts(occurred),
                                       repayment=pb.Repayment(amount="50", days_late=rng.choice((0, 9, 40)),
                                                              product=rng.choice(("loan", "card")))))
            elif kind == 5:
                events.append(pb.Event(event_id=f"d-{n}", customer_id=cid, occurred_at=ts(occurred),
                                       digital_activity=pb.DigitalActivity(action=rng.choice((1, 2, 3, 4)),
                                                                           channel="app")))
            else:
                events.append(txn(f"t-{n}", cid, occurred, amount=f"{rng.randrange(100, 99999) / 100:.2f}",
                                  category=rng.choice(("groceries", "travel")), channel=rng.choice(("pos", "online")),
                                  direction=rng.choice((1, 1, 2))))
            n += 1
        await ingest_at(svc, stub, recorded, events)
    # Every customer (and one nobody knows) at several times, around the ingest times, some repeated.
    times = [now - timedelta(days=d, hours=h) for d, h in ((500, 0), (420, 0), (419, 3), (300, 0), (200, 1),
                                                            (100, 0), (60, 0), (59, 2), (1, 0))]
    points = [(cid, when) for cid in ids for when in rng.sample(times, 5)] + [("nobody", now), ("c-2", None)]
    rng.shuffle(points)
    response = await stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[point(c, a) for c, a in points]))
    assert [r.customer_id for r in response.results] == [c for c, _ in points]
    found = 0
    for (cid, as_of), got in zip(points, response.results, strict=True):
        if as_of is not None:
            assert got.as_of.ToDatetime(tzinfo=UTC) == as_of
        try:
            one = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id=cid, as_of=got.as_of))
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
            assert (got.found, dict(got.features), list(got.products_held)) == (False, {}, []), (cid, as_of)
            continue
        found += 1
        assert got.found, (cid, as_of)
        assert set(got.features) == set(one.features), (cid, as_of)
        for name, value in one.features.items():
            assert math.isclose(got.features[name], value, abs_tol=1e-6), (cid, as_of, name)
        assert list(got.products_held) == list(one.products_held)
    assert found > 30  # the comparison is not vacuous
    # A few points at a time (the real-time executor's path) give the same as the bulk request.
    for (cid, as_of), bulk in list(zip(points, response.results, strict=True))[:12]:
        (alone,) = (await stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[point(cid, as_of)]))).results
        if as_of is None:
            continue  # "now" moved on
        assert (alone.found, set(alone.features), list(alone.products_held)) == (
            bulk.found, set(bulk.features), list(bulk.products_held)), (cid, as_of)
        assert all(math.isclose(alone.features[k], v, abs_tol=1e-6) for k, v in bulk.features.items()), (cid, as_of)


async def test_a_request_is_answered_with_a_bounded_number_of_queries(profile):
    svc, stub, _ = profile
    now = utcnow()
    await ingest_at(svc, stub, now - timedelta(days=10), [
        txn(f"e-{i}", f"c-{i % 300}", now - timedelta(days=11, minutes=i)) for i in range(900)])
    statements = []

    def count(conn, cursor, statement, *args):
        if "FROM events" in statement or "FROM customers" in statement:  # not a driver's own set-up queries
            statements.append(statement)

    engine = svc.runtime.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        points = [point(f"c-{i % 300}", now - timedelta(days=i % 20)) for i in range(1000)]
        response = await stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=points))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert len(response.results) == 1000
    # events (and no customer records) recorded 10 days ago: found as of then or later, 11 days out of 20
    assert sum(r.found for r in response.results) == 550
    # customers, events and first events, each one query per 500 customers: 300 customers -> 3 queries
    assert len(statements) == 3, statements


async def test_batch_get_features_validation(profile):
    _, stub, _ = profile
    now = utcnow()
    got = await expect_error(stub.BatchGetFeatures(pb.BatchGetFeaturesRequest()), INVALID, "REQUIRED_FIELD_MISSING")
    assert got.field_violations == [("points", "at least one point is required")]
    got = await expect_error(stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(
        points=[point("c-1")] * 1001)), INVALID, "BATCH_TOO_LARGE")
    assert got.field_violations[0][0] == "points" and got.domain == "lodestar.profile"
    await stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[point("c-1")] * 1000))  # the limit itself is fine
    got = await expect_error(stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[
        point("c-1"), point("bad id!"), point("c-2", now + timedelta(hours=1)), point("")])), INVALID, "INVALID_ID")
    assert [f for f, _ in got.field_violations] == ["points[1].customer_id", "points[2].as_of",
                                                    "points[3].customer_id"]
    got = await expect_error(stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[
        point("c-1", now + timedelta(hours=1))])), INVALID, "AS_OF_IN_FUTURE")
    assert got.field_violations == [("points[0].as_of", "must not be in the future")]
    bad_time = pb.FeaturePoint(customer_id="c-1")
    bad_time.as_of.seconds = 253402300800  # year 10000
    got = await expect_error(stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[bad_time])), INVALID,
                             "INVALID_TIMESTAMP")
    assert got.field_violations[0][0] == "points[0].as_of"
    got = await expect_error(stub.BatchGetFeatures(pb.BatchGetFeaturesRequest(points=[point("")])), INVALID,
                             "REQUIRED_FIELD_MISSING")
    assert got.field_violations == [("points[0].customer_id", "is required")]
