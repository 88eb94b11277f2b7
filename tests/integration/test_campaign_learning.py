"""History import, model training, the registry and scoring, through real campaign and profile servers."""

import random
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf import timestamp_pb2
from sqlalchemy import func, select

from lodestar.campaign.v1 import campaign_service_pb2 as pb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as pbg
from lodestar.campaign.v1 import history_pb2, model_pb2, offer_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from services.campaign import modeling
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import HistoryRow
from services.profile.app import DEFINITION as PROFILE
from tests.helpers import expect_error

N = 300
START = datetime(2025, 3, 1, 9, tzinfo=UTC)


def ts(dt):
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(dt)
    return out


def synthetic_bank(seed=3):
    """Customers whose conversion depends on income and segment, and whose treated uplift depends on age."""
    rng = random.Random(seed)
    customers, records = [], []
    for i in range(N):
        income = rng.choice([2000, 6000, 15000, 40000])
        segment = rng.choice(["mass", "affluent", "young"])
        age = rng.randint(20, 70)
        customer = customer_pb2.Customer(customer_id=f"h-{i:04d}", birth_date=f"{2025 - age}-01-15", region="CN-31")
        customer.attributes["income"].decimal_value = str(income)
        customer.attributes["segment"].string_value = segment
        customers.append(customer)
        treated = rng.random() < 0.7
        p = 0.05 + (0.35 if income >= 15000 else 0.0) + (0.2 if segment == "affluent" else 0.0)
        p += 0.15 if treated and age < 40 else 0.0
        records.append(history_pb2.HistoryRecord(
            customer_id=customer.customer_id, campaign_ref="spring-2025", offer_id="deposit",
            arm="a" if treated else "control", treated=treated, contact_time=ts(START + timedelta(days=i % 60)),
            channel=c.CHANNEL_SMS, converted=rng.random() < p, context={"previous": str(rng.randint(0, 3))},
            row_number=i + 1))
    return customers, records


class AllowAll(rpbg.RiskServiceServicer):
    async def Screen(self, request, context):
        return spb.ScreenResponse(policy_version="allow-all", verdicts=[
            spb.OfferVerdict(offer_id=o.offer_id, verdict=spb.VERDICT_ALLOW) for o in request.offers])


@pytest.fixture
async def profile_and_campaign(start, monkeypatch):
    """Profile and campaign servers on fresh databases, risk a fake allowing everything, and a channel to each of
    profile and campaign. Models train with 60 rounds: small data, fewer rounds keep the tests quick."""
    monkeypatch.setattr(modeling, "ROUNDS", 60)
    profile = await start(PROFILE)
    risk = grpc.aio.server()
    rpbg.add_RiskServiceServicer_to_server(AllowAll(), risk)
    risk_port = risk.add_insecure_port("127.0.0.1:0")
    await risk.start()
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR=f"127.0.0.1:{risk_port}")
    pch, cch = grpc.aio.insecure_channel(profile.address), grpc.aio.insecure_channel(campaign.address)
    yield profile, campaign, pch, cch
    await pch.close()
    await cch.close()
    await risk.stop(0)


@pytest.fixture
async def env(profile_and_campaign):
    _, campaign, pch, cch = profile_and_campaign
    stub = pbg.CampaignServiceStub(cch)
    customers, records = synthetic_bank()
    pstub = ppbg.ProfileServiceStub(pch)
    for customer in customers:
        await pstub.CreateCustomer(ppb.CreateCustomerRequest(customer=customer))
    await stub.CreateOffer(pb.CreateOfferRequest(offer=offer_pb2.Offer(
        offer_id="deposit", title="Deposit", product_type=c.PRODUCT_TYPE_DEPOSIT, risk_level=c.PRODUCT_RISK_LEVEL_R1,
        conversion_value=50)))
    return {"campaign": campaign, "stub": stub, "records": records}


async def import_history(stub, records, batch=100, prefix="b"):
    async def batches():
        for i in range(0, len(records), batch):
            yield pb.ImportCampaignHistoryRequest(records=records[i:i + batch], request_id=f"{prefix}-{i}")

    return await stub.ImportCampaignHistory(batches())


async def history_rows(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(HistoryRow))


