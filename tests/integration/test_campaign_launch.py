"""Batch launch on a real campaign database (SQLite, or PostgreSQL with TEST_DATABASE_URL): the pipeline with an
allocation whose optimum is known, control customers, crashes and lease take-over, two workers on one launch,
dependency failures, and the RPCs' errors. Profile's export and risk's ScreenBatch are in-process fakes here."""

import asyncio
import itertools
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import select

from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.campaign.v1 import launch_pb2
from lodestar.common.v1 import common_pb2 as c
from services.campaign.app import DEFINITION
from services.campaign.clients import AudienceBatch, ScreenedBatch
from services.campaign.db import (
    CampaignRow,
    CampaignStateChangeRow,
    CampaignUnitOfWork,
    LaunchPartitionRow,
    LaunchRow,
    OutboxRow,
)
from services.campaign.domain import APPROVED, DRAFT, SUBMITTED, Arm, Campaign, CustomerSnapshot, Offer
from services.campaign.launch import ALLOCATING, DONE, PENDING, SELECTING, LaunchService, assign
from services.campaign.scoring import HeuristicPropensityModel
from services.platform.errors import Unavailable
from tests.helpers import expect_error, stored_partitions


class FakeAudience:
    """ExportAudience's contract: ids ascending, batches of batch_size, resume token = the last id sent."""

    def __init__(self, members):
        self.members = dict(sorted(members.items()))
        self.exports = []  # resume tokens asked for

    async def export_audience(self, segment, fields, *, batch_size=5000, as_of=None, resume_token=""):
        self.exports.append(resume_token)
        ids = [i for i in self.members if not resume_token or i > resume_token]
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            columns = {}
            for f in fields:
                key = f.removeprefix("attr.")
                columns[f] = [self.members[i].get(key) for i in chunk]
            await asyncio.sleep(0)
            yield AudienceBatch(chunk, columns, chunk[-1], as_of or datetime.now(UTC))


class FakeRisk:
    """ALLOW unless (customer, offer) is in `deny`; `down` makes it unavailable."""

    def __init__(self, deny=()):
        self.deny = set(deny)
        self.down = False
        self.calls = 0

    async def screen_subjects(self, offers, channel, contact_time, subjects):
        self.calls += 1
        if self.down:
            raise Unavailable("DEPENDENCY_UNAVAILABLE", "the risk service is unavailable; retry later")
        await asyncio.sleep(0)
        return ScreenedBatch.from_verdicts(subjects.customer_ids, offers, {
            c: {o.offer_id: "DENY" if (c, o.offer_id) in self.deny else "ALLOW" for o in offers}
            for c in subjects.customer_ids})


class Clock:
    def __init__(self):
        self.now = datetime.now(UTC)

    def __call__(self):
        return self.now


DEPOSIT = Offer("dep", "Deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 100.0, 1.0)
CARD = Offer("card", "Card", c.PRODUCT_TYPE_CREDIT_CARD, c.PRODUCT_RISK_LEVEL_R2, 60.0, 2.0)


def members(n, prefix="c"):
    return {f"{prefix}{i:05d}": {"region": "CN-31", "time_zone": "Asia/Shanghai", "income": 2000 + 997 * (i % 37),
                                 "risk_tolerance": f"C{1 + i % 5}"} for i in range(n)}


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600")


async def add_campaign(svc, cid="spring", *, state=APPROVED, control=0.0, arms=(("a", 1.0),), offers=(DEPOSIT,),
                       channels=(c.CHANNEL_SMS,), capacities=None, budget=0.0):
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        for offer in offers:
            if await uow.offers.get(offer.offer_id) is None:
                await uow.offers.add(offer)
        await uow.campaigns.add(Campaign(
            campaign_id=cid, state=state, segment="segments/all", offer_ids=[o.offer_id for o in offers],
            channels=list(channels), budget=budget, capacities=dict(capacities or {}), control_share=control,
            arms=[Arm(a, s, "Hello") for a, s in arms], created_by="maker", start_time=datetime.now(UTC)))
        await uow.commit()


def service(svc, audience, risk, clock=None, worker="w1", size=3):
    return LaunchService(lambda: CampaignUnitOfWork(svc.runtime.database), audience, risk, worker_id=worker,
                         partition_size=size, lease_seconds=60, retry_seconds=5, clock=clock or Clock())


async def rows(svc, model, *where):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model).where(*where)))


