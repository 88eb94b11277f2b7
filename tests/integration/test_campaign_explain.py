"""GetDecision, ExplainDecision and `lodestar explain` through real campaign and profile servers (risk faked)."""

import asyncio
import hashlib
import io
import json
import random
from datetime import UTC, datetime, timedelta, timezone

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import select, update

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import offer_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from lodestar_cli.main import run
from services.campaign import modeling
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import DecisionRow, ModelVersionRow
from services.platform.masking import customer_token
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

CUSTOMER = "bank-cust-778812"
BIRTH = "1985-02-03"


class FakeRisk(rpbg.RiskServiceServicer):
    """Denies wealth products as UNSUITABLE with a second reason, allows the rest."""

    async def Screen(self, request, context):
        verdicts = []
        for o in request.offers:
            if o.product_type == c.PRODUCT_TYPE_WEALTH:
                verdicts.append(spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_DENY, reasons=[
                    spb.REASON_CODE_UNSUITABLE, spb.REASON_CODE_CONSENT_MISSING]))
            else:
                verdicts.append(spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_ALLOW))
        return spb.ScreenResponse(verdicts=verdicts, policy_version="fake-7")


@pytest.fixture
async def stack(start, monkeypatch):
    profile = await start(PROFILE)
    risk_server = grpc.aio.server()
    rpbg.add_RiskServiceServicer_to_server(FakeRisk(), risk_server)
    risk_port = risk_server.add_insecure_port("127.0.0.1:0")
    await risk_server.start()
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR=f"127.0.0.1:{risk_port}")
    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", campaign.address)
    pch, cch = grpc.aio.insecure_channel(profile.address), grpc.aio.insecure_channel(campaign.address)
    pstub, cstub = ppbg.ProfileServiceStub(pch), cpbg.CampaignServiceStub(cch)
    customer = customer_pb2.Customer(customer_id=CUSTOMER, birth_date=BIRTH, region="CN-31",
                                     time_zone="Asia/Shanghai", full_name="Wang Fang",
                                     email="wang.fang@example.cn", phone="+8613800138000")
    customer.attributes["risk_tolerance"].string_value = "C4"
    customer.attributes["in_collections"].bool_value = False
    customer.attributes["income"].decimal_value = "20000"
    customer.attributes["segment"].string_value = "affluent"
    await pstub.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    for oid, product, level, value in [("card", c.PRODUCT_TYPE_CREDIT_CARD, c.PRODUCT_RISK_LEVEL_R2, 300.0),
                                       ("deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 80.0),
                                       ("bond", c.PRODUCT_TYPE_SAVINGS_BOND, c.PRODUCT_RISK_LEVEL_R2, 2.0),
                                       ("fund", c.PRODUCT_TYPE_WEALTH, c.PRODUCT_RISK_LEVEL_R4, 900.0)]:
        await cstub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
            offer_id=oid, title=oid.title(), product_type=product, risk_level=level, conversion_value=value,
            contact_cost=0.5)))
    yield {"campaign": campaign, "cstub": cstub}
    await pch.close()
    await cch.close()
    await risk_server.stop(0)


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


async def decide(cstub, when=None, max_offers=2):
    context = offer_pb2.DecisionContext(channel=c.CHANNEL_SMS, placement="home-banner")
    if when is not None:
        context.decision_time.CopyFrom(ts(when))
    response = await cstub.Decide(cpb.DecideRequest(customer_id=CUSTOMER, context=context, max_offers=max_offers))
    return response


async def tamper(stack, decision_id, change):
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        row = await session.get(DecisionRow, decision_id)
        candidates = [dict(x) for x in row.candidates]
        snapshot = dict(row.snapshot)
        change(candidates, snapshot)
        await session.execute(update(DecisionRow).where(DecisionRow.decision_id == decision_id)
                              .values(candidates=candidates, snapshot=snapshot))
        await session.commit()


