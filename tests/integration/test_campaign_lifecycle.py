"""Campaign lifecycle through a real campaign server; risk is a fake that answers CheckContent."""

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import field_mask_pb2, timestamp_pb2
from sqlalchemy import func, select

from lodestar.campaign.v1 import campaign_pb2, offer_pb2
from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2 as c
from lodestar.risk.v1 import content_pb2, risk_service_pb2_grpc
from services.campaign.app import DEFINITION
from services.campaign.db import CampaignRow, CampaignStateChangeRow
from tests.helpers import expect_error

S = campaign_pb2
INVALID, PRECONDITION = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION


class FakeRisk(risk_service_pb2_grpc.RiskServiceServicer):
    """Flags the phrase 'guaranteed return' as a banned claim; records what it was asked."""

    def __init__(self):
        self.checked = []

    async def CheckContent(self, request, context):
        self.checked.append((request.text, request.product_type))
        start = request.text.find("guaranteed return")
        violations = [] if start < 0 else [content_pb2.ContentViolation(
            kind=content_pb2.VIOLATION_KIND_BANNED_CLAIM, rule_id="banned.guaranteed-return", start=start,
            end=start + len("guaranteed return"))]
        return content_pb2.CheckContentResponse(violations=violations, compliant=not violations)


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


NOW = datetime.now(UTC)


def campaign(cid="spring", **overrides):
    fields = dict(
        campaign_id=cid, display_name="Spring savings", segment="segments/young-savers", offer_ids=["deposit"],
        channels=[c.CHANNEL_SMS, c.CHANNEL_EMAIL], start_time=ts(NOW + timedelta(days=1)),
        end_time=ts(NOW + timedelta(days=30)), budget=5000.0, control_share=0.1,
        capacities=[S.ChannelCapacity(channel=c.CHANNEL_SMS, max_contacts=10_000)],
        arms=[S.Arm(arm_id="a", share=0.45, content="Save more this spring."),
              S.Arm(arm_id="b", share=0.45, content="Your money, working for you.")],
    )
    fields.update(overrides)
    return S.Campaign(**fields)


@pytest.fixture
async def env(start):
    risk_server = grpc.aio.server()
    fake = FakeRisk()
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(fake, risk_server)
    port = risk_server.add_insecure_port("127.0.0.1:0")
    await risk_server.start()
    svc = await start(DEFINITION, RISK_SERVICE_ADDR=f"127.0.0.1:{port}", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                      CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600")
    channel = grpc.aio.insecure_channel(svc.address)
    stub = pbg.CampaignServiceStub(channel)
    await stub.CreateOffer(pb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="deposit", title="Time deposit", product_type=c.PRODUCT_TYPE_DEPOSIT,
        risk_level=c.PRODUCT_RISK_LEVEL_R1, conversion_value=50, contact_cost=0.1,
        disclosures=[c.Disclosure(kind="deposit_insurance", text="Deposits insured up to the legal limit.")])))
    yield {"svc": svc, "stub": stub, "risk": fake, "risk_server": risk_server}
    await channel.close()
    await risk_server.stop(0)


async def count(svc, model):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def create_submitted(stub, cid="spring"):
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(cid), actor="maker-1"))
    return (await stub.SubmitCampaign(pb.SubmitCampaignRequest(name=f"campaigns/{cid}", actor="maker-1"))).campaign


