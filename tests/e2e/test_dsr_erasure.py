"""Data-subject erasure on the four services as separate processes.

A customer is loaded with data everywhere through the real flows (profile record and events; consent; a partner
pseudonym, an offer shown through the gateway — a campaign decision, risk screening — a lead and a conversion),
then erased through `lodestar dsr erase`. Risk is killed (SIGKILL) right after the first receipt is stored and
started again: the request resumes from the second step and succeeds. Afterwards no database of any service
holds the customer id, name, e-mail or phone; the partner's lead and conversion still count (aggregates
survive); the audit chain verifies; no log line or span names the customer.
"""

from __future__ import annotations

import io
import json
import socket
import sqlite3
import time
from pathlib import Path

import grpc
import pytest

from lodestar.gateway.v1 import gateway_admin_service_pb2 as apb
from lodestar.gateway.v1 import gateway_admin_service_pb2_grpc as apbg
from lodestar.gateway.v1 import partner_service_pb2 as gpb
from lodestar.gateway.v1 import partner_service_pb2_grpc as gpbg
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.risk.v1 import audit_pb2
from lodestar.risk.v1 import data_subject_request_pb2 as pb
from lodestar.risk.v1 import data_subject_request_pb2_grpc as pbg
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar_cli import main as cli
from lodestar_cli.stack import Stack
from tests.e2e.test_walking_skeleton import CUSTOMER_ID, PII, read_jsonl, seed

pytestmark = pytest.mark.e2e

SERVICES = ("gateway", "profile", "campaign", "risk")


