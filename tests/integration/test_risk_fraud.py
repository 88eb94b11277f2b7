"""CheckActivity (fraud and abuse: velocity rules, the anomaly model) and FRAUD_SUSPECTED in Screen and
ScreenBatch, over a real aio server on port 0 and a real database (SQLite, or PostgreSQL with TEST_DATABASE_URL).
The RISK_FRAUD_* settings are part of the service's settings, validated at start-up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from lodestar.risk.v1 import fraud_pb2, risk_service_pb2_grpc, screening_pb2
from services.platform.masking import customer_token
from services.risk.app import DEFINITION
from services.risk.db import AuditEntryRow, FraudEventRow, IdempotencyKey
from tests.helpers import expect_error
from tests.integration.test_risk_service import Risk, consent_request, screen_request, ts

F = fraud_pb2
LEAD, REDEEM = F.ACTIVITY_KIND_LEAD_SUBMISSION, F.ACTIVITY_KIND_OFFER_REDEMPTION
ALLOW, DENY, REVIEW = F.FRAUD_DECISION_ALLOW, F.FRAUD_DECISION_DENY, F.FRAUD_DECISION_REVIEW
PHONE = "9" * 64  # a caller's phone hash
RAW_IP = "203.0.113.77"
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


@pytest.fixture
async def risk(start: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Risk]:
    svc = await start(DEFINITION, RISK_FRAUD_VELOCITY="device:2/h,phone:2/h,ip:3/h,customer:2/h",
                      RISK_FRAUD_MIN_TRAINING="10", RISK_FRAUD_HASH_KEY="test-fraud-key")
    async with grpc.aio.insecure_channel(svc.address) as channel:
        yield Risk(svc, risk_service_pb2_grpc.RiskServiceStub(channel))


def check(*, device: str = "", phone: str = "", ip: str = "", customer: str = "", partner: str = "partner-1",
          kind: int = LEAD, at: datetime | None = BASE, request_id: str = "") -> F.CheckActivityRequest:
    event = F.ActivityEvent(kind=kind, customer_id=customer, partner_id=partner, device_id=device,
                            phone_hash=phone, ip_address=ip)
    if at is not None:
        event.event_time.CopyFrom(ts(at))
    return F.CheckActivityRequest(event=event, request_id=request_id)


def hits(response: F.CheckActivityResponse) -> list[tuple[str, str, int, int]]:
    return [(h.rule_id, h.key, h.observed, h.limit) for h in response.hits]


@pytest.mark.parametrize(("field", "value", "limit"), [
    ("device", "dev-1", 2), ("phone", PHONE, 2), ("ip", RAW_IP, 3), ("customer", "cust-1", 2)])
async def test_each_velocity_rule_at_and_over_its_limit(risk: Risk, field: str, value: str, limit: int) -> None:
    other = {"device": "dev-x"} if field != "device" else {"ip": "198.51.100.1"}
    for n in range(limit):
        response = await risk.stub.CheckActivity(check(**{field: value, **other}, at=BASE + timedelta(minutes=n)))
        if field != "device":
            other = {"device": f"dev-x{n}"}  # only the key under test repeats
        assert (response.decision, list(response.hits), list(response.reasons)) == (ALLOW, [], []), n
    over = await risk.stub.CheckActivity(check(**{field: value, "device": "dev-z"} if field != "device"
                                               else {field: value}, at=BASE + timedelta(minutes=30)))
    assert over.decision == DENY
    assert hits(over) == [(f"{field}:{limit}/h", field, limit + 1, limit)]
    assert list(over.reasons) == [screening_pb2.REASON_CODE_FRAUD_SUSPECTED]
    rows = await risk.rows(FraudEventRow)
    assert [r.decision for r in rows] == ["ALLOW"] * limit + ["DENY"]
    assert [r.suspected for r in rows] == [False] * limit + [True]


async def test_every_rule_hit_is_a_reason(risk: Risk) -> None:
    for n in range(2):
        await risk.stub.CheckActivity(check(device="dev-1", phone=PHONE, customer="cust-1",
                                            at=BASE + timedelta(minutes=n)))
    response = await risk.stub.CheckActivity(check(device="dev-1", phone=PHONE, customer="cust-1", ip=RAW_IP,
                                                   at=BASE + timedelta(minutes=5)))
    assert hits(response) == [("device:2/h", "device", 3, 2), ("phone:2/h", "phone", 3, 2),
                              ("customer:2/h", "customer", 3, 2)]


async def test_an_event_61_minutes_old_does_not_count(risk: Risk) -> None:
    await risk.stub.CheckActivity(check(device="dev-1", at=BASE - timedelta(minutes=61)))
    await risk.stub.CheckActivity(check(device="dev-1", at=BASE - timedelta(minutes=30)))
    inside = await risk.stub.CheckActivity(check(device="dev-1", at=BASE))
    assert (inside.decision, list(inside.hits)) == (ALLOW, [])
    over = await risk.stub.CheckActivity(check(device="dev-1", at=BASE + timedelta(minutes=1)))
    assert hits(over) == [("device:2/h", "device", 3, 2)]  # the one 61 minutes before BASE is not among them


async def test_check_activity_is_idempotent_by_request_id(risk: Risk) -> None:
    first = await risk.stub.CheckActivity(check(device="dev-1", request_id="req-1"))
    again = await risk.stub.CheckActivity(check(device="dev-1", request_id="req-1"))
    assert again == first and first.name == "fraudChecks/1"
    assert await risk.count(FraudEventRow) == 1
    assert len([e for e in await risk.rows_by(AuditEntryRow, AuditEntryRow.seq) if e.kind == "FRAUD_CHECK"]) == 1
    assert await risk.count(IdempotencyKey) == 1
    error = await expect_error(risk.stub.CheckActivity(check(device="dev-2", request_id="req-1")),
                               grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert error.field_violations[0][0] == "request_id"
    # Replays do not count towards the rules: two more distinct checks, and only the third one is over.
    assert (await risk.stub.CheckActivity(check(device="dev-1"))).decision == ALLOW
    assert (await risk.stub.CheckActivity(check(device="dev-1"))).decision == DENY


async def test_a_denied_customer_is_screened_fraud_suspected(risk: Risk) -> None:
    for customer in ("cust-1", "cust-2"):
        await risk.stub.RecordConsent(consent_request(customer))
    for n in range(3):
        await risk.stub.CheckActivity(check(customer="cust-1", device=f"dev-{n}", at=BASE + timedelta(minutes=n)))
    await risk.stub.CheckActivity(check(customer="cust-2", device="dev-9"))
    flagged = await risk.stub.Screen(screen_request("cust-1"))
    [verdict] = flagged.verdicts
    assert verdict.verdict == screening_pb2.VERDICT_DENY
    assert list(verdict.reasons) == [screening_pb2.REASON_CODE_FRAUD_SUSPECTED]
    clean = await risk.stub.Screen(screen_request("cust-2"))
    assert [(v.verdict, list(v.reasons)) for v in clean.verdicts] == [(screening_pb2.VERDICT_ALLOW, [])]

    batch = screening_pb2.ScreenBatchRequest(batch_id="b", offers=list(screen_request().offers))
    for customer in ("cust-1", "cust-2"):
        item = batch.items.add(customer_id=customer, channel=screen_request().channel)
        item.facts.CopyFrom(screen_request().facts)
        item.contact_time.CopyFrom(screen_request().contact_time)
    [response] = [r async for r in risk.stub.ScreenBatch(iter([batch]))]
    assert [[list(v.reasons) for v in r.verdicts] for r in response.results] == [
        [[screening_pb2.REASON_CODE_FRAUD_SUSPECTED]], [[]]]


async def test_concurrent_checks_at_the_limit_never_both_pass(risk: Risk) -> None:
    await risk.stub.CheckActivity(check(device="dev-1"))
    results = await asyncio.gather(*(risk.stub.CheckActivity(check(device="dev-1", ip=f"198.51.100.{n}"))
                                     for n in range(6)))
    assert sorted(r.decision for r in results) == [ALLOW] + [DENY] * 5
    assert sorted(h.observed for r in results for h in r.hits) == [3, 4, 5, 6, 7]


async def test_the_anomaly_model_scores_once_enough_history_is_recorded(risk: Risk) -> None:
    # Ordinary traffic: a device per customer, addresses shared by two, spread over the day.
    for n in range(10):
        response = await risk.stub.CheckActivity(check(device=f"dev-{n}", customer=f"cust-{n}",
                                                       ip=f"198.51.100.{n // 2}",
                                                       at=BASE - timedelta(minutes=37 * n)))
        assert not response.anomaly.scored
    normal = await risk.stub.CheckActivity(check(device="dev-a", customer="cust-a", ip="198.51.100.90",
                                                 at=BASE + timedelta(minutes=20)))
    assert normal.anomaly.scored and normal.anomaly.training_events == 10
    assert 0 < normal.anomaly.threshold < 1 and 0 < normal.anomaly.score < 1
    assert normal.anomaly.flagged == (normal.anomaly.score > normal.anomaly.threshold)
    assert normal.decision == (REVIEW if normal.anomaly.flagged else ALLOW)
    assert (await risk.rows(FraudEventRow))[-1].anomaly_score == pytest.approx(normal.anomaly.score)
    # Retrained when the history doubles (every replica trains on the same first 20 rows).
    for n in range(9):
        await risk.stub.CheckActivity(check(device=f"dev-c{n}", at=BASE + timedelta(minutes=n)))
    later = await risk.stub.CheckActivity(check(device="dev-d", at=BASE))
    assert later.anomaly.training_events == 20
    # Separating a burst from normal traffic is tested on synthetic data in tests/unit/test_fraud.py.


async def test_no_raw_phone_or_ip_in_the_database_logs_or_spans(
    risk: Risk, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="lodestar")
    raw_customer = "cust-9f3e7a-secret"
    for n in range(4):
        await risk.stub.CheckActivity(check(device="dev-1", phone=PHONE, ip=RAW_IP, customer=raw_customer,
                                            at=BASE + timedelta(minutes=n), request_id=f"req-{n}"))
    await expect_error(risk.stub.CheckActivity(check(ip="203.0.113.999", customer=raw_customer)),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_IP_ADDRESS")
    rows = await risk.rows(FraudEventRow)
    assert len(rows) == 4
    async with risk.svc.runtime.database.sessionmaker() as session:
        audit = list(await session.execute(select(AuditEntryRow.summary, AuditEntryRow.subject)))
    stored = repr([vars(r) for r in rows]) + repr(audit)
    for secret in (RAW_IP, "203.0.113", PHONE):
        assert secret not in stored
    assert all(subject == customer_token(raw_customer) for _, subject in audit)
    assert raw_customer not in repr(audit)
    for span in span_exporter.get_finished_spans():
        text = repr(dict(span.attributes or {})) + repr([dict(e.attributes or {}) for e in span.events])
        for secret in (RAW_IP, PHONE, raw_customer, "203.0.113.999"):
            assert secret not in text, span.name
    logged = [r for r in caplog.records if r.getMessage() == "fraud checked"]
    assert len(logged) == 4
    for record in caplog.records:
        for secret in (RAW_IP, PHONE, raw_customer, "203.0.113.999"):
            assert secret not in str(record.__dict__), record.getMessage()


@pytest.mark.parametrize(("bad", "field", "reason"), [
    (check(device="dev-1", kind=0), "event.kind", "REQUIRED_FIELD_MISSING"),
    (check(device="dev-1", partner=""), "event.partner_id", "REQUIRED_FIELD_MISSING"),
    (check(device="dev-1", partner="partner/1"), "event.partner_id", "INVALID_ID"),
    (check(), "event.device_id", "ACTIVITY_KEY_MISSING"),
    (check(device="dev 1"), "event.device_id", "INVALID_ID"),
    (check(phone="+8613800138000"), "event.phone_hash", "INVALID_PHONE_HASH"),
    (check(ip="10.0.0"), "event.ip_address", "INVALID_IP_ADDRESS"),
    (check(device="dev-1", customer="bad id"), "event.customer_id", "INVALID_ID"),
    (check(device="dev-1", at=datetime.now(UTC) + timedelta(hours=1)), "event.event_time", "EVENT_TIME_IN_FUTURE"),
    (check(device="dev-1", request_id="bad id"), "request_id", "INVALID_REQUEST_ID"),
], ids=["kind", "no-partner", "partner", "no-key", "device", "phone", "ip", "customer", "future", "request-id"])
async def test_bad_input_names_the_field_and_reason(risk: Risk, bad: F.CheckActivityRequest, field: str,
                                                    reason: str) -> None:
    error = await expect_error(risk.stub.CheckActivity(bad), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert [f for f, _ in error.field_violations] == [field]
    assert "+8613800138000" not in error.message and "10.0.0" not in error.message
    assert await risk.count(FraudEventRow) == 0


async def test_cli_fraud_check(risk: Risk, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import json

    from lodestar_cli.main import run

    monkeypatch.setenv("RISK_SERVICE_ADDR", risk.svc.address)

    async def cli(*argv: str) -> tuple[int, Any]:
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, [*argv, "--json"], out, err)
        return code, json.loads(out.getvalue())

    args = ("risk", "fraud", "check", "--kind", "lead", "--partner", "partner-1", "--phone", "+86 138 0013 8000",
            "--ip", RAW_IP)
    for _ in range(2):
        code, body = await cli(*args)
        assert code == 0 and body["decision"] == "ALLOW"
    code, body = await cli(*args)
    assert code == 3 and body["decision"] == "DENY"
    assert [(h["rule_id"], h["observed"], h["limit"]) for h in body["hits"]] == [("phone:2/h", 3, 2)]
    code, body = await cli("risk", "fraud", "check", "--kind", "redemption", "--partner", "p", "--ip", "1.2.3")
    assert code == 1 and body["error"]["reason"] == "INVALID_IP_ADDRESS"