async def test_pipeline_reaches_the_known_optimum_and_writes_exactly_its_outbox(svc):
    audience = FakeAudience(members(7))
    risk = FakeRisk(deny={("c00001", "dep"), ("c00004", "card"), ("c00004", "dep")})
    await add_campaign(svc, offers=(DEPOSIT, CARD), channels=(c.CHANNEL_SMS, c.CHANNEL_EMAIL),
                       capacities={c.CHANNEL_SMS: 2, c.CHANNEL_EMAIL: 1})
    launches = service(svc, audience, risk)
    launched = await launches.launch("spring", "ops-1", None)
    assert launched.state == "PLANNING"
    assert await launches.run_until_idle() == 1 + 3 + 1  # plan, 3 partitions (3 + 3 + 1), allocate
    view = await launches.get(launched.launch_id)
    assert (view.state, view.partitions_total, view.partitions_done, view.audience_size) == (DONE, 3, 3, 7)

    # The optimum by brute force: each customer gets at most one (offer, channel); 2 SMS, 1 e-mail.
    model, today = HeuristicPropensityModel(), view.as_of.date()
    value = {}
    for cid, m in audience.members.items():
        snapshot = CustomerSnapshot(cid, None, m["region"], m["time_zone"],
                                    {"income": m["income"], "risk_tolerance": m["risk_tolerance"]})
        for offer in (DEPOSIT, CARD):
            if (cid, offer.offer_id) not in risk.deny:
                p = model.score(snapshot, offer, today)
                value[cid, offer.offer_id] = p * offer.conversion_value - offer.contact_cost
    best_per_customer = {cid: max((v, o) for (i, o), v in value.items() if i == cid) for cid in audience.members
                         if any(i == cid for i, _ in value)}
    best = max(itertools.permutations(best_per_customer, 3),
               key=lambda p: sum(best_per_customer[x][0] for x in p))
    optimum = sum(best_per_customer[x][0] for x in best)
    assert view.report["objective"] == pytest.approx(optimum)
    assert view.report["method"] == "milp"
    assert sorted(view.report["binding"]) == ["CAPACITY:CHANNEL_EMAIL", "CAPACITY:CHANNEL_SMS"]
    assert view.report["cut_by"] == {"INELIGIBLE": 1, "CAPACITY:CHANNEL_SMS": 3}

    outbox = await rows(svc, OutboxRow)
    assert sorted(r.customer_id for r in outbox) == sorted(best)
    assert {r.delivery_key for r in outbox} == {f"{view.launch_id}:{x}" for x in best}
    for r in outbox:
        assert (r.offer_id, r.arm_id, r.state) == (best_per_customer[r.customer_id][1], "a", "PENDING")
        assert r.expected_value == pytest.approx(best_per_customer[r.customer_id][0])
    assert sorted(r.channel for r in outbox) == [c.CHANNEL_SMS, c.CHANNEL_SMS, c.CHANNEL_EMAIL]
    # The campaign went RUNNING by a recorded, conditional transition.
    (campaign,) = await rows(svc, CampaignRow)
    history = await rows(svc, CampaignStateChangeRow)
    assert campaign.state == "RUNNING"
    assert [(h.from_state, h.to_state, h.actor, h.reason) for h in history] == [
        ("APPROVED", "RUNNING", "ops-1", "batch launch")]
    # A second launch call returns the same launch; nothing is redone.
    again = await launches.launch("spring", "ops-2", None)
    assert again.launch_id == launched.launch_id and await launches.step() is False


async def test_control_customers_are_recorded_never_contacted(svc):
    audience = FakeAudience(members(400))
    await add_campaign(svc, control=0.25, arms=(("a", 0.5), ("b", 0.25)))
    launches = service(svc, audience, FakeRisk(), size=150)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    view = await launches.get(launched.launch_id)
    ids = list(audience.members)
    groups = dict(zip(ids, assign("spring", ids, 0.25, [0.5, 0.25]).tolist(), strict=True))
    control = {i for i, g in groups.items() if g == -1}
    assert view.counts["control"] == len(control) and view.counts["customers"] == 400
    assert 70 <= len(control) <= 130
    outbox = await rows(svc, OutboxRow)
    assert {r.customer_id for r in outbox} == set(ids) - control  # no capacity, no budget: every treated one
    assert all(r.arm_id == ("a" if groups[r.customer_id] == 0 else "b") for r in outbox)
    # The assignment of every member is kept with its partition for evaluation.
    kept = {}
    for result in await stored_partitions(svc.runtime.database):
        kept.update(zip(result.member_ids.tolist(), result.groups.tolist(), strict=True))
    assert kept == groups


