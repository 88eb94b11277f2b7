"""The learning loop on a real campaign database: a finished campaign's randomised assignments and attributed
outcomes become history rows (exactly, once), a challenger uplift version is trained (promoted only when
configured), the run is claimed once across replicas, and a launch past its attribution window is due without
being completed."""

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import select

from services.campaign.app import DEFINITION
from services.campaign.db import (
    CampaignUnitOfWork,
    HistoryRow,
    LaunchRow,
    LearningRunRow,
    ModelVersionRow,
    OutboxRow,
)
from services.campaign.domain import COMPLETED, RUNNING, CustomerSnapshot
from services.campaign.learning import LearningService
from services.campaign.learning_loop import LearningLoop
from services.campaign.responses import ResponseInput, ResponseService, ResponseSettings, launch_members
from tests.integration.test_campaign_launch import Clock, FakeAudience, FakeRisk, add_campaign, members, service

N = 240


class Directory:
    """Profile's customers, as LearningService reads them."""

    def __init__(self, people):
        self.people = people
        self.calls = 0

    async def get_customers(self, customer_ids):
        self.calls += 1
        return {c: CustomerSnapshot(c, None, "CN-31", "Asia/Shanghai",
                                    {"income": self.people[c]["income"],
                                     "risk_tolerance": self.people[c]["risk_tolerance"]})
                for c in customer_ids if c in self.people}


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                       CAMPAIGN_LEARNING_INTERVAL_SECONDS="3600")


def uow_factory(svc):
    return lambda: CampaignUnitOfWork(svc.runtime.database)


async def finished_campaign(svc, people, clock):
    """'spring' launched (control 0.5, one arm), every treated member contacted; conversions: every 3rd treated,
    every 5th control customer. Returns (outbox customers -> arm, control customers, converted customers)."""
    await add_campaign(svc, control=0.5, arms=(("a", 0.5),))
    launches = service(svc, FakeAudience(people), FakeRisk(), clock=clock, size=100)
    view = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        sent = {r.customer_id: r.delivery_key for r in await uow.session.scalars(select(OutboxRow))}
        ids, groups, _ = await launch_members(uow, view.launch_id)
        clock.contact = (await uow.session.get(LaunchRow, view.launch_id)).contact_time
    control = sorted(c for c, g in zip(ids.tolist(), groups.tolist(), strict=True) if g == -1)
    converted = set(sorted(sent)[::3]) | set(control[::5])
    when = clock.contact + timedelta(hours=3)
    events = [ResponseInput("CONVERTED", when, delivery_key=sent[c], revenue=50.0, currency_code="CNY")
              for c in sorted(sent) if c in converted]
    events += [ResponseInput("CONVERTED", when, campaign_id="spring", customer_id=c) for c in control if c in converted]
    events += [ResponseInput("OPENED", when, delivery_key=sent[c]) for c in sorted(sent)[1::3]]
    result = await ResponseService(uow_factory(svc)).record(events, None)
    assert result.recorded == len(events)
    return sent, control, converted


