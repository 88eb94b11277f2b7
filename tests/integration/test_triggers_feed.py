"""Profile's event feed (EventService.ListEventsSince): ingestion order, a cursor that resumes exactly after the
last event returned, the settle interval, and bad input."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2

from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error


def ts(value):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def event(event_id, **payload):
    kind = payload or {"transaction": epb.Transaction(amount="10.5", currency="CNY", merchant_category="groceries",
                                                      channel="pos")}
    return epb.Event(event_id=event_id, customer_id="c-1", occurred_at=ts(datetime.now(UTC) - timedelta(hours=1)),
                     **kind)


@pytest.fixture
async def feed(start):
    profile = await start(PROFILE)
    profile.runtime.components["event_feed"].settle = timedelta(0)
    channel = grpc.aio.insecure_channel(profile.address)
    yield profile, epbg.EventServiceStub(channel)
    await channel.close()


async def test_events_come_in_ingestion_order_and_the_cursor_resumes_after_the_last(feed):
    _, stub = feed
    await stub.IngestEvents(epb.IngestEventsRequest(events=[event("b"), event("a")]))
    await stub.IngestEvents(epb.IngestEventsRequest(events=[
        event("0-late", digital_activity=epb.DigitalActivity(action=epb.DIGITAL_ACTION_CLICK, channel="app",
                                                             target="card_upgrade")),
        event("r", repayment=epb.Repayment(amount="300", due_date="2026-11-01", days_late=3, product="loan")),
        event("x", campaign_response=epb.CampaignResponse(campaign_id="spring", offer_id="dep",
                                                          kind=epb.RESPONSE_KIND_CLICKED))]))
    first = await stub.ListEventsSince(epb.ListEventsSinceRequest(limit=3))
    # The first ingest's events (one recorded_at, then by id) before the second's, whatever their ids.
    assert [e.event_id for e in first.events] == ["a", "b", "0-late"]
    assert first.events[0].transaction.amount == "10.5" and first.events[0].HasField("recorded_at")
    assert first.events[2].digital_activity.target == "card_upgrade"
    rest = await stub.ListEventsSince(epb.ListEventsSinceRequest(cursor=first.next_cursor, limit=3))
    assert [e.event_id for e in rest.events] == ["r", "x"]
    assert (rest.events[0].repayment.days_late, rest.events[1].campaign_response.kind) == (
        3, epb.RESPONSE_KIND_CLICKED)
    empty = await stub.ListEventsSince(epb.ListEventsSinceRequest(cursor=rest.next_cursor))
    assert list(empty.events) == [] and empty.next_cursor == rest.next_cursor
    await stub.IngestEvents(epb.IngestEventsRequest(events=[event("later")]))
    more = await stub.ListEventsSince(epb.ListEventsSinceRequest(cursor=rest.next_cursor))
    assert [e.event_id for e in more.events] == ["later"]


async def test_events_younger_than_the_settle_interval_wait(feed):
    profile, stub = feed
    profile.runtime.components["event_feed"].settle = timedelta(hours=1)
    await stub.IngestEvents(epb.IngestEventsRequest(events=[event("a")]))
    page = await stub.ListEventsSince(epb.ListEventsSinceRequest())
    assert list(page.events) == [] and page.next_cursor == ""


async def test_bad_cursor_and_limit(feed):
    _, stub = feed
    bad = await expect_error(stub.ListEventsSince(epb.ListEventsSinceRequest(cursor="not-a-cursor")),
                             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR")
    assert bad.field_violations[0][0] == "cursor"
    await expect_error(stub.ListEventsSince(epb.ListEventsSinceRequest(limit=-1)),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_LIMIT")


async def test_the_aip_158_names_page_up_to_now(feed):
    _, stub = feed
    await stub.IngestEvents(epb.IngestEventsRequest(events=[event(f"e-{i}") for i in range(5)]))
    first = await stub.ListEventsSince(epb.ListEventsSinceRequest(page_size=3))
    assert [e.event_id for e in first.events] == ["e-0", "e-1", "e-2"]
    assert first.next_page_token == first.next_cursor  # a full page: more may follow
    rest = await stub.ListEventsSince(epb.ListEventsSinceRequest(page_size=3, page_token=first.next_page_token))
    assert [e.event_id for e in rest.events] == ["e-3", "e-4"]
    assert rest.next_page_token == "" and rest.next_cursor  # caught up; a follower keeps the cursor
    await expect_error(stub.ListEventsSince(epb.ListEventsSinceRequest(cursor=first.next_cursor,
                                                                       page_token=rest.next_cursor)),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CURSOR")
