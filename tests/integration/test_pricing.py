"""PricingService and priced Decide through real campaign and profile servers (risk faked: allow all)."""

import math
import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from sqlalchemy import select

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import history_pb2, offer_pb2
from lodestar.campaign.v1 import recommendation_service_pb2 as pb
from lodestar.campaign.v1 import recommendation_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import credit_pb2 as cpb_credit
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import DecisionRow, PriceBandRow
from services.campaign.domain import CustomerSnapshot
from services.campaign.personalisation_clients import RiskPd
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

BAND = offer_pb2.PriceBand(rate_min=0.06, rate_max=0.12, rate_step=0.005, fee_waiver_allowed=True, fee_amount=80)


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


class AllowAll(rpbg.RiskServiceServicer):
    """Allows everything; its champion credit model gives every customer a PD of 0.08."""

    def __init__(self):
        self.credit_requests = []

    async def ScoreCredit(self, request, context):
        self.credit_requests.append(request)
        return cpb_credit.ScoreCreditResponse(model="creditModels/1", pd=0.08)

    async def Screen(self, request, context):
        return spb.ScreenResponse(policy_version="allow-all", verdicts=[
            spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_ALLOW) for o in request.offers])


@pytest.fixture
async def env(start):
    profile = await start(PROFILE)
    risk = grpc.aio.server()
    fake_risk = AllowAll()
    rpbg.add_RiskServiceServicer_to_server(fake_risk, risk)
    risk_port = risk.add_insecure_port("127.0.0.1:0")
    await risk.start()
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR=f"127.0.0.1:{risk_port}")
    pch, cch = grpc.aio.insecure_channel(profile.address), grpc.aio.insecure_channel(campaign.address)
    customer = customer_pb2.Customer(customer_id="p-1", region="CN-31", birth_date="1990-01-01")
    customer.attributes["income"].decimal_value = "25000"
    customer.attributes["price_segment"].string_value = "young"
    await ppbg.ProfileServiceStub(pch).CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    stub = cpbg.CampaignServiceStub(cch)
    await stub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="loan", title="Loan", product_type=c.PRODUCT_TYPE_CONSUMER_LOAN, risk_level=c.PRODUCT_RISK_LEVEL_R2,
        conversion_value=900, contact_cost=1,
        disclosures=[c.Disclosure(kind="apr", text="APR from 6%"), c.Disclosure(kind="risk", text="Borrow wisely")])))
    yield {"campaign": campaign, "stub": stub, "pricing": pbg.PricingServiceStub(cch), "risk": fake_risk}
    await pch.close()
    await cch.close()
    await risk.stop(0)


async def bands(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(PriceBandRow)))


