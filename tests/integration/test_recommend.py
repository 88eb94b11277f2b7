"""RecommendationService through real campaign and profile servers: training the recommender from profile's
holdings and spend, RecommendProducts with its evidence, churn training and scoring with tags written to
profile, and the errors of bad input."""

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select

from lodestar.campaign.v1 import recommendation_service_pb2 as pb
from lodestar.campaign.v1 import recommendation_service_pb2_grpc as pbg
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.profile.v1 import tag_service_pb2 as tpb
from lodestar.profile.v1 import tag_service_pb2_grpc as tpbg
from services.campaign import modeling
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.app import SERVICE_NAMES
from services.campaign.db import ChurnModelRow, CrossSellModelRow
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

N = 40
NOW = datetime.now(UTC)
CUTOFF = NOW - timedelta(days=60)


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def txn(event_id, customer_id, occurred, category):
    return epb.Event(event_id=event_id, customer_id=customer_id, occurred_at=ts(occurred),
                     transaction=epb.Transaction(amount="100.00", currency="CNY", merchant_category=category,
                                                 channel="pos"))


@pytest.fixture
async def env(start, monkeypatch):
    monkeypatch.setattr(modeling, "ROUNDS", 30)
    profile = await start(PROFILE)
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR="127.0.0.1:1")
    pch, cch = grpc.aio.insecure_channel(profile.address), grpc.aio.insecure_channel(campaign.address)
    customers, events = ppbg.ProfileServiceStub(pch), epbg.EventServiceStub(pch)
    batch = []
    for i in range(N):
        cid = f"r-{i:03d}"
        travel = i % 2 == 0
        customer = customer_pb2.Customer(customer_id=cid, region="CN-31")
        held = (["credit_card"] if travel and i % 8 else []) + (["deposit"] if not travel else [])
        if held:
            customer.attributes["products_held"].string_value = ",".join(held)
        await customers.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
        category = "travel" if travel else "groceries"
        # Before the cut-off: 1 transaction for those who will leave (i % 4 == 1 or 3), 3 for those who stay.
        leaves = i % 4 in (1, 3)
        for n in range(1 if leaves else 3):
            batch.append(txn(f"{cid}-b{n}", cid, CUTOFF - timedelta(days=5 + 10 * n), category))
        if not leaves:
            batch.append(txn(f"{cid}-a", cid, CUTOFF + timedelta(days=10), category))
    await events.IngestEvents(epb.IngestEventsRequest(events=batch))
    yield {"stub": pbg.RecommendationServiceStub(cch), "campaign": campaign, "profile": profile,
           "events": events}
    await pch.close()
    await cch.close()


