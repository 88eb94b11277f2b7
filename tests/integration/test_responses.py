"""ResponseService on a real campaign server and database: attribution by delivery key and by (campaign,
customer) after a real launch, every disposition of bad input, idempotent streams, GetArmOutcomes, the
dispatcher's entry point and `outcome_counts`."""

from datetime import timedelta
from types import SimpleNamespace

import grpc
import pytest
from sqlalchemy import select

from lodestar.campaign.v1 import response_service_pb2 as pb
from lodestar.campaign.v1 import response_service_pb2_grpc as pbg
from services.campaign import responses
from services.campaign.app import DEFINITION
from services.campaign.db import CampaignUnitOfWork, OutboxRow, ResponseRow
from services.campaign.responses import OutcomeCount, launch_members, outcome_counts, record_delivery_event
from services.platform.timestamps import to_timestamp
from tests.helpers import expect_error
from tests.integration.test_campaign_launch import Clock, FakeAudience, FakeRisk, add_campaign, members, service

D = pb.ResponseDisposition


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                       CAMPAIGN_LEARNING_INTERVAL_SECONDS="3600", CAMPAIGN_CURRENCY="CNY",
                       CAMPAIGN_ATTRIBUTION_WINDOW_DAYS="30")


@pytest.fixture
async def stub(svc):
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}")
    yield pbg.ResponseServiceStub(channel)
    await channel.close()


@pytest.fixture
async def launched(svc):
    """A DONE launch of 'spring': 60 members, control 0.25, arms a 0.5 / b 0.25; returns what it decided."""
    await add_campaign(svc, control=0.25, arms=(("a", 0.5), ("b", 0.25)))
    clock = Clock()
    launches = service(svc, FakeAudience(members(60)), FakeRisk(), clock=clock, size=25)
    view = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        outbox = [SimpleNamespace(delivery_key=r.delivery_key, customer_id=r.customer_id, arm_id=r.arm_id,
                                  offer_id=r.offer_id)
                  for r in await uow.session.scalars(select(OutboxRow).order_by(OutboxRow.customer_id))]
        ids, groups, probabilities = await launch_members(uow, view.launch_id)
    control = [c for c, g in zip(ids.tolist(), groups.tolist(), strict=True) if g == -1]
    assert outbox and control and probabilities is not None
    return {"launch_id": view.launch_id, "contact": clock.now, "outbox": outbox, "control": control,
            "groups": dict(zip(ids.tolist(), groups.tolist(), strict=True))}


def event(outcome, when, **fields):
    return pb.ResponseEvent(outcome=outcome, response_time=to_timestamp(when), **fields)


async def stream(stub, *messages):
    async def gen():
        for m in messages:
            yield m

    return await stub.RecordResponses(gen())


async def rows(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(ResponseRow).order_by(ResponseRow.id)))