async def test_bad_bands_and_unknown_offers_change_nothing(env):
    pricing = env["pricing"]
    inverted = offer_pb2.PriceBand(rate_min=0.12, rate_max=0.06)
    got = await expect_error(pricing.SetPriceBand(pb.SetPriceBandRequest(offer="offers/loan", band=inverted)),
                             grpc.StatusCode.INVALID_ARGUMENT, "PRICE_BAND_INVERTED")
    assert got.field_violations == [("band.rate_min", "must not be above rate_max")]
    await expect_error(pricing.SetPriceBand(pb.SetPriceBandRequest(
        offer="offers/loan", band=offer_pb2.PriceBand(rate_min=0.05, rate_max=1.5))),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PRICE_BAND")
    await expect_error(pricing.SetPriceBand(pb.SetPriceBandRequest(offer="offers/loan")),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    await expect_error(pricing.SetPriceBand(pb.SetPriceBandRequest(offer="loan", band=BAND)),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
    await expect_error(pricing.SetPriceBand(pb.SetPriceBandRequest(offer="offers/nope", band=BAND)),
                       grpc.StatusCode.NOT_FOUND, "OFFER_NOT_FOUND")
    await expect_error(pricing.GetPriceBand(pb.GetPriceBandRequest(offer="offers/loan")),
                       grpc.StatusCode.NOT_FOUND, "PRICE_BAND_NOT_FOUND")
    assert await bands(env["campaign"]) == []


async def test_decide_chooses_within_the_band_and_discloses_it(env):
    pricing, stub = env["pricing"], env["stub"]
    first = await pricing.SetPriceBand(pb.SetPriceBandRequest(offer="offers/loan", band=BAND, request_id="band-1"))
    assert first.band == BAND
    assert await pricing.SetPriceBand(pb.SetPriceBandRequest(offer="offers/loan", band=BAND,
                                                             request_id="band-1")) == first
    await expect_error(pricing.FitPriceResponse(pb.FitPriceResponseRequest(offer="offers/loan")),
                       grpc.StatusCode.FAILED_PRECONDITION, "TRAINING_NOT_POSSIBLE")

    # History of priced contacts: the "young" segment is very price-sensitive.
    rng, start = random.Random(4), datetime(2026, 1, 5, tzinfo=UTC)
    records = []
    for i in range(600):
        rate = rng.choice([0.06, 0.08, 0.10, 0.12])
        p = 1 / (1 + math.exp(-(3.0 - 45.0 * rate)))
        records.append(history_pb2.HistoryRecord(
            customer_id=f"h-{i}", campaign_ref="priced", offer_id="loan", arm="a", treated=True,
            contact_time=ts(start + timedelta(minutes=i)), channel=c.CHANNEL_SMS, converted=rng.random() < p,
            context={"rate": str(rate), "price_segment": "young"}, row_number=i + 1))

    async def batches():
        yield cpb.ImportCampaignHistoryRequest(records=records)

    assert (await stub.ImportCampaignHistory(batches())).imported == 600
    fitted = await pricing.FitPriceResponse(pb.FitPriceResponseRequest(offer="offers/loan"))
    segments = {s.segment: s for s in fitted.segments}
    assert set(segments) == {"*", "young"} and segments["young"].contacts == 600
    assert segments["young"].slope == pytest.approx(-45, abs=15)
    stored = await pricing.GetPriceBand(pb.GetPriceBandRequest(offer="offers/loan"))
    assert stored.band == BAND and list(stored.segments) == list(fitted.segments)

    response = await stub.Decide(cpb.DecideRequest(customer_id="p-1", context=offer_pb2.DecisionContext(
        channel=c.CHANNEL_SMS)))
    [loan] = response.offers
    decision_id = response.decision.removeprefix("decisions/")
    async with env["campaign"].runtime.database.sessionmaker() as session:
        row = await session.get(DecisionRow, decision_id)
        [candidate] = row.candidates
    chosen = candidate["pricing"]
    assert 0.06 <= chosen["rate"] <= 0.12 and chosen["segment"] == "young"
    # Risk's PD (ScoreCredit, the customer's attributes as features) narrowed the band: floor 0.06 + 0.08 x LGD.
    [credit] = env["risk"].credit_requests
    assert credit.customer_id == "p-1" and credit.features["income"] == "25000" and credit.monthly_income == 25000
    assert chosen["pd"] == pytest.approx(0.08) and chosen["effective_band"]["rate_min"] == pytest.approx(0.096)
    assert chosen["rate"] >= 0.096 - 1e-12 and "raised the floor" in chosen["explanation"]
    assert chosen["rate"] < 0.12  # a price-sensitive customer is not charged the top of the band
    assert [(d.kind, d.text) for d in loan.disclosures][:2] == [
        ("apr", f"Annualised rate: {chosen['rate'] * 100:.2f}%"),
        ("fee", "Fee: waived" if chosen["fee_waived"] else "Fee: 80.00")]
    assert [(d.kind, d.text) for d in loan.disclosures][2:] == [("risk", "Borrow wisely")]
    assert loan.reasons[-1].code == "PERSONALISED_PRICE" and "segment young" in loan.reasons[-1].message
    # The response carries the same terms as the record.
    assert loan.chosen_terms.rate == pytest.approx(chosen["rate"])
    assert loan.chosen_terms.fee_waived == chosen["fee_waived"]
    assert loan.chosen_terms.effective_band.rate_min == pytest.approx(0.096)
    assert loan.chosen_terms.effective_band.rate_max == pytest.approx(0.12)
    assert loan.chosen_terms.explanation == chosen["explanation"]


class NoCreditModel(rpbg.RiskServiceServicer):
    def __init__(self):
        self.calls = 0

    async def ScoreCredit(self, request, context):
        self.calls += 1
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason="NO_CHAMPION_CREDIT_MODEL", domain="risk"))
        await context.abort_with_status(rpc_status.to_status(status_pb2.Status(
            code=code_pb2.FAILED_PRECONDITION, message="no champion credit model", details=[info])))


async def test_risk_pd_is_none_without_a_credit_model_and_is_not_asked_again_at_once():
    fake = NoCreditModel()
    server = grpc.aio.server()
    rpbg.add_RiskServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = RiskPd(f"127.0.0.1:{port}")
    customer = CustomerSnapshot("p-1", None, "CN-31", "", {"income": "25000", "bad name!": "x"})
    try:
        assert await client.pd(customer) is None
        assert await client.pd(customer) is None
        assert fake.calls == 1  # remembered for NO_MODEL_CACHE_SECONDS
    finally:
        await client.close()
        await server.stop(0)