async def test_create_is_a_draft_owned_by_its_maker(env):
    response = await env["stub"].CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(), actor="maker-1"))
    created = response.campaign
    assert (created.state, created.created_by, created.approved_by) == (S.CAMPAIGN_STATE_DRAFT, "maker-1", "")
    assert created.name == "campaigns/spring" and created.etag and list(created.history) == []
    got = (await env["stub"].GetCampaign(pb.GetCampaignRequest(name="campaigns/spring"))).campaign
    assert got == created
    await expect_error(env["stub"].CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(), actor="maker-1")),
                       grpc.StatusCode.ALREADY_EXISTS, "CAMPAIGN_ALREADY_EXISTS")


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (pb.CreateCampaignRequest(campaign=campaign(), actor=""), "actor", "REQUIRED_FIELD_MISSING"),
    (pb.CreateCampaignRequest(campaign=campaign(campaign_id=""), actor="m"), "campaign.campaign_id",
     "REQUIRED_FIELD_MISSING"),
    (pb.CreateCampaignRequest(campaign=campaign(offer_ids=["nope"]), actor="m"), "campaign.offer_ids[0]",
     "UNKNOWN_OFFER"),
    (pb.CreateCampaignRequest(campaign=campaign(budget=-1.0), actor="m"), "campaign.budget", "INVALID_ARGUMENT"),
    (pb.CreateCampaignRequest(campaign=campaign(control_share=0.3), actor="m"), "campaign.arms",
     "INCONSISTENT_CAMPAIGN"),
    (pb.CreateCampaignRequest(campaign=campaign(control_share=1.0), actor="m"), "campaign.control_share",
     "INVALID_ARGUMENT"),
    (pb.CreateCampaignRequest(campaign=campaign(channels=[99]), actor="m"), "campaign.channels[0]",
     "INVALID_ARGUMENT"),
    (pb.CreateCampaignRequest(campaign=campaign(segment="audiences/x"), actor="m"), "campaign.segment",
     "INVALID_ARGUMENT"),
    (pb.CreateCampaignRequest(campaign=campaign(end_time=ts(NOW)), actor="m"), "campaign.end_time",
     "INCONSISTENT_CAMPAIGN"),
    (pb.CreateCampaignRequest(campaign=campaign(arms=[S.Arm(arm_id="a", share=0.9, content="x"),
                                                      S.Arm(arm_id="a", share=0.0, content="y")]), actor="m"),
     "campaign.arms[1].arm_id", "INVALID_ARGUMENT"),
])
async def test_bad_campaigns_are_rejected_and_nothing_is_written(env, request_, field, reason):
    got = await expect_error(env["stub"].CreateCampaign(request_), INVALID, reason)
    assert field in [f for f, _ in got.field_violations]
    assert await count(env["svc"], CampaignRow) == 0


async def test_update_needs_a_fresh_etag_and_a_draft(env):
    stub = env["stub"]
    created = (await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(), actor="maker-1"))).campaign
    mask = field_mask_pb2.FieldMask(paths=["budget", "display_name"])
    change = S.Campaign(name=created.name, etag=created.etag, budget=9000.0, display_name="Spring savings 2")
    updated = (await stub.UpdateCampaign(pb.UpdateCampaignRequest(campaign=change, update_mask=mask,
                                                                  actor="maker-1"))).campaign
    assert (updated.budget, updated.display_name, updated.control_share) == (9000.0, "Spring savings 2", 0.1)
    await expect_error(stub.UpdateCampaign(pb.UpdateCampaignRequest(campaign=change, update_mask=mask,
                                                                    actor="maker-1")),
                       grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await expect_error(stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=S.Campaign(name=created.name), update_mask=field_mask_pb2.FieldMask(paths=["state"]), actor="m")),
        INVALID, "INVALID_UPDATE_MASK")
    await stub.SubmitCampaign(pb.SubmitCampaignRequest(name=created.name, actor="maker-1"))
    got = await expect_error(stub.UpdateCampaign(pb.UpdateCampaignRequest(
        campaign=S.Campaign(name=created.name, budget=1.0), update_mask=field_mask_pb2.FieldMask(paths=["budget"]),
        actor="maker-1")), PRECONDITION, "CAMPAIGN_NOT_EDITABLE")
    assert got.metadata["state"] == "SUBMITTED"


async def test_an_incomplete_campaign_cannot_be_submitted(env):
    stub = env["stub"]
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=S.Campaign(campaign_id="bare"), actor="maker-1"))
    got = await expect_error(stub.SubmitCampaign(pb.SubmitCampaignRequest(name="campaigns/bare", actor="maker-1")),
                             PRECONDITION, "CAMPAIGN_INCOMPLETE")
    assert got.metadata["fields"] == "campaign.segment,campaign.offer_ids,campaign.channels,campaign.arms," \
                                     "campaign.start_time"


