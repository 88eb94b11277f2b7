"""CampaignService through real servers: campaign + profile for real, risk as a recording fake server."""

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import func, select

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import offer_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import DecisionRow, OfferRow
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


class FakeRisk(rpbg.RiskServiceServicer):
    """Denies wealth products as UNSUITABLE, allows the rest; records what it was asked."""

    def __init__(self):
        self.requests = []
        self.remaining = []
        self.fail_with = None

    async def Screen(self, request, context):
        self.requests.append(request)
        self.remaining.append(context.time_remaining())
        if self.fail_with:
            await context.abort(self.fail_with, "risk exploded: secret internal detail")
        verdicts = []
        for o in request.offers:
            if o.product_type == c.PRODUCT_TYPE_WEALTH:
                verdicts.append(spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_DENY,
                                                 reasons=[spb.REASON_CODE_UNSUITABLE]))
            else:
                verdicts.append(spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_ALLOW))
        return spb.ScreenResponse(verdicts=verdicts, policy_version="fake-1")


@pytest.fixture
async def stack(start):
    profile = await start(PROFILE)
    risk_server = grpc.aio.server()
    fake = FakeRisk()
    rpbg.add_RiskServiceServicer_to_server(fake, risk_server)
    risk_port = risk_server.add_insecure_port("127.0.0.1:0")
    await risk_server.start()
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR=f"127.0.0.1:{risk_port}")
    pch, cch = grpc.aio.insecure_channel(profile.address), grpc.aio.insecure_channel(campaign.address)
    pstub, cstub = ppbg.ProfileServiceStub(pch), cpbg.CampaignServiceStub(cch)
    customer = customer_pb2.Customer(customer_id="c-1", birth_date="1985-02-03", region="CN-31",
                                     time_zone="Asia/Shanghai")
    customer.attributes["risk_tolerance"].string_value = "C2"
    customer.attributes["in_collections"].bool_value = True
    customer.attributes["income"].decimal_value = "20000"
    await pstub.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    for oid, product, level, value in [("card", c.PRODUCT_TYPE_CREDIT_CARD, c.PRODUCT_RISK_LEVEL_R2, 300.0),
                                       ("deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 80.0),
                                       ("fund", c.PRODUCT_TYPE_WEALTH, c.PRODUCT_RISK_LEVEL_R4, 900.0)]:
        await cstub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
            offer_id=oid, title=oid.title(), product_type=product, risk_level=level, conversion_value=value,
            contact_cost=0.5, disclosures=[c.Disclosure(kind="fees", text="No annual fee")])))
    yield {"profile": profile, "campaign": campaign, "risk": fake, "cstub": cstub, "risk_server": risk_server}
    await pch.close()
    await cch.close()
    await risk_server.stop(0)


async def test_decide_ranks_allowed_offers_and_explains_the_rest(stack):
    cstub, fake = stack["cstub"], stack["risk"]
    response = await cstub.Decide(cpb.DecideRequest(customer_id="c-1",
                                                    context=offer_pb2.DecisionContext(channel=c.CHANNEL_SMS)))
    assert [o.rank for o in response.offers] == list(range(1, len(response.offers) + 1))
    assert {o.offer_id for o in response.offers} == {"card", "deposit"}
    values = [o.expected_value for o in response.offers]
    assert values == sorted(values, reverse=True)
    assert all(o.disclosures[0].text == "No annual fee" for o in response.offers)
    assert {s.offer_id: [r.code for r in s.reasons] for s in response.suppressed} == {"fund": ["RISK_UNSUITABLE"]}
    assert response.policy_version == "fake-1" and response.model_version == "heuristic-v1"
    assert response.decision.startswith("decisions/")
    # Campaign passed profile's facts to risk.
    facts = fake.requests[0].facts
    assert (facts.birth_date, facts.time_zone, facts.risk_tolerance, facts.in_collections) == (
        "1985-02-03", "Asia/Shanghai", c.RISK_TOLERANCE_C2, True)
    assert fake.requests[0].channel == c.CHANNEL_SMS
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(DecisionRow)) == 1


async def test_decide_max_offers_and_default_channel(stack):
    cstub, fake = stack["cstub"], stack["risk"]
    response = await cstub.Decide(cpb.DecideRequest(customer_id="c-1", max_offers=1))
    assert len(response.offers) == 1
    assert fake.requests[-1].channel == c.CHANNEL_IN_APP


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (cpb.DecideRequest(customer_id=""), "customer_id", "REQUIRED_FIELD_MISSING"),
    (cpb.DecideRequest(customer_id="a b"), "customer_id", "INVALID_ID"),
    (cpb.DecideRequest(customer_id="c-1", max_offers=-1), "max_offers", "OUT_OF_RANGE"),
    (cpb.DecideRequest(customer_id="c-1", max_offers=21), "max_offers", "OUT_OF_RANGE"),
    (cpb.DecideRequest(customer_id="c-1", context=offer_pb2.DecisionContext(channel=99)), "context.channel",
     "UNKNOWN_ENUM_VALUE"),
])
async def test_decide_bad_input(stack, request_, field, reason):
    got = await expect_error(stack["cstub"].Decide(request_), INVALID, reason)
    assert got.field_violations[0][0] == field
    assert stack["risk"].requests == []


