"""EventService through a real aio server, a real stub and a real database: ingest, features, tags."""

import asyncio
import logging
import math
import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select

from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as pb
from lodestar.profile.v1 import event_service_pb2_grpc as pbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.profile.app import DEFINITION
from services.profile.events_db import CustomerTagRow, EventRow
from tests.helpers import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def profile(start):
    svc = await start(DEFINITION)
    channel = grpc.aio.insecure_channel(svc.address)
    yield svc, pbg.EventServiceStub(channel), ppbg.ProfileServiceStub(channel)
    await channel.close()


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def now() -> datetime:
    return datetime.now(UTC)


def txn(event_id, customer="c-1", occurred=None, amount="100.00", category="groceries", channel="pos", **kw):
    return pb.Event(event_id=event_id, customer_id=customer, occurred_at=ts(occurred or now() - timedelta(days=1)),
                    transaction=pb.Transaction(amount=amount, currency="CNY", merchant_category=category,
                                               channel=channel, **kw))


async def rows(svc, model=EventRow):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model)))


async def count(svc, model=EventRow):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model))


# --- ingest -------------------------------------------------------------------------------------------------

async def test_ingest_is_idempotent_by_event_id(profile):
    svc, stub, _ = profile
    first = await stub.IngestEvents(pb.IngestEventsRequest(events=[txn("e-1"), txn("e-2"), txn("e-3")]))
    assert (first.accepted, first.duplicates) == (3, 0)
    changed = txn("e-2", amount="999.00")  # same id, other payload: the first write wins
    again = await stub.IngestEvents(pb.IngestEventsRequest(events=[txn("e-1"), changed, txn("e-4"), txn("e-4")]))
    assert (again.accepted, again.duplicates) == (1, 3)
    stored = {r.event_id: r for r in await rows(svc)}
    assert sorted(stored) == ["e-1", "e-2", "e-3", "e-4"]
    assert float(stored["e-2"].amount) == 100.0
    assert stored["e-1"].recorded_at == first.recorded_at.ToDatetime(tzinfo=UTC)


async def test_a_request_id_replays_the_first_response(profile):
    svc, stub, _ = profile
    request = pb.IngestEventsRequest(events=[txn("e-1"), txn("e-2")], request_id="batch-1")
    first = await stub.IngestEvents(request)
    again = await stub.IngestEvents(request)
    assert again == first and (first.accepted, first.duplicates) == (2, 0)
    other = pb.IngestEventsRequest(events=[txn("e-3")], request_id="batch-1")
    await expect_error(stub.IngestEvents(other), INVALID, "REQUEST_ID_REUSED")
    assert await count(svc) == 2


async def test_recorded_at_is_set_by_the_server_and_the_clients_value_ignored(profile):
    svc, stub, _ = profile
    event = txn("e-1", occurred=now() - timedelta(days=400))  # a late event is accepted
    event.recorded_at.CopyFrom(ts(datetime(2001, 1, 1, tzinfo=UTC)))
    before = now()
    response = await stub.IngestEvents(pb.IngestEventsRequest(events=[event]))
    after = now()
    (row,) = await rows(svc)
    assert before <= row.recorded_at <= after
    assert row.recorded_at == response.recorded_at.ToDatetime(tzinfo=UTC)
    assert row.occurred_at < before - timedelta(days=399)
    assert (row.kind, row.direction, row.merchant_category, row.currency) == ("transaction", "debit", "groceries",
                                                                              "CNY")


def _bad(mutate):
    event = txn("e-bad")
    mutate(event)
    return event