async def test_maker_checker_and_content_check_before_approval(env):
    stub, risk = env["stub"], env["risk"]
    submitted = await create_submitted(stub)
    assert submitted.state == S.CAMPAIGN_STATE_SUBMITTED
    await expect_error(stub.ApproveCampaign(pb.ApproveCampaignRequest(name=submitted.name, actor="maker-1")),
                       grpc.StatusCode.PERMISSION_DENIED, "SELF_APPROVAL_FORBIDDEN")
    assert risk.checked == []  # refused before anything else
    approved = (await stub.ApproveCampaign(pb.ApproveCampaignRequest(name=submitted.name, actor="checker-2"))).campaign
    assert (approved.state, approved.approved_by) == (S.CAMPAIGN_STATE_APPROVED, "checker-2")
    # Each arm was checked as the customer will see it: its text, then the offer's disclosures.
    assert sorted(risk.checked) == sorted([
        ("Save more this spring.\n\nDeposits insured up to the legal limit.", c.PRODUCT_TYPE_DEPOSIT),
        ("Your money, working for you.\n\nDeposits insured up to the legal limit.", c.PRODUCT_TYPE_DEPOSIT)])
    assert [(h.from_state, h.to_state, h.actor) for h in approved.history] == [
        (S.CAMPAIGN_STATE_DRAFT, S.CAMPAIGN_STATE_SUBMITTED, "maker-1"),
        (S.CAMPAIGN_STATE_SUBMITTED, S.CAMPAIGN_STATE_APPROVED, "checker-2")]


async def test_a_content_violation_blocks_approval(env):
    stub = env["stub"]
    bad = campaign("risky", arms=[S.Arm(arm_id="a", share=0.9, content="A guaranteed return of 5%!")])
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=bad, actor="maker-1"))
    await stub.SubmitCampaign(pb.SubmitCampaignRequest(name="campaigns/risky", actor="maker-1"))
    got = await expect_error(stub.ApproveCampaign(pb.ApproveCampaignRequest(name="campaigns/risky",
                                                                            actor="checker-2")),
                             PRECONDITION, "CONTENT_VIOLATION")
    assert (got.metadata["arm_id"], got.metadata["rule_id"]) == ("a", "banned.guaranteed-return")
    state = (await stub.GetCampaign(pb.GetCampaignRequest(name="campaigns/risky"))).campaign.state
    assert state == S.CAMPAIGN_STATE_SUBMITTED


