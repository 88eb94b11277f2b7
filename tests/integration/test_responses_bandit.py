"""Thompson sampling end to end on a real campaign database: the opt-in on the campaign contract, arm choice in
Decide (sticky, recorded with its probability as the decision's action probability, attributable by decision),
and arm choice in a launch (control keeps its hashed share; each member's probability stored)."""

from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from sqlalchemy import select

from lodestar.campaign.v1 import campaign_pb2
from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.common.v1 import common_pb2 as c
from services.campaign import bandit
from services.campaign.app import DEFINITION
from services.campaign.bandit import ThompsonArms
from services.campaign.db import (
    ArmAssignmentRow,
    CampaignRow,
    CampaignUnitOfWork,
    DecisionRow,
    ResponseRow,
)
from services.campaign.domain import (
    APPROVED,
    RUNNING,
    Arm,
    Campaign,
    CustomerSnapshot,
    DecisionContext,
    ScreenResult,
    Verdict,
)
from services.campaign.responses import ResponseInput, ResponseService, launch_members
from services.campaign.service import CampaignService
from services.platform.timestamps import to_timestamp
from tests.helpers import expect_error
from tests.integration.test_campaign_launch import DEPOSIT, Clock, FakeAudience, FakeRisk, members, service


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                       CAMPAIGN_LEARNING_INTERVAL_SECONDS="3600")


def uow_factory(svc):
    return lambda: CampaignUnitOfWork(svc.runtime.database)


async def add(svc, cid, *, state, control=0.0, selection="THOMPSON_SAMPLING", channels=(c.CHANNEL_SMS,)):
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        if await uow.offers.get(DEPOSIT.offer_id) is None:
            await uow.offers.add(DEPOSIT)
        await uow.campaigns.add(Campaign(
            campaign_id=cid, state=state, segment="segments/all", offer_ids=[DEPOSIT.offer_id],
            channels=list(channels), control_share=control, arm_selection=selection,
            arms=[Arm("a", (1 - control) / 2, "Hello A"), Arm("b", (1 - control) / 2, "Hello B")],
            created_by="maker", start_time=datetime.now(UTC)))
        await uow.commit()


async def test_the_opt_in_is_on_the_contract_and_only_for_always_on_campaigns(svc):
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        await uow.offers.add(DEPOSIT)
        await uow.commit()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{svc.port}")
    stub = cpbg.CampaignServiceStub(channel)
    campaign = campaign_pb2.Campaign(
        campaign_id="always", segment="segments/all", offer_ids=["dep"], channels=[c.CHANNEL_SMS],
        arms=[campaign_pb2.Arm(arm_id="a", share=0.5, content="A"), campaign_pb2.Arm(arm_id="b", share=0.5,
                                                                                        content="B")],
        arm_selection=campaign_pb2.ARM_SELECTION_THOMPSON_SAMPLING,
        end_time=to_timestamp(datetime.now(UTC) + timedelta(days=3)))
    error = await expect_error(stub.CreateCampaign(cpb.CreateCampaignRequest(campaign=campaign, actor="maker")),
                               grpc.StatusCode.INVALID_ARGUMENT, "INCONSISTENT_CAMPAIGN")
    assert [f for f, _ in error.field_violations] == ["campaign.arm_selection"]
    campaign.ClearField("end_time")
    created = (await stub.CreateCampaign(cpb.CreateCampaignRequest(campaign=campaign, actor="maker"))).campaign
    assert created.arm_selection == campaign_pb2.ARM_SELECTION_THOMPSON_SAMPLING
    got = (await stub.GetCampaign(cpb.GetCampaignRequest(name="campaigns/always"))).campaign
    assert got.arm_selection == campaign_pb2.ARM_SELECTION_THOMPSON_SAMPLING
    campaign.campaign_id, campaign.arm_selection = "fixed", campaign_pb2.ARM_SELECTION_UNSPECIFIED
    fixed = (await stub.CreateCampaign(cpb.CreateCampaignRequest(campaign=campaign, actor="maker"))).campaign
    assert fixed.arm_selection == campaign_pb2.ARM_SELECTION_FIXED_SHARES
    async with svc.runtime.database.sessionmaker() as session:
        assert {r.campaign_id: r.arm_selection for r in await session.scalars(select(CampaignRow))} == {
            "always": "THOMPSON_SAMPLING", "fixed": "FIXED_SHARES"}
    await channel.close()


class Profile:
    async def get_customer(self, customer_id):
        return CustomerSnapshot(customer_id, None, "CN-31", "Asia/Shanghai", {"income": 9000, "risk_tolerance": "C3"})


class Risk:
    async def screen(self, customer, offers, channel, contact_time):
        return ScreenResult({o.offer_id: Verdict(o.offer_id, "ALLOW", ()) for o in offers}, "test-policy")