@pytest.mark.parametrize(("event", "field"), [
    (_bad(lambda e: setattr(e.transaction, "amount", "12,5")), "events[1].transaction.amount"),
    (_bad(lambda e: setattr(e.transaction, "amount", "-1")), "events[1].transaction.amount"),
    (_bad(lambda e: setattr(e.transaction, "amount", "1.00001")), "events[1].transaction.amount"),
    (_bad(lambda e: setattr(e.transaction, "currency", "cny")), "events[1].transaction.currency"),
    (_bad(lambda e: setattr(e.transaction, "merchant_category", "Food & Drink")),
     "events[1].transaction.merchant_category"),
    (_bad(lambda e: setattr(e.transaction, "direction", 7)), "events[1].transaction.direction"),
    (_bad(lambda e: e.ClearField("occurred_at")), "events[1].occurred_at"),
    (_bad(lambda e: e.occurred_at.CopyFrom(ts(now() + timedelta(hours=1)))), "events[1].occurred_at"),
    (_bad(lambda e: setattr(e, "event_id", "")), "events[1].event_id"),
    (_bad(lambda e: setattr(e, "customer_id", "bad id!")), "events[1].customer_id"),
    (_bad(lambda e: e.ClearField("transaction")), "events[1].payload"),
    (_bad(lambda e: e.digital_activity.CopyFrom(pb.DigitalActivity(channel="app"))),
     "events[1].digital_activity.action"),
    (_bad(lambda e: e.repayment.CopyFrom(pb.Repayment(amount="10", days_late=-1))), "events[1].repayment.days_late"),
    (_bad(lambda e: e.repayment.CopyFrom(pb.Repayment(amount="10", due_date="2026-02-30"))),
     "events[1].repayment.due_date"),
    (_bad(lambda e: e.campaign_response.CopyFrom(pb.CampaignResponse(kind=pb.RESPONSE_KIND_CLICKED))),
     "events[1].campaign_response.campaign_id"),
    (_bad(lambda e: e.campaign_response.CopyFrom(pb.CampaignResponse(campaign_id="cmp-1"))),
     "events[1].campaign_response.kind"),
])
async def test_bad_events_name_the_field_and_nothing_is_written(profile, event, field):
    svc, stub, _ = profile
    got = await expect_error(stub.IngestEvents(pb.IngestEventsRequest(events=[txn("e-ok"), event])), INVALID,
                             "INVALID_ARGUMENT")
    assert [f for f, _ in got.field_violations] == [field]
    assert got.metadata["field"] == field
    assert await count(svc) == 0


async def test_batch_size_limits(profile):
    _, stub, _ = profile
    await expect_error(stub.IngestEvents(pb.IngestEventsRequest()), INVALID, "REQUIRED_FIELD_MISSING")
    too_many = [txn(f"e-{i}") for i in range(1001)]
    await expect_error(stub.IngestEvents(pb.IngestEventsRequest(events=too_many)), INVALID, "BATCH_TOO_LARGE")


async def test_stream_ingest_commits_each_message_and_stops_at_a_bad_one(profile):
    svc, stub, _ = profile

    async def messages(bad):
        yield pb.StreamIngestEventsRequest(events=[txn("e-1"), txn("e-2")])
        yield pb.StreamIngestEventsRequest(events=[txn("e-2"), txn("e-3")])
        if bad:
            yield pb.StreamIngestEventsRequest(events=[txn("e-4", amount="x")])

    done = await stub.StreamIngestEvents(messages(False))
    assert (done.accepted, done.duplicates, done.batches) == (3, 1, 2)
    got = await expect_error(stub.StreamIngestEvents(messages(True)), INVALID, "INVALID_ARGUMENT")
    assert got.field_violations[0][0] == "events[0].transaction.amount"
    assert await count(svc) == 3


# --- features -----------------------------------------------------------------------------------------------

