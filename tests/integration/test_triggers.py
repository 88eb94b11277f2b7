"""Triggered campaigns through real servers: profile (events, the feed) and campaign for real, risk as a fake
server that allows everything. An ingested event matching a RUNNING campaign's trigger becomes one outbox row
"trigger:{campaign}:{event}" within seconds; the cursor persists across a restart of the follower; dedupe, the
control group, the global holdout and a paused campaign are honoured; bad triggers are refused."""

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import select, update

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import offer_pb2, trigger_pb2, trigger_pb2_grpc
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import CampaignUnitOfWork, FeedCursorRow, OutboxRow, TriggerFiringRow
from services.campaign.domain import DRAFT, PAUSED, RUNNING, Arm, Campaign
from services.campaign.feed_client import EventFeedClient
from services.campaign.holdout import GlobalHoldout
from services.campaign.triggers import TriggerService, trigger_launch_id
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

HELD_OUT = "h-14"  # sha256("lodestar-global-holdout-v1:h-14") falls in the first 2%
assert GlobalHoldout(0.02).contains(HELD_OUT) and not GlobalHoldout(0.02).contains("c-1")


class AllowAll(rpbg.RiskServiceServicer):
    def __init__(self):
        self.screened = []

    async def Screen(self, request, context):
        self.screened.append(request.customer_id)
        return spb.ScreenResponse(policy_version="fake-1", verdicts=[
            spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_ALLOW) for o in request.offers])


def ts(value):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


def txn(event_id, customer="c-1", amount="9000.00", category="travel", direction=epb.TRANSACTION_DIRECTION_DEBIT):
    return epb.Event(event_id=event_id, customer_id=customer, occurred_at=ts(datetime.now(UTC) - timedelta(minutes=1)),
                     transaction=epb.Transaction(amount=amount, currency="CNY", merchant_category=category,
                                                 channel="pos", direction=direction))


@pytest.fixture
async def stack(start):
    profile = await start(PROFILE)
    profile.runtime.components["event_feed"].settle = timedelta(0)  # tests need not wait out the settle interval
    risk_server = grpc.aio.server()
    risk = AllowAll()
    rpbg.add_RiskServiceServicer_to_server(risk, risk_server)
    risk_port = risk_server.add_insecure_port("127.0.0.1:0")
    await risk_server.start()
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR=f"127.0.0.1:{risk_port}",
                           CAMPAIGN_TRIGGER_POLL_SECONDS="0.1", CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600",
                           CAMPAIGN_GLOBAL_HOLDOUT_SHARE="0.02",
                           CAMPAIGN_LAUNCH_POLL_SECONDS="3600")
    pch, cch = grpc.aio.insecure_channel(profile.address), grpc.aio.insecure_channel(campaign.address)
    pstub, estub = ppbg.ProfileServiceStub(pch), epbg.EventServiceStub(pch)
    cstub, tstub = cpbg.CampaignServiceStub(cch), trigger_pb2_grpc.TriggerServiceStub(cch)
    for customer_id in ("c-1", "c-2", HELD_OUT):
        customer = customer_pb2.Customer(customer_id=customer_id, birth_date="1985-02-03", region="CN-31",
                                         time_zone="Asia/Shanghai")
        customer.attributes["income"].decimal_value = "20000"
        await pstub.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    await cstub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="deposit", title="Deposit", product_type=c.PRODUCT_TYPE_DEPOSIT, risk_level=c.PRODUCT_RISK_LEVEL_R1,
        conversion_value=500.0, contact_cost=0.5, disclosures=[c.Disclosure(kind="rate", text="2% a year")])))
    yield {"profile": profile, "campaign": campaign, "estub": estub, "cstub": cstub, "tstub": tstub, "risk": risk}
    await pch.close()
    await cch.close()
    await risk_server.stop(0)


async def add_campaign(svc, cid="travel", *, control=0.0, state=RUNNING):
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        await uow.campaigns.add(Campaign(
            campaign_id=cid, state=DRAFT, segment="segments/all", offer_ids=["deposit"], channels=[c.CHANNEL_SMS],
            control_share=control, arms=[Arm("a", 1.0 - control, "Save for your next trip")], created_by="maker",
            start_time=datetime.now(UTC)))
        await uow.commit()


async def set_state(svc, cid, to_state):
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        current = await uow.campaigns.get(cid)
        assert await uow.campaigns.transition(cid, current.state, to_state, "ops-1", "test")
        await uow.commit()


async def rows(svc, model, *where):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model).where(*where)))


async def wait_for(predicate, seconds=15.0):
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


