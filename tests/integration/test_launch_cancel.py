"""A cancelled campaign's launch stops claiming work and writes no further outbox rows; a paused one's waits and
resumes; the global holdout is recorded in partitions and never reaches the outbox. Real campaign database
(SQLite, or PostgreSQL with TEST_DATABASE_URL); profile's export and risk's ScreenBatch are the in-process
fakes of test_campaign_launch."""

from datetime import date, timedelta

import grpc
import numpy as np
import pytest
from sqlalchemy import select

import services.campaign.launch as launch_module
from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.campaign.v1 import launch_pb2
from services.campaign.app import DEFINITION
from services.campaign.clients import proxy_birth_date
from services.campaign.db import CampaignUnitOfWork, LaunchPartitionRow, OutboxRow
from services.campaign.domain import CANCELLED, COMPLETED, PAUSED, RUNNING, CustomerSnapshot
from services.campaign.holdout import GlobalHoldout
from services.campaign.launch import (
    ALLOCATING,
    CANCELLED_LAUNCH,
    DONE,
    HOLDOUT_GROUP,
    PENDING,
    SELECTING,
)
from services.campaign.scoring import HeuristicPropensityModel, age_at
from tests.helpers import stored_partitions
from tests.integration.test_campaign_launch import (
    DEPOSIT,
    Clock,
    FakeAudience,
    FakeRisk,
    add_campaign,
    members,
    service,
)


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                       CAMPAIGN_TRIGGER_POLL_SECONDS="3600")


async def move(svc, cid, from_state, to_state):
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        assert await uow.campaigns.transition(cid, from_state, to_state, "ops-2", "test")
        await uow.commit()


async def rows(svc, model, *where):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model).where(*where)))


async def test_a_cancelled_campaign_s_launch_claims_nothing_more_and_writes_no_outbox(svc):
    await add_campaign(svc)
    risk = FakeRisk()
    launches = service(svc, FakeAudience(members(9)), risk, size=3)
    launched = await launches.launch("spring", "ops-1", None)
    assert await launches.step()  # plan: 3 partitions
    assert await launches.step()  # partition 1
    assert (await launches.get(launched.launch_id)).state == SELECTING and risk.calls == 1
    await move(svc, "spring", RUNNING, CANCELLED)

    assert not await launches.step()  # nothing claimed: the launch is stopped instead
    view = await launches.get(launched.launch_id)
    assert (view.state, view.partitions_done) == (CANCELLED_LAUNCH, 1)
    assert "CANCELLED" in view.status_message and view.done_time is not None
    assert risk.calls == 1
    parts = await rows(svc, LaunchPartitionRow)
    assert sorted((p.number, p.state, p.attempts) for p in parts) == [(1, DONE, 1), (2, PENDING, 0), (3, PENDING, 0)]
    assert await rows(svc, OutboxRow) == []
    assert await launches.run_until_idle() == 0  # and it stays that way

    stub = pbg.CampaignServiceStub(grpc.aio.insecure_channel(svc.address))
    got = (await stub.GetLaunch(pb.GetLaunchRequest(name=f"launches/{launched.launch_id}"))).launch
    assert got.state == launch_pb2.LAUNCH_STATE_CANCELLED


async def test_a_paused_campaign_s_launch_waits_then_resumes_to_done(svc):
    await add_campaign(svc)
    launches = service(svc, FakeAudience(members(6)), FakeRisk(), size=3)
    launched = await launches.launch("spring", "ops-1", None)
    assert await launches.step()  # plan
    await move(svc, "spring", RUNNING, PAUSED)
    assert await launches.run_until_idle() == 0
    assert (await launches.get(launched.launch_id)).partitions_done == 0
    await move(svc, "spring", PAUSED, RUNNING)
    assert await launches.run_until_idle() == 3  # 2 partitions, the allocation
    view = await launches.get(launched.launch_id)
    assert (view.state, view.outbox_messages) == (DONE, 6)


@pytest.mark.parametrize(("to_state", "final"), [(CANCELLED, CANCELLED_LAUNCH), (PAUSED, ALLOCATING)])
async def test_cancel_or_pause_during_allocation_stops_the_outbox_between_chunks(svc, to_state, final):
    await add_campaign(svc)
    clock = Clock()
    launches = service(svc, FakeAudience(members(20)), FakeRisk(), clock, size=10)
    launched = await launches.launch("spring", "ops-1", None)
    while (await launches.get(launched.launch_id)).state != ALLOCATING:
        await launches.step()
    renew, calls = launches._renew_launch, 0

    async def renew_then_stop(launch_id):
        nonlocal calls
        calls += 1
        if calls == 2:  # the first chunk of 8 is committed; the campaign moves now
            await move(svc, "spring", RUNNING, to_state)
        return await renew(launch_id)

    launches._renew_launch = renew_then_stop
    original, launch_module.OUTBOX_CHUNK = launch_module.OUTBOX_CHUNK, 8
    try:
        assert await launches.step()
    finally:
        launch_module.OUTBOX_CHUNK = original
    assert len(await rows(svc, OutboxRow)) == 8
    view = await launches.get(launched.launch_id)
    assert view.state == final and view.report == {}
    if to_state == PAUSED:  # resumed: the rest is written, without duplicates
        await move(svc, "spring", PAUSED, RUNNING)
        clock.now += timedelta(seconds=6)  # after the release's back-off
        assert await launches.run_until_idle() == 1
        outbox = await rows(svc, OutboxRow)
        assert len(outbox) == 20 and len({o.delivery_key for o in outbox}) == 20
        assert (await launches.get(launched.launch_id)).state == DONE


