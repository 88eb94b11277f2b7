"""Credit risk through RiskService: TrainCreditModel, ListCreditModels, PromoteCreditModel, ScoreCredit, and the
CREDIT_DECLINED gate with limit bands in Screen and ScreenBatch (SQLite, or PostgreSQL with TEST_DATABASE_URL).
Small synthetic books: utilisation drives default, so a high utilisation is declined and a low one approved."""

from __future__ import annotations

import json
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import credit_pb2, risk_service_pb2_grpc, screening_pb2
from services.platform.masking import customer_token
from services.platform.server import RunningService
from services.risk.app import DEFINITION
from services.risk.db import AuditEntryRow, CreditModelRow, IdempotencyKey, ScreeningDecisionRow
from tests.helpers import expect_error

CHAMPION = credit_pb2.CREDIT_MODEL_STATUS_CHAMPION
CHALLENGER = credit_pb2.CREDIT_MODEL_STATUS_CHALLENGER
DENY, ALLOW = screening_pb2.VERDICT_DENY, screening_pb2.VERDICT_ALLOW
CREDIT_DECLINED = screening_pb2.REASON_CODE_CREDIT_DECLINED
RISKY = {"utilisation": "0.97", "checking": "A11"}
SAFE = {"utilisation": "0.03", "checking": "A13"}


@dataclass
class Risk:
    svc: RunningService
    stub: risk_service_pb2_grpc.RiskServiceStub

    async def scalar(self, query: Any) -> Any:
        async with self.svc.runtime.database.sessionmaker() as session:
            return await session.scalar(query)

    async def all(self, query: Any) -> list[Any]:
        async with self.svc.runtime.database.sessionmaker() as session:
            return list(await session.scalars(query))


@pytest.fixture
async def risk(start: Callable[..., Any]) -> AsyncIterator[Risk]:
    svc = await start(DEFINITION)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        yield Risk(svc, risk_service_pb2_grpc.RiskServiceStub(channel))


def book(n: int = 400, seed: int = 11) -> list[credit_pb2.CreditTrainingRow]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        utilisation = rng.random()
        checking = rng.choice(["A11", "A12", "A13"])
        logit = -4.0 + 6.0 * utilisation + {"A11": 1.0, "A12": 0.0, "A13": -1.0}[checking]
        defaulted = rng.random() < 1.0 / (1.0 + math.exp(-logit))
        features = {"utilisation": f"{utilisation:.4f}", "checking": checking}
        if i % 10 == 0:
            features["noise"] = ""  # an empty value is missing
        rows.append(credit_pb2.CreditTrainingRow(customer_id=f"app-{i}", features=features, defaulted=defaulted))
    return rows


def train_request(**kwargs: Any) -> credit_pb2.TrainCreditModelRequest:
    kwargs.setdefault("rows", book())
    kwargs.setdefault("features", ["utilisation", "checking"])
    kwargs.setdefault("training_window", {"cutoff": "2025-01-01", "window_days": "365"})
    return credit_pb2.TrainCreditModelRequest(**kwargs)


async def champion(risk: Risk) -> credit_pb2.CreditModel:
    return (await risk.stub.TrainCreditModel(train_request(promote=True))).model


def offers() -> list[screening_pb2.OfferSubject]:
    return [
        screening_pb2.OfferSubject(offer_id="deposit-1", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT),
        screening_pb2.OfferSubject(offer_id="card-1", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD),
    ]


def facts(features: dict[str, str] | None, income: float | None = None) -> screening_pb2.CustomerFacts:
    out = screening_pb2.CustomerFacts(birth_date="1985-03-01", time_zone="Asia/Shanghai",
                                      risk_tolerance=common_pb2.RISK_TOLERANCE_C3, credit_features=features or {})
    if income is not None:
        out.monthly_income = income
    return out


def screen(customer_id: str, features: dict[str, str] | None, income: float | None = None
           ) -> screening_pb2.ScreenRequest:
    # IN_APP: no consent or quiet hours involved, only the offer rules
    return screening_pb2.ScreenRequest(customer_id=customer_id, channel=common_pb2.CHANNEL_IN_APP,
                                       facts=facts(features, income), offers=offers())


