"""The gateway's forwarder against a real campaign service: partner leads and conversions become attributed
responses exactly once (retries and crashes included), unattributable ones are marked and counted, nothing is
marked while campaign is down, and the customer's id never reaches a log line."""

import logging
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from lodestar.common.v1 import common_pb2 as c
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import ArmAssignmentRow, CampaignUnitOfWork, DecisionRow, ResponseRow
from services.campaign.domain import RUNNING, Arm, Campaign
from services.gateway.app import DEFINITION as GATEWAY
from services.gateway.db import ConversionRow, LeadRow, PartnerRow
from services.platform.errors import DomainError
from tests.integration.test_campaign_launch import DEPOSIT

T0 = datetime.now(UTC) - timedelta(days=1)


@pytest.fixture
async def services(start):
    campaign = await start(CAMPAIGN, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                           CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                           CAMPAIGN_LEARNING_INTERVAL_SECONDS="3600")
    gateway = await start(GATEWAY, CAMPAIGN_SERVICE_ADDR=f"127.0.0.1:{campaign.port}",
                          GATEWAY_FORWARD_INTERVAL_SECONDS="3600")
    async with CampaignUnitOfWork(campaign.runtime.database) as uow:
        await uow.offers.add(DEPOSIT)
        await uow.campaigns.add(Campaign(
            campaign_id="always", state=RUNNING, segment="segments/all", offer_ids=["dep"],
            channels=[c.CHANNEL_PARTNER], arm_selection="THOMPSON_SAMPLING",
            arms=[Arm("a", 0.5, "A"), Arm("b", 0.5, "B")], created_by="maker", start_time=T0))
        uow.session.add(ArmAssignmentRow(campaign_id="always", customer_id="bank-42", arm_id="b", offer_id="dep",
                                         channel=c.CHANNEL_PARTNER, probability=0.5, decision_id="d1",
                                         assign_time=T0))
        for decision_id, customer in (("d1", "bank-42"), ("d2", "bank-7")):
            uow.session.add(DecisionRow(decision_id=decision_id, customer_id=customer, channel=c.CHANNEL_PARTNER,
                                        partner_id="shop", placement="checkout", decision_time=T0,
                                        model_version="m", policy_version="p", candidates=[]))
        await uow.commit()
    async with gateway.runtime.database.sessionmaker() as session:
        session.add(PartnerRow(partner_id="shop", display_name="Shop", pseudonym_key="00" * 32))
        await session.commit()
    return campaign, gateway


async def add_lead(gateway, lead_id, customer, decision, when, conversion=None):
    async with gateway.runtime.database.sessionmaker() as session:
        session.add(LeadRow(lead_id=lead_id, partner_id="shop", customer_ref="ref-" + lead_id, customer_id=customer,
                            offer_id="dep", decision_ref=f"decisions/{decision}", status="RECEIVED", forwarded=False,
                            create_time=when, update_time=when))
        await session.flush()
        if conversion is not None:
            session.add(ConversionRow(lead_id=lead_id, partner_id="shop", currency_code="CNY", revenue_units=1234,
                                      revenue_nanos=500_000_000, conversion_time=conversion, forwarded=False,
                                      create_time=conversion))
        await session.commit()


async def flags(gateway):
    async with gateway.runtime.database.sessionmaker() as session:
        leads = {r.lead_id: r.forwarded for r in await session.scalars(select(LeadRow))}
        conversions = {r.lead_id: r.forwarded for r in await session.scalars(select(ConversionRow))}
    return leads, conversions


async def responses(campaign):
    async with campaign.runtime.database.sessionmaker() as session:
        return [(r.campaign_id, r.arm_id, r.customer_id, r.outcome, r.revenue, r.currency_code, r.decision_id,
                 r.event_id) for r in await session.scalars(select(ResponseRow).order_by(ResponseRow.id))]


async def test_leads_and_conversions_are_forwarded_once_and_marked(services, caplog):
    campaign, gateway = services
    caplog.set_level(logging.DEBUG, logger="lodestar")
    await add_lead(gateway, "L1", "bank-42", "d1", T0 + timedelta(minutes=1), conversion=T0 + timedelta(hours=1))
    await add_lead(gateway, "L2", "bank-7", "d2", T0 + timedelta(minutes=2))
    forwarder = gateway.runtime.components["forwarder"]
    first = await forwarder.forward_once()
    assert (first.leads, first.conversions, first.dispositions) == (2, 1, {"RECORDED": 2, "NOT_ATTRIBUTED": 1})
    assert await responses(campaign) == [
        ("always", "b", "bank-42", "APPLIED", 0.0, "", "d1", "gateway:lead:L1"),
        ("always", "b", "bank-42", "CONVERTED", 1234.5, "CNY", "d1", "gateway:conversion:L1"),
    ]
    assert await flags(gateway) == ({"L1": True, "L2": True}, {"L1": True})
    assert (await forwarder.forward_once()).leads == 0

    # A crash after campaign answered but before the marking: the same batch again gets the first answer back.
    async with gateway.runtime.database.sessionmaker() as session:
        for model in (LeadRow, ConversionRow):
            for row in await session.scalars(select(model)):
                row.forwarded = False
        await session.commit()
    again = await forwarder.forward_once()
    assert again.dispositions == first.dispositions
    assert len(await responses(campaign)) == 2
    # A batch that differs (a new lead joined it): the old events are duplicates, never counted twice.
    async with gateway.runtime.database.sessionmaker() as session:
        (await session.get(LeadRow, "L1")).forwarded = False
        await session.commit()
    await add_lead(gateway, "L3", "bank-42", "d1", T0 + timedelta(minutes=3))
    third = await forwarder.forward_once()
    assert (third.leads, third.dispositions) == (2, {"DUPLICATE": 2})
    assert len(await responses(campaign)) == 2

    assert any(r.name == "lodestar.gateway.forwarder" and r.dispositions for r in caplog.records)
    for record in caplog.records:
        assert "bank-42" not in repr(record.__dict__) and "bank-7" not in repr(record.__dict__)