async def test_history_import_reports_bad_rows_and_never_duplicates(env):
    stub, records = env["stub"], list(env["records"])
    bad = [history_pb2.HistoryRecord(customer_id="", campaign_ref="x", offer_id="deposit", contact_time=ts(START),
                                     row_number=9001),
           history_pb2.HistoryRecord(customer_id="h-1", campaign_ref="x", offer_id="deposit", row_number=9002),
           history_pb2.HistoryRecord(customer_id="h-1", campaign_ref="x", offer_id="deposit", contact_time=ts(START),
                                     revenue=-5, channel=99, row_number=9003)]
    first = await import_history(stub, records + bad)
    assert (first.imported, first.failed, first.duplicates) == (N, 3, 0)
    assert [(e.row_number, e.field, e.reason) for e in first.errors] == [
        (9001, "customer_id", "REQUIRED_FIELD_MISSING"), (9002, "contact_time", "REQUIRED_FIELD_MISSING"),
        (9003, "channel", "UNKNOWN_ENUM_VALUE"), (9003, "revenue", "OUT_OF_RANGE")]
    # The same file again under other request ids: nothing new.
    again = await import_history(stub, records, prefix="again")
    assert (again.imported, again.duplicates) == (0, N)
    # A retried batch (same request id) replays its answer.
    replay = await import_history(stub, records[:100], prefix="b")
    assert (replay.imported, replay.duplicates) == (100, 0)
    assert await history_rows(env["campaign"]) == N


async def test_train_promote_and_score_a_propensity_model(env):
    stub = env["stub"]
    await import_history(stub, env["records"])
    trained = (await stub.TrainModel(pb.TrainModelRequest(kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="deposit",
                                                          folds=3))).model_version
    assert trained.name == "models/propensity-deposit/versions/1"
    assert trained.status == model_pb2.MODEL_STATUS_CHALLENGER
    m = trained.metrics
    assert m.folds == 3 and m.validation.startswith("3-fold") and 0.65 < m.auc <= 1.0  # income is a strong signal
    assert m.training_rows == sum(r.treated for r in env["records"])
    assert len(m.lift_by_decile) == 10 and len(m.calibration) == 10
    assert sum(m.lift_by_decile[:3]) > 1.5 * sum(m.lift_by_decile[-3:])  # the best-scored convert far more
    assert {"attr.income", "attr.segment", "age", "contact.month", "context.previous"} <= set(trained.features)
    await expect_error(stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                                    customer_ids=["h-0001"])),
                       grpc.StatusCode.FAILED_PRECONDITION, "NO_CHAMPION")
    second = (await stub.TrainModel(pb.TrainModelRequest(kind=model_pb2.MODEL_KIND_PROPENSITY,
                                                         offer_id="deposit", folds=3))).model_version
    assert second.version == 2
    await stub.PromoteModelVersion(pb.PromoteModelVersionRequest(name=trained.name))
    promoted = (await stub.PromoteModelVersion(pb.PromoteModelVersionRequest(name=second.name))).model_version
    assert promoted.status == model_pb2.MODEL_STATUS_CHAMPION
    listed = await stub.ListModelVersions(pb.ListModelVersionsRequest(model_id="propensity-deposit", page_size=1))
    rest = await stub.ListModelVersions(pb.ListModelVersionsRequest(model_id="propensity-deposit", page_size=1,
                                                                    page_token=listed.next_page_token))
    assert [(v.version, v.status) for v in [*listed.model_versions, *rest.model_versions]] == [
        (1, model_pb2.MODEL_STATUS_RETIRED), (2, model_pb2.MODEL_STATUS_CHAMPION)]
    rich = [r.customer_id for r in env["records"]][:40]
    scored = await stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                                customer_ids=[*rich, "nobody"]))
    assert scored.model_version == second.name
    assert [s.customer_id for s in scored.scores] == rich  # an unknown customer is left out
    assert all(0 < s.score < 1 for s in scored.scores)


async def test_train_an_uplift_model_from_randomised_history(env):
    stub = env["stub"]
    await import_history(stub, env["records"])
    trained = (await stub.TrainModel(pb.TrainModelRequest(kind=model_pb2.MODEL_KIND_UPLIFT, offer_id="deposit",
                                                          folds=3))).model_version
    assert trained.model_id == "uplift-deposit" and trained.kind == model_pb2.MODEL_KIND_UPLIFT
    assert trained.metrics.training_rows == N and trained.metrics.qini != 0.0