async def test_every_disposition_is_counted_and_only_recorded_events_are_stored(svc, stub, launched):
    contact, sent, control = launched["contact"], launched["outbox"][0], launched["control"][0]
    later, key = contact + timedelta(hours=2), sent.delivery_key
    first = pb.RecordResponsesRequest(request_id="batch-1", events=[
        event(pb.RESPONSE_OUTCOME_OPENED, later, delivery_key=key, event_id="prov-1"),        # 0 recorded
        event(pb.RESPONSE_OUTCOME_OPENED, later, delivery_key=key, event_id="prov-2"),        # 1 duplicate
        event(pb.RESPONSE_OUTCOME_OPENED, later, delivery_key="nope:c1"),                     # 2 unknown delivery
        event(pb.RESPONSE_OUTCOME_CONVERTED, contact - timedelta(hours=1), delivery_key=key),  # 3 before contact
        event(pb.RESPONSE_OUTCOME_CONVERTED, contact + timedelta(days=31), delivery_key=key),  # 4 outside window
    ])
    second = pb.RecordResponsesRequest(events=[
        event(pb.RESPONSE_OUTCOME_CONVERTED, later, delivery_key=key, revenue=100.0, currency_code="USD"),  # 5
        event(pb.RESPONSE_OUTCOME_CONVERTED, later, delivery_key=key, revenue=120.5, currency_code="CNY"),  # 6
        event(pb.RESPONSE_OUTCOME_CONVERTED, later, campaign="campaigns/spring", customer_id=control),      # 7
        event(pb.RESPONSE_OUTCOME_CONVERTED, later, campaign="campaigns/spring", customer_id="zzz-none"),  # 8
        event(pb.RESPONSE_OUTCOME_OPENED, later, delivery_key=key, revenue=5.0, currency_code="CNY"),      # 9
        event(pb.RESPONSE_OUTCOME_OPENED, later, campaign="spring", customer_id=control),                  # 10
        event(pb.RESPONSE_OUTCOME_CLICKED, later, campaign="campaigns/gone", customer_id=control),         # 11
    ])
    answer = await stream(stub, first, second)
    assert (answer.received, answer.recorded) == (12, 3)
    assert {c.disposition: c.count for c in answer.counts} == {
        D.RESPONSE_DISPOSITION_RECORDED: 3, D.RESPONSE_DISPOSITION_DUPLICATE: 1,
        D.RESPONSE_DISPOSITION_UNKNOWN_DELIVERY: 1, D.RESPONSE_DISPOSITION_BEFORE_CONTACT: 1,
        D.RESPONSE_DISPOSITION_OUTSIDE_WINDOW: 1, D.RESPONSE_DISPOSITION_CURRENCY_MISMATCH: 1,
        D.RESPONSE_DISPOSITION_NOT_ATTRIBUTED: 2, D.RESPONSE_DISPOSITION_INVALID: 2}
    assert [(r.index, r.disposition, r.reason) for r in answer.rejections] == [
        (1, D.RESPONSE_DISPOSITION_DUPLICATE, "ALREADY_RECORDED"),
        (2, D.RESPONSE_DISPOSITION_UNKNOWN_DELIVERY, "DELIVERY_NOT_FOUND"),
        (3, D.RESPONSE_DISPOSITION_BEFORE_CONTACT, "RESPONSE_BEFORE_CONTACT"),
        (4, D.RESPONSE_DISPOSITION_OUTSIDE_WINDOW, "RESPONSE_OUTSIDE_ATTRIBUTION_WINDOW"),
        (5, D.RESPONSE_DISPOSITION_CURRENCY_MISMATCH, "CURRENCY_MISMATCH"),
        (8, D.RESPONSE_DISPOSITION_NOT_ATTRIBUTED, "NO_ASSIGNMENT"),
        (9, D.RESPONSE_DISPOSITION_INVALID, "REVENUE_WITHOUT_CONVERSION"),
        (10, D.RESPONSE_DISPOSITION_INVALID, "INVALID_CAMPAIGN_NAME"),
        (11, D.RESPONSE_DISPOSITION_NOT_ATTRIBUTED, "CAMPAIGN_NOT_FOUND"),
    ]
    stored = await rows(svc)
    assert [(r.campaign_id, r.arm_id, r.customer_id, r.outcome, r.revenue, r.currency_code, r.delivery_key)
            for r in stored] == [
        ("spring", sent.arm_id, sent.customer_id, "OPENED", 0.0, "", key),
        ("spring", sent.arm_id, sent.customer_id, "CONVERTED", 120.5, "CNY", key),
        ("spring", "control", control, "CONVERTED", 0.0, "", ""),
    ]
    assert stored[0].event_id == "prov-1" and stored[0].offer_id == sent.offer_id
    assert stored[0].contact_time == contact and stored[0].response_day == later.date().isoformat()

    # The same stream again (a retry): the first answer, nothing written.
    again = await stream(stub, first, second)
    assert again == answer
    assert len(await rows(svc)) == 3
    # The same events without a request id: every recorded one is now a duplicate, nothing double counted.
    plain = await stream(stub, pb.RecordResponsesRequest(events=list(first.events) + list(second.events)))
    assert (plain.recorded, {c.disposition: c.count for c in plain.counts}[D.RESPONSE_DISPOSITION_DUPLICATE]) == (0, 4)
    assert len(await rows(svc)) == 3