async def history(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return {(r.customer_id, r.treated): r for r in await session.scalars(select(HistoryRow))}


async def test_a_completed_campaign_becomes_history_and_a_challenger_once(svc):
    people, clock = members(N), Clock()
    sent, control, converted = await finished_campaign(svc, people, clock)
    directory = Directory(people)
    learning = LearningService(uow_factory(svc), directory)
    loop = LearningLoop(uow_factory(svc), learning, settings=ResponseSettings(), worker_id="r1")
    assert await loop.due() == []  # running, inside its attribution window
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        assert await uow.campaigns.transition("spring", RUNNING, COMPLETED, "ops-1", "done")
        await uow.commit()
    assert await loop.due() == ["spring"]
    assert await loop.run_until_idle() == 1

    rows = await history(svc)
    assert len(rows) == len(sent) + len(control)
    for customer in sent:
        row = rows[customer, True]
        assert (row.campaign_ref, row.offer_id, row.arm, row.contact_time) == ("spring", "dep", "a", clock.contact)
        assert (row.converted, row.revenue) == ((True, 50.0) if customer in converted else (False, 0.0))
        assert row.responded == (customer in converted or customer in sorted(sent)[1::3])
        assert row.context == {"source": "learning-loop", "arm_probability": "0.500000"}
    for customer in control:
        row = rows[customer, False]
        assert (row.arm, row.converted, row.channel) == ("control", customer in converted, 0)
    async with svc.runtime.database.sessionmaker() as session:
        versions = list(await session.scalars(select(ModelVersionRow)))
        run = await session.get(LearningRunRow, "spring")
    assert [(v.model_id, v.version, v.kind, v.status) for v in versions] == [("uplift-dep", 1, "uplift", "CHALLENGER")]
    assert versions[0].metrics["training_rows"] == len(rows)
    assert (run.state, run.history_rows, run.model_versions, run.claimed_by) == (
        "DONE", len(rows), ["models/uplift-dep/versions/1"], None)

    # Idempotent: nothing is due again, on this replica or another; a forced re-run adds no row and no version.
    other = LearningLoop(uow_factory(svc), learning, settings=ResponseSettings(), worker_id="r2")
    assert await loop.run_until_idle() == 0 and await other.run_until_idle() == 0
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        run_row = await uow.session.get(LearningRunRow, "spring")
        run_row.state, run_row.claimed_by = "RUNNING", "r2"
        await uow.commit()
    await other.run("spring")
    assert len(await history(svc)) == len(rows)
    async with svc.runtime.database.sessionmaker() as session:
        assert len(list(await session.scalars(select(ModelVersionRow)))) == 1


async def test_a_launch_past_its_window_is_due_and_auto_promotion_when_configured(svc):
    people, clock = members(N), Clock()
    await finished_campaign(svc, people, clock)
    learning = LearningService(uow_factory(svc), Directory(people))
    late = Clock()
    late.now = clock.contact + timedelta(days=30, seconds=-1)
    loop = LearningLoop(uow_factory(svc), learning, settings=ResponseSettings(), auto_promote=True, clock=late)
    assert await loop.due() == []
    late.now = clock.contact + timedelta(days=30, seconds=1)
    loop = LearningLoop(uow_factory(svc), learning, settings=ResponseSettings(), auto_promote=True, clock=late)
    assert await loop.due() == ["spring"]  # still RUNNING, but the window closed
    outcome = await loop.run("spring") if await loop._claim("spring") else None
    assert outcome is not None and outcome.model_versions == ["models/uplift-dep/versions/1"]
    assert "dep: version 1 promoted" in outcome.status_message
    async with svc.runtime.database.sessionmaker() as session:
        assert [v.status for v in await session.scalars(select(ModelVersionRow))] == ["CHAMPION"]


async def test_one_replica_claims_a_run_until_its_lease_expires(svc):
    people, clock = members(N), Clock()
    await finished_campaign(svc, people, clock)

    class Dead:  # a learner whose replica "crashes": it never finishes
        async def import_history(self, entries, key):
            raise AssertionError("not reached")

    now = Clock()
    now.now = clock.contact + timedelta(days=31)
    first = LearningLoop(uow_factory(svc), Dead(), worker_id="r1", lease_seconds=60, clock=now)
    second = LearningLoop(uow_factory(svc), Dead(), worker_id="r2", lease_seconds=60, clock=now)
    assert await first._claim("spring") is True
    assert await second._claim("spring") is False
    now.now += timedelta(seconds=61)
    assert await second._claim("spring") is True
    async with svc.runtime.database.sessionmaker() as session:
        assert (await session.get(LearningRunRow, "spring")).claimed_by == "r2"


async def test_a_campaign_without_control_trains_nothing_and_says_why(svc):
    people, clock = members(60), Clock()
    await add_campaign(svc, control=0.0, arms=(("a", 1.0),))
    launches = service(svc, FakeAudience(people), FakeRisk(), clock=clock, size=100)
    await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        assert await uow.campaigns.transition("spring", RUNNING, COMPLETED, "ops-1", "done")
        await uow.commit()
    loop = LearningLoop(uow_factory(svc), LearningService(uow_factory(svc), Directory(people)))
    assert await loop.run_until_idle() == 1
    async with svc.runtime.database.sessionmaker() as session:
        run = await session.get(LearningRunRow, "spring")
        assert list(await session.scalars(select(ModelVersionRow))) == []
    assert (run.state, run.model_versions, run.status_message) == (
        "DONE", [], "dep: no randomised treated and control rows")
    assert run.history_rows == len(await history(svc)) > 0



async def test_the_service_closes_the_loop_by_itself(start):
    """The campaign service's own background task (wired in app.py) turns a completed campaign into history."""
    svc = await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                      CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                      CAMPAIGN_LEARNING_INTERVAL_SECONDS="0.1")
    assert isinstance(svc.runtime.components["learning_loop"], LearningLoop)
    people = members(30)
    await add_campaign(svc, control=0.0, arms=(("a", 1.0),))
    launches = service(svc, FakeAudience(people), FakeRisk(), clock=Clock(), size=100)
    await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        assert await uow.campaigns.transition("spring", RUNNING, COMPLETED, "ops-1", "done")
        await uow.commit()
    for _ in range(100):
        async with svc.runtime.database.sessionmaker() as session:
            run = await session.get(LearningRunRow, "spring")
        if run is not None and run.state == "DONE":
            break
        await asyncio.sleep(0.1)
    assert run is not None and run.state == "DONE"
    assert run.history_rows == len(await history(svc)) > 0