# --- registry ----------------------------------------------------------------------------------------------

async def test_training_stores_a_challenger_with_metrics_and_audits_it(risk: Risk) -> None:
    response = await risk.stub.TrainCreditModel(train_request(request_id="train-1"))
    model = response.model
    assert (model.name, model.version, model.status) == ("creditModels/1", "1", CHALLENGER)
    assert model.rows == 400 and set(model.features) == {"utilisation", "checking"}
    assert list(model.candidate_features) == ["utilisation", "checking"]
    assert dict(model.training_window) == {"cutoff": "2025-01-01", "window_days": "365"}
    assert model.auc > 0.7 and 0 < model.ks < 1 and 0 < model.brier < 0.25
    assert model.decline_pd == pytest.approx(0.15)
    assert model.HasField("create_time") and not model.HasField("promote_time")
    [row] = await risk.all(select(CreditModelRow))
    assert (row.version, row.status, row.auc) == ("1", "CHALLENGER", model.auc)
    artefact = json.loads(row.artefact)
    assert artefact["format"] == "lodestar.risk.credit.pd-scorecard/1" and artefact["metadata"]["version"] == "1"
    [entry] = await risk.all(select(AuditEntryRow))
    assert (entry.kind, entry.subject) == ("CREDIT_MODEL_TRAINED", "creditModels/1")
    assert json.loads(entry.summary)["status"] == "CHALLENGER"

    # the same request id replays the answer without a second version; another payload is refused
    again = await risk.stub.TrainCreditModel(train_request(request_id="train-1"))
    assert again.model == model
    assert await risk.scalar(select(func.count()).select_from(CreditModelRow)) == 1
    await expect_error(risk.stub.TrainCreditModel(train_request(request_id="train-1", folds=3)),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_promote_list_and_champion_changes(risk: Risk) -> None:
    await expect_error(risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(customer_id="a-1", features=SAFE)),
                       grpc.StatusCode.FAILED_PRECONDITION, "NO_CHAMPION_CREDIT_MODEL")
    first = (await risk.stub.TrainCreditModel(train_request())).model
    second = (await risk.stub.TrainCreditModel(train_request(rows=book(seed=12)))).model
    assert (first.version, second.version) == ("1", "2")
    promoted = (await risk.stub.PromoteCreditModel(
        credit_pb2.PromoteCreditModelRequest(name="creditModels/1", request_id="p-1"))).model
    assert promoted.status == CHAMPION and promoted.HasField("promote_time")
    await risk.stub.PromoteCreditModel(credit_pb2.PromoteCreditModelRequest(name="creditModels/2"))
    listed = await risk.stub.ListCreditModels(credit_pb2.ListCreditModelsRequest())
    assert [(m.version, m.status) for m in listed.models] == [("2", CHAMPION), ("1", CHALLENGER)]
    assert listed.next_page_token == ""
    page = await risk.stub.ListCreditModels(credit_pb2.ListCreditModelsRequest(page_size=1))
    assert [m.version for m in page.models] == ["2"] and page.next_page_token
    rest = await risk.stub.ListCreditModels(credit_pb2.ListCreditModelsRequest(page_size=1,
                                                                                page_token=page.next_page_token))
    assert [m.version for m in rest.models] == ["1"] and rest.next_page_token == ""
    scored = await risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(customer_id="a-1", features=SAFE))
    assert scored.model == "creditModels/2"
    kinds = [e.kind for e in await risk.all(select(AuditEntryRow).order_by(AuditEntryRow.seq))]
    assert kinds == ["CREDIT_MODEL_TRAINED", "CREDIT_MODEL_TRAINED", "CREDIT_MODEL_PROMOTED",
                     "CREDIT_MODEL_PROMOTED", "CREDIT_SCORE"]
    await expect_error(risk.stub.PromoteCreditModel(credit_pb2.PromoteCreditModelRequest(name="creditModels/9")),
                       grpc.StatusCode.NOT_FOUND, "CREDIT_MODEL_NOT_FOUND")
    await expect_error(risk.stub.PromoteCreditModel(credit_pb2.PromoteCreditModelRequest(name="models/1")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")


async def test_score_credit_gives_pd_score_reasons_and_limit_band(risk: Risk) -> None:
    await champion(risk)
    risky = await risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(customer_id="a-1", features=RISKY,
                                                                      monthly_income=4000.0))
    assert risky.model == "creditModels/1" and risky.pd >= 0.15
    assert (risky.limit_band.band, risky.limit_band.declined, risky.limit_band.max_limit) == ("DECLINED", True, 0.0)
    assert risky.reasons[0].code in ("UTILISATION_HIGH", "CHECKING_A11")
    assert {r.code for r in risky.reasons} == {"UTILISATION_HIGH", "CHECKING_A11"}
    safe = await risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(customer_id="a-2", features=SAFE,
                                                                     monthly_income=5000.0))
    assert safe.pd < 0.15 and safe.score > risky.score and not safe.limit_band.declined
    assert safe.limit_band.band in ("A", "B", "C", "D")
    assert safe.limit_band.max_limit == pytest.approx(safe.limit_band.income_multiple * 5000.0)
    no_income = await risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(customer_id="a-2", features=SAFE))
    assert not no_income.limit_band.HasField("max_limit")
    entries = await risk.all(select(AuditEntryRow).where(AuditEntryRow.kind == "CREDIT_SCORE")
                             .order_by(AuditEntryRow.seq))
    assert [e.subject for e in entries] == [customer_token("a-1"), customer_token("a-2"), customer_token("a-2")]
    assert json.loads(entries[0].summary)["band"] == "DECLINED"

    got = await expect_error(risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(
        customer_id="a-3", features={"utilisation": "lots"})), grpc.StatusCode.INVALID_ARGUMENT, "NON_NUMERIC_VALUE")
    assert got.field_violations[0][0] == "features[utilisation]" and "lots" not in got.message
    got = await expect_error(risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(
        customer_id="a-3", features=SAFE, monthly_income=-1.0)), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_INCOME")
    assert got.field_violations[0][0] == "monthly_income"
    await expect_error(risk.stub.ScoreCredit(credit_pb2.ScoreCreditRequest(
        customer_id="a-3", features=SAFE, model="creditModels/7")), grpc.StatusCode.NOT_FOUND,
        "CREDIT_MODEL_NOT_FOUND")