async def test_a_completed_campaign_s_launch_stops_too(svc):
    await add_campaign(svc)
    launches = service(svc, FakeAudience(members(3)), FakeRisk(), size=3)
    launched = await launches.launch("spring", "ops-1", None)
    assert await launches.step()
    await move(svc, "spring", RUNNING, COMPLETED)
    assert await launches.run_until_idle() == 0
    assert (await launches.get(launched.launch_id)).state == CANCELLED_LAUNCH
    assert await rows(svc, OutboxRow) == []


async def test_global_holdout_members_are_recorded_and_never_in_the_outbox(svc):
    await add_campaign(svc, control=0.1, arms=(("a", 0.9),))
    audience = FakeAudience(members(200))
    holdout = GlobalHoldout(0.02)
    expected = {c for c in audience.members if holdout.contains(c)}
    assert expected == {"c00041", "c00043", "c00092", "c00181"}
    launches = service(svc, audience, FakeRisk(), size=50)
    launches.holdout = holdout
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    view = await launches.get(launched.launch_id)
    assert view.state == DONE and view.counts["global_holdout"] == 4
    assert view.counts["customers"] == 200
    assert view.counts["control"] + view.counts["treated"] + view.counts["global_holdout"] == 200
    recorded = set()
    for result in await stored_partitions(svc.runtime.database):
        recorded |= {str(c) for c in result.member_ids[result.groups == HOLDOUT_GROUP]}
        assert not set(map(str, result.candidate_ids)) & expected
        assert np.all(result.groups >= HOLDOUT_GROUP)
    assert recorded == expected
    outbox = {o.customer_id for o in await rows(svc, OutboxRow)}
    assert outbox and not outbox & expected
    stub = pbg.CampaignServiceStub(grpc.aio.insecure_channel(svc.address))
    got = (await stub.GetLaunch(pb.GetLaunchRequest(name=f"launches/{launched.launch_id}"))).launch
    assert got.progress.global_holdout_customers == 4


class RecordingRisk(FakeRisk):
    def __init__(self):
        super().__init__()
        self.facts = {}

    async def screen_subjects(self, offers, channel, contact_time, subjects):
        self.facts.update(zip(subjects.customer_ids, subjects.facts(), strict=True))  # what ScreenBatch gets
        self.contact_time = contact_time
        return await super().screen_subjects(offers, channel, contact_time, subjects)


async def test_the_exported_age_reaches_risk_and_the_scorer_never_a_birth_date(svc):
    people = members(3)
    people["c00000"]["age"], people["c00001"]["age"] = 17, 52  # c00002: profile knows no birth date
    audience, risk = FakeAudience(people), RecordingRisk()
    await add_campaign(svc)
    launches = service(svc, audience, risk, size=3)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    view = await launches.get(launched.launch_id)
    assert "age" in view.fields
    day = risk.contact_time.date()
    ages = {c: age_at(date.fromisoformat(f.birth_date), day) if f.birth_date else None for c, f in risk.facts.items()}
    assert ages == {"c00000": 17, "c00001": 52, "c00002": None}
    # A contact half a year later still sees the same age.
    later = day + timedelta(days=180)
    assert age_at(date.fromisoformat(risk.facts["c00001"].birth_date), later) == 52
    # The vectorised heuristic now has the age term, equal to the per-customer heuristic.
    (result,) = await stored_partitions(svc.runtime.database)
    births = [proxy_birth_date(age, view.as_of.date()) for age in (17.0, 52.0, np.nan)]
    model = HeuristicPropensityModel()
    for i, cid in enumerate(map(str, result.candidate_ids)):
        m = people[cid]
        snapshot = CustomerSnapshot(cid, births[int(cid[-1])], m["region"], m["time_zone"],
                                    {"income": m["income"], "risk_tolerance": m["risk_tolerance"]})
        assert result.probabilities[i, 0] == pytest.approx(model.score(snapshot, DEPOSIT, view.as_of.date()), abs=1e-12)
    assert result.probabilities[0, 0] != result.probabilities[2, 0]