async def test_unknown_customer_is_not_found(stack):
    await expect_error(stack["cstub"].Decide(cpb.DecideRequest(customer_id="ghost")), grpc.StatusCode.NOT_FOUND,
                       "CUSTOMER_NOT_FOUND")


async def test_risk_down_is_unavailable_never_unknown(stack):
    await stack["risk_server"].stop(0)
    got = await expect_error(stack["cstub"].Decide(cpb.DecideRequest(customer_id="c-1")),
                             grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")
    assert got.metadata["dependency"] == "risk"


async def test_risk_internal_error_is_internal_without_its_text(stack):
    stack["risk"].fail_with = grpc.StatusCode.INTERNAL
    got = await expect_error(stack["cstub"].Decide(cpb.DecideRequest(customer_id="c-1")),
                             grpc.StatusCode.INTERNAL, "DEPENDENCY_FAILED")
    assert "secret" not in got.message


async def test_caller_deadline_is_passed_downstream(stack):
    fake = stack["risk"]
    await stack["cstub"].Decide(cpb.DecideRequest(customer_id="c-1"))
    assert fake.remaining[-1] is not None and fake.remaining[-1] < 1.1  # the client default (1 s) applies
    await stack["cstub"].Decide(cpb.DecideRequest(customer_id="c-1"), timeout=0.5)
    assert 0 < fake.remaining[-1] < 0.5


async def test_decide_trace_spans_profile_and_risk_calls(stack, span_exporter):
    span_exporter.clear()
    await stack["cstub"].Decide(cpb.DecideRequest(customer_id="c-1"))
    spans = span_exporter.get_finished_spans()
    server = next(s for s in spans if s.name == "/lodestar.campaign.v1.CampaignService/Decide")
    children = {s.name for s in spans if s.parent and s.parent.span_id == server.context.span_id}
    assert {"/lodestar.profile.v1.ProfileService/GetCustomer", "/lodestar.risk.v1.RiskService/Screen"} <= children
    client_get = next(s for s in spans if s.name == "/lodestar.profile.v1.ProfileService/GetCustomer"
                      and s.parent and s.parent.span_id == server.context.span_id)
    profile_server = [s for s in spans if s.name == "/lodestar.profile.v1.ProfileService/GetCustomer"
                      and s.parent and s.parent.span_id == client_get.context.span_id]
    assert len(profile_server) == 1 and profile_server[0].resource.attributes["service.name"] == "profile"
    assert "c-1" not in repr({k: v for s in spans for k, v in (s.attributes or {}).items()})


async def test_offers_crud_and_errors(stack):
    cstub = stack["cstub"]
    got = (await cstub.GetOffer(cpb.GetOfferRequest(name="offers/card"))).offer
    assert (got.title, got.product_type, got.conversion_value) == ("Card", c.PRODUCT_TYPE_CREDIT_CARD, 300.0)
    listed = await cstub.ListOffers(cpb.ListOffersRequest(page_size=2))
    assert [o.offer_id for o in listed.offers] == ["card", "deposit"] and listed.next_page_token
    rest = await cstub.ListOffers(cpb.ListOffersRequest(page_size=2, page_token=listed.next_page_token))
    assert [o.offer_id for o in rest.offers] == ["fund"] and not rest.next_page_token
    await expect_error(cstub.GetOffer(cpb.GetOfferRequest(name="offers/none")), grpc.StatusCode.NOT_FOUND,
                       "OFFER_NOT_FOUND")
    await expect_error(cstub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="card", title="Again", product_type=c.PRODUCT_TYPE_DEPOSIT, risk_level=c.PRODUCT_RISK_LEVEL_R1))),
        grpc.StatusCode.ALREADY_EXISTS, "OFFER_ALREADY_EXISTS")


@pytest.mark.parametrize(("offer", "field"), [
    (offer_pb2.Offer(offer_id="x", product_type=1, risk_level=1), "offer.title"),
    (offer_pb2.Offer(offer_id="x", title="T", risk_level=1), "offer.product_type"),
    (offer_pb2.Offer(offer_id="x", title="T", product_type=42, risk_level=1), "offer.product_type"),
    (offer_pb2.Offer(offer_id="x", title="T", product_type=1, risk_level=1, conversion_value=-1),
     "offer.conversion_value"),
    (offer_pb2.Offer(offer_id="x", title="T", product_type=1, risk_level=1, contact_cost=float("nan")),
     "offer.contact_cost"),
    (offer_pb2.Offer(offer_id="x", title="T", product_type=1, risk_level=1,
                     disclosures=[c.Disclosure(kind="apr")]), "offer.disclosures[0]"),
    (offer_pb2.Offer(offer_id="x", title="T", product_type=1, risk_level=1,
                     valid_from=timestamp_pb2.Timestamp(seconds=2000),
                     valid_until=timestamp_pb2.Timestamp(seconds=1000)),
     "offer.valid_until"),
])
async def test_create_offer_bad_input_writes_nothing(stack, offer, field):
    got = await expect_error(stack["cstub"].CreateOffer(cpb.CreateOfferRequest(offer=offer)), INVALID)
    assert field in [f for f, _ in got.field_violations]
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        assert await session.scalar(select(func.count()).select_from(OfferRow)) == 3