async def seed_history(svc, cid, when):
    """Arm a: 100 contacts, 40 conversions; arm b: 100 contacts, 2 conversions (real-time assignments)."""
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        for arm, converted in (("a", 40), ("b", 2)):
            for i in range(100):
                uow.session.add(ArmAssignmentRow(campaign_id=cid, customer_id=f"{arm}-old-{i:03d}", arm_id=arm,
                                                 offer_id="dep", channel=c.CHANNEL_SMS, probability=0.5,
                                                 decision_id=f"d{arm}{i}", assign_time=when))
        await uow.commit()
    events = [ResponseInput("CONVERTED", when + timedelta(hours=1), campaign_id=cid, customer_id=f"{arm}-old-{i:03d}")
              for arm, converted in (("a", 40), ("b", 2)) for i in range(converted)]
    assert (await ResponseService(uow_factory(svc)).record(events, None)).recorded == 42


async def test_decide_picks_an_arm_by_thompson_sampling_and_records_its_probability(svc):
    await add(svc, "always", state=RUNNING)
    await seed_history(svc, "always", datetime.now(UTC) - timedelta(days=2))
    arms = ThompsonArms(uow_factory(svc))
    decide = CampaignService(uow_factory(svc), Profile(), Risk())
    decide.arms = arms
    now = datetime.now(UTC)
    decision = await decide.decide("new-1", DecisionContext(c.CHANNEL_SMS, "", "", now), 3)
    (offer,) = decision.offers
    reason = next(r for r in offer.reasons if r.code == "ARM_SELECTED")
    p_best = (await arms.arm_probabilities("always"))
    assert p_best["a"] > 0.99
    async with svc.runtime.database.sessionmaker() as session:
        assignment = await session.scalar(select(ArmAssignmentRow).where(ArmAssignmentRow.customer_id == "new-1"))
        record = await session.get(DecisionRow, decision.decision_id)
    expected_arm = ["a", "b"][bandit.draw([p_best["a"], p_best["b"]], bandit.uniform(bandit.arm_key("always",
                                                                                                      "new-1")))]
    assert (assignment.campaign_id, assignment.arm_id, assignment.offer_id, assignment.decision_id) == (
        "always", expected_arm, "dep", decision.decision_id)
    assert assignment.probability == pytest.approx(p_best[expected_arm])
    assert record.action_probability == pytest.approx(assignment.probability)
    assert f"arm {expected_arm} of campaigns/always" in reason.message

    # Sticky: the same customer keeps the arm (and its original probability); no second assignment.
    again = await decide.decide("new-1", DecisionContext(c.CHANNEL_SMS, "", "", now + timedelta(minutes=1)), 3)
    async with svc.runtime.database.sessionmaker() as session:
        assert len(list(await session.scalars(select(ArmAssignmentRow).where(
            ArmAssignmentRow.customer_id == "new-1")))) == 1
        assert (await session.get(DecisionRow, again.decision_id)).action_probability == pytest.approx(
            assignment.probability)
    # A channel the campaign does not use: no arm, the ranking's own probability 1.
    other = await decide.decide("new-2", DecisionContext(c.CHANNEL_EMAIL, "", "", now), 3)
    assert all(r.code != "ARM_SELECTED" for r in other.offers[0].reasons)
    async with svc.runtime.database.sessionmaker() as session:
        assert (await session.get(DecisionRow, other.decision_id)).action_probability == 1.0

    # A response quoting the decision is attributed to the campaign and the arm.
    result = await ResponseService(uow_factory(svc)).record([ResponseInput(
        "APPLIED", now + timedelta(hours=1), decision_id=decision.decision_id, offer_id="dep")], None)
    assert result.recorded == 1
    async with svc.runtime.database.sessionmaker() as session:
        row = await session.scalar(select(ResponseRow).where(ResponseRow.outcome == "APPLIED"))
    assert (row.campaign_id, row.arm_id, row.customer_id, row.decision_id) == (
        "always", expected_arm, "new-1", decision.decision_id)
    unknown = await ResponseService(uow_factory(svc)).record([ResponseInput(
        "APPLIED", now + timedelta(hours=1), decision_id=other.decision_id, offer_id="dep")], None)
    assert unknown.rejections == [(0, "NOT_ATTRIBUTED", "DECISION_NOT_IN_CAMPAIGN")]


async def test_a_thompson_launch_keeps_control_by_hash_and_stores_each_member_s_probability(svc):
    await add(svc, "spring", state=APPROVED, control=0.2)
    launches = service(svc, FakeAudience(members(80)), FakeRisk(), clock=Clock(), size=40)
    arms = ThompsonArms(uow_factory(svc))
    launches.arms = arms
    view = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    weights = await arms.arm_probabilities("spring")
    assert weights["a"] == pytest.approx(0.5, abs=0.02)  # no outcomes yet: even odds
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        ids, groups, probabilities = await launch_members(uow, view.launch_id)
    from services.campaign.launch import assign

    control = assign("spring", ids.tolist(), 0.2, [0.4, 0.4]) == -1
    assert np.array_equal(groups == -1, control)
    w = np.array([weights["a"], weights["b"]]) / (weights["a"] + weights["b"])
    for customer, group, p in zip(ids.tolist(), groups.tolist(), probabilities.tolist(), strict=True):
        if group == -1:
            assert p == pytest.approx(0.2)
        else:
            assert group == bandit.draw(w, bandit.uniform(bandit.arm_key("spring", customer)))
            assert p == pytest.approx(0.8 * w[group])