async def test_a_crashed_worker_s_partition_is_taken_over_after_its_lease(svc):
    audience = FakeAudience(members(7))
    await add_campaign(svc)
    clock = Clock()
    a, b = service(svc, audience, FakeRisk(), clock, "worker-a"), service(svc, audience, FakeRisk(), clock, "worker-b")
    launched = await a.launch("spring", "ops-1", None)
    assert await a.step()  # plan
    crashed = await a._claim_partition(launched.launch_id)  # worker a claims partition 1, then "dies"
    assert crashed.number == 1
    await b.run_until_idle()  # b does partitions 2 and 3, but not the claimed one
    view = await b.get(launched.launch_id)
    assert (view.state, view.partitions_done) == (SELECTING, 2)
    clock.now += timedelta(seconds=61)  # the lease expires
    assert await b.run_until_idle() == 2  # b takes partition 1 over, then allocates
    view = await b.get(launched.launch_id)
    assert view.state == DONE and view.outbox_messages == 7
    # The crashed worker comes back with results: its claim is gone, nothing is counted twice.
    lost = await a.process_partition(*(await a._context(launched.launch_id)), crashed)
    assert await a.complete_partition(crashed, lost) is False
    parts = await rows(svc, LaunchPartitionRow)
    assert sorted((p.number, p.state, p.attempts) for p in parts) == [(1, DONE, 2), (2, DONE, 1), (3, DONE, 1)]
    assert (await b.get(launched.launch_id)).partitions_done == 3
    assert len(await rows(svc, OutboxRow)) == 7


async def test_a_crash_during_allocation_resumes_without_duplicates(svc):
    audience = FakeAudience(members(20))
    await add_campaign(svc)
    clock = Clock()
    a = service(svc, audience, FakeRisk(), clock, "worker-a", size=5)
    launched = await a.launch("spring", "ops-1", None)
    while (await a.get(launched.launch_id)).state != ALLOCATING:
        await a.step()
    import services.campaign.launch as launch_module
    original = launch_module.OUTBOX_CHUNK
    launch_module.OUTBOX_CHUNK = 8
    calls = 0
    renew = a._renew_launch

    async def renew_then_die(launch_id):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("killed")  # after the first chunk of 8 was committed
        return await renew(launch_id)

    a._renew_launch = renew_then_die
    try:
        assert await a.step()
    finally:
        launch_module.OUTBOX_CHUNK = original
    assert len(await rows(svc, OutboxRow)) == 8
    assert (await a.get(launched.launch_id)).state == ALLOCATING
    clock.now += timedelta(seconds=61)
    b = service(svc, audience, FakeRisk(), clock, "worker-b", size=5)
    assert await b.run_until_idle() == 1
    outbox = await rows(svc, OutboxRow)
    assert len(outbox) == 20 and len({r.delivery_key for r in outbox}) == 20
    assert (await b.get(launched.launch_id)).state == DONE


async def test_two_workers_on_one_launch_never_process_a_partition_twice(svc):
    audience = FakeAudience(members(60))
    await add_campaign(svc)
    done = []

    class Counting(LaunchService):
        async def complete_partition(self, partition, result):
            ok = await super().complete_partition(partition, result)
            if ok:
                done.append(partition.number)
            return ok

    make = lambda w: Counting(lambda: CampaignUnitOfWork(svc.runtime.database), audience, FakeRisk(),  # noqa: E731
                              worker_id=w, partition_size=4)
    a, b = make("worker-a"), make("worker-b")
    launched = await a.launch("spring", "ops-1", None)
    await a.step()  # plan: 15 partitions
    steps = await asyncio.gather(a.run_until_idle(), b.run_until_idle())
    assert sorted(done) == list(range(1, 16))
    assert sum(steps) == 16  # 15 partitions + 1 allocation, nothing twice
    assert sorted(audience.exports[1:]) == sorted(p.resume_token for p in await rows(svc, LaunchPartitionRow))
    view = await a.get(launched.launch_id)
    assert view.state == DONE and view.outbox_messages == 60
    assert all(p.attempts == 1 for p in await rows(svc, LaunchPartitionRow))


