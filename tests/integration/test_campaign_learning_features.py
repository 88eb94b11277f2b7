"""Behaviour features in the models, point in time, through real campaign and profile servers: training joins each
history row's features as of its contact time (nothing recorded or happened after it leaks in), the model keeps
`feature.*` columns only when they carry something, and Decide, ScoreCustomers and ExplainDecision score with the
features as of their own time."""

import random
from datetime import UTC, timedelta

import pytest
from google.protobuf import timestamp_pb2

from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.campaign.v1 import history_pb2, model_pb2, offer_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from services.campaign import modeling
from services.platform.db import utcnow
from tests.integration.test_campaign_learning import profile_and_campaign  # noqa: F401 - the fixture

N = 240
NOW = utcnow()
INGESTED = NOW - timedelta(days=40)  # profile's clock when the behaviour before the campaign was ingested
START = NOW - timedelta(days=30)  # the first contact; one a minute after it
TRAVELLERS = {f"f-{i:04d}" for i in range(0, N, 2)}


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def contact_of(i):
    return START + timedelta(minutes=i)


def spend(event_id, customer_id, occurred, amount, category):
    return epb.Event(event_id=event_id, customer_id=customer_id, occurred_at=ts(occurred),
                     transaction=epb.Transaction(amount=amount, currency="CNY", merchant_category=category,
                                                 channel="online"))


async def ingest_at(profile, stub, recorded_at, events):
    """IngestEvents with profile's clock (which sets recorded_at) reading `recorded_at`."""
    service = profile.runtime.components["events"]
    service.clock = lambda: recorded_at
    try:
        for start in range(0, len(events), 1000):
            await stub.IngestEvents(epb.IngestEventsRequest(events=events[start:start + 1000]))
    finally:
        service.clock = utcnow


@pytest.fixture
async def env(profile_and_campaign):  # noqa: F811 - the fixture imported above
    profile, campaign, pch, cch = profile_and_campaign
    stub, events = pbg.CampaignServiceStub(cch), epbg.EventServiceStub(pch)
    customers = ppbg.ProfileServiceStub(pch)
    rng = random.Random(5)
    records, before, leaks = [], [], []
    for i in range(N):
        cid = f"f-{i:04d}"
        # Every attribute alike: whatever the model learns, it learns from behaviour.
        customer = customer_pb2.Customer(customer_id=cid, birth_date="1985-01-15", region="CN-31",
                                         time_zone="Asia/Shanghai")
        customer.attributes["segment"].string_value = "mass"
        await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
        if cid in TRAVELLERS:  # travel spend, known well before the contact
            before.append(spend(f"{cid}-t", cid, INGESTED - timedelta(days=5), "4000", "travel"))
        converted = rng.random() < (0.75 if cid in TRAVELLERS else 0.06)
        if converted:
            # After the contact, the converters spend on the new product (happened after: must not leak) ...
            leaks.append(spend(f"{cid}-after", cid, contact_of(i) + timedelta(days=1), "9000", "deposit_fee"))
            # ... and a branch reports a purchase from before the contact only now (recorded after: must not leak).
            leaks.append(spend(f"{cid}-late", cid, contact_of(i) - timedelta(hours=1), "700", "late_report"))
        records.append(history_pb2.HistoryRecord(
            customer_id=cid, campaign_ref="autumn", offer_id="deposit", arm="a", treated=True,
            contact_time=ts(contact_of(i)), channel=c.CHANNEL_SMS, converted=converted, row_number=i + 1))
    await ingest_at(profile, events, INGESTED, before)
    await events.IngestEvents(epb.IngestEventsRequest(events=leaks))  # recorded now, after every contact
    await stub.CreateOffer(pb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="deposit", title="Deposit", product_type=c.PRODUCT_TYPE_DEPOSIT, risk_level=c.PRODUCT_RISK_LEVEL_R1,
        conversion_value=50)))

    async def batches():
        for start in range(0, N, 100):
            yield pb.ImportCampaignHistoryRequest(records=records[start:start + 100], request_id=f"h-{start}")

    await stub.ImportCampaignHistory(batches())
    return {"campaign": campaign, "profile": profile, "stub": stub, "events": events, "records": records}


