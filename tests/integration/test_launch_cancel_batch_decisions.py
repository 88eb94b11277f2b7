"""Decision records of a batch launch: every member's decision (candidates with value terms, model versions,
verdicts with reason codes, the snapshot hash, the group's probability, the allocation outcome), read as
decisions/{launch}:{customer} through GetDecision, ExplainDecision and `lodestar explain`. Risk is a fake gRPC
server answering ScreenBatch with reason codes, reached through the real client."""

import asyncio
import io
import json
from datetime import UTC

import grpc
import pytest
from sqlalchemy import select

from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2 as c
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from services.campaign.app import DEFINITION
from services.campaign.clients import RiskClient
from services.campaign.db import CampaignUnitOfWork, OutboxRow
from services.campaign.domain import CustomerSnapshot
from services.campaign.launch import LaunchService
from services.campaign.scoring import HeuristicPropensityModel
from services.campaign.service import birth_date_for_age, snapshot_hash
from tests.helpers import expect_error
from tests.integration.test_campaign_launch import CARD, DEPOSIT, FakeAudience, add_campaign, members


class ReasonedRisk(rpbg.RiskServiceServicer):
    """The card is UNSUITABLE (and AGE_UNKNOWN without an age) for odd customers; everything else allowed."""

    holds: dict = {}  # customer id -> hold reasons (a test sets it)

    async def ScreenBatch(self, request_iterator, context):
        async for request in request_iterator:
            results = []
            for item in request.items:
                verdicts = []
                for offer in request.offers:
                    odd = int(item.customer_id[1:]) % 2 == 1
                    if item.customer_id in self.holds:  # a hold for the reasons given
                        verdicts.append(spb.OfferVerdict(offer_id=offer.offer_id, verdict=spb.VERDICT_HOLD,
                                                         reasons=self.holds[item.customer_id]))
                    elif offer.offer_id == "card" and odd:
                        reasons = [spb.REASON_CODE_UNSUITABLE] + ([] if item.facts.birth_date
                                                                    else [spb.REASON_CODE_AGE_UNKNOWN])
                        verdicts.append(spb.OfferVerdict(offer_id=offer.offer_id, verdict=spb.VERDICT_DENY,
                                                         reasons=reasons))
                    else:
                        verdicts.append(spb.OfferVerdict(offer_id=offer.offer_id, verdict=spb.VERDICT_ALLOW))
                results.append(spb.CustomerVerdicts(customer_id=item.customer_id, verdicts=verdicts))
            yield spb.ScreenBatchResponse(batch_id=request.batch_id, results=results, policy_version="fake-7")


@pytest.fixture
async def env(start):
    server = grpc.aio.server()
    fake = ReasonedRisk()
    rpbg.add_RiskServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    svc = await start(DEFINITION, RISK_SERVICE_ADDR=f"127.0.0.1:{port}", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                      CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                      CAMPAIGN_TRIGGER_POLL_SECONDS="3600")
    risk = RiskClient(f"127.0.0.1:{port}", default_timeout=5.0)
    channel = grpc.aio.insecure_channel(svc.address)
    ReasonedRisk.holds = {}
    yield svc, risk, pbg.CampaignServiceStub(channel)
    await channel.close()
    await risk.close()
    await server.stop(0)