# --- bad training input: the credit package's field and reason ------------------------------------------------

@pytest.mark.parametrize(("change", "field", "reason"), [
    ({"rows": [credit_pb2.CreditTrainingRow(customer_id=f"x-{i}", features={"utilisation": "0.5"})
               for i in range(20)]}, "rows.defaulted", "SINGLE_CLASS_LABEL"),
    ({"rows": []}, "rows", "EMPTY_TRAINING_SET"),
    ({"features": ["utilisation", "income"]}, "features", "UNKNOWN_FEATURE"),
    ({"categorical": ["region"]}, "categorical", "UNKNOWN_FEATURE"),
    ({"features": ["checking"], "categorical": ["utilisation"]}, "categorical", "UNKNOWN_FEATURE"),
    ({"folds": 1}, "folds", "INVALID_FOLDS"),
    ({"rows": [credit_pb2.CreditTrainingRow(customer_id="dup", defaulted=True)] * 2}, "rows[1].customer_id",
     "DUPLICATE_CUSTOMER"),
])
async def test_bad_training_input_names_the_field_and_writes_nothing(
        risk: Risk, change: dict[str, Any], field: str, reason: str) -> None:
    got = await expect_error(risk.stub.TrainCreditModel(train_request(request_id="bad-1", **change)),
                             grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field
    assert await risk.scalar(select(func.count()).select_from(CreditModelRow)) == 0
    assert await risk.scalar(select(func.count()).select_from(AuditEntryRow)) == 0
    assert await risk.scalar(select(func.count()).select_from(IdempotencyKey)) == 0


async def test_non_numeric_feature_not_declared_categorical(risk: Risk) -> None:
    got = await expect_error(risk.stub.TrainCreditModel(train_request(categorical=["utilisation"])),
                             grpc.StatusCode.INVALID_ARGUMENT, "NON_NUMERIC_FEATURE")
    assert got.field_violations[0][0] == "categorical"


# --- the gate in Screen and ScreenBatch ---------------------------------------------------------------------

async def test_screen_declines_a_risky_credit_offer_and_bands_a_safe_one(risk: Risk) -> None:
    # without a champion the credit features are not scored
    before = await risk.stub.Screen(screen("c-1", RISKY))
    assert [(v.offer_id, v.verdict, list(v.reasons), v.HasField("limit_band")) for v in before.verdicts] == [
        ("deposit-1", ALLOW, [], False), ("card-1", ALLOW, [], False)]
    await champion(risk)
    risky = await risk.stub.Screen(screen("c-1", RISKY, 4000.0))
    deposit, card = risky.verdicts
    assert (deposit.verdict, list(deposit.reasons), deposit.HasField("limit_band")) == (ALLOW, [], False)
    assert (card.verdict, list(card.reasons)) == (DENY, [CREDIT_DECLINED])
    assert (card.limit_band.band, card.limit_band.declined, card.credit_model) == ("DECLINED", True, "creditModels/1")
    safe = await risk.stub.Screen(screen("c-2", SAFE, 5000.0))
    card = safe.verdicts[1]
    assert (card.verdict, list(card.reasons), card.limit_band.declined) == (ALLOW, [], False)
    assert card.limit_band.max_limit == pytest.approx(card.limit_band.income_multiple * 5000.0)
    # no credit features: no scoring, the offer rules only
    plain = await risk.stub.Screen(screen("c-3", None))
    assert not plain.verdicts[1].HasField("limit_band") and plain.verdicts[1].verdict == ALLOW

    rows = await risk.all(select(ScreeningDecisionRow).order_by(ScreeningDecisionRow.id))
    assert [r.customer_id for r in rows] == ["c-1", "c-1", "c-2", "c-3"]
    declined = rows[1].verdicts
    assert declined[0] == {"offer_id": "deposit-1", "verdict": "ALLOW", "reasons": []}
    assert declined[1]["reasons"] == ["CREDIT_DECLINED"] and declined[1]["credit"]["band"] == "DECLINED"
    assert declined[1]["credit"]["model_version"] == "1" and declined[1]["credit"]["pd"] >= 0.15
    entries = await risk.all(select(AuditEntryRow).where(AuditEntryRow.kind == "SCREEN").order_by(AuditEntryRow.seq))
    summary = json.loads(entries[1].summary)
    assert (summary["credit_model_version"], summary["credit_declined"], summary["denied"]) == ("1", 1, 1)
    assert entries[1].subject == customer_token("c-1")


async def test_screen_rejects_a_bad_credit_feature_value(risk: Risk) -> None:
    await champion(risk)
    got = await expect_error(risk.stub.Screen(screen("c-1", {"utilisation": "high"})),
                             grpc.StatusCode.INVALID_ARGUMENT, "NON_NUMERIC_VALUE")
    assert got.field_violations[0][0] == "facts.credit_features[utilisation]"
    got = await expect_error(risk.stub.Screen(screen("c-1", SAFE, -5.0)), grpc.StatusCode.INVALID_ARGUMENT,
                             "INVALID_INCOME")
    assert got.field_violations[0][0] == "facts.monthly_income"
    assert await risk.scalar(select(func.count()).select_from(ScreeningDecisionRow)) == 0


async def test_screen_batch_gates_credit_per_customer(risk: Risk) -> None:
    await champion(risk)
    message = screening_pb2.ScreenBatchRequest(batch_id="b1", offers=offers())
    for cid, features in (("c-1", RISKY), ("c-2", SAFE), ("c-3", RISKY), ("c-4", None)):
        message.items.add(customer_id=cid, channel=common_pb2.CHANNEL_IN_APP, facts=facts(features, 3000.0))
    message.items.add(customer_id="c-5", channel=common_pb2.CHANNEL_IN_APP, facts=facts(RISKY),
                      offer_ids=["deposit-1"])
    [response] = [r async for r in risk.stub.ScreenBatch(iter([message]))]
    got = {r.customer_id: [(v.verdict, list(v.reasons), v.limit_band.band) for v in r.verdicts]
           for r in response.results}
    assert got == {
        "c-1": [(ALLOW, [], ""), (DENY, [CREDIT_DECLINED], "DECLINED")],
        "c-2": [(ALLOW, [], ""), (ALLOW, [], got["c-2"][1][2])],
        "c-3": [(ALLOW, [], ""), (DENY, [CREDIT_DECLINED], "DECLINED")],
        "c-4": [(ALLOW, [], ""), (ALLOW, [], "")],
        "c-5": [(ALLOW, [], "")],
    }
    assert got["c-2"][1][2] in ("A", "B", "C", "D")
    assert response.results[1].verdicts[1].limit_band.max_limit == pytest.approx(
        response.results[1].verdicts[1].limit_band.income_multiple * 3000.0)
    [entry] = await risk.all(select(AuditEntryRow).where(AuditEntryRow.kind == "SCREEN_BATCH"))
    summary = json.loads(entry.summary)
    assert (summary["credit_scored"], summary["credit_declined"], summary["denied"]) == (3, 2, 2)

    bad = screening_pb2.ScreenBatchRequest(batch_id="b2", offers=offers())
    bad.items.add(customer_id="c-1", channel=common_pb2.CHANNEL_IN_APP, facts=facts(SAFE))
    bad.items.add(customer_id="c-2", channel=common_pb2.CHANNEL_IN_APP, facts=facts({"utilisation": "x"}))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _ = [r async for r in risk.stub.ScreenBatch(iter([bad]))]
    from tests.helpers import details_of
    details = details_of(caught.value)
    assert (details.code, details.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "NON_NUMERIC_VALUE")
    assert details.field_violations[0][0] == "items[1].facts.credit_features[utilisation]"
    assert await risk.scalar(select(func.count()).select_from(ScreeningDecisionRow)) == 5


# --- CLI ----------------------------------------------------------------------------------------------------

async def test_cli_trains_lists_promotes_and_scores(start: Callable[..., Any], monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Any) -> None:
    import asyncio
    import csv
    import io

    from lodestar_cli.main import run

    svc = await start(DEFINITION)
    monkeypatch.setenv("RISK_SERVICE_ADDR", svc.address)
    path = tmp_path / "book.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["customer_id", "utilisation", "checking", "bad"])
        for row in book():
            writer.writerow([row.customer_id, row.features["utilisation"], row.features["checking"],
                             "yes" if row.defaulted else "no"])

    async def cli(*argv: str) -> tuple[int, Any]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, [*argv, "--json"], out, err)
        return code, json.loads(out.getvalue())

    code, body = await cli("risk", "credit", "train", str(path), "--label", "bad", "--window", "cutoff=2025-01-01")
    assert code == 0 and body["model"]["version"] == "1" and body["model"]["auc"] > 0.7
    assert body["model"]["status"] == "CHALLENGER" and body["model"]["training_window"] == {"cutoff": "2025-01-01"}
    code, body = await cli("risk", "credit", "promote", "1")
    assert code == 0 and body["model"]["status"] == "CHAMPION"
    code, body = await cli("risk", "credit", "list")
    assert [(m["version"], m["status"]) for m in body["models"]] == [("1", "CHAMPION")]
    code, body = await cli("risk", "credit", "score", "a-1", "--feature", "utilisation=0.97", "--feature",
                           "checking=A11", "--income", "4000")
    assert code == 0 and body["limit_band"]["band"] == "DECLINED" and body["model"] == "creditModels/1"
    code, body = await cli("risk", "credit", "train", str(path), "--label", "missing")
    assert code == 1 and body["error"]["reason"] == "UNKNOWN_LABEL"