def free_ports(n: int) -> list[int]:
    """Fixed ports (risk needs campaign's and gateway's addresses before they start, and keeps its own across
    the restart)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, ports=dict(zip(SERVICES, free_ports(len(SERVICES)), strict=True)),
              extra_env={"DRAIN_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "2", "LOG_LEVEL": "INFO",
                         # A pause after each step leaves time to kill risk between two steps; a short lease lets
                         # the restarted risk take the request over quickly.
                         "RISK_DSR_STEP_PAUSE_SECONDS": "1.5", "RISK_DSR_LEASE_SECONDS": "2",
                         "RISK_DSR_POLL_SECONDS": "0.2", "RISK_DSR_RETRY_SECONDS": "0.5"})
    try:
        s.start()
        s.wait_serving(timeout=90)
        yield s
    finally:
        s.stop()


def load_everywhere(stack: Stack) -> None:
    api_key, ref = seed(stack)
    key = (("x-api-key", api_key),)
    admin = (("x-admin-token", stack.admin_token),)
    with grpc.insecure_channel(stack.addresses["gateway"]) as ch:
        apbg.GatewayAdminServiceStub(ch).SetPartnerScopes(apb.SetPartnerScopesRequest(
            partner="partners/e2e-shop", scopes=["offers:read", "leads:write", "conversions:write"]),
            metadata=admin, timeout=10)
        partner = gpbg.PartnerServiceStub(ch)
        offers = partner.GetOffers(gpb.GetOffersRequest(customer_ref=ref), metadata=key, timeout=10)
        assert offers.offers
        lead = partner.SubmitLead(gpb.SubmitLeadRequest(request_id="lead-1", customer_ref=ref,
                                                        offer_id=offers.offers[0].offer_id,
                                                        decision_ref=offers.decision_ref), metadata=key,
                                  timeout=10).lead
        partner.ReportConversion(gpb.ReportConversionRequest(request_id="conv-1", lead=lead.name,
                                                             revenue=gpb.Money(currency_code="CNY", units=300)),
                                 metadata=key, timeout=10)
    with grpc.insecure_channel(stack.addresses["profile"]) as ch:
        event = epb.Event(event_id="e2e-dsr-ev-1", customer_id=CUSTOMER_ID,
                          transaction=epb.Transaction(amount="88.00", currency="CNY", merchant_category="travel",
                                                      channel="online"))
        event.occurred_at.GetCurrentTime()
        epbg.EventServiceStub(ch).IngestEvents(epb.IngestEventsRequest(events=[event]), timeout=10)


def rows_of(path: Path) -> list[str]:
    """Every row of every table of a SQLite database, as text."""
    out = []
    with sqlite3.connect(path) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            for row in db.execute(f'SELECT * FROM "{table}"'):  # table names from sqlite_master
                out.append(f"{table}: " + " | ".join(
                    v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row))
    return out


def count(path: Path, sql: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(sql).fetchone()[0])


def get_request(stack: Stack, name: str) -> pb.DataSubjectRequest:
    with grpc.insecure_channel(stack.addresses["risk"]) as ch:
        return pbg.DataSubjectRequestServiceStub(ch).GetDataSubjectRequest(
            pb.GetDataSubjectRequestRequest(name=name), timeout=5).request


def restart_risk(stack: Stack) -> None:
    process = stack._processes["risk"]
    process.popen.kill()  # a crash: no graceful shutdown, the claim's lease stays in the database
    process.popen.wait(10)
    process.log_handle.close()
    stack._launch("risk")
    stack.addresses["risk"] = f"{stack.host}:{stack._wait_port('risk', time.monotonic() + 60)}"


def test_erasure_across_four_processes_survives_a_crash_of_risk(stack, monkeypatch):
    load_everywhere(stack)
    db = {s: stack.database_path(s) for s in SERVICES}
    assert count(db["campaign"], f"SELECT count(*) FROM decisions WHERE customer_id = '{CUSTOMER_ID}'") >= 1
    assert count(db["gateway"], "SELECT count(*) FROM leads") == 1
    assert count(db["gateway"], "SELECT count(*) FROM conversions") == 1
    screened = count(db["risk"], "SELECT count(*) FROM screening_decisions")
    assert screened >= 1

    for service in SERVICES:
        monkeypatch.setenv(f"{service.upper()}_SERVICE_ADDR", stack.addresses[service])
    out = io.StringIO()
    code = cli.run(["dsr", "erase", CUSTOMER_ID, "--actor", "dpo-1", "--reason", "ticket 7", "--no-wait", "--json"],
                   out=out)
    assert code == 0, out.getvalue()
    started = json.loads(out.getvalue())
    name = started["request"]["name"]
    assert started["already_requested"] is False

    # Kill risk as soon as the first receipt is stored.
    deadline = time.monotonic() + 30
    while True:
        request = get_request(stack, name)
        if request.steps[0].done:
            break
        assert time.monotonic() < deadline, request
        time.sleep(0.05)
    assert not request.steps[1].done
    first_receipt = request.steps[0].receipt
    restart_risk(stack)

    deadline = time.monotonic() + 60
    while request.state != pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED:
        assert time.monotonic() < deadline, request
        time.sleep(0.2)
        request = get_request(stack, name)
    assert [s.service for s in request.steps] == ["profile", "campaign", "gateway", "risk"]
    assert request.steps[0].receipt == first_receipt and request.steps[0].attempts == 1  # not redone
    assert all(s.done and len(s.digest) == 64 for s in request.steps)

    # Nothing identifying remains in any service's database.
    for service in SERVICES:
        for row in rows_of(db[service]):
            for needle in (CUSTOMER_ID, *PII):
                assert needle not in row, f"{service} still holds it: {row[:200]}"
    # Aggregates survive: the partner's lead and conversion, campaign's decisions, risk's screening records.
    assert count(db["gateway"], "SELECT count(*) FROM leads WHERE customer_id LIKE 'erased-%'") == 1
    assert count(db["gateway"], "SELECT count(*) FROM conversions") == 1
    assert count(db["campaign"], "SELECT count(*) FROM decisions WHERE customer_id LIKE 'erased-%'") >= 1
    assert count(db["risk"], "SELECT count(*) FROM screening_decisions") == screened
    assert count(db["profile"], "SELECT count(*) FROM customers") == 0
    with grpc.insecure_channel(stack.addresses["risk"]) as ch:
        assert rpbg.RiskServiceStub(ch).VerifyAuditLog(audit_pb2.VerifyAuditLogRequest(), timeout=10).intact

    # Asked again (the CLI, waiting): the existing request.
    out = io.StringIO()
    code = cli.run(["dsr", "erase", CUSTOMER_ID, "--actor", "dpo-2", "--reason", "again", "--json"], out=out)
    assert code == 0 and json.loads(out.getvalue())["already_requested"] is True
    out = io.StringIO()
    assert cli.run(["dsr", "status", name.split("/")[-1], "--json"], out=out) == 0
    assert json.loads(out.getvalue())["request"]["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED"

    stack.stop()
    for service in SERVICES:
        for path in (stack.log_path(service), stack.trace_path(service)):
            text = path.read_text() if path.exists() else ""
            assert CUSTOMER_ID not in text and not any(p in text for p in PII), path
    spans = [s for svc in SERVICES for s in read_jsonl(stack.trace_path(svc))]
    assert any(s["name"] == "DataSubjectRequest erasure" for s in spans)