async def test_features_of_an_unknown_customer_come_from_its_events_alone(profile):
    _, stub, _ = profile
    await stub.IngestEvents(pb.IngestEventsRequest(events=[
        txn("e-1", amount="120.50", occurred=now() - timedelta(days=3)),
        txn("e-2", amount="80", category="travel", occurred=now() - timedelta(days=40)),
    ]))
    got = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"))
    assert got.features["frequency_90d"] == 2 and got.features["monetary_90d"] == 200.5
    assert got.features["spend_category_groceries_30d"] == 120.5
    assert "spend_category_travel_30d" not in got.features and got.features["spend_category_travel_90d"] == 80
    assert got.features["recency_days"] == 3 and got.features["tenure_days"] == 40
    await expect_error(stub.GetFeatures(pb.GetFeaturesRequest(customer_id="nobody")), grpc.StatusCode.NOT_FOUND,
                       "CUSTOMER_NOT_FOUND")
    await expect_error(stub.GetFeatures(pb.GetFeaturesRequest(customer_id="")), INVALID, "REQUIRED_FIELD_MISSING")
    got = await expect_error(stub.GetFeatures(pb.GetFeaturesRequest(
        customer_id="c-1", as_of=ts(now() + timedelta(hours=1)))), INVALID, "AS_OF_IN_FUTURE")
    assert got.field_violations[0][0] == "as_of"


async def test_a_late_event_does_not_change_features_as_of_before_it_was_recorded(profile):
    _, stub, _ = profile
    first = await stub.IngestEvents(pb.IngestEventsRequest(events=[txn("e-1", occurred=now() - timedelta(days=5))]))
    as_of = first.recorded_at
    then = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1", as_of=as_of))
    # Happened two days ago, i.e. before as_of, but only learned of now.
    await stub.IngestEvents(pb.IngestEventsRequest(events=[txn("e-late", amount="500",
                                                               occurred=now() - timedelta(days=2))]))
    again = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1", as_of=as_of))
    assert again == then
    assert then.features["monetary_90d"] == 100 and then.features["recency_days"] == 5
    latest = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-1"))
    assert latest.features["monetary_90d"] == 600 and latest.features["recency_days"] == 2


async def test_batch_features_equal_real_time_features_on_the_database(profile):
    svc, stub, customers = profile
    rng = random.Random(7)
    ids = [f"c-{i}" for i in range(12)]
    for i, cid in enumerate(ids[:8]):
        customer = customer_pb2.Customer(customer_id=cid, region="CN-31",
                                         time_zone=("Asia/Shanghai", "Europe/Lisbon", "")[i % 3])
        customer.attributes["products_held"].string_value = "deposit"
        await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    events = []
    for n in range(300):
        occurred = now() - timedelta(seconds=rng.randrange(60, 400 * 86400))
        cid = rng.choice(ids[:-1])  # the last customer has no events
        if n % 4 == 3:
            events.append(pb.Event(event_id=f"r-{n}", customer_id=cid, occurred_at=ts(occurred),
                                   repayment=pb.Repayment(amount="50", days_late=rng.choice((0, 9)),
                                                          product="loan")))
        else:
            events.append(txn(f"t-{n}", cid, occurred, amount=f"{rng.randrange(100, 99999) / 100:.2f}",
                              category=rng.choice(("groceries", "travel")), channel=rng.choice(("pos", "online")),
                              direction=rng.choice((1, 1, 2))))
    await stub.IngestEvents(pb.IngestEventsRequest(events=events))
    events_service = svc.runtime.components["events"]
    as_of = now()
    batch, _ = await events_service.features_batch(ids[:-1], as_of)
    for cid in ids[:-1]:
        one, _ = await events_service.get_features(cid, as_of)
        assert set(one.values) == set(batch[cid].values), cid
        assert all(math.isclose(v, batch[cid].values[k], abs_tol=1e-6) for k, v in one.values.items()), cid
        assert one.products_held == batch[cid].products_held
    rpc = await stub.GetFeatures(pb.GetFeaturesRequest(customer_id="c-0", as_of=ts(as_of)))
    assert dict(rpc.features) == pytest.approx(batch["c-0"].values)


# --- tags ---------------------------------------------------------------------------------------------------