async def test_a_matching_event_becomes_one_outbox_row_within_seconds(stack):
    campaign, tstub = stack["campaign"], stack["tstub"]
    await add_campaign(campaign)
    trigger = (await tstub.SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
        trigger=trigger_pb2.CampaignTrigger(campaign="campaigns/travel",
                                            condition='kind = "transaction" and txn.amount > 5000'),
        actor="maker", request_id="t-1"))).trigger
    assert (trigger.canonical_condition, trigger.dedupe_hours) == (
        'attr.kind = "transaction" and attr.amount > 5000', 24)
    await set_state(campaign, "travel", RUNNING)

    await stack["estub"].IngestEvents(epb.IngestEventsRequest(events=[
        txn("e-small", amount="120.00"), txn("e-big"), txn("e-credit", customer="c-2", amount="7000.00",
                                                          direction=epb.TRANSACTION_DIRECTION_CREDIT)]))

    async def two_firings():
        return len(await rows(campaign, TriggerFiringRow)) == 2

    await wait_for(two_firings)
    outbox = await rows(campaign, OutboxRow)
    assert [(o.delivery_key, o.launch_id, o.customer_id, o.offer_id, o.channel, o.arm_id, o.state) for o in outbox] == [
        ("trigger:travel:e-big", trigger_launch_id("travel"), "c-1", "deposit", c.CHANNEL_SMS, "a", "PENDING"),
        ("trigger:travel:e-credit", trigger_launch_id("travel"), "c-2", "deposit", c.CHANNEL_SMS, "a", "PENDING")]
    firings = {f.event_id: f for f in await rows(campaign, TriggerFiringRow)}
    assert {k: f.outcome for k, f in firings.items()} == {"e-big": "FIRED", "e-credit": "FIRED"}
    assert all(len(f.decision_id) == 32 for f in firings.values())  # Decide's own decision record
    assert stack["risk"].screened == ["c-1", "c-2"]
    got = (await tstub.GetCampaignTrigger(trigger_pb2.GetCampaignTriggerRequest(campaign="campaigns/travel"))).trigger
    assert dict(got.firings) == {"FIRED": 2}

    # The same customer again within the dedupe window: recorded, not contacted.
    await stack["estub"].IngestEvents(epb.IngestEventsRequest(events=[txn("e-big-2")]))

    async def deduped():
        return any(f.event_id == "e-big-2" for f in await rows(campaign, TriggerFiringRow))

    await wait_for(deduped)
    assert {f.event_id: f.outcome for f in await rows(campaign, TriggerFiringRow)}["e-big-2"] == "DEDUPED"
    assert len(await rows(campaign, OutboxRow)) == 2


async def test_the_cursor_persists_so_a_restarted_follower_neither_skips_nor_repeats(stack):
    campaign, profile = stack["campaign"], stack["profile"]
    for task in campaign.runtime.background:  # the app's own feed loop keeps off this test
        if task.get_name() == "trigger feed":
            task.cancel()
    await asyncio.sleep(0.3)
    async with campaign.runtime.database.sessionmaker() as session:  # and whatever lease it held is gone
        await session.execute(update(FeedCursorRow).values(claimed_by=None, lease_until=None))
        await session.commit()
    await add_campaign(campaign)
    await stack["tstub"].SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
        trigger=trigger_pb2.CampaignTrigger(campaign="campaigns/travel", condition="amount >= 1000",
                                            dedupe_hours=0), actor="maker"))
    await set_state(campaign, "travel", RUNNING)
    await stack["estub"].IngestEvents(epb.IngestEventsRequest(events=[
        txn(f"e-{i}", customer="c-1" if i % 2 else "c-2", amount="2000") for i in range(4)]))
    feed = EventFeedClient(profile.address)
    decider = campaign.runtime.components["service"]

    def follower(worker):
        return TriggerService(lambda: CampaignUnitOfWork(campaign.runtime.database), feed, decider,
                              holdout=GlobalHoldout(0.02), worker_id=worker, batch_size=2, lease_seconds=0.01)

    first = follower("w1")
    assert await first.step()  # events e-0, e-1 (one per customer); then the process "dies"
    assert sorted(o.delivery_key for o in await rows(campaign, OutboxRow)) == [
        "trigger:travel:e-0", "trigger:travel:e-1"]
    await asyncio.sleep(0.05)  # its lease runs out
    second = follower("w2")
    assert await second.run_until_idle() == 1  # only e-2, e-3 remain
    firings = await rows(campaign, TriggerFiringRow)
    assert sorted((f.event_id, f.outcome) for f in firings) == [
        ("e-0", "FIRED"), ("e-1", "FIRED"), ("e-2", "DEDUPED"), ("e-3", "DEDUPED")]
    assert len(await rows(campaign, OutboxRow)) == 2
    (cursor,) = await rows(campaign, FeedCursorRow)
    assert cursor.claimed_by == "w2" and cursor.cursor
    assert not await second.step()  # nothing new
    await feed.close()