async def test_nothing_is_marked_while_campaign_is_down(services):
    campaign, gateway = services
    await add_lead(gateway, "L9", "bank-42", "d1", T0 + timedelta(minutes=1))
    await campaign.stop(drain_seconds=0, grace_seconds=0.1)
    with pytest.raises(DomainError) as caught:
        await gateway.runtime.components["forwarder"].forward_once()
    assert caught.value.reason in ("DEPENDENCY_UNAVAILABLE", "DEPENDENCY_DEADLINE_EXCEEDED")
    assert await flags(gateway) == ({"L9": False}, {})


async def test_partner_engagement_is_validated_stored_and_forwarded_as_a_response(start, services):
    import grpc

    from lodestar.gateway.v1 import gateway_admin_service_pb2 as apb
    from lodestar.gateway.v1 import gateway_admin_service_pb2_grpc as apbg
    from lodestar.gateway.v1 import partner_service_pb2 as ppb
    from lodestar.gateway.v1 import partner_service_pb2_grpc as ppbg
    from services.gateway.db import EngagementRow, PresentedOfferRow
    from tests.helpers import expect_error

    campaign, _ = services
    gateway = await start(GATEWAY, CAMPAIGN_SERVICE_ADDR=f"127.0.0.1:{campaign.port}", GATEWAY_ADMIN_TOKEN="t0k",
                          GATEWAY_FORWARD_INTERVAL_SECONDS="3600")
    admin_md = (("x-admin-token", "t0k"),)
    async with grpc.aio.insecure_channel(gateway.address) as channel:
        admin, partner = apbg.GatewayAdminServiceStub(channel), ppbg.PartnerServiceStub(channel)
        await admin.CreatePartner(apb.CreatePartnerRequest(partner=apb.Partner(partner_id="shop", display_name="S")),
                                  metadata=admin_md)
        await admin.SetPartnerScopes(apb.SetPartnerScopesRequest(partner="partners/shop", scopes=["offers:read"]),
                                     metadata=admin_md)
        key = (await admin.CreateApiKey(apb.CreateApiKeyRequest(partner="partners/shop"), metadata=admin_md)).api_key
        ref = (await admin.IssuePseudonym(apb.IssuePseudonymRequest(partner="partners/shop", customer_id="bank-42"),
                                          metadata=admin_md)).customer_ref
        async with gateway.runtime.database.sessionmaker() as session:
            session.add(PresentedOfferRow(partner_id="shop", decision_ref="decisions/d1", customer_ref=ref,
                                          offer_id="dep", create_time=T0))
            await session.commit()
        md = (("x-api-key", key),)

        def report(request_id, **fields):
            values = {"customer_ref": ref, "offer_id": "dep", "decision_ref": "decisions/d1",
                      "kind": ppb.ENGAGEMENT_KIND_CLICKED, **fields}
            return partner.ReportEngagement(ppb.ReportEngagementRequest(request_id=request_id, **values), metadata=md)

        await expect_error(report("e-0"), grpc.StatusCode.PERMISSION_DENIED, "SCOPE_MISSING")
        await admin.SetPartnerScopes(apb.SetPartnerScopesRequest(
            partner="partners/shop", scopes=["offers:read", "engagement:write"]), metadata=admin_md)
        await expect_error(report("e-1", kind=ppb.ENGAGEMENT_KIND_UNSPECIFIED), grpc.StatusCode.INVALID_ARGUMENT,
                           "INVALID_ENGAGEMENT_KIND")
        await expect_error(report("e-2", decision_ref="decisions/nope"), grpc.StatusCode.NOT_FOUND,
                           "DECISION_NOT_FOUND")
        await expect_error(report("e-3", offer_id="other"), grpc.StatusCode.FAILED_PRECONDITION,
                           "OFFER_NOT_PRESENTED")
        future = datetime.now(UTC) + timedelta(hours=1)
        from google.protobuf import timestamp_pb2

        when = timestamp_pb2.Timestamp()
        when.FromDatetime(future)
        await expect_error(report("e-4", event_time=when), grpc.StatusCode.INVALID_ARGUMENT,
                           "EVENT_TIME_IN_THE_FUTURE")
        async with gateway.runtime.database.sessionmaker() as session:
            assert list(await session.scalars(select(EngagementRow))) == []  # nothing written by a refusal
        clicked = await report("e-5")
        assert clicked.engagement.startswith("engagements/") and clicked.kind == ppb.ENGAGEMENT_KIND_CLICKED
        assert await report("e-5") == clicked  # a retry replays the first answer
        viewed = await report("e-6", kind=ppb.ENGAGEMENT_KIND_VIEWED)
        assert "bank-42" not in str(clicked) + str(viewed)  # the partner never sees the bank's id

    result = await gateway.runtime.components["forwarder"].forward_once()
    assert result.dispositions == {"RECORDED": 2}
    assert sorted(r[3] for r in await responses(campaign)) == ["CLICKED", "OPENED"]
    assert {(r[0], r[1], r[2], r[6]) for r in await responses(campaign)} == {("always", "b", "bank-42", "d1")}
    async with gateway.runtime.database.sessionmaker() as session:
        assert [r.forwarded for r in await session.scalars(select(EngagementRow))] == [True, True]