async def test_get_decision_returns_the_stored_record(stack):
    cstub = stack["cstub"]
    when = datetime(2026, 3, 1, 0, 30, tzinfo=UTC)  # 08:30 in Shanghai: the age is taken on 1 March
    response = await decide(cstub, when)
    record = (await cstub.GetDecision(cpb.GetDecisionRequest(name=response.decision))).decision
    assert record.name == response.decision
    assert record.customer_token == customer_token(CUSTOMER)
    assert (record.context.channel, record.context.placement) == (c.CHANNEL_SMS, "home-banner")
    assert record.context.decision_time.ToDatetime(tzinfo=UTC) == when
    assert record.max_offers == 2 and record.policy_version == "fake-7" and record.model_version == "heuristic-v1"
    assert record.action_probability == 1.0
    by_offer = {x.offer_id: x for x in record.candidates}
    assert [x.offer_id for x in record.candidates] == ["bond", "card", "deposit", "fund"]
    assert (by_offer["fund"].verdict, list(by_offer["fund"].risk_reasons)) == ("DENY", ["UNSUITABLE",
                                                                                      "CONSENT_MISSING"])
    assert by_offer["fund"].rank == 0 and by_offer["fund"].model_version == ""
    ranked = {r.offer_id: r for r in response.offers}
    for offer_id, candidate in by_offer.items():
        if offer_id in ranked:
            assert candidate.rank == ranked[offer_id].rank
            assert candidate.expected_value == pytest.approx(ranked[offer_id].expected_value, abs=1e-6)
        if candidate.verdict == "ALLOW":
            assert candidate.model_version == "heuristic-v1" and candidate.basis == "propensity"
            assert candidate.expected_value == pytest.approx(
                candidate.probability * candidate.conversion_value - candidate.contact_cost, abs=1e-3)
    assert by_offer["bond"].rank == 0 and by_offer["bond"].expected_value < 0  # 2.0 value cannot cover 0.5
    # The snapshot: only the attributes scoring read, the age at decision time, never the birth date.
    snap = record.snapshot
    assert dict(snap.attributes) == {"income": "20000", "risk_tolerance": "C4"}
    assert (snap.region, snap.time_zone, snap.age) == ("CN-31", "Asia/Shanghai", 41)
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        row = await session.get(DecisionRow, response.decision.removeprefix("decisions/"))
        stored = json.dumps(row.snapshot)
        assert BIRTH not in stored and "1985" not in stored and CUSTOMER not in stored
        assert row.snapshot_hash == record.snapshot_hash == hashlib.sha256(
            json.dumps(row.snapshot, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def test_a_decision_re_evaluated_is_reproduced(stack):
    cstub = stack["cstub"]
    # A decision time whose UTC date differs from its local date: re-evaluation must use the same calendar.
    response = await decide(cstub, datetime(2026, 2, 3, 1, 0, tzinfo=timezone(timedelta(hours=8))))
    explained = await cstub.ExplainDecision(cpb.ExplainDecisionRequest(name=response.decision))
    assert explained.reproduced is True
    assert not explained.HasField("difference")
    assert list(explained.recomputed) == list(explained.decision.candidates)
    assert explained.decision.name == response.decision


@pytest.mark.parametrize(("offer_id", "key", "field"), [
    ("card", "expected_value", "expected_value"),
    ("deposit", "propensity", "probability"),
    ("card", "rank", "rank"),
    # A denied offer turned ALLOW has no recorded model and terms to reproduce.
    ("fund", "verdict", "model_version"),
])
async def test_tampering_with_a_stored_term_is_detected(stack, offer_id, key, field):
    cstub = stack["cstub"]
    response = await decide(cstub)
    decision_id = response.decision.removeprefix("decisions/")

    def change(candidates, snapshot):
        candidate = next(x for x in candidates if x["offer_id"] == offer_id)
        old = candidate[key]
        candidate[key] = "ALLOW" if key == "verdict" else (old + 3 if key == "rank" else round(old + 0.25, 6))

    await tamper(stack, decision_id, change)
    explained = await cstub.ExplainDecision(cpb.ExplainDecisionRequest(name=response.decision))
    assert explained.reproduced is False
    assert (explained.difference.offer_id, explained.difference.field) == (offer_id, field)
    assert explained.difference.recorded != explained.difference.recomputed


async def test_tampering_with_the_snapshot_breaks_its_hash(stack):
    cstub = stack["cstub"]
    response = await decide(cstub)

    def change(candidates, snapshot):
        snapshot["attributes"] = {**snapshot["attributes"], "income": "90000"}

    await tamper(stack, response.decision.removeprefix("decisions/"), change)
    explained = await cstub.ExplainDecision(cpb.ExplainDecisionRequest(name=response.decision))
    assert explained.reproduced is False
    assert (explained.difference.offer_id, explained.difference.field) == ("", "snapshot_hash")


async def test_unknown_decision_is_not_found_and_bad_names_are_invalid(stack):
    cstub = stack["cstub"]
    for call in (cstub.GetDecision(cpb.GetDecisionRequest(name="decisions/0123abcd")),
                 cstub.ExplainDecision(cpb.ExplainDecisionRequest(name="decisions/0123abcd"))):
        await expect_error(call, grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    got = await expect_error(cstub.ExplainDecision(cpb.ExplainDecisionRequest(name="offers/x")),
                             grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
    assert got.field_violations[0][0] == "name"
    await expect_error(cstub.GetDecision(cpb.GetDecisionRequest()), grpc.StatusCode.INVALID_ARGUMENT,
                       "REQUIRED_FIELD_MISSING")


async def test_re_evaluation_uses_the_recorded_model_version_after_a_new_champion(stack, monkeypatch):
    monkeypatch.setattr(modeling, "ROUNDS", 30)
    rng = random.Random(5)
    examples = []
    for i in range(240):
        income = rng.choice([2000, 6000, 15000, 40000])
        segment = rng.choice(["mass", "affluent"])
        p = 0.05 + (0.4 if income >= 15000 else 0.0) + (0.2 if segment == "affluent" else 0.0)
        examples.append(modeling.Example(
            {"income": str(income), "segment": segment}, datetime(1960 + i % 40, 5, 1).date(), "CN-31",
            datetime(2025, 3, 1, tzinfo=UTC) + timedelta(days=i % 50), {}, True, rng.random() < p))
    trained = await asyncio.to_thread(modeling.train, examples, "propensity", 2)
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        session.add(ModelVersionRow(
            model_id="propensity-deposit", version=1, kind="propensity", offer_id="deposit",
            features=trained.spec.columns, metrics=modeling.metrics_to_json(trained.metrics), status="CHAMPION",
            algorithm=modeling.ALGORITHM, artifact=trained.to_artifact()))
        await session.commit()
    cstub = stack["cstub"]
    response = await decide(cstub, max_offers=3)
    record = (await cstub.GetDecision(cpb.GetDecisionRequest(name=response.decision))).decision
    deposit = next(x for x in record.candidates if x.offer_id == "deposit")
    assert deposit.model_version == "models/propensity-deposit/versions/1"
    assert "segment" in record.snapshot.attributes  # the model's attributes are in the snapshot
    # The champion is retired afterwards: the record still re-evaluates with the version it used.
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        await session.execute(update(ModelVersionRow).values(status="RETIRED"))
        await session.commit()
    explained = await cstub.ExplainDecision(cpb.ExplainDecisionRequest(name=response.decision))
    assert explained.reproduced is True, explained.difference
    # Gone from the registry: re-evaluation says so, naming the offer.
    async with stack["campaign"].runtime.database.sessionmaker() as session:
        row = await session.scalar(select(ModelVersionRow))
        await session.delete(row)
        await session.commit()
    explained = await cstub.ExplainDecision(cpb.ExplainDecisionRequest(name=response.decision))
    assert explained.reproduced is False
    assert (explained.difference.offer_id, explained.difference.field) == ("deposit", "model_version")


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def assert_no_personal_data(text):
    for secret in (CUSTOMER, BIRTH, "1985", "Wang", "wang.fang", "13800138000", "20000"):
        assert secret not in text


async def test_cli_explain_shows_the_decision_without_personal_data(stack):
    response = await decide(stack["cstub"])
    decision_id = response.decision.removeprefix("decisions/")
    code, out, err = await cli("explain", decision_id)
    assert code == 0, err
    assert f"customer {customer_token(CUSTOMER)}" in out
    assert "re-evaluated: same result" in out
    assert "heuristic-v1" in out and "fake-7" in out
    assert "UNSUITABLE, CONSENT_MISSING" in out
    card = next(o for o in response.offers if o.offer_id == "card")
    assert f"x 300.00 - 0.50 = {card.expected_value:.2f}" in out
    assert "action probability 1 " in out
    assert_no_personal_data(out + err)

    code, out, err = await cli("explain", f"decisions/{decision_id}", "--json")
    data = json.loads(out)
    assert code == 0 and data["reproduced"] is True
    assert data["decision"]["customer_token"] == customer_token(CUSTOMER)
    assert data["decision"]["snapshot"]["attributes"] == ["income", "risk_tolerance"]
    assert {x["offer_id"] for x in data["decision"]["candidates"]} == {"bond", "card", "deposit", "fund"}
    assert_no_personal_data(out + err)


async def test_cli_explain_reports_a_difference_and_not_found(stack):
    response = await decide(stack["cstub"])
    decision_id = response.decision.removeprefix("decisions/")

    def change(candidates, snapshot):
        next(x for x in candidates if x["offer_id"] == "card")["expected_value"] = 1e6

    await tamper(stack, decision_id, change)
    code, out, _ = await cli("explain", decision_id)
    assert code == 1
    assert "re-evaluated: DIFFERENT — offer card: expected_value recorded 1000000.0" in out
    code, out, err = await cli("explain", "0123abcd", "--json")
    assert code != 0 and "DECISION_NOT_FOUND" in out + err