async def test_holdout_control_and_a_paused_campaign_are_never_contacted(stack):
    campaign = stack["campaign"]
    await add_campaign(campaign, "always-control", control=0.999999)
    await add_campaign(campaign, "paused")
    for cid in ("always-control", "paused"):
        await stack["tstub"].SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
            trigger=trigger_pb2.CampaignTrigger(campaign=f"campaigns/{cid}", condition='merchant_category = "travel"'),
            actor="maker"))
        await set_state(campaign, cid, RUNNING)
    await set_state(campaign, "paused", PAUSED)
    await stack["estub"].IngestEvents(epb.IngestEventsRequest(events=[txn("e-1"), txn("e-2", customer=HELD_OUT)]))

    async def both():
        return len(await rows(campaign, TriggerFiringRow)) == 2

    await wait_for(both)
    await asyncio.sleep(0.3)  # a few more polls: still nothing for the paused campaign
    firings = await rows(campaign, TriggerFiringRow)
    assert sorted((f.campaign_id, f.event_id, f.outcome) for f in firings) == [
        ("always-control", "e-1", "CONTROL"), ("always-control", "e-2", "GLOBAL_HOLDOUT")]
    assert await rows(campaign, OutboxRow) == []
    assert stack["risk"].screened == []  # neither was even decided


async def test_a_trigger_changes_only_on_a_draft_and_must_parse(stack):
    campaign, tstub = stack["campaign"], stack["tstub"]
    await add_campaign(campaign)
    bad = await expect_error(tstub.SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
        trigger=trigger_pb2.CampaignTrigger(campaign="campaigns/travel", condition="amount >"), actor="maker")),
        grpc.StatusCode.INVALID_ARGUMENT)
    assert bad.field_violations[0][0] == "trigger.condition"
    await expect_error(tstub.SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
        trigger=trigger_pb2.CampaignTrigger(campaign="campaigns/travel", condition="colour = 3"), actor="maker")),
        grpc.StatusCode.INVALID_ARGUMENT)
    await expect_error(tstub.SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
        trigger=trigger_pb2.CampaignTrigger(campaign="campaigns/nope", condition="amount > 1"), actor="maker")),
        grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    await expect_error(tstub.GetCampaignTrigger(trigger_pb2.GetCampaignTriggerRequest(campaign="campaigns/travel")),
                       grpc.StatusCode.NOT_FOUND, "TRIGGER_NOT_FOUND")
    await set_state(campaign, "travel", RUNNING)
    failed = await expect_error(tstub.SetCampaignTrigger(trigger_pb2.SetCampaignTriggerRequest(
        trigger=trigger_pb2.CampaignTrigger(campaign="campaigns/travel", condition="amount > 1"), actor="maker")),
        grpc.StatusCode.FAILED_PRECONDITION, "CAMPAIGN_NOT_EDITABLE")
    assert failed.metadata["state"] == "RUNNING"


async def test_decide_never_offers_anything_to_a_member_of_the_global_holdout(stack):
    cstub = stack["cstub"]
    response = await cstub.Decide(cpb.DecideRequest(customer_id=HELD_OUT,
                                                    context=offer_pb2.DecisionContext(channel=c.CHANNEL_SMS)))
    assert list(response.offers) == []
    assert {s.offer_id: [r.code for r in s.reasons] for s in response.suppressed} == {"deposit": ["GLOBAL_HOLDOUT"]}
    assert response.policy_version == "global-holdout"
    assert stack["risk"].screened == []  # risk is not even asked
    decision_id = response.decision.removeprefix("decisions/")
    record = (await cstub.GetDecision(cpb.GetDecisionRequest(name=response.decision))).decision
    assert [(cand.offer_id, cand.verdict, list(cand.risk_reasons)) for cand in record.candidates] == [
        ("deposit", "HOLDOUT", ["GLOBAL_HOLDOUT"])]
    explained = await cstub.ExplainDecision(cpb.ExplainDecisionRequest(name=f"decisions/{decision_id}"))
    assert explained.reproduced
    # Everyone else is decided as before.
    other = await cstub.Decide(cpb.DecideRequest(customer_id="c-1",
                                                 context=offer_pb2.DecisionContext(channel=c.CHANNEL_SMS)))
    assert [o.offer_id for o in other.offers] == ["deposit"]


async def test_the_cli_sets_and_shows_a_trigger(stack, monkeypatch):
    import io
    import json

    from lodestar_cli.main import run

    campaign = stack["campaign"]
    await add_campaign(campaign)
    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", campaign.address)

    async def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, list(argv), out, err)
        return code, out.getvalue()

    code, printed = await cli("triggers", "set", "travel", "--condition", "txn.amount > 5000", "--dedupe-hours", "6",
                              "--actor", "maker", "--json")
    data = json.loads(printed)
    assert code == 0 and data["trigger"]["canonical_condition"] == "attr.amount > 5000"
    assert data["trigger"]["dedupe_hours"] == 6
    code, text = await cli("triggers", "get", "travel")
    assert code == 0 and "attr.amount > 5000" in text and "every 6 h" in text
    code, printed = await cli("triggers", "get", "nope", "--json")
    assert code == 1 and json.loads(printed)["error"]["reason"] == "TRIGGER_NOT_FOUND"