async def test_every_member_has_a_readable_explainable_decision(env, monkeypatch):
    svc, risk, stub = env
    people = members(6)
    for i, cid in enumerate(people):
        people[cid]["age"] = 30 + i
    await add_campaign(svc, control=0.3, arms=(("a", 0.7),), offers=(DEPOSIT, CARD),
                       capacities={c.CHANNEL_SMS: 2})
    launches = LaunchService(lambda: CampaignUnitOfWork(svc.runtime.database), FakeAudience(people), risk,
                             worker_id="w1", partition_size=4)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    view = await launches.get(launched.launch_id)
    assert view.state == "DONE"
    outbox = {o.customer_id: o for o in await _rows(svc)}
    assert len(outbox) == 2  # SMS capacity 2

    async def record(customer):
        name = f"decisions/{launched.launch_id}:{customer}"
        return (await stub.GetDecision(pb.GetDecisionRequest(name=name))).decision

    # An allocated customer: rank 1 on the option in the outbox, its value terms, the snapshot's hash.
    chosen_id = sorted(outbox)[0]
    got = await record(chosen_id)
    assert got.context.placement == f"launch:{launched.launch_id} ALLOCATED"
    top = [cand for cand in got.candidates if cand.rank == 1]
    assert len(top) == 1 and top[0].offer_id == outbox[chosen_id].offer_id
    assert top[0].expected_value == pytest.approx(outbox[chosen_id].expected_value, abs=1e-6)
    assert got.policy_version == "fake-7" and got.model_version == "heuristic-v1"
    assert got.snapshot.age == people[chosen_id]["age"] and got.snapshot.region == "CN-31"
    assert set(got.snapshot.attributes.keys()) == {"income", "risk_tolerance"}
    snapshot = {"attributes": {"income": people[chosen_id]["income"],
                               "risk_tolerance": people[chosen_id]["risk_tolerance"]},
                "region": "CN-31", "time_zone": "Asia/Shanghai", "age": people[chosen_id]["age"],
                "decision_time": got.context.decision_time.ToDatetime(tzinfo=UTC).isoformat()}
    assert got.snapshot_hash == snapshot_hash(snapshot)
    assert got.action_probability == pytest.approx(0.7)  # the arm's share (fixed shares)
    assert got.customer_token.startswith("cust_") and str(got).count(chosen_id) == 1  # only in its name
    # Its probability is the heuristic's, with the age term, for this customer.
    model = HeuristicPropensityModel()
    customer = CustomerSnapshot("", birth_date_for_age(people[chosen_id]["age"], view.as_of.date()), "CN-31",
                                "Asia/Shanghai", snapshot["attributes"])
    deposit = next(cand for cand in got.candidates if cand.offer_id == "dep")
    assert deposit.probability == pytest.approx(model.score(customer, DEPOSIT, view.as_of.date()), abs=1e-6)

    # Every member has a record: control ones with their share, denied options with their reasons.
    outcomes = {}
    for cid in people:
        rec = await record(cid)
        outcomes[cid] = rec.context.placement.split(" ", 1)[1]
        card = next(cand for cand in rec.candidates if cand.offer_id == "card")
        if int(cid[1:]) % 2:
            assert (card.verdict, list(card.risk_reasons)) == ("DENY", ["UNSUITABLE"])  # the age reached risk
        else:
            assert card.verdict == "ALLOW"
        if outcomes[cid] == "CONTROL":
            assert rec.action_probability == pytest.approx(0.3) and all(x.rank == 0 for x in rec.candidates)
    assert sorted(k for k, v in outcomes.items() if v == "ALLOCATED") == sorted(outbox)
    assert set(outcomes.values()) <= {"ALLOCATED", "CONTROL", "CAPACITY:CHANNEL_SMS", "OUTRANKED"}

    explained = await stub.ExplainDecision(pb.ExplainDecisionRequest(name=f"decisions/{launched.launch_id}:"
                                                                          f"{chosen_id}"))
    assert explained.reproduced and len(explained.recomputed) == 2

    # Unknown customer or launch: NOT_FOUND; a malformed id: INVALID_ARGUMENT.
    await expect_error(stub.GetDecision(pb.GetDecisionRequest(name=f"decisions/{launched.launch_id}:c99999")),
                       grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    await expect_error(stub.GetDecision(pb.GetDecisionRequest(name="decisions/0123abc:c00001")),
                       grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    await expect_error(stub.GetDecision(pb.GetDecisionRequest(name="decisions/x-y:c00001")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")

    # `lodestar explain` shows it.
    from lodestar_cli.main import run

    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", svc.address)
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, ["explain", f"{launched.launch_id}:{chosen_id}"], out, err)
    assert code == 0 and "re-evaluated: same result" in out.getvalue() and "ALLOCATED" in out.getvalue()
    out = io.StringIO()
    code = await asyncio.to_thread(run, ["--json", "explain", f"{launched.launch_id}:{chosen_id}"], out, err)
    assert code == 0 and json.loads(out.getvalue())["reproduced"] is True


async def _rows(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(OutboxRow)))


async def test_erasure_pseudonymises_a_customer_s_batch_decision_records(env):
    from lodestar.common.v1 import data_subject_pb2
    from services.campaign.batch_decisions import erase_customer, unpack
    from services.campaign.data_subject import CampaignDataSubject
    from services.campaign.db import BatchDecisionRow

    svc, risk, stub = env
    await add_campaign(svc, control=0.0, arms=(("a", 1.0),))
    launches = LaunchService(lambda: CampaignUnitOfWork(svc.runtime.database), FakeAudience(members(4)), risk,
                             worker_id="w1", partition_size=2)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        # Its partition's records; the allocation's document holds positions, never ids, so nothing changes there.
        assert await erase_customer(uow, "c00002", "erased-7f") == 1
        await uow.commit()
    # The data-subject erasure path does the same and says so in its receipt. c00003 shares its partition with
    # c00002, whose erasure moved that partition's lower bound: the range must still find c00003 (a bound set to
    # the random pseudonym would sort after it and hide its records from this erasure).
    async with svc.runtime.database.sessionmaker() as session:
        holding = [(r.number, r.first_id, r.last_id) for r in await session.scalars(select(BatchDecisionRow))
                   if "c00003" in unpack(r.records)["ids"]]
    assert [(n, first, last) for n, first, last in holding if n] == [(2, "c00003", "c00003")]
    receipt = await CampaignDataSubject(svc.runtime.database).erase(
        data_subject_pb2.EraseCustomerDataRequest(customer_id="c00003", request_id="dsr-1"))
    [batch] = [t for t in receipt.tables if t.table == "campaign_batch_decisions"]
    assert batch.rows_pseudonymised == len(holding) == 1  # its partition
    async with svc.runtime.database.sessionmaker() as session:
        emptied = await session.get(BatchDecisionRow, (launched.launch_id, 2))
        assert (emptied.first_id, emptied.last_id) == ("", "")  # no real id left in it
    await expect_error(stub.GetDecision(pb.GetDecisionRequest(name=f"decisions/{launched.launch_id}:c00003")),
                       grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    await expect_error(stub.GetDecision(pb.GetDecisionRequest(name=f"decisions/{launched.launch_id}:c00002")),
                       grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    kept = (await stub.GetDecision(pb.GetDecisionRequest(
        name=f"decisions/{launched.launch_id}:erased-7f"))).decision
    assert dict(kept.snapshot.attributes) == {} and kept.snapshot.region == "" and kept.snapshot_hash
    assert kept.context.placement.endswith("ALLOCATED")


async def test_a_quiet_hours_hold_is_selected_for_deferred_delivery_other_holds_are_not(env):
    """Launched at night, a customer in quiet hours is still selected (the dispatcher defers the message to their
    morning); an unknown time zone or a frequency cap keeps them out."""
    svc, risk, stub = env
    ReasonedRisk.holds = {"c00000": [spb.REASON_CODE_QUIET_HOURS],
                          "c00001": [spb.REASON_CODE_TIMEZONE_UNKNOWN],
                          "c00002": [spb.REASON_CODE_QUIET_HOURS, spb.REASON_CODE_FREQUENCY_CAP]}
    await add_campaign(svc, control=0.0, arms=(("a", 1.0),))
    launches = LaunchService(lambda: CampaignUnitOfWork(svc.runtime.database), FakeAudience(members(4)), risk,
                             worker_id="w1", partition_size=4)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    assert sorted(o.customer_id for o in await _rows(svc)) == ["c00000", "c00003"]
    held = (await stub.GetDecision(pb.GetDecisionRequest(name=f"decisions/{launched.launch_id}:c00000"))).decision
    assert held.context.placement.endswith("ALLOCATED")
    [deposit] = held.candidates
    assert (deposit.verdict, list(deposit.risk_reasons)) == ("HOLD", ["QUIET_HOURS"]) and deposit.expected_value
    out = (await stub.GetDecision(pb.GetDecisionRequest(name=f"decisions/{launched.launch_id}:c00001"))).decision
    assert out.context.placement.endswith("INELIGIBLE")
    explained = await stub.ExplainDecision(pb.ExplainDecisionRequest(name=f"decisions/{launched.launch_id}:c00000"))
    assert explained.reproduced