async def count(svc, model):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def test_recommend_products_with_evidence_and_bad_input(env, span_exporter):
    stub = env["stub"]
    await expect_error(stub.RecommendProducts(pb.RecommendProductsRequest(customer_id="r-000")),
                       grpc.StatusCode.FAILED_PRECONDITION, "NO_RECOMMENDER")
    await expect_error(stub.TrainRecommender(pb.TrainRecommenderRequest(test_fraction=0.9)),
                       grpc.StatusCode.INVALID_ARGUMENT, "OUT_OF_RANGE")
    assert await count(env["campaign"], CrossSellModelRow) == 0
    trained = await stub.TrainRecommender(pb.TrainRecommenderRequest(min_support=0.05, test_fraction=0.25,
                                                                      request_id="train-1"))
    assert trained.name == "recommenders/1" and trained.metrics.k == 3
    assert trained.metrics.training_customers == 30 and trained.metrics.test_customers > 0
    assert trained.metrics.rules > 0 and trained.metrics.validation.startswith("hit-rate@3: one held product")
    assert 0 <= trained.metrics.popularity_hit_rate <= 1 and 0 <= trained.metrics.hit_rate <= 1
    again = await stub.TrainRecommender(pb.TrainRecommenderRequest(min_support=0.05, test_fraction=0.25,
                                                                    request_id="train-1"))
    assert again == trained and await count(env["campaign"], CrossSellModelRow) == 1  # replayed, not retrained

    # r-000 is a travel spender without a card (i % 8 == 0): the card comes first, with its rule.
    response = await stub.RecommendProducts(pb.RecommendProductsRequest(customer_id="r-000", k=2))
    assert response.recommender_version == "recommenders/1"
    top = response.recommendations[0]
    assert (top.product, top.rank) == ("credit_card", 1)
    assert list(top.rules[0].antecedent) == ["category:travel"] and top.rules[0].consequent == "product:credit_card"
    assert top.rules[0].confidence == pytest.approx(4 / 5, abs=0.15) and top.rules[0].lift > 1
    assert top.similar_items[0].item == "category:travel"
    assert [r.product for r in response.recommendations] != [] and len(response.recommendations) <= 2
    # The server span names the customer by its token only; profile's calls descend from it.
    spans = span_exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER
               and s.name == "/lodestar.campaign.v1.RecommendationService/RecommendProducts"]
    assert servers and all(s.attributes[ATTR_CUSTOMER_TOKEN] == customer_token("r-000") for s in servers)
    assert not any("r-000" in str(v) for s in spans for v in s.attributes.values())
    children = {s.name for s in spans if s.parent is not None and s.parent.span_id == servers[-1].context.span_id}
    assert children >= {"/lodestar.profile.v1.ProfileService/GetCustomer",
                        "/lodestar.profile.v1.EventService/GetFeatures"}

    missing = await expect_error(stub.RecommendProducts(pb.RecommendProductsRequest(customer_id="nobody")),
                                 grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    assert "nobody" not in missing.message
    await expect_error(stub.RecommendProducts(pb.RecommendProductsRequest(customer_id="r-000", k=21)),
                       grpc.StatusCode.INVALID_ARGUMENT, "OUT_OF_RANGE")
    await expect_error(stub.RecommendProducts(pb.RecommendProductsRequest(customer_id="")),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")


class FakeProfile(ppbg.ProfileServiceServicer, epbg.EventServiceServicer, tpbg.TagServiceServicer):
    """Profile as churn sees it. (A real profile counts only events *recorded* by as_of, so history ingested
    today cannot be used to test a cut-off in the past: docs/recommendations.md.)"""

    def __init__(self):
        self.tag_requests = []
        self.as_of = set()

    async def GetCustomer(self, request, context):
        cid = request.name.removeprefix("customers/")
        if cid not in IDS:
            await context.abort_with_status(rpc_status.to_status(status_pb2.Status(
                code=code_pb2.NOT_FOUND, message="customer not found", details=[_info("CUSTOMER_NOT_FOUND")])))
        return ppb.GetCustomerResponse(customer=customer_pb2.Customer(customer_id=cid))

    async def ListCustomers(self, request, context):
        return ppb.ListCustomersResponse(customers=[customer_pb2.Customer(customer_id=c) for c in IDS])

    async def GetFeatures(self, request, context):
        as_of = request.as_of.ToDatetime(tzinfo=UTC) if request.HasField("as_of") else None
        self.as_of.add(as_of)
        i = int(request.customer_id.split("-")[1])
        leaves = i % 4 in (1, 3)
        if as_of == CUTOFF:
            features = {"recency_days": 5.0, "frequency_90d": 1.0 if leaves else 3.0 + i % 3}
        elif as_of == CUTOFF + timedelta(days=30):
            features = {"recency_days": 35.0} if leaves else {"recency_days": 20.0}
        else:
            features = {"recency_days": 3.0, "frequency_90d": 1.0 if leaves else 4.0}
        return epb.GetFeaturesResponse(customer_id=request.customer_id, features=features)

    async def SetCustomerTags(self, request, context):
        self.tag_requests.append(request)
        return tpb.SetCustomerTagsResponse(customers=len(request.items),
                                           tags=sum(len(i.tags) for i in request.items))


IDS = [f"r-{i:03d}" for i in range(N)]


def _info(reason):
    packed = any_pb2.Any()
    packed.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="profile"))
    return packed