async def test_risk_unavailable_keeps_the_launch_in_progress_and_says_why(svc):
    audience = FakeAudience(members(5))
    risk = FakeRisk()
    risk.down = True
    await add_campaign(svc)
    clock = Clock()
    launches = service(svc, audience, risk, clock, size=5)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    view = await launches.get(launched.launch_id)
    assert view.state == SELECTING and "DEPENDENCY_UNAVAILABLE" in view.status_message
    assert view.status_message.startswith("partition 1 waits")
    assert await launches.step() is False  # backing off
    risk.down = False
    clock.now += timedelta(seconds=6)
    await launches.run_until_idle()
    view = await launches.get(launched.launch_id)
    assert (view.state, view.status_message, view.outbox_messages) == (DONE, "", 5)


async def test_an_empty_audience_ends_done_with_nothing_to_send(svc):
    await add_campaign(svc)
    launches = service(svc, FakeAudience({}), FakeRisk())
    launched = await launches.launch("spring", "ops-1", None)
    assert await launches.run_until_idle() == 2
    view = await launches.get(launched.launch_id)
    assert (view.state, view.partitions_total, view.outbox_messages, view.report["objective"]) == (DONE, 0, 0, 0.0)


# --- the RPCs ------------------------------------------------------------------------------------------------


@pytest.fixture
async def stub(svc):
    channel = grpc.aio.insecure_channel(svc.address)
    yield pbg.CampaignServiceStub(channel)
    await channel.close()


@pytest.mark.parametrize("state", [DRAFT, SUBMITTED])
async def test_launching_an_unapproved_campaign_fails_and_changes_nothing(svc, stub, state):
    await add_campaign(svc, state=state)
    got = await expect_error(stub.LaunchCampaign(pb.LaunchCampaignRequest(name="campaigns/spring", actor="ops-1")),
                             grpc.StatusCode.FAILED_PRECONDITION, "CAMPAIGN_NOT_APPROVED")
    assert got.metadata["state"] == state
    assert await rows(svc, LaunchRow) == [] and await rows(svc, CampaignStateChangeRow) == []
    assert (await rows(svc, CampaignRow))[0].state == state