async def test_stream_errors(svc, stub, launched):
    later = launched["contact"] + timedelta(hours=1)
    one = event(pb.RESPONSE_OUTCOME_OPENED, later, delivery_key=launched["outbox"][0].delivery_key)
    await stream(stub, pb.RecordResponsesRequest(request_id="r-1", events=[one]))
    other = event(pb.RESPONSE_OUTCOME_CLICKED, later, delivery_key=launched["outbox"][0].delivery_key)
    await expect_error(stream(stub, pb.RecordResponsesRequest(request_id="r-1", events=[other])),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    await expect_error(stream(stub, pb.RecordResponsesRequest(request_id="r-2", events=[other]),
                              pb.RecordResponsesRequest(request_id="r-3", events=[other])),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_CHANGED")
    await expect_error(stream(stub, pb.RecordResponsesRequest(request_id="bad id!", events=[other])),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST_ID")
    assert [r.outcome for r in await rows(svc)] == ["OPENED"]
    empty = await stream(stub)
    assert (empty.received, empty.recorded, list(empty.counts)) == (0, 0, [])


async def test_arm_outcomes_and_outcome_counts(svc, stub, launched):
    contact, outbox, groups = launched["contact"], launched["outbox"], launched["groups"]
    day1, day2 = contact + timedelta(hours=1), contact + timedelta(days=1, hours=1)
    converted = [o for o in outbox if o.arm_id == "a"][:2]
    await stream(stub, pb.RecordResponsesRequest(events=[
        *[event(pb.RESPONSE_OUTCOME_CONVERTED, day1, delivery_key=o.delivery_key, revenue=10.0, currency_code="CNY")
          for o in converted],
        event(pb.RESPONSE_OUTCOME_CLICKED, day2, delivery_key=converted[0].delivery_key),
        event(pb.RESPONSE_OUTCOME_APPLIED, day2, campaign="campaigns/spring", customer_id=launched["control"][0]),
    ]))
    answer = await stub.GetArmOutcomes(pb.GetArmOutcomesRequest(campaign="campaigns/spring"))
    assert (answer.campaign, answer.currency_code, answer.attribution_window_days) == ("campaigns/spring", "CNY", 30)
    by_arm = {a.arm_id: a for a in answer.arms}
    assert list(by_arm) == ["a", "b", "control"]
    for arm_id, group in (("a", 0), ("b", 1), ("control", -1)):
        assert by_arm[arm_id].assigned == sum(1 for g in groups.values() if g == group)
        assert by_arm[arm_id].contacted == sum(1 for o in outbox if o.arm_id == arm_id)
    a = by_arm["a"]
    assert (a.converted, a.clicked, a.opened, a.revenue) == (2, 1, 0, 20.0)
    assert (a.posterior_alpha, a.posterior_beta) == (3.0, 1.0 + a.contacted - 2)
    assert (by_arm["control"].applied, by_arm["control"].probability_best) == (1, 0.0)
    assert by_arm["a"].probability_best + by_arm["b"].probability_best == pytest.approx(1.0)
    assert by_arm["a"].probability_best > by_arm["b"].probability_best

    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        counts = await outcome_counts(uow, "spring")
    assert counts == [
        OutcomeCount("a", "CLICKED", day2.date().isoformat(), 1, 0.0),
        OutcomeCount("a", "CONVERTED", day1.date().isoformat(), 2, 20.0),
        OutcomeCount("control", "APPLIED", day2.date().isoformat(), 1, 0.0),
    ]
    await expect_error(stub.GetArmOutcomes(pb.GetArmOutcomesRequest(campaign="campaigns/nope")),
                       grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    await expect_error(stub.GetArmOutcomes(pb.GetArmOutcomesRequest(campaign="spring")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")


async def test_the_dispatcher_records_opened_and_clicked_through_the_same_counter(svc, stub, launched):
    sent = launched["outbox"][0]
    when = launched["contact"] + timedelta(minutes=5)
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        first = await record_delivery_event(uow, sent.delivery_key, responses.OPENED, when, event_id="cb-1")
        again = await record_delivery_event(uow, sent.delivery_key, responses.OPENED, when, event_id="cb-2")
        unknown = await record_delivery_event(uow, "nope:x", responses.CLICKED, when)
        await uow.commit()
    assert (first.disposition, again.disposition, unknown.disposition) == (
        responses.RECORDED, responses.DUPLICATE, responses.UNKNOWN_DELIVERY)
    # The partner (or any other source) reporting the same open later is a duplicate, not a second open.
    answer = await stream(stub, pb.RecordResponsesRequest(events=[
        event(pb.RESPONSE_OUTCOME_OPENED, when, campaign="campaigns/spring", customer_id=sent.customer_id)]))
    assert answer.recorded == 0
    assert [(r.customer_id, r.outcome, r.event_id) for r in await rows(svc)] == [
        (sent.customer_id, "OPENED", "cb-1")]
