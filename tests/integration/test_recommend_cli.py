"""`lodestar recommend`, `recommender train`, `pricing set-band|get-band` and their --json output and errors,
against real campaign and profile servers."""

import asyncio
import io
import json

import grpc
import pytest

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import offer_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar_cli.main import run
from services.campaign.app import DEFINITION as CAMPAIGN
from services.profile.app import DEFINITION as PROFILE
from tests.integration.test_recommend import CUTOFF, txn


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def stack(start, monkeypatch):
    profile = await start(PROFILE)
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR="127.0.0.1:1")
    monkeypatch.setenv("PROFILE_SERVICE_ADDR", profile.address)
    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", campaign.address)
    async with grpc.aio.insecure_channel(profile.address) as pch, grpc.aio.insecure_channel(campaign.address) as cch:
        customers, events = ppbg.ProfileServiceStub(pch), epbg.EventServiceStub(pch)
        batch = []
        for i in range(30):
            cid = f"k-{i:03d}"
            customer = customer_pb2.Customer(customer_id=cid, region="CN-31")
            if i % 2 == 0 and i % 6:
                customer.attributes["products_held"].string_value = "credit_card"
            elif i % 2:
                customer.attributes["products_held"].string_value = "deposit"
            await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
            batch.append(txn(f"{cid}-t", cid, CUTOFF, "travel" if i % 2 == 0 else "groceries"))
        await events.IngestEvents(epb.IngestEventsRequest(events=batch))
        await cpbg.CampaignServiceStub(cch).CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
            offer_id="loan", title="Loan", product_type=c.PRODUCT_TYPE_CONSUMER_LOAN,
            risk_level=c.PRODUCT_RISK_LEVEL_R2, conversion_value=900, contact_cost=1)))
    yield


async def test_recommend_commands_json_and_errors(stack):
    code, out, _ = await cli("recommend", "k-000", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "NO_RECOMMENDER"
    code, out, err = await cli("recommender", "train", "--min-support", "0.05", "--json")
    assert code == 0, err
    trained = json.loads(out)
    assert trained["name"] == "recommenders/1" and trained["metrics"]["k"] == 3
    assert 0 <= trained["metrics"]["popularity_hit_rate"] <= 1
    code, out, _ = await cli("recommend", "k-000", "-k", "2", "--json")
    assert code == 0
    data = json.loads(out)
    top = data["recommendations"][0]
    assert data["recommender_version"] == "recommenders/1"
    assert top["product"] == "credit_card" and top["rules"][0]["antecedent"] == ["category:travel"]
    code, out, _ = await cli("recommend", "k-000")
    assert code == 0 and "credit_card" in out and "category:travel => product:credit_card" in out
    code, out, _ = await cli("recommend", "nobody", "--json")
    assert code == 1 and json.loads(out)["error"] == {
        "code": "NOT_FOUND", "reason": "CUSTOMER_NOT_FOUND", "message": json.loads(out)["error"]["message"]}


async def test_pricing_band_commands(stack):
    code, out, _ = await cli("pricing", "set-band", "loan", "--min", "0.12", "--max", "0.06", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "PRICE_BAND_INVERTED"
    code, out, _ = await cli("pricing", "get-band", "loan", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "PRICE_BAND_NOT_FOUND"
    code, out, _ = await cli("pricing", "set-band", "loan", "--min", "0.06", "--max", "0.12", "--step", "0.01",
                             "--fee-waiver", "--fee", "80", "--json")
    assert code == 0 and json.loads(out)["band"] == {"rate_min": 0.06, "rate_max": 0.12, "rate_step": 0.01,
                                                     "fee_waiver_allowed": True, "fee_amount": 80.0}
    code, out, _ = await cli("pricing", "get-band", "loan")
    assert code == 0 and "offers/loan: rate 0.0600 to 0.1200" in out and "default prior" in out


async def test_winback_template_creates_the_segment_and_a_draft_campaign(stack):
    code, out, err = await cli("churn", "winback", "wb-1", "--offer", "loan", "--channel", "sms", "--actor",
                               "maker-1", "--json")
    assert code == 0, out + err
    data = json.loads(out)
    assert data == {"campaign": "campaigns/wb-1", "segment": "segments/churn-risk-high",
                    "condition": 'tag.churn_risk = "high"', "segment_created": True, "control_share": 0.1,
                    "offer_ids": ["loan"]}
    code, out, _ = await cli("churn", "winback", "wb-2", "--offer", "loan", "--channel", "email", "--actor",
                             "maker-1", "--json")
    assert code == 0 and json.loads(out)["segment_created"] is False  # the segment is shared
    code, out, _ = await cli("churn", "winback", "wb-3", "--offer", "loan", "--channel", "pigeon", "--actor",
                             "maker-1", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "UNKNOWN_CHANNEL"
    code, out, _ = await cli("campaigns", "get", "wb-1", "--json")
    campaign = json.loads(out)
    assert code == 0 and "segments/churn-risk-high" in out and "0.1" in out, campaign