async def test_risk_down_during_approval_is_unavailable_and_changes_nothing(env):
    stub = env["stub"]
    submitted = await create_submitted(stub)
    await env["risk_server"].stop(0)
    await expect_error(stub.ApproveCampaign(pb.ApproveCampaignRequest(name=submitted.name, actor="checker-2")),
                       grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert (await stub.GetCampaign(pb.GetCampaignRequest(name=submitted.name))).campaign.state == \
        S.CAMPAIGN_STATE_SUBMITTED


async def test_reject_needs_a_reason_and_returns_to_draft(env):
    stub = env["stub"]
    submitted = await create_submitted(stub)
    await expect_error(stub.RejectCampaign(pb.RejectCampaignRequest(name=submitted.name, actor="checker-2")),
                       INVALID, "REQUIRED_FIELD_MISSING")
    rejected = (await stub.RejectCampaign(pb.RejectCampaignRequest(name=submitted.name, actor="checker-2",
                                                                   reason="tone"))).campaign
    assert rejected.state == S.CAMPAIGN_STATE_DRAFT and rejected.history[-1].reason == "tone"


async def test_invalid_transitions_say_from_and_to(env):
    stub = env["stub"]
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign(), actor="maker-1"))
    for call in (stub.PauseCampaign(pb.PauseCampaignRequest(name="campaigns/spring", actor="ops")),
                 stub.ApproveCampaign(pb.ApproveCampaignRequest(name="campaigns/spring", actor="checker-2")),
                 stub.ScheduleCampaign(pb.ScheduleCampaignRequest(name="campaigns/spring", actor="ops"))):
        got = await expect_error(call, PRECONDITION, "INVALID_STATE_TRANSITION")
        assert got.metadata["from_state"] == "DRAFT"
    await expect_error(stub.SubmitCampaign(pb.SubmitCampaignRequest(name="campaigns/ghost", actor="m")),
                       grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")


async def test_schedule_run_pause_resume_complete(env):
    stub, lifecycle = env["stub"], env["svc"].runtime.components["lifecycle"]
    submitted = await create_submitted(stub)
    await stub.ApproveCampaign(pb.ApproveCampaignRequest(name=submitted.name, actor="checker-2"))
    scheduled = (await stub.ScheduleCampaign(pb.ScheduleCampaignRequest(name=submitted.name, actor="ops"))).campaign
    assert scheduled.state == S.CAMPAIGN_STATE_SCHEDULED
    assert await lifecycle.advance_schedules(NOW) == []  # not yet its start time
    assert await lifecycle.advance_schedules(NOW + timedelta(days=2)) == [("spring", "RUNNING")]
    paused = (await stub.PauseCampaign(pb.PauseCampaignRequest(name=submitted.name, actor="ops",
                                                               reason="complaints"))).campaign
    assert paused.state == S.CAMPAIGN_STATE_PAUSED
    await stub.ResumeCampaign(pb.ResumeCampaignRequest(name=submitted.name, actor="ops"))
    assert await lifecycle.advance_schedules(NOW + timedelta(days=31)) == [("spring", "COMPLETED")]
    done = (await stub.GetCampaign(pb.GetCampaignRequest(name=submitted.name))).campaign
    assert done.state == S.CAMPAIGN_STATE_COMPLETED and done.history[-1].actor == "system:scheduler"
    await expect_error(stub.CancelCampaign(pb.CancelCampaignRequest(name=submitted.name, actor="ops")),
                       PRECONDITION, "INVALID_STATE_TRANSITION")


async def test_transitions_are_idempotent_by_request_id(env):
    stub, svc = env["stub"], env["svc"]
    submitted = await create_submitted(stub)
    request = pb.ApproveCampaignRequest(name=submitted.name, actor="checker-2", request_id="approve-1")
    first = await stub.ApproveCampaign(request)
    assert await stub.ApproveCampaign(request) == first
    assert await count(svc, CampaignStateChangeRow) == 2  # submit + one approval
    await expect_error(stub.ApproveCampaign(pb.ApproveCampaignRequest(name=submitted.name, actor="checker-3",
                                                                      request_id="approve-1")),
                       INVALID, "REQUEST_ID_REUSED")


async def test_concurrent_approvals_apply_once(env):
    stub, svc = env["stub"], env["svc"]
    submitted = await create_submitted(stub)
    results = await asyncio.gather(*(stub.ApproveCampaign(pb.ApproveCampaignRequest(
        name=submitted.name, actor=f"checker-{i}")) for i in range(2, 6)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, Exception)]
    failed = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(failed) == 3
    assert {e.code() for e in failed} <= {grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION}
    assert await count(svc, CampaignStateChangeRow) == 2


async def test_list_by_state(env):
    stub = env["stub"]
    await create_submitted(stub, "one")
    await stub.CreateCampaign(pb.CreateCampaignRequest(campaign=campaign("two"), actor="maker-1"))
    listed = await stub.ListCampaigns(pb.ListCampaignsRequest(state=S.CAMPAIGN_STATE_DRAFT))
    assert [x.campaign_id for x in listed.campaigns] == ["two"]
    page = await stub.ListCampaigns(pb.ListCampaignsRequest(page_size=1))
    rest = await stub.ListCampaigns(pb.ListCampaignsRequest(page_size=1, page_token=page.next_page_token))
    assert [x.campaign_id for x in [*page.campaigns, *rest.campaigns]] == ["one", "two"]
    await expect_error(stub.ListCampaigns(pb.ListCampaignsRequest(state=42)), INVALID, "UNKNOWN_ENUM_VALUE")


async def test_cli_drives_the_lifecycle_with_json_output(env, tmp_path, monkeypatch):
    import io
    import json

    from lodestar_cli.main import run

    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", env["svc"].address)
    spec = tmp_path / "spring.yaml"
    spec.write_text(
        "campaign_id: cli-spring\ndisplay_name: Spring\nsegment: segments/s\noffer_ids: [deposit]\n"
        "channels: [CHANNEL_SMS]\nstart_time: '2030-01-01T00:00:00Z'\ncontrol_share: 0.1\n"
        "arms: [{arm_id: a, share: 0.9, content: 'Save more.'}]\n", encoding="utf-8")

    async def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, ["--json", *argv], out, err)
        return code, json.loads(out.getvalue())

    code, created = await cli("campaigns", "create", str(spec), "--actor", "maker-1")
    assert code == 0 and created["campaign"]["state"] == "CAMPAIGN_STATE_DRAFT"
    assert (await cli("campaigns", "submit", "cli-spring", "--actor", "maker-1"))[0] == 0
    code, refused = await cli("campaigns", "approve", "cli-spring", "--actor", "maker-1")
    assert code == 1
    assert refused["error"]["code"] == "PERMISSION_DENIED" and refused["error"]["reason"] == "SELF_APPROVAL_FORBIDDEN"
    code, approved = await cli("campaigns", "approve", "cli-spring", "--actor", "checker-2")
    assert code == 0 and approved["campaign"]["approved_by"] == "checker-2"
    code, listed = await cli("campaigns", "list", "--state", "approved")
    assert [c["campaign_id"] for c in listed["campaigns"]] == ["cli-spring"]