async def test_training_rows_get_their_features_as_of_their_contact_time(env, monkeypatch):
    seen = {}
    train = modeling.train

    def spy(examples, kind="propensity", folds=5, seed=7):
        seen["examples"] = list(examples)
        return train(examples, kind, folds, seed)

    monkeypatch.setattr(modeling, "train", spy)
    trained = (await env["stub"].TrainModel(pb.TrainModelRequest(
        kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="deposit", folds=3))).model_version
    by_customer = {r.customer_id: r for r in env["records"]}
    examples = seen["examples"]
    assert len(examples) == N
    for example, record in zip(examples, env["records"], strict=True):  # history order
        assert example.contact_time == record.contact_time.ToDatetime(tzinfo=UTC)
        cid = record.customer_id
        travelled = cid in TRAVELLERS
        assert example.features["monetary_365d"] == (4000.0 if travelled else 0.0), cid
        # Neither the spend after the contact nor the one reported after it is in the row.
        assert "spend_category_deposit_fee_30d" not in example.features
        assert "spend_category_late_report_30d" not in example.features
        assert example.features.get("recency_days") == (15.0 if travelled else None), cid  # 45 - 30 days
        assert by_customer[cid].converted == example.converted
    columns = set(trained.features)
    assert {"feature.monetary_365d", "feature.spend_category_travel_365d"} <= columns
    assert not any("deposit_fee" in name or "late_report" in name for name in columns)
    # Features equal on every row (no digital activity, no repayments) are not columns.
    assert "feature.digital_login_count_30d" not in columns and "feature.repayment_count_365d" not in columns
    assert trained.metrics.auc > 0.75  # behaviour is the only signal


async def test_decide_score_customers_and_explain_use_the_features_as_of_their_own_time(env):
    stub = env["stub"]
    trained = (await stub.TrainModel(pb.TrainModelRequest(
        kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="deposit", folds=3))).model_version
    await stub.PromoteModelVersion(pb.PromoteModelVersionRequest(name=trained.name))
    traveller, homebody = "f-0000", "f-0001"
    scored = await stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                                customer_ids=[traveller, homebody]))
    high, low = (s.score for s in scored.scores)
    assert high > low + 0.3
    decided = await stub.Decide(pb.DecideRequest(customer_id=traveller))
    assert decided.model_version == trained.name
    assert decided.offers[0].propensity == pytest.approx(high, abs=1e-6)
    record = (await stub.ExplainDecision(pb.ExplainDecisionRequest(name=decided.decision)))
    assert record.reproduced
    snapshot = record.decision.snapshot
    converted = next(r.converted for r in env["records"] if r.customer_id == traveller)
    # as of now: the spend after the contact is known now, and counts (a decision now may see it)
    assert snapshot.features["monetary_365d"] == 4000.0 + (9700.0 if converted else 0.0)
    assert snapshot.features["spend_category_travel_365d"] == 4000.0
    assert set(snapshot.features) <= {c.removeprefix("feature.") for c in trained.features}
    # The homebody books a trip now: scoring sees it at once (features as of now, not as of training).
    await env["events"].IngestEvents(epb.IngestEventsRequest(events=[
        spend("f-0001-trip", homebody, utcnow() - timedelta(hours=2), "4000", "travel")]))
    rescored = await stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                                  customer_ids=[homebody]))
    assert rescored.scores[0].score > low + 0.3
    now_decided = await stub.Decide(pb.DecideRequest(customer_id=homebody))
    assert now_decided.offers[0].propensity == pytest.approx(rescored.scores[0].score, abs=1e-6)
    # A decision as of a time before the trip was known scores the homebody as before.
    past = pb.DecideRequest(customer_id=homebody)
    past.context.decision_time.CopyFrom(ts(NOW - timedelta(days=1)))
    then = await stub.Decide(past)
    assert then.offers[0].propensity == pytest.approx(low, abs=0.05)
    explained = await stub.ExplainDecision(pb.ExplainDecisionRequest(name=then.decision))
    assert explained.reproduced and "spend_category_travel_365d" not in explained.decision.snapshot.features


