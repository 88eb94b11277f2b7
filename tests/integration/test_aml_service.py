"""AmlService over a real aio server on port 0 and a real database (SQLite, or PostgreSQL with TEST_DATABASE_URL):
monitoring, alerts, cases and their transitions, configurable rules, every alert and change audited, and the
AML_CASE_OPEN block in Screen and ScreenBatch."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2
from sqlalchemy import func, select

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import aml_pb2, aml_pb2_grpc, risk_service_pb2_grpc, screening_pb2
from services.platform.masking import customer_token
from services.risk.app import DEFINITION
from services.risk.db import AmlAlertRow, AmlRuleSetRow, AmlTransactionRow, AuditEntryRow
from tests.helpers import expect_error
from tests.integration.test_risk_service import ts

A = aml_pb2
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


@dataclass
class Aml:
    svc: Any
    stub: aml_pb2_grpc.AmlServiceStub
    risk: risk_service_pb2_grpc.RiskServiceStub

    async def count(self, model: type, *where: Any) -> int:
        async with self.svc.runtime.database.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    async def audit(self, kind: str) -> list[AuditEntryRow]:
        async with self.svc.runtime.database.sessionmaker() as session:
            return list(await session.scalars(select(AuditEntryRow).where(AuditEntryRow.kind == kind)
                                              .order_by(AuditEntryRow.seq)))

    async def monitor(self, *batches: list[A.AmlTransaction]) -> A.MonitorTransactionsResponse:
        async def requests() -> AsyncIterator[A.MonitorTransactionsRequest]:
            for batch in batches:
                yield A.MonitorTransactionsRequest(transactions=batch)

        return await self.stub.MonitorTransactions(requests())


@pytest.fixture
async def amls(start: Callable[..., Any]) -> AsyncIterator[Aml]:
    svc = await start(DEFINITION)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        yield Aml(svc, aml_pb2_grpc.AmlServiceStub(channel), risk_service_pb2_grpc.RiskServiceStub(channel))


def tx(tid: str, customer: str, at: datetime, amount: str, direction: Any = A.AML_DIRECTION_IN, *,
       country: str = "CN", counterparty: str = "", currency: str = "CNY") -> A.AmlTransaction:
    return A.AmlTransaction(transaction_id=tid, customer_id=customer, occurred_at=ts(at), amount=amount,
                            currency=currency, direction=direction, country=country, counterparty=counterparty,
                            channel="branch")


def structuring(customer: str = "cust-s", prefix: str = "s") -> list[A.AmlTransaction]:
    """Three cash deposits just below the default 50,000 threshold within a day."""
    return [tx(f"{prefix}-{k}", customer, BASE + timedelta(hours=5 * k), f"4{8 + k % 2}500.00") for k in range(3)]


async def test_structuring_raises_an_alert_opens_a_case_and_audits_it(amls: Aml) -> None:
    response = await amls.monitor(structuring()[:2], structuring()[2:])
    assert (response.accepted, response.duplicates, response.batches, response.alerts, response.cases_opened,
            response.rules_version) == (3, 0, 2, 1, 1, "default")
    [alert] = (await amls.stub.ListAlerts(A.ListAlertsRequest())).alerts
    assert (alert.customer_id, alert.rule, list(alert.reasons)) == (
        "cust-s", A.AML_RULE_STRUCTURING, ["STRUCTURING_BELOW_THRESHOLD"])
    assert list(alert.transaction_ids) == ["s-0", "s-1", "s-2"]
    assert alert.amount == pytest.approx(48_500 + 49_500 + 48_500)
    [case] = (await amls.stub.ListCases(A.ListCasesRequest())).cases
    assert alert.case == case.name
    assert (case.customer_id, case.state, case.alert_count, list(case.rules), case.actor) == (
        "cust-s", A.AML_CASE_STATE_OPEN, 1, [A.AML_RULE_STRUCTURING], "risk")
    [entry] = await amls.audit("AML_ALERT")
    assert entry.subject == customer_token("cust-s")
    summary = json.loads(entry.summary)
    assert summary == {"alert": alert.name, "case": case.name, "rule": "STRUCTURING",
                       "reasons": ["STRUCTURING_BELOW_THRESHOLD"], "rules_version": "default"}
    assert "cust-s" not in entry.summary
    assert await amls.count(AmlTransactionRow) == 3


async def test_a_replayed_batch_is_counted_as_duplicates_and_alerts_nothing_again(amls: Aml) -> None:
    await amls.monitor(structuring())
    again = await amls.monitor(structuring())
    assert (again.accepted, again.duplicates, again.alerts, again.cases_opened) == (0, 3, 0, 0)
    assert await amls.count(AmlAlertRow) == 1 and await amls.count(AmlTransactionRow) == 3


async def test_a_second_alert_of_the_customer_joins_the_open_case(amls: Aml) -> None:
    await amls.monitor(structuring())
    response = await amls.monitor([tx("g-1", "cust-s", BASE + timedelta(days=1), "100.00", A.AML_DIRECTION_OUT,
                                      country="KP")])
    assert (response.alerts, response.cases_opened) == (1, 0)
    [case] = (await amls.stub.ListCases(A.ListCasesRequest())).cases
    assert case.alert_count == 2
    assert list(case.rules) == [A.AML_RULE_STRUCTURING, A.AML_RULE_UNUSUAL_GEOGRAPHY]
    alerts = (await amls.stub.ListAlerts(A.ListAlertsRequest(rule=A.AML_RULE_UNUSUAL_GEOGRAPHY))).alerts
    assert [(a.transaction_ids[0], list(a.reasons)) for a in alerts] == [("g-1", ["HIGH_RISK_COUNTRY"])]


async def test_rapid_in_and_out_across_batches_uses_the_stored_history(amls: Aml) -> None:
    await amls.monitor([tx("r-in", "cust-r", BASE, "30000.00", A.AML_DIRECTION_IN, counterparty="acct-9")])
    response = await amls.monitor([tx("r-out", "cust-r", BASE + timedelta(hours=6), "28000.00",
                                      A.AML_DIRECTION_OUT, counterparty="acct-7")])
    assert response.alerts == 1
    [alert] = (await amls.stub.ListAlerts(A.ListAlertsRequest(customer_id="cust-r"))).alerts
    assert (alert.rule, list(alert.reasons), list(alert.transaction_ids)) == (
        A.AML_RULE_RAPID_MOVEMENT, ["RAPID_IN_OUT"], ["r-in", "r-out"])
    async with amls.svc.runtime.database.sessionmaker() as session:
        keys = set(await session.scalars(select(AmlTransactionRow.counterparty_key)))
    assert "acct-9" not in keys and all(len(k) == 64 for k in keys)  # stored only as keyed hashes


async def test_an_open_case_blocks_credit_and_wealth_offers_until_closed(amls: Aml) -> None:
    offers = [screening_pb2.OfferSubject(offer_id="card", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD),
              screening_pb2.OfferSubject(offer_id="fund", product_type=common_pb2.PRODUCT_TYPE_WEALTH,
                                         risk_level=common_pb2.PRODUCT_RISK_LEVEL_R2),
              screening_pb2.OfferSubject(offer_id="deposit", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT)]
    facts = screening_pb2.CustomerFacts(birth_date="1980-01-01", time_zone="Asia/Shanghai",
                                        risk_tolerance=common_pb2.RISK_TOLERANCE_C5)

    async def screen(customer: str) -> list[tuple[str, int, list[int]]]:
        response = await amls.risk.Screen(screening_pb2.ScreenRequest(
            customer_id=customer, channel=common_pb2.CHANNEL_IN_APP, contact_time=ts(datetime.now(UTC)),
            facts=facts, offers=offers))
        return [(v.offer_id, v.verdict, list(v.reasons)) for v in response.verdicts]

    async def batch(customers: list[str]) -> list[list[tuple[str, int, list[int]]]]:
        async def requests() -> AsyncIterator[screening_pb2.ScreenBatchRequest]:
            yield screening_pb2.ScreenBatchRequest(offers=offers, items=[screening_pb2.ScreenBatchItem(
                customer_id=c, facts=facts, channel=common_pb2.CHANNEL_IN_APP) for c in customers])

        out = []
        async for response in amls.risk.ScreenBatch(requests()):
            out += [[(v.offer_id, v.verdict, list(v.reasons)) for v in r.verdicts] for r in response.results]
        return out

    allowed: list[tuple[str, int, list[int]]] = [
        ("card", screening_pb2.VERDICT_ALLOW, []), ("fund", screening_pb2.VERDICT_ALLOW, []),
        ("deposit", screening_pb2.VERDICT_ALLOW, [])]
    blocked = [("card", screening_pb2.VERDICT_DENY, [screening_pb2.REASON_CODE_AML_CASE_OPEN]),
               ("fund", screening_pb2.VERDICT_DENY, [screening_pb2.REASON_CODE_AML_CASE_OPEN]),
               ("deposit", screening_pb2.VERDICT_ALLOW, [])]
    assert await screen("cust-s") == allowed
    await amls.monitor(structuring())
    assert await screen("cust-s") == blocked
    assert await batch(["cust-s", "cust-clean"]) == [blocked, allowed]
    [case] = (await amls.stub.ListCases(A.ListCasesRequest(customer_id="cust-s"))).cases
    investigating = (await amls.stub.UpdateCase(A.UpdateCaseRequest(
        name=case.name, state=A.AML_CASE_STATE_INVESTIGATING, actor="investigator-7"))).case
    assert await screen("cust-s") == blocked
    reported = (await amls.stub.UpdateCase(A.UpdateCaseRequest(
        name=case.name, state=A.AML_CASE_STATE_REPORTED, actor="investigator-7", etag=investigating.etag))).case
    assert await screen("cust-s") == blocked  # reported: still blocked
    closed = (await amls.stub.UpdateCase(A.UpdateCaseRequest(
        name=case.name, state=A.AML_CASE_STATE_CLOSED, actor="mlro-1", note="FIU acknowledged"))).case
    assert (closed.state, closed.actor) == (A.AML_CASE_STATE_CLOSED, "mlro-1")
    assert len({case.etag, investigating.etag, reported.etag, closed.etag}) == 4
    assert await screen("cust-s") == allowed
    changes = [json.loads(e.summary) for e in await amls.audit("AML_CASE")]
    assert changes == [{"case": case.name, "from": "OPEN", "to": "INVESTIGATING"},
                       {"case": case.name, "from": "INVESTIGATING", "to": "REPORTED"},
                       {"case": case.name, "from": "REPORTED", "to": "CLOSED"}]
    assert [e.actor for e in await amls.audit("AML_CASE")] == ["investigator-7", "investigator-7", "mlro-1"]


async def test_invalid_transitions_stale_etags_and_unknown_cases_change_nothing(amls: Aml) -> None:
    await amls.monitor(structuring())
    [case] = (await amls.stub.ListCases(A.ListCasesRequest())).cases
    await amls.stub.UpdateCase(A.UpdateCaseRequest(name=case.name, state=A.AML_CASE_STATE_CLOSED, actor="a-1"))
    bad = await expect_error(amls.stub.UpdateCase(A.UpdateCaseRequest(
        name=case.name, state=A.AML_CASE_STATE_REPORTED, actor="a-1")), grpc.StatusCode.FAILED_PRECONDITION,
        "INVALID_CASE_TRANSITION")
    assert (bad.metadata["state"], bad.metadata["target"]) == ("CLOSED", "REPORTED")
    await expect_error(amls.stub.UpdateCase(A.UpdateCaseRequest(
        name=case.name, state=A.AML_CASE_STATE_OPEN, actor="a-1", etag=case.etag)), grpc.StatusCode.ABORTED,
        "ETAG_MISMATCH")
    await expect_error(amls.stub.UpdateCase(A.UpdateCaseRequest(
        name="amlCases/999", state=A.AML_CASE_STATE_OPEN, actor="a-1")), grpc.StatusCode.NOT_FOUND,
        "AML_CASE_NOT_FOUND")
    missing = await expect_error(amls.stub.UpdateCase(A.UpdateCaseRequest(
        name=case.name, state=A.AML_CASE_STATE_OPEN)), grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    assert missing.field_violations == [("actor", "is required")]
    [now] = (await amls.stub.ListCases(A.ListCasesRequest())).cases
    assert now.state == A.AML_CASE_STATE_CLOSED
    assert len(await amls.audit("AML_CASE")) == 1


async def test_update_case_is_idempotent_by_request_id(amls: Aml) -> None:
    await amls.monitor(structuring())
    [case] = (await amls.stub.ListCases(A.ListCasesRequest())).cases
    request = A.UpdateCaseRequest(name=case.name, state=A.AML_CASE_STATE_INVESTIGATING, actor="a-1",
                                  request_id="upd-1")
    first = (await amls.stub.UpdateCase(request)).case
    again = (await amls.stub.UpdateCase(request)).case
    assert first == again and len(await amls.audit("AML_CASE")) == 1


async def test_set_rules_changes_the_thresholds_and_is_audited(amls: Aml) -> None:
    rules = (await amls.stub.GetAmlRules(A.GetAmlRulesRequest())).rules
    assert (rules.version, rules.structuring.reporting_threshold, rules.structuring.window.seconds) == (
        "default", 50_000, 3 * 86400)
    rules.structuring.reporting_threshold = 10_000
    rules.structuring.window.CopyFrom(duration_pb2.Duration(seconds=36 * 3600))
    stored = (await amls.stub.SetAmlRules(A.SetAmlRulesRequest(rules=rules, actor="mlro-1"))).rules
    assert (stored.version, stored.actor, stored.structuring.reporting_threshold) == ("1", "mlro-1", 10_000)
    assert (await amls.stub.GetAmlRules(A.GetAmlRulesRequest())).rules == stored
    # 48,500 is no longer "just below"; 9,500 is
    small = [tx(f"n-{k}", "cust-n", BASE + timedelta(hours=k), "9500.00") for k in range(3)]
    response = await amls.monitor(structuring(), small)
    assert (response.alerts, response.rules_version) == (1, "1")
    [alert] = (await amls.stub.ListAlerts(A.ListAlertsRequest())).alerts
    assert (alert.customer_id, alert.rules_version) == ("cust-n", "1")
    assert [e.actor for e in await amls.audit("AML_RULES")] == ["mlro-1"]


async def test_an_invalid_window_is_rejected_and_nothing_changes(amls: Aml) -> None:
    for section, path, seconds in [("structuring", "rules.structuring.window", 0),
                                   ("rapid_movement", "rules.rapid_movement.window", 91 * 86400),
                                   ("counterparties", "rules.counterparties.window", -5)]:
        rules = (await amls.stub.GetAmlRules(A.GetAmlRulesRequest())).rules
        getattr(rules, section).window.CopyFrom(duration_pb2.Duration(seconds=seconds))
        error = await expect_error(amls.stub.SetAmlRules(A.SetAmlRulesRequest(rules=rules, actor="mlro-1")),
                                   grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WINDOW")
        assert [f for f, _ in error.field_violations] == [path]
    rules = (await amls.stub.GetAmlRules(A.GetAmlRulesRequest())).rules
    rules.volume_spike.ClearField("period")
    error = await expect_error(amls.stub.SetAmlRules(A.SetAmlRulesRequest(rules=rules, actor="mlro-1")),
                               grpc.StatusCode.INVALID_ARGUMENT, "INVALID_WINDOW")
    assert [f for f, _ in error.field_violations] == ["rules.volume_spike.period"]
    assert (await amls.stub.GetAmlRules(A.GetAmlRulesRequest())).rules.version == "default"
    assert await amls.count(AmlRuleSetRow) == 0 and await amls.audit("AML_RULES") == []


async def test_other_invalid_rules_name_their_field(amls: Aml) -> None:
    rules = (await amls.stub.GetAmlRules(A.GetAmlRulesRequest())).rules
    rules.structuring.margin = 1.5
    rules.geography.high_risk_countries.append("north korea")
    error = await expect_error(amls.stub.SetAmlRules(A.SetAmlRulesRequest(rules=rules, actor="mlro-1")),
                               grpc.StatusCode.INVALID_ARGUMENT, "INVALID_AML_RULE")
    assert [f for f, _ in error.field_violations] == ["rules.structuring.margin",
                                                      "rules.geography.high_risk_countries[3]"]
    assert await amls.count(AmlRuleSetRow) == 0


async def test_a_bad_transaction_rejects_its_batch_naming_the_field(amls: Aml) -> None:
    good = tx("ok-1", "cust-1", BASE, "10.00")
    error = await expect_error(amls.monitor([good, tx("bad-1", "cust-1", BASE, "-3")]),
                               grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT")
    assert [f for f, _ in error.field_violations] == ["transactions[1].amount"]
    future = tx("f-1", "cust-1", datetime.now(UTC) + timedelta(hours=1), "10.00")
    error = await expect_error(amls.monitor([future]), grpc.StatusCode.INVALID_ARGUMENT)
    assert [f for f, _ in error.field_violations] == ["transactions[0].occurred_at"]
    await expect_error(amls.monitor([]), grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    assert await amls.count(AmlTransactionRow) == 0


async def test_lists_page_and_filter(amls: Aml) -> None:
    await amls.monitor(structuring("cust-a", "a"), structuring("cust-b", "b"), structuring("cust-c", "c"))
    page = await amls.stub.ListAlerts(A.ListAlertsRequest(page_size=2))
    rest = await amls.stub.ListAlerts(A.ListAlertsRequest(page_size=2, page_token=page.next_page_token))
    assert [a.customer_id for a in [*page.alerts, *rest.alerts]] == ["cust-c", "cust-b", "cust-a"]
    assert rest.next_page_token == ""
    await expect_error(amls.stub.ListAlerts(A.ListAlertsRequest(page_size=2, rule=A.AML_RULE_STRUCTURING,
                                                                page_token=page.next_page_token)),
                       grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_QUERY_MISMATCH")
    opened = await amls.stub.ListCases(A.ListCasesRequest(state=A.AML_CASE_STATE_OPEN))
    assert len(opened.cases) == 3
    assert (await amls.stub.ListCases(A.ListCasesRequest(state=A.AML_CASE_STATE_CLOSED))).cases == []


async def test_no_customer_id_in_logs(amls: Aml, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await amls.monitor(structuring("cust-secret-77", "x"))
    [case] = (await amls.stub.ListCases(A.ListCasesRequest())).cases
    await amls.stub.UpdateCase(A.UpdateCaseRequest(name=case.name, state=A.AML_CASE_STATE_CLOSED, actor="a-1"))
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "aml monitored" in text and "cust-secret-77" not in text
    assert customer_token("cust-secret-77") in text