async def test_compute_tags_stores_them_and_get_tags_reads_them_back(profile):
    svc, stub, customers = profile
    customer = customer_pb2.Customer(customer_id="c-1", region="CN-31", birth_date="1990-01-01")
    customer.attributes["income"].decimal_value = "25000"
    customer.attributes["risk_questionnaire_score"].int_value = 80
    customer.attributes["customer_since"].date_value = "2020-01-01"
    await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    await stub.IngestEvents(pb.IngestEventsRequest(events=[
        txn("e-1", amount="6000", occurred=now() - timedelta(days=10)),
        txn("e-2", amount="100", occurred=now() - timedelta(days=200)),
    ]))
    assert (await stub.GetTags(pb.GetTagsRequest(customer_id="c-1"))).tags == []
    computed = await stub.ComputeTags(pb.ComputeTagsRequest(customer_ids=["c-1", "c-unknown"]))
    by_customer = {c.customer_id: {t.name: t for t in c.tags} for c in computed.customers}
    tags = by_customer["c-1"]
    assert {n: t.value for n, t in tags.items()} == {
        "lifecycle_stage": "growing", "value_tier": "medium", "clv_estimate": "414.80",
        "risk_preference": "aggressive", "age_band": "35-44",
        "income_tier": "upper_middle", "region_tier": "tier-1",
    }
    assert tags["risk_preference"].source == "questionnaire" and tags["lifecycle_stage"].rule_version == "1"
    assert by_customer["c-unknown"]["lifecycle_stage"].value == "unknown"
    stored = await stub.GetTags(pb.GetTagsRequest(customer_id="c-1"))
    assert {t.name: t for t in stored.tags} == tags
    assert stored.tags[0].computed_at.ToDatetime(tzinfo=UTC) <= now()
    assert await count(svc, CustomerTagRow) == 14
    await stub.ComputeTags(pb.ComputeTagsRequest(customer_ids=["c-1"]))  # replaces, never duplicates
    assert await count(svc, CustomerTagRow) == 14
    await expect_error(stub.ComputeTags(pb.ComputeTagsRequest()), INVALID, "REQUIRED_FIELD_MISSING")
    got = await expect_error(stub.ComputeTags(pb.ComputeTagsRequest(customer_ids=["ok", "bad id"])), INVALID,
                             "INVALID_ID")
    assert got.field_violations[0][0] == "customer_ids[1]"


# --- telemetry ----------------------------------------------------------------------------------------------

async def test_spans_and_logs_carry_the_customer_token_never_the_id(profile, span_exporter, caplog):
    _, stub, _ = profile
    raw_id = "cust-7d1c-secret"
    caplog.set_level(logging.DEBUG, logger="lodestar")
    await stub.IngestEvents(pb.IngestEventsRequest(events=[txn("e-1", customer=raw_id)]))
    await stub.GetFeatures(pb.GetFeaturesRequest(customer_id=raw_id))
    await stub.ComputeTags(pb.ComputeTagsRequest(customer_ids=[raw_id]))
    await stub.GetTags(pb.GetTagsRequest(customer_id=raw_id))
    server = None
    for _ in range(100):
        found = [s for s in span_exporter.get_finished_spans()
                 if s.name == "/lodestar.profile.v1.EventService/GetFeatures" and s.kind == SpanKind.SERVER]
        if found:
            (server,) = found
            break
        await asyncio.sleep(0.02)
    assert server is not None
    assert server.attributes[ATTR_CUSTOMER_TOKEN] == customer_token(raw_id)
    (compute,) = [s for s in span_exporter.get_finished_spans() if s.name == "EventsService.compute_features"]
    assert compute.parent.span_id == server.context.span_id
    assert compute.attributes[ATTR_CUSTOMER_TOKEN] == customer_token(raw_id)
    assert any(s.parent and s.parent.span_id == compute.context.span_id for s in span_exporter.get_finished_spans())
    for span in span_exporter.get_finished_spans():
        assert raw_id not in span.name
        for key, value in (span.attributes or {}).items():
            assert raw_id not in str(value), f"{span.name} {key}"
    assert [r for r in caplog.records if r.getMessage() == "events ingested"]
    for record in caplog.records:
        assert raw_id not in str(record.__dict__), record.getMessage()