async def test_churn_train_score_and_tags_written_to_profile(start, monkeypatch):
    monkeypatch.setattr(modeling, "ROUNDS", 30)
    monkeypatch.setitem(modeling.PARAMS, "min_child_samples", 5)  # 40 customers: let the trees split
    fake = FakeProfile()
    server = grpc.aio.server()
    ppbg.add_ProfileServiceServicer_to_server(fake, server)
    epbg.add_EventServiceServicer_to_server(fake, server)
    tpbg.add_TagServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=f"127.0.0.1:{port}", RISK_SERVICE_ADDR="127.0.0.1:1")
    channel = grpc.aio.insecure_channel(campaign.address)
    stub = pbg.RecommendationServiceStub(channel)
    try:
        await expect_error(stub.TrainChurnModel(pb.TrainChurnModelRequest(
            cutoff_time=ts(NOW - timedelta(days=10)), horizon_days=30)),
            grpc.StatusCode.INVALID_ARGUMENT, "CUTOFF_TOO_RECENT")
        await expect_error(stub.TrainChurnModel(pb.TrainChurnModelRequest(horizon_days=30)),
                           grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
        await expect_error(stub.TrainChurnModel(pb.TrainChurnModelRequest(cutoff_time=ts(CUTOFF), horizon_days=400)),
                           grpc.StatusCode.INVALID_ARGUMENT, "OUT_OF_RANGE")
        await expect_error(stub.ScoreChurn(pb.ScoreChurnRequest()), grpc.StatusCode.FAILED_PRECONDITION,
                           "NO_CHURN_MODEL")
        assert await count(campaign, ChurnModelRow) == 0
        model = await stub.TrainChurnModel(pb.TrainChurnModelRequest(cutoff_time=ts(CUTOFF), horizon_days=30,
                                                                     folds=2))
        assert model.name == "churnModels/1" and model.horizon_days == 30
        assert model.cutoff_time.ToDatetime(tzinfo=UTC) == CUTOFF.replace(microsecond=CUTOFF.microsecond)
        assert model.metrics.training_rows == N and model.metrics.positive_rate == pytest.approx(0.5)
        assert model.metrics.folds == 2 and list(model.features) == ["frequency_90d", "recency_days"]
        assert fake.as_of == {CUTOFF, CUTOFF + timedelta(days=30)}  # point in time: nothing later
        # The shared model registry lists it like any other model, as model "churn", and can promote it.
        from lodestar.campaign.v1 import campaign_service_pb2 as cpb
        from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
        from lodestar.campaign.v1 import model_pb2

        registry = cpbg.CampaignServiceStub(channel)
        [listed] = (await registry.ListModelVersions(cpb.ListModelVersionsRequest(model_id="churn"))).model_versions
        assert (listed.name, listed.kind, listed.status) == ("models/churn/versions/1", model_pb2.MODEL_KIND_CHURN,
                                                            model_pb2.MODEL_STATUS_CHALLENGER)
        assert listed.metrics.auc == pytest.approx(model.metrics.auc) and list(listed.features) == list(model.features)
        await expect_error(registry.TrainModel(cpb.TrainModelRequest(kind=model_pb2.MODEL_KIND_CHURN, offer_id="x")),
                           grpc.StatusCode.INVALID_ARGUMENT, "TRAINED_ELSEWHERE")
        second = await stub.TrainChurnModel(pb.TrainChurnModelRequest(cutoff_time=ts(CUTOFF), horizon_days=30,
                                                                      folds=2, request_id="churn-2"))
        assert second.name == "churnModels/2"
        await registry.PromoteModelVersion(cpb.PromoteModelVersionRequest(name="models/churn/versions/1"))
        assert (await stub.ScoreChurn(pb.ScoreChurnRequest(customer_ids=["r-001"]))).model == "churnModels/1"

        await expect_error(stub.ScoreChurn(pb.ScoreChurnRequest(customer_ids=["r-001", "nobody"], write_tags=True)),
                           grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
        await expect_error(stub.ScoreChurn(pb.ScoreChurnRequest(model="churnModels/x")),
                           grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
        assert fake.tag_requests == []
        scored = await stub.ScoreChurn(pb.ScoreChurnRequest(write_tags=True))
        assert scored.model == "churnModels/1" and len(scored.scores) == N
        assert scored.low + scored.medium + scored.high == N and scored.tags_written == N
        by_id = {s.customer_id: s.risk for s in scored.scores}
        assert by_id["r-001"] == "high" and by_id["r-000"] == "low"  # leavers and stayers are told apart
        [request] = fake.tag_requests
        assert request.source == "campaign" and request.request_id.startswith("campaign-tags-")
        assert {i.customer_id: dict(i.tags) for i in request.items} == {
            s.customer_id: {"churn_risk": s.risk} for s in scored.scores}
    finally:
        await channel.close()
        await server.stop(0)


def test_the_new_services_are_listed_for_health_and_reflection():
    assert {"lodestar.campaign.v1.RecommendationService", "lodestar.campaign.v1.PricingService"} <= set(
        SERVICE_NAMES)
