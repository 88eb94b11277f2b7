"""The fairness gate of ApproveCampaign: an audience that under-represents a group of the customer base (age
band, gender, region tier) below the threshold is refused FAILED_PRECONDITION TARGETING_DISPARATE with the groups
and ratios, and nothing changes, unless a justification is recorded. First with a fixed composition (exact
ratios), then measured by a real profile service."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import func, select

from lodestar.campaign.v1 import campaign_pb2, campaign_report_pb2, campaign_report_pb2_grpc, offer_pb2
from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2, segment_service_pb2, segment_service_pb2_grpc
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import content_pb2, risk_service_pb2_grpc
from services.campaign.app import DEFINITION
from services.campaign.composition_client import ProfileComposition
from services.campaign.db import CampaignStateChangeRow, TargetingJustificationRow
from services.campaign.fairness_gate import Composition, FairnessGate
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

PRECONDITION = grpc.StatusCode.FAILED_PRECONDITION


class CleanContent(risk_service_pb2_grpc.RiskServiceServicer):
    async def CheckContent(self, request, context):
        return content_pb2.CheckContentResponse(compliant=True)


class FixedComposition:
    def __init__(self, compositions):
        self.compositions = compositions
        self.asked = []

    async def composition(self, segment):
        self.asked.append(segment)
        return self.compositions


# Age 18-24: 100 of 1000 in the audience (0.10); 35-44: 50 of 1000 (0.05, ratio 0.5); gender balanced.
DISPARATE = [Composition("age_band", {"18-24": (100, 1000), "35-44": (50, 1000), "65+": (0, 0)}),
             Composition("gender", {"F": (95, 1000), "M": (100, 1000)})]


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


@pytest.fixture
async def env(start):
    risk_server = grpc.aio.server()
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(CleanContent(), risk_server)
    port = risk_server.add_insecure_port("127.0.0.1:0")
    await risk_server.start()
    profile = await start(PROFILE)
    svc = await start(DEFINITION, RISK_SERVICE_ADDR=f"127.0.0.1:{port}", PROFILE_SERVICE_ADDR=profile.address,
                      CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_TRIGGER_POLL_SECONDS="3600")
    channel = grpc.aio.insecure_channel(svc.address)
    stub = pbg.CampaignServiceStub(channel)
    reports = campaign_report_pb2_grpc.CampaignReportServiceStub(channel)
    await stub.CreateOffer(pb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="deposit", title="Time deposit", product_type=c.PRODUCT_TYPE_DEPOSIT,
        risk_level=c.PRODUCT_RISK_LEVEL_R1, conversion_value=50, contact_cost=0.1,
        disclosures=[c.Disclosure(kind="deposit_insurance", text="Deposits insured up to the legal limit.")])))
    yield {"svc": svc, "stub": stub, "reports": reports, "profile": profile}
    await channel.close()
    await risk_server.stop(0)


async def submitted(stub, cid="young", segment="segments/young"):
    now = datetime.now(UTC)
    await stub.CreateCampaign(pb.CreateCampaignRequest(actor="maker-1", campaign=campaign_pb2.Campaign(
        campaign_id=cid, display_name="Young savers", segment=segment, offer_ids=["deposit"],
        channels=[c.CHANNEL_SMS], start_time=ts(now + timedelta(days=1)), end_time=ts(now + timedelta(days=30)),
        control_share=0.1, arms=[campaign_pb2.Arm(arm_id="a", share=0.9, content="Save more.")])))
    await stub.SubmitCampaign(pb.SubmitCampaignRequest(name=f"campaigns/{cid}", actor="maker-1"))


async def changes(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(CampaignStateChangeRow))


async def test_disparate_targeting_is_refused_with_its_groups_unless_justified(env):
    svc, stub, reports = env["svc"], env["stub"], env["reports"]
    source = FixedComposition(DISPARATE)
    svc.runtime.components["lifecycle"].fairness = FairnessGate(source, 0.8)
    await submitted(stub)
    before = await changes(svc)

    refused = await expect_error(stub.ApproveCampaign(pb.ApproveCampaignRequest(name="campaigns/young",
                                                                                actor="checker-2")),
                                 PRECONDITION, "TARGETING_DISPARATE")
    assert refused.metadata == {"dimensions": "age_band", "groups": "age_band:35-44=0.500", "threshold": "0.8",
                                "worst_ratio": "0.500"}
    assert source.asked == ["segments/young"]
    got = (await stub.GetCampaign(pb.GetCampaignRequest(name="campaigns/young"))).campaign
    assert got.state == campaign_pb2.CAMPAIGN_STATE_SUBMITTED and got.approved_by == ""
    assert await changes(svc) == before

    # A justification recorded by someone (with its request id replayed, not repeated) lets it through.
    request = campaign_report_pb2.RecordTargetingJustificationRequest(
        campaign="campaigns/young", justification="A starter account: the product is for customers under 25.",
        actor="compliance-7", request_id="just-1")
    recorded = (await reports.RecordTargetingJustification(request)).justification
    assert (recorded.campaign, recorded.actor) == ("campaigns/young", "compliance-7")
    assert (await reports.RecordTargetingJustification(request)).justification == recorded
    approved = (await stub.ApproveCampaign(pb.ApproveCampaignRequest(name="campaigns/young",
                                                                     actor="checker-2"))).campaign
    assert approved.state == campaign_pb2.CAMPAIGN_STATE_APPROVED and approved.approved_by == "checker-2"
    async with svc.runtime.database.sessionmaker() as session:
        row = await session.get(TargetingJustificationRow, "young")
        assert row.justification.startswith("A starter account") and row.actor == "compliance-7"
    # After approval the justification is frozen.
    await expect_error(reports.RecordTargetingJustification(campaign_report_pb2.RecordTargetingJustificationRequest(
        campaign="campaigns/young", justification="Something else entirely.", actor="compliance-7")),
        PRECONDITION, "CAMPAIGN_NOT_EDITABLE")


async def test_the_threshold_is_configurable_and_balanced_targeting_passes(env):
    svc, stub = env["svc"], env["stub"]
    svc.runtime.components["lifecycle"].fairness = FairnessGate(FixedComposition(DISPARATE), 0.5)
    await submitted(stub)
    approved = (await stub.ApproveCampaign(pb.ApproveCampaignRequest(name="campaigns/young",
                                                                     actor="checker-2"))).campaign
    assert approved.state == campaign_pb2.CAMPAIGN_STATE_APPROVED


async def test_bad_justifications(env):
    reports, stub = env["reports"], env["stub"]
    await submitted(stub)
    await expect_error(reports.RecordTargetingJustification(campaign_report_pb2.RecordTargetingJustificationRequest(
        campaign="campaigns/young", justification="short", actor="compliance-7")),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JUSTIFICATION")
    await expect_error(reports.RecordTargetingJustification(campaign_report_pb2.RecordTargetingJustificationRequest(
        campaign="campaigns/nope", justification="Long enough justification.", actor="compliance-7")),
        grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")


async def test_a_real_profile_measures_the_audience_against_the_base(env):
    profile, stub, svc = env["profile"], env["stub"], env["svc"]
    async with grpc.aio.insecure_channel(profile.address) as channel:
        customers = ppbg.ProfileServiceStub(channel)
        await customers.UpsertAttributes(ppb.UpsertAttributesRequest(attributes=[customer_pb2.AttributeDefinition(
            name="gender", type=customer_pb2.ATTRIBUTE_TYPE_ENUM, allowed_values=["F", "M", "X"])]))
        today = datetime.now(UTC).date()
        # 20 customers: ages 20 (10 of them), 40 (6), 70 (4); genders alternate F/M; nobody is "X".
        ages = [20] * 10 + [40] * 6 + [70] * 4
        for i, age in enumerate(ages):
            customer = customer_pb2.Customer(customer_id=f"p-{i:02d}", region="CN-11" if i == 19 else "CN-31",
                                             time_zone="Asia/Shanghai",
                                             birth_date=today.replace(year=today.year - age - 1).isoformat())
            customer.attributes["gender"].string_value = "F" if i % 2 else "M"
            await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
        segments = segment_service_pb2_grpc.SegmentServiceStub(channel)
        # The audience: everyone under 50, plus one of the four over 65.
        await segments.CreateSegment(segment_service_pb2.CreateSegmentRequest(segment=segment_service_pb2.Segment(
            segment_id="young", kind=segment_service_pb2.SEGMENT_KIND_DYNAMIC,
            condition_text='age < 50 or region = "CN-11"')))
    lifecycle = svc.runtime.components["lifecycle"]
    assert isinstance(lifecycle.fairness.source, ProfileComposition)
    got = {c.dimension: dict(c.groups) for c in await lifecycle.fairness.source.composition("segments/young")}
    assert got["age_band"]["18-24"] == (10, 10) and got["age_band"]["35-44"] == (6, 6)
    assert got["age_band"]["65+"] == (1, 4) and got["age_band"]["25-34"] == (0, 0)
    assert got["gender"]["F"] == (9, 10) and got["gender"]["M"] == (8, 10) and got["gender"]["X"] == (0, 0)
    await submitted(stub)
    refused = await expect_error(stub.ApproveCampaign(pb.ApproveCampaignRequest(name="campaigns/young",
                                                                                actor="checker-2")),
                                 PRECONDITION, "TARGETING_DISPARATE")
    assert refused.metadata["groups"] == "age_band:65+=0.250"