async def test_launch_rpc_bad_input_and_unknown_names(svc, stub):
    await expect_error(stub.LaunchCampaign(pb.LaunchCampaignRequest(name="campaigns/nope", actor="ops-1")),
                       grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    got = await expect_error(stub.LaunchCampaign(pb.LaunchCampaignRequest(name="offers/x", actor="ops-1")),
                             grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in got.field_violations] == ["name"]
    got = await expect_error(stub.LaunchCampaign(pb.LaunchCampaignRequest(name="campaigns/spring", actor="")),
                             grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    assert [f for f, _ in got.field_violations] == ["actor"]
    await expect_error(stub.GetLaunch(pb.GetLaunchRequest(name="launches/nope")), grpc.StatusCode.NOT_FOUND,
                       "LAUNCH_NOT_FOUND")
    await expect_error(stub.ListOutbox(pb.ListOutboxRequest(launch="launches/nope")), grpc.StatusCode.NOT_FOUND,
                       "LAUNCH_NOT_FOUND")


async def test_launch_rpc_is_idempotent_and_one_per_campaign(svc, stub):
    await add_campaign(svc)
    request = pb.LaunchCampaignRequest(name="campaigns/spring", actor="ops-1", request_id="launch-1")
    first = (await stub.LaunchCampaign(request)).launch
    assert first.state == launch_pb2.LAUNCH_STATE_PLANNING and first.campaign == "campaigns/spring"
    assert first.name == f"launches/{first.launch_id}" and first.actor == "ops-1"
    assert (await stub.LaunchCampaign(request)).launch.launch_id == first.launch_id
    other = (await stub.LaunchCampaign(pb.LaunchCampaignRequest(name="campaigns/spring", actor="ops-2"))).launch
    assert other.launch_id == first.launch_id
    await expect_error(stub.LaunchCampaign(pb.LaunchCampaignRequest(name="campaigns/spring", actor="ops-9",
                                                                    request_id="launch-1")),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert len(await rows(svc, LaunchRow)) == 1 and len(await rows(svc, CampaignStateChangeRow)) == 1
    by_campaign = (await stub.GetLaunch(pb.GetLaunchRequest(name="campaigns/spring"))).launch
    assert by_campaign.launch_id == first.launch_id


async def test_outbox_pages_through_the_rpc(svc, stub):
    await add_campaign(svc)
    launches = service(svc, FakeAudience(members(5)), FakeRisk())
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    got = (await stub.GetLaunch(pb.GetLaunchRequest(name=f"launches/{launched.launch_id}"))).launch
    assert got.state == launch_pb2.LAUNCH_STATE_DONE and got.progress.outbox_messages == 5
    assert got.progress.partitions_total == 2 and got.report.method == "milp"
    seen, token = [], ""
    while True:
        page = await stub.ListOutbox(pb.ListOutboxRequest(launch=got.name, page_size=2, page_token=token))
        seen += [m.customer_id for m in page.messages]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(members(5))
    assert page.messages[0].delivery_key == f"{launched.launch_id}:c00004"
    assert page.messages[0].state == launch_pb2.OUTBOX_STATE_PENDING


class GatedRisk(FakeRisk):
    """Holds the screening of the customers in `gated` until `gate` is set."""

    def __init__(self, gated, waiters=1):
        super().__init__()
        self.gated, self.gate = set(gated), asyncio.Event()
        self.waiting, self.waiters, self.all_waiting = 0, waiters, asyncio.Event()

    async def screen_subjects(self, offers, channel, contact_time, subjects):
        if self.gated & set(subjects.customer_ids):
            self.waiting += 1
            if self.waiting >= self.waiters:
                self.all_waiting.set()
            await self.gate.wait()
        return await super().screen_subjects(offers, channel, contact_time, subjects)


async def test_partitions_in_flight_side_by_side_and_the_next_claimed_as_one_finishes(svc):
    audience = FakeAudience(members(12))  # partitions of 3: c00000-2, c00003-5, c00006-8, c00009-11
    await add_campaign(svc)
    risk = GatedRisk({"c00000"})
    worker = LaunchService(lambda: CampaignUnitOfWork(svc.runtime.database), audience, risk, worker_id="w1",
                           partition_size=3, lease_seconds=60, clock=Clock(), concurrency=2)
    launched = await worker.launch("spring", "ops-1", None)
    assert await worker.step()  # plan
    # Partition 1 is stuck at risk; the second slot goes on through 2, 3 and 4 meanwhile.
    for _ in range(3):
        assert await worker.step()
    parts = {p.number: p.state for p in await rows(svc, LaunchPartitionRow)}
    assert parts == {1: PENDING, 2: DONE, 3: DONE, 4: DONE}
    risk.gate.set()
    await worker.run_until_idle()
    view = await worker.get(launched.launch_id)
    assert (view.state, view.partitions_done, view.outbox_messages) == (DONE, 4, 12)


async def test_stopping_a_worker_cancels_its_partitions_and_another_takes_them_over(svc):
    audience = FakeAudience(members(6))
    await add_campaign(svc)
    clock = Clock()
    risk = GatedRisk({"c00000", "c00003"}, waiters=2)
    a = LaunchService(lambda: CampaignUnitOfWork(svc.runtime.database), audience, risk, worker_id="a",
                      partition_size=3, lease_seconds=60, clock=clock, concurrency=2)
    launched = await a.launch("spring", "ops-1", None)
    assert await a.step()  # plan
    stepping = asyncio.create_task(a.step())  # claims both partitions; both wait at risk
    await asyncio.wait_for(risk.all_waiting.wait(), 10)
    await a.stop()  # shutdown: the work in flight is cancelled, nothing is stored
    stepping.cancel()
    parts = await rows(svc, LaunchPartitionRow)
    assert sorted((p.number, p.state, p.claimed_by) for p in parts) == [(1, PENDING, "a"), (2, PENDING, "a")]
    clock.now += timedelta(seconds=61)  # their leases lapse
    b = service(svc, audience, FakeRisk(), clock, "b")
    await b.run_until_idle()
    view = await b.get(launched.launch_id)
    assert (view.state, view.outbox_messages) == (DONE, 6)