async def test_training_errors(env):
    stub = env["stub"]
    propensity = model_pb2.MODEL_KIND_PROPENSITY
    await expect_error(stub.TrainModel(pb.TrainModelRequest(kind=propensity, offer_id="deposit")),
                       grpc.StatusCode.FAILED_PRECONDITION, "NO_HISTORY")
    await expect_error(stub.TrainModel(pb.TrainModelRequest(kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="ghost")),
                       grpc.StatusCode.NOT_FOUND, "OFFER_NOT_FOUND")
    got = await expect_error(stub.TrainModel(pb.TrainModelRequest(offer_id="deposit")),
                             grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    assert got.field_violations[0][0] == "kind"
    await expect_error(stub.TrainModel(pb.TrainModelRequest(kind=propensity, offer_id="deposit", folds=11)),
                       grpc.StatusCode.INVALID_ARGUMENT, "OUT_OF_RANGE")
    await expect_error(stub.PromoteModelVersion(pb.PromoteModelVersionRequest(name="models/propensity-deposit")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
    await expect_error(stub.PromoteModelVersion(pb.PromoteModelVersionRequest(
        name="models/propensity-deposit/versions/7")), grpc.StatusCode.NOT_FOUND, "MODEL_VERSION_NOT_FOUND")
    await expect_error(stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/x")),
                       grpc.StatusCode.INVALID_ARGUMENT, "OUT_OF_RANGE")


async def test_decide_uses_the_champion_once_promoted(env):
    stub = env["stub"]
    before = await stub.Decide(pb.DecideRequest(customer_id="h-0001"))
    assert before.model_version == "heuristic-v1"
    await import_history(stub, env["records"])
    trained = (await stub.TrainModel(pb.TrainModelRequest(kind=model_pb2.MODEL_KIND_PROPENSITY, offer_id="deposit",
                                                          folds=3))).model_version
    still = await stub.Decide(pb.DecideRequest(customer_id="h-0001"))
    assert still.model_version == "heuristic-v1"  # a challenger is never used
    await stub.PromoteModelVersion(pb.PromoteModelVersionRequest(name=trained.name))
    after = await stub.Decide(pb.DecideRequest(customer_id="h-0001"))
    assert after.model_version == trained.name
    [offer] = after.offers
    scored = await stub.ScoreCustomers(pb.ScoreCustomersRequest(model="models/propensity-deposit",
                                                                customer_ids=["h-0001"]))
    assert offer.propensity == pytest.approx(scored.scores[0].score, abs=0.05)  # same model, same customer
    assert any(trained.name in r.message for r in offer.reasons if r.code == "EXPECTED_VALUE")


async def test_cli_imports_history_from_csv_and_trains(env, tmp_path, monkeypatch):
    import asyncio
    import csv
    import io
    import json

    from lodestar_cli.main import run

    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", env["campaign"].address)
    path = tmp_path / "history.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, delimiter=";")
        writer.writerow(["customer_id", "contact_time", "treated", "converted", "arm", "channel", "previous"])
        for r in env["records"]:
            writer.writerow([r.customer_id, r.contact_time.ToDatetime().isoformat() + "Z", "yes" if r.treated else "no",
                             int(r.converted), r.arm, "sms", r.context["previous"]])
        writer.writerow(["h-0001", "yesterday", "yes", "no", "a", "sms", "1"])  # row N+1: a bad time
        writer.writerow(["h-0002", "2025-03-02T09:00:00+00:00", "maybe", "no", "a", "sms", "1"])  # row N+2
        writer.writerow(["h-0003", "2025-03-02T09:00:00+00:00", "yes", "no", "a", "pigeon", "1"])  # row N+3

    async def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, [*argv, "--json"], out, err)
        return code, json.loads(out.getvalue())

    code, body = await cli("import", "history", str(path), "--sep", ";", "--offer", "deposit")
    assert code == 1  # some rows failed: reported, the good ones imported
    assert (body["imported"], body["failed"], body["duplicates"]) == (N, 3, 0)
    with open(body["errors_file"]) as handle:  # noqa: ASYNC230 - a small local file
        assert list(csv.reader(handle)) == [["row", "field", "reason"],
                                            [str(N + 1), "contact_time", "NOT_AN_ISO_8601_TIME"],
                                            [str(N + 2), "treated", "NOT_A_BOOLEAN"],
                                            [str(N + 3), "channel", "UNKNOWN_CHANNEL"]]
    assert await history_rows(env["campaign"]) == N
    code, body = await cli("import", "history", str(path), "--sep", ";", "--offer", "deposit")
    assert (body["imported"], body["duplicates"]) == (0, N)  # the same file again: nothing new
    assert await history_rows(env["campaign"]) == N
    (tmp_path / "no_offer.csv").write_text("customer_id,contact_time,treated\nh-1,2025-03-01T09:00:00Z,yes\n")
    code, body = await cli("import", "history", str(tmp_path / "no_offer.csv"))
    assert code == 1 and body["error"]["reason"] == "HISTORY_COLUMNS_MISSING"
    assert "converted" in body["error"]["message"]
    code, body = await cli("import", "history", str(tmp_path / "missing.csv"))
    assert code == 1 and (body["error"]["code"], body["error"]["reason"]) == ("INVALID_ARGUMENT", "FILE_NOT_FOUND")

    code, body = await cli("models", "train", "--offer", "deposit", "--folds", "3")
    assert code == 0
    assert body["model"] == "models/propensity-deposit/versions/1" and body["status"] == "challenger"
    assert 0.65 < body["auc"] <= 1.0 and body["validation"].startswith("3-fold")
    assert "context.previous" in body["features"]
    code, body = await cli("models", "promote", "models/propensity-deposit/versions/1")
    assert code == 0
    code, body = await cli("models", "list", "--model-id", "propensity-deposit")
    assert [(v["version"], v["status"]) for v in body["model_versions"]] == [(1, "champion")]