async def test_a_model_without_feature_columns_never_asks_profile_for_features(env, monkeypatch):
    profile_events = env["profile"].runtime.components["events"]
    calls = []
    original = profile_events.features_at

    async def counting(points):
        calls.append(len(points))
        return await original(points)

    monkeypatch.setattr(profile_events, "features_at", counting)
    # Forget the behaviour: a model trained with the features left out of every row has none to ask for.
    learning = env["campaign"].runtime.components["learning"]
    monkeypatch.setattr(learning, "features", None)
    trained = (await env["stub"].TrainModel(pb.TrainModelRequest(
        kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="deposit", folds=3))).model_version
    assert not any(name.startswith("feature.") for name in trained.features)
    await env["stub"].PromoteModelVersion(pb.PromoteModelVersionRequest(name=trained.name))
    await env["stub"].Decide(pb.DecideRequest(customer_id="f-0000"))
    await env["stub"].ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                              customer_ids=["f-0000"]))
    assert calls == []
    await env["events"].BatchGetFeatures(epb.BatchGetFeaturesRequest(points=[epb.FeaturePoint(customer_id="f-0000")]))
    assert calls == [1]  # the spy sees what profile is asked


async def test_a_batch_launch_scores_with_the_features_as_of_its_as_of_and_records_them(env):
    from services.campaign.db import CampaignUnitOfWork
    from services.campaign.domain import Offer
    from services.campaign.launch import LaunchService
    from tests.integration.test_campaign_launch import FakeAudience, FakeRisk, add_campaign

    stub, runtime = env["stub"], env["campaign"].runtime
    trained = (await stub.TrainModel(pb.TrainModelRequest(
        kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="deposit", folds=3))).model_version
    await stub.PromoteModelVersion(pb.PromoteModelVersionRequest(name=trained.name))
    traveller, homebody = "f-0000", "f-0001"
    members = {cid: {"segment": "mass", "region": "CN-31", "time_zone": "Asia/Shanghai", "age": 41}
               for cid in (traveller, homebody, "f-0002", "f-0003")}
    deposit = Offer("deposit", "Deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 50.0, 0.0)
    await add_campaign(env["campaign"], offers=(deposit,))
    launches = LaunchService(lambda: CampaignUnitOfWork(runtime.database), FakeAudience(members), FakeRisk(),
                             champions=runtime.components["learning"], worker_id="w1", partition_size=2,
                             features=runtime.components["launches"].features)
    launched = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    scored = await stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                                customer_ids=[traveller, homebody]))
    expected = {s.customer_id: s.score for s in scored.scores}
    assert expected[traveller] > expected[homebody] + 0.3  # the behaviour is what the model reads
    for customer in (traveller, homebody):
        name = f"decisions/{launched.launch_id}:{customer}"
        record = (await stub.GetDecision(pb.GetDecisionRequest(name=name))).decision
        [candidate] = record.candidates
        assert candidate.model_version == trained.name
        assert candidate.probability == pytest.approx(expected[customer], abs=1e-6)
        assert record.snapshot.features["spend_category_travel_365d"] == (4000.0 if customer == traveller else 0.0)
        assert set(record.snapshot.features) <= {c.removeprefix("feature.") for c in trained.features}
        explained = await stub.ExplainDecision(pb.ExplainDecisionRequest(name=name))
        assert explained.reproduced, explained.difference
