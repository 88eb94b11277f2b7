"""Two campaign service instances on one database share one launch: every partition is processed exactly
once, and both replicas take part. Real profile (customers, a segment, the audience export) and real risk
(ScreenBatch) over gRPC. On PostgreSQL (TEST_DATABASE_URL, as CI runs it) partitions are claimed with
FOR UPDATE SKIP LOCKED; on SQLite by a conditional UPDATE."""

import asyncio

import grpc
import pytest

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import launch_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2, segment_service_pb2, segment_service_pb2_grpc
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import CampaignUnitOfWork, OutboxRow
from services.campaign.domain import APPROVED, Arm, Campaign, Offer
from services.platform.db import utcnow
from services.profile.app import DEFINITION as PROFILE
from services.risk.app import DEFINITION as RISK

CUSTOMERS = 40
PARTITION = 4


@pytest.fixture
async def world(start):
    profile = await start(PROFILE)
    risk = await start(RISK)
    async with grpc.aio.insecure_channel(profile.address) as ch:
        stub = ppbg.ProfileServiceStub(ch)
        for i in range(CUSTOMERS):
            await stub.CreateCustomer(ppb.CreateCustomerRequest(customer=customer_pb2.Customer(
                customer_id=f"r-{i:03d}", region="CN-31", time_zone="Asia/Shanghai")))
        await segment_service_pb2_grpc.SegmentServiceStub(ch).CreateSegment(segment_service_pb2.CreateSegmentRequest(
            segment=segment_service_pb2.Segment(segment_id="shanghai", kind=segment_service_pb2.SEGMENT_KIND_DYNAMIC,
                                                condition_text='region = "CN-31"')))
    env = {"PROFILE_SERVICE_ADDR": profile.address, "RISK_SERVICE_ADDR": risk.address,
           "CAMPAIGN_LAUNCH_POLL_SECONDS": "0.05", "CAMPAIGN_LAUNCH_PARTITION_SIZE": str(PARTITION),
           "CAMPAIGN_SCHEDULER_INTERVAL_SECONDS": "3600"}
    first = await start(CAMPAIGN, **env)
    second = await start(CAMPAIGN, **env, DATABASE_URL=first.runtime.settings.database_url)
    async with CampaignUnitOfWork(first.runtime.database) as uow:
        await uow.offers.add(Offer("deposit", "Deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 100.0, 1.0))
        await uow.campaigns.add(Campaign(
            campaign_id="spring", state=APPROVED, segment="segments/shanghai", offer_ids=["deposit"],
            channels=[c.CHANNEL_IN_APP], arms=[Arm("a", 1.0, "Save more.")], created_by="maker",
            start_time=utcnow()))
        await uow.commit()
    return first, second


async def test_two_replicas_split_one_launch_and_never_process_a_partition_twice(world):
    first, second = world
    completed: list[tuple[str, int]] = []
    for svc in (first, second):
        launches = svc.runtime.components["launches"]
        original = launches.complete_partition

        async def recording(partition, result, _original=original, _worker=launches.worker_id):
            ok = await _original(partition, result)
            if ok:
                completed.append((_worker, partition.number))
            return ok

        launches.complete_partition = recording
    async with grpc.aio.insecure_channel(first.address) as ch:
        stub = cpbg.CampaignServiceStub(ch)
        await stub.LaunchCampaign(cpb.LaunchCampaignRequest(name="campaigns/spring", actor="ops-1"))
        for _ in range(400):
            launch = (await stub.GetLaunch(cpb.GetLaunchRequest(name="campaigns/spring"))).launch
            if launch.state == launch_pb2.LAUNCH_STATE_DONE:
                break
            await asyncio.sleep(0.05)
        assert launch.state == launch_pb2.LAUNCH_STATE_DONE, launch
    partitions = sorted(number for _, number in completed)
    assert partitions == list(range(1, CUSTOMERS // PARTITION + 1))  # each exactly once
    workers = {worker for worker, _ in completed}
    assert workers == {first.runtime.components["launches"].worker_id,
                       second.runtime.components["launches"].worker_id}, "both replicas took partitions"
    async with first.runtime.database.sessionmaker() as session:
        from sqlalchemy import select

        outbox = list(await session.scalars(select(OutboxRow.customer_id)))
    assert sorted(outbox) == [f"r-{i:03d}" for i in range(CUSTOMERS)]  # everyone, once
