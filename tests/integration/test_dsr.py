"""Data-subject requests over gRPC: the four services in-process on port 0, each with its own database.

A customer with data in every service is erased through risk's DataSubjectRequestService; afterwards no table of
any service holds the customer id or its personal data, the aggregates (rows per campaign, per partner, per
launch) are unchanged, risk keeps its proof under a keyed hash, the audit chain verifies, and no span carries the
id. Also: access archive, unknown customer, the gateway's admin token, the contracts' bad input.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from typing import Any

import grpc
import numpy as np
import pytest
from google.protobuf import timestamp_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import func, inspect, select, text

from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import history_pb2
from lodestar.common.v1 import common_pb2 as c
from lodestar.common.v1 import data_subject_pb2 as dpb
from lodestar.common.v1 import data_subject_pb2_grpc as dpbg
from lodestar.gateway.v1 import gateway_admin_service_pb2 as apb
from lodestar.gateway.v1 import gateway_admin_service_pb2_grpc as apbg
from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import event_service_pb2 as epb
from lodestar.profile.v1 import event_service_pb2_grpc as epbg
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import audit_pb2
from lodestar.risk.v1 import contact_policy_pb2 as cppb
from lodestar.risk.v1 import data_subject_request_pb2 as pb
from lodestar.risk.v1 import data_subject_request_pb2_grpc as pbg
from lodestar.risk.v1 import risk_service_pb2 as rpb
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from services.campaign.app import DEFINITION as CAMPAIGN
from services.campaign.db import Base as CampaignBase
from services.campaign.db import DecisionRow, LaunchPartitionRow, LaunchRow, OutboxRow
from services.campaign.launch import PartitionResult
from services.gateway.app import DEFINITION as GATEWAY
from services.gateway.db import Base as GatewayBase
from services.gateway.db import LeadRow, PresentedOfferRow
from services.platform.masking import customer_token
from services.platform.server import RunningService
from services.profile.app import DEFINITION as PROFILE
from services.profile.db import Base as ProfileBase
from services.risk.app import DEFINITION as RISK
from services.risk.data_subject import customer_hash
from services.risk.db import Base as RiskBase
from services.risk.db import ConsentRecordRow, DataSubjectRequestRow
from tests.helpers import expect_error

CUSTOMER = "dsr-int-cust-0042"
OTHER = "dsr-int-cust-7777"
PII = ("Lin Meihua", "lin.meihua@example.cn", "+8613811112222")
ADMIN = "dsr-admin-token"
HASH_KEY = "dsr-int-hash-key"
NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


class Stack:
    def __init__(self, profile: RunningService, campaign: RunningService, gateway: RunningService,
                 risk: RunningService) -> None:
        self.services = {"profile": profile, "campaign": campaign, "gateway": gateway, "risk": risk}
        self.channels = {name: grpc.aio.insecure_channel(s.address) for name, s in self.services.items()}
        self.dsr = pbg.DataSubjectRequestServiceStub(self.channels["risk"])

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()


@pytest.fixture
async def stack(start: Any) -> Any:
    s = await make_stack(start)
    yield s
    await s.close()


async def make_stack(start: Any) -> Stack:
    profile = await start(PROFILE)
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR="127.0.0.1:9")
    gateway = await start(GATEWAY, CAMPAIGN_SERVICE_ADDR=campaign.address, GATEWAY_ADMIN_TOKEN=ADMIN)
    risk = await start(RISK, PROFILE_SERVICE_ADDR=profile.address, CAMPAIGN_SERVICE_ADDR=campaign.address,
                       GATEWAY_SERVICE_ADDR=gateway.address, GATEWAY_ADMIN_TOKEN=ADMIN, RISK_DSR_HASH_KEY=HASH_KEY,
                       RISK_DSR_POLL_SECONDS="0.05")
    return Stack(profile, campaign, gateway, risk)


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


async def seed(s: Stack, customer_id: str, *, full_name: str = PII[0], email: str = PII[1],
               phone: str = PII[2]) -> None:
    ch = s.channels
    customer = customer_pb2.Customer(customer_id=customer_id, full_name=full_name, email=email, phone=phone,
                                     birth_date="1988-03-02", region="CN-31", time_zone="Asia/Shanghai")
    customer.attributes["income"].decimal_value = "18000"
    await ppbg.ProfileServiceStub(ch["profile"]).CreateCustomer(
        ppb.CreateCustomerRequest(customer=customer, request_id=f"create-{customer_id}"), timeout=10)
    events = [epb.Event(event_id=f"{customer_id}-e{i}", customer_id=customer_id, occurred_at=ts(NOW),
                        transaction=epb.Transaction(amount="12.50", currency="CNY", merchant_category="groceries",
                                                    channel="pos")) for i in range(3)]
    await epbg.EventServiceStub(ch["profile"]).IngestEvents(epb.IngestEventsRequest(events=events), timeout=10)

    async def history() -> Any:
        yield cpb.ImportCampaignHistoryRequest(request_id=f"hist-{customer_id}", records=[
            history_pb2.HistoryRecord(customer_id=customer_id, campaign_ref="spring", offer_id="card", arm="a",
                                      treated=True, contact_time=ts(NOW), channel=c.CHANNEL_SMS, responded=True,
                                      converted=True, revenue=120.0, context={"previous_contacts": "2"}),
            history_pb2.HistoryRecord(customer_id=customer_id, campaign_ref="spring", offer_id="card",
                                      arm="control", treated=False, contact_time=ts(NOW.replace(hour=11)))])

    imported = await cpbg.CampaignServiceStub(ch["campaign"]).ImportCampaignHistory(history(), timeout=10)
    assert imported.imported == 2
    risk = rpbg.RiskServiceStub(ch["risk"])
    await risk.RecordConsent(rpb.RecordConsentRequest(consent=spb.ConsentRecord(
        customer_id=customer_id, channel=c.CHANNEL_SMS, purpose=spb.CONSENT_PURPOSE_MARKETING,
        action=spb.CONSENT_ACTION_GRANT, source="app", actor="test"), request_id=f"consent-{customer_id}"),
        timeout=10)
    await risk.AddToDoNotContact(cppb.AddToDoNotContactRequest(customer_id=customer_id, source="call-centre",
                                                                 actor="agent-1", reason="asked"), timeout=10)
    await risk.RecordComplaint(cppb.RecordComplaintRequest(customer_id=customer_id, channel=c.CHANNEL_SMS,
                                                             source="call-centre", actor="agent-1",
                                                             category="unwanted-contact"), timeout=10)
    admin = (("x-admin-token", ADMIN),)
    gw = apbg.GatewayAdminServiceStub(ch["gateway"])
    with_partner = await gw.ListPartners(apb.ListPartnersRequest(page_size=10), metadata=admin, timeout=10)
    if not with_partner.partners:
        await gw.CreatePartner(apb.CreatePartnerRequest(partner=apb.Partner(partner_id="shop", display_name="Shop")),
                               metadata=admin, timeout=10)
    ref = (await gw.IssuePseudonym(apb.IssuePseudonymRequest(partner="partners/shop", customer_id=customer_id),
                                   metadata=admin, timeout=10)).customer_ref
    async with s.services["gateway"].runtime.database.sessionmaker() as session:
        session.add(PresentedOfferRow(partner_id="shop", decision_ref=f"dec{customer_id[-4:]}", customer_ref=ref,
                                      offer_id="card"))
        session.add(LeadRow(lead_id=f"lead{customer_id[-4:]}", partner_id="shop", customer_ref=ref,
                            customer_id=customer_id, offer_id="card", decision_ref=f"dec{customer_id[-4:]}",
                            status="SUBMITTED"))
        await session.commit()
    async with s.services["campaign"].runtime.database.sessionmaker() as session:
        session.add(DecisionRow(decision_id=f"dec{customer_id[-4:]}", customer_id=customer_id, channel=1,
                                decision_time=NOW, model_version="m1", policy_version="p1", candidates=[],
                                snapshot={"region": "CN-31", "age": 38}, snapshot_hash="0" * 64))
        await session.commit()


async def seed_launch(s: Stack) -> None:
    """A finished launch whose one partition holds both customers' assignments (one blob)."""
    ids = np.array(sorted([CUSTOMER, OTHER]), dtype=str)
    result = PartitionResult(ids, np.array([0, -1]), ids[:1], np.zeros((1, 1)), np.zeros((1, 1)))
    async with s.services["campaign"].runtime.database.sessionmaker() as session:
        session.add(LaunchRow(launch_id="launch1", campaign_id="spring", state="DONE", actor="ops", as_of=NOW,
                              contact_time=NOW))
        await session.flush()
        session.add(LaunchPartitionRow(launch_id="launch1", number=0, first_id=str(ids[0]), last_id=str(ids[-1]),
                                       size=2, state="DONE", results=result.to_blob()))
        for cid in ids:
            session.add(OutboxRow(delivery_key=f"launch1:{cid}", launch_id="launch1", customer_id=str(cid),
                                  offer_id="card", channel=1, arm_id="a", expected_value=1.0, probability=0.5))
        await session.commit()


async def dump(service: RunningService, base: Any) -> dict[str, list[str]]:
    """Every row of every table of a service, as text (binary columns read as latin-1)."""
    out: dict[str, list[str]] = {}
    async with service.runtime.database.engine.connect() as conn:
        existing = set(await conn.run_sync(lambda sync: inspect(sync).get_table_names()))
    async with service.runtime.database.sessionmaker() as session:
        for table in base.metadata.sorted_tables:
            if table.name not in existing:  # a model whose migration another change has not written yet
                continue
            rows = (await session.execute(select(table))).all()
            out[table.name] = [" | ".join(v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in row)
                               for row in rows]
    return out


async def count(service: RunningService, statement: Any) -> int:
    async with service.runtime.database.sessionmaker() as session:
        return int(await session.scalar(statement) or 0)


async def wait_done(s: Stack, name: str, timeout: float = 30.0) -> pb.DataSubjectRequest:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = (await s.dsr.GetDataSubjectRequest(pb.GetDataSubjectRequestRequest(name=name), timeout=5)).request
        if got.state in (pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED, pb.DATA_SUBJECT_REQUEST_STATE_REJECTED):
            return got
        assert asyncio.get_running_loop().time() < deadline, f"not done: {got}"
        await asyncio.sleep(0.05)


BASES = {"profile": ProfileBase, "campaign": CampaignBase, "gateway": GatewayBase, "risk": RiskBase}


async def test_erasure_across_the_four_services(stack: Stack, span_exporter: InMemorySpanExporter) -> None:
    await seed(stack, CUSTOMER)
    await seed(stack, OTHER, full_name="Wang Jun", email="wang.jun@example.cn", phone="+8613900001111")
    await seed_launch(stack)
    campaign, risk = stack.services["campaign"], stack.services["risk"]
    history_before = await count(campaign, text("SELECT count(*) FROM campaign_history"))
    consent_before = await count(risk, select(func.count()).select_from(ConsentRecordRow))

    started = await stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(
        customer_id=CUSTOMER, actor="dpo-1", reason="ticket 42", request_id="erase-42"), timeout=10)
    assert not started.already_requested
    assert started.request.kind == pb.DATA_SUBJECT_REQUEST_KIND_ERASURE
    assert started.request.customer_token == customer_token(CUSTOMER)
    done = await wait_done(stack, started.request.name)
    assert done.state == pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED, done.status_message
    assert [s.service for s in done.steps] == ["profile", "campaign", "gateway", "risk"]
    receipts = {s.service: s.receipt for s in done.steps}
    profile_tables = {t.table: t.rows_deleted for t in receipts["profile"].tables}
    assert profile_tables["customers"] == 1 and profile_tables["events"] == 3
    assert "idempotency_keys" in profile_tables  # stored responses holding the customer are scanned
    assert "customer_keys" in profile_tables  # services/profile/pii.py destroy_customer_key was called
    campaign_tables = {t.table: t.rows_pseudonymised for t in receipts["campaign"].tables}
    assert campaign_tables["campaign_history"] == 2 and campaign_tables["decisions"] == 1
    assert campaign_tables["campaign_outbox"] == 1 and campaign_tables["campaign_launch_partitions"] == 1
    gateway_deleted = {t.table: t.rows_deleted for t in receipts["gateway"].tables}
    gateway_pseudo = {t.table: t.rows_pseudonymised for t in receipts["gateway"].tables}
    assert gateway_deleted["partner_customers"] == 1 and gateway_pseudo["leads"] == 1
    assert gateway_pseudo["presented_offers"] == 1
    assert all(s.digest == s.receipt.digest and len(s.digest) == 64 for s in done.steps)
    assert done.proof_digest == hashlib.sha256("".join(s.digest for s in done.steps).encode()).hexdigest()

    # Nothing identifying remains anywhere: not the id, not the name, e-mail or phone.
    for name, service in stack.services.items():
        for table, rows in (await dump(service, BASES[name])).items():
            for row in rows:
                for needle in (CUSTOMER, *PII):
                    assert needle not in row, f"{name}.{table} still holds it: {row[:200]}"
    # ... while the other customer is untouched.
    profile_dump = await dump(stack.services["profile"], ProfileBase)
    assert any(OTHER in row and "Wang Jun" in row for row in profile_dump["customers"])
    # Aggregates survive: the same rows per campaign, the launch's members, risk's records.
    assert await count(campaign, text("SELECT count(*) FROM campaign_history")) == history_before
    assert await count(campaign, text("SELECT count(*) FROM campaign_history WHERE converted")) == 2
    async with campaign.runtime.database.sessionmaker() as session:
        blob = await session.scalar(select(LaunchPartitionRow.results))
        pseudonyms = set(await session.scalars(select(DecisionRow.customer_id)))
        snapshots = [s for s in await session.scalars(select(DecisionRow.snapshot)) if s]
    members = PartitionResult.from_blob(blob or b"").member_ids.tolist()
    assert len(members) == 2 and OTHER in members and CUSTOMER not in members
    assert len(snapshots) == 1  # the other customer's; the erased one's snapshot is cleared
    assert any(p.startswith("erased-") for p in pseudonyms)
    assert await count(stack.services["gateway"], select(func.count()).select_from(LeadRow)) == 2
    assert await count(risk, select(func.count()).select_from(ConsentRecordRow)) == consent_before
    kept = "dsr:" + customer_hash(HASH_KEY.encode(), CUSTOMER)
    assert await count(risk, select(func.count()).select_from(ConsentRecordRow)
                       .where(ConsentRecordRow.customer_id == kept)) == 1
    async with risk.runtime.database.sessionmaker() as session:
        ledger = await session.scalar(select(DataSubjectRequestRow))
    assert ledger is not None and ledger.customer_id is None
    verified = await rpbg.RiskServiceStub(stack.channels["risk"]).VerifyAuditLog(audit_pb2.VerifyAuditLogRequest(),
                                                                                 timeout=10)
    assert verified.intact

    await expect_error(_read_archive(stack, done.name), grpc.StatusCode.FAILED_PRECONDITION, "NOT_AN_ACCESS_REQUEST")
    # Again: the existing request, nothing new. By the same request id: the same request.
    again = await stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(
        customer_id=CUSTOMER, actor="dpo-2"), timeout=10)
    assert again.already_requested and again.request.name == done.name
    replay = await stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(
        customer_id=CUSTOMER, actor="dpo-1", reason="ticket 42", request_id="erase-42"), timeout=10)
    assert replay.request.name == done.name

    # No span names the customer, in attributes or status.
    for span in span_exporter.get_finished_spans():
        text_of_span = json.dumps({k: str(v) for k, v in (span.attributes or {}).items()}) + str(span.status)
        assert CUSTOMER not in text_of_span and not any(p in text_of_span for p in PII), span.name
    # The DataSubjectService calls are children of risk's request span.
    erase_spans = [sp for sp in span_exporter.get_finished_spans()
                   if sp.name.endswith("DataSubjectService/EraseCustomerData")]
    assert len(erase_spans) >= 6  # client and server span for profile, campaign and gateway
    roots = {sp.context.span_id: sp for sp in span_exporter.get_finished_spans()
             if sp.name == "DataSubjectRequest erasure"}
    clients = [sp for sp in erase_spans if sp.parent is not None and sp.parent.span_id in roots]
    assert len(clients) == 3


async def test_access_archive(stack: Stack) -> None:
    await seed(stack, CUSTOMER)
    started = await stack.dsr.StartAccessRequest(pb.StartAccessRequestRequest(
        customer_id=CUSTOMER, actor="dpo-1", reason="ticket 43"), timeout=10)
    done = await wait_done(stack, started.request.name)
    assert done.state == pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED
    data = await _read_archive(stack, done.name)
    assert hashlib.sha256(data).hexdigest() == done.proof_digest and len(data) == done.archive_size
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        manifest = json.loads(archive.read("manifest.json"))
        for entry in manifest["files"]:
            assert hashlib.sha256(archive.read(entry["name"])).hexdigest() == entry["sha256"]
        profile = json.loads(archive.read("profile.json"))["sections"]
        campaign = json.loads(archive.read("campaign.json"))["sections"]
        gateway = json.loads(archive.read("gateway.json"))["sections"]
        risk = json.loads(archive.read("risk.json"))["sections"]
    assert profile["customers"][0]["full_name"] == PII[0] and len(profile["events"]) == 3
    assert len(campaign["campaign_history"]) == 2 and len(campaign["decisions"]) == 1
    assert len(gateway["partner_customers"]) == 1 and len(gateway["leads"]) == 1
    assert {"consent_records", "do_not_contact_entries", "complaints"} <= set(risk)
    # The data is all still there: access changes nothing.
    got = await ppbg.ProfileServiceStub(stack.channels["profile"]).GetCustomer(
        ppb.GetCustomerRequest(name=f"customers/{CUSTOMER}"), timeout=10)
    assert got.customer.full_name == PII[0]


async def _read_archive(stack: Stack, name: str) -> bytes:
    chunks = [r async for r in stack.dsr.GetAccessArchive(pb.GetAccessArchiveRequest(name=name), timeout=10)]
    assert all(r.total_size == sum(len(x.chunk) for x in chunks) for r in chunks)
    return b"".join(r.chunk for r in chunks)


async def test_unknown_customer_is_not_found_and_recorded(stack: Stack) -> None:
    got = await expect_error(stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(
        customer_id="dsr-int-nobody", actor="dpo-1"), timeout=10), grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    assert "dsr-int-nobody" not in got.message
    await expect_error(stack.dsr.StartAccessRequest(pb.StartAccessRequestRequest(
        customer_id="dsr-int-nobody", actor="dpo-1"), timeout=10), grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    async with stack.services["risk"].runtime.database.sessionmaker() as session:
        rows = list(await session.scalars(select(DataSubjectRequestRow)))
    assert sorted((r.kind, r.state, r.rejection_reason) for r in rows) == [
        ("ACCESS", "REJECTED", "CUSTOMER_NOT_FOUND"), ("ERASURE", "REJECTED", "CUSTOMER_NOT_FOUND")]
    assert all(r.customer_id is None for r in rows)


async def test_bad_input(stack: Stack) -> None:
    await expect_error(stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(actor="dpo"), timeout=5),
                       grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    await expect_error(stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(customer_id=CUSTOMER),
                                                     timeout=5), grpc.StatusCode.INVALID_ARGUMENT,
                       "REQUIRED_FIELD_MISSING")
    await expect_error(stack.dsr.StartAccessRequest(pb.StartAccessRequestRequest(
        customer_id="bad id!", actor="dpo"), timeout=5), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID")
    await expect_error(stack.dsr.GetDataSubjectRequest(pb.GetDataSubjectRequestRequest(name="nope"), timeout=5),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
    await expect_error(stack.dsr.GetDataSubjectRequest(pb.GetDataSubjectRequestRequest(
        name="dataSubjectRequests/dsr_missing"), timeout=5), grpc.StatusCode.NOT_FOUND,
        "DATA_SUBJECT_REQUEST_NOT_FOUND")
    for name in ("profile", "campaign"):
        stub = dpbg.DataSubjectServiceStub(stack.channels[name])
        await expect_error(stub.EraseCustomerData(dpb.EraseCustomerDataRequest(customer_id=CUSTOMER), timeout=5),
                           grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
        await expect_error(stub.ExportCustomerData(dpb.ExportCustomerDataRequest(customer_id=""), timeout=5),
                           grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")


async def test_the_gateway_requires_the_admin_token(stack: Stack) -> None:
    stub = dpbg.DataSubjectServiceStub(stack.channels["gateway"])
    request = dpb.EraseCustomerDataRequest(customer_id=CUSTOMER, request_id="r1")
    await expect_error(stub.EraseCustomerData(request, timeout=5), grpc.StatusCode.UNAUTHENTICATED,
                       "ADMIN_TOKEN_MISSING")
    await expect_error(stub.EraseCustomerData(request, metadata=(("x-admin-token", "wrong"),), timeout=5),
                       grpc.StatusCode.UNAUTHENTICATED, "ADMIN_TOKEN_INVALID")
    answer = await stub.ExportCustomerData(dpb.ExportCustomerDataRequest(customer_id=CUSTOMER),
                                           metadata=(("x-admin-token", ADMIN),), timeout=5)
    assert answer.service == "gateway" and list(answer.sections) == []


async def test_service_erasure_is_idempotent_by_request_id(stack: Stack) -> None:
    await seed(stack, CUSTOMER)
    stub = dpbg.DataSubjectServiceStub(stack.channels["profile"])
    first = await stub.EraseCustomerData(dpb.EraseCustomerDataRequest(customer_id=CUSTOMER, request_id="r1"),
                                         timeout=10)
    second = await stub.EraseCustomerData(dpb.EraseCustomerDataRequest(customer_id=CUSTOMER, request_id="r1"),
                                          timeout=10)
    assert second == first and {t.table: t.rows_deleted for t in first.receipt.tables}["customers"] == 1
    await expect_error(stub.EraseCustomerData(dpb.EraseCustomerDataRequest(customer_id=OTHER, request_id="r1"),
                                              timeout=10), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


async def test_cli_access_erase_and_status(stack: Stack, tmp_path: Any, monkeypatch: Any) -> None:
    from lodestar_cli import main as cli

    await seed(stack, CUSTOMER)
    for name, service in stack.services.items():
        monkeypatch.setenv(f"{name.upper()}_SERVICE_ADDR", service.address)

    def run(*argv: str) -> tuple[int, dict[str, Any]]:
        out = io.StringIO()
        code = cli.run(list(argv), out=out, err=io.StringIO())
        return code, json.loads(out.getvalue())

    target = tmp_path / "archive.zip"
    code, got = await asyncio.to_thread(run, "dsr", "access", CUSTOMER, "--actor", "dpo-1", "--out", str(target),
                                        "--json", "--timeout", "10")
    assert code == 0, got
    data = target.read_bytes()
    assert got["bytes"] == len(data) and got["sha256"] == hashlib.sha256(data).hexdigest()
    assert got["request"]["customer_token"] == customer_token(CUSTOMER) and CUSTOMER not in json.dumps(got)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert "manifest.json" in archive.namelist()

    code, got = await asyncio.to_thread(run, "dsr", "erase", CUSTOMER, "--actor", "dpo-1", "--reason", "t-1",
                                        "--json", "--timeout", "10")
    assert code == 0 and got["request"]["state"] == "DATA_SUBJECT_REQUEST_STATE_SUCCEEDED", got
    request_id = got["request"]["name"].split("/")[-1]
    code, status = await asyncio.to_thread(run, "dsr", "status", request_id, "--json")
    assert code == 0 and status["request"]["proof_digest"] == got["request"]["proof_digest"]

    def run_text(*argv: str) -> str:
        out = io.StringIO()
        assert cli.run(list(argv), out=out, err=io.StringIO()) == 0
        return out.getvalue()

    text_out = await asyncio.to_thread(run_text, "dsr", "status", f"dataSubjectRequests/{request_id}")
    assert "SUCCEEDED" in text_out and "profile" in text_out and got["request"]["proof_digest"] in text_out
    assert CUSTOMER not in text_out

    code, error = await asyncio.to_thread(run, "dsr", "erase", "dsr-int-nobody", "--actor", "dpo-1", "--reason",
                                          "t-2", "--json")
    assert code == 1 and error["error"]["code"] == "NOT_FOUND" and error["error"]["reason"] == "CUSTOMER_NOT_FOUND"


# --- follow-ups: re-imported customers stay suppressed; pending messages cancelled; one open erasure -----------


@pytest.fixture
async def keyed_stack(start: Any, monkeypatch: Any) -> Any:
    """The stack; RISK_DSR_HASH_KEY reaches screening through the service's settings (services/risk/app.py), not
    the process environment, which holds another key here to prove it."""
    monkeypatch.setenv("RISK_DSR_HASH_KEY", "not-the-service-setting")
    s = await make_stack(start)
    yield s
    await s.close()


def daytime_sms(customer_id: str) -> spb.ScreenRequest:
    request = spb.ScreenRequest(customer_id=customer_id, channel=c.CHANNEL_SMS,
                                facts=spb.CustomerFacts(time_zone="Asia/Shanghai", birth_date="1988-03-02"),
                                offers=[spb.OfferSubject(offer_id="deposit-1", product_type=c.PRODUCT_TYPE_DEPOSIT,
                                                         risk_level=c.PRODUCT_RISK_LEVEL_R1)])
    request.contact_time.CopyFrom(ts(datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)))
    return request


async def test_an_erased_customer_who_comes_back_stays_suppressed(keyed_stack: Stack) -> None:
    s = keyed_stack
    await seed(s, CUSTOMER)  # consent, do-not-contact and a complaint in risk
    await seed(s, OTHER, full_name="Wang Jun", email="wang.jun@example.cn", phone="+8613900001111")
    started = await s.dsr.StartErasureRequest(pb.StartErasureRequestRequest(
        customer_id=CUSTOMER, actor="dpo-1", reason="ticket 44"), timeout=10)
    assert (await wait_done(s, started.request.name)).state == pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED
    # The bank re-imports the customer under the same id; nothing in risk is filed under the id any more.
    customer = customer_pb2.Customer(customer_id=CUSTOMER, full_name="Lin M.", region="CN-31",
                                     time_zone="Asia/Shanghai")
    await ppbg.ProfileServiceStub(s.channels["profile"]).CreateCustomer(
        ppb.CreateCustomerRequest(customer=customer, request_id="recreate-1"), timeout=10)
    risk = rpbg.RiskServiceStub(s.channels["risk"])
    await risk.RecordConsent(rpb.RecordConsentRequest(consent=spb.ConsentRecord(
        customer_id=CUSTOMER, channel=c.CHANNEL_SMS, purpose=spb.CONSENT_PURPOSE_MARKETING,
        action=spb.CONSENT_ACTION_GRANT, source="app", actor="test"), request_id="consent-again"), timeout=10)
    screened = await risk.Screen(daytime_sms(CUSTOMER), timeout=10)
    [verdict] = screened.verdicts
    assert verdict.verdict == spb.VERDICT_DENY
    assert list(verdict.reasons) == [spb.REASON_CODE_DO_NOT_CONTACT, spb.REASON_CODE_COOL_OFF]
    # ScreenBatch too, beside a customer who is not suppressed (the other one's own entries apply as before).
    batch = spb.ScreenBatchRequest(batch_id="again", offers=list(daytime_sms(CUSTOMER).offers))
    for cid in (OTHER, CUSTOMER, "dsr-int-cust-new"):
        item = batch.items.add(customer_id=cid, channel=c.CHANNEL_SMS)
        item.facts.CopyFrom(daytime_sms(cid).facts)
        item.contact_time.CopyFrom(daytime_sms(cid).contact_time)
    [response] = [r async for r in risk.ScreenBatch(iter([batch]), timeout=10)]
    got = {r.customer_id: list(r.verdicts[0].reasons) for r in response.results}
    assert got[CUSTOMER] == [spb.REASON_CODE_DO_NOT_CONTACT, spb.REASON_CODE_COOL_OFF]
    assert got[OTHER] == [spb.REASON_CODE_DO_NOT_CONTACT, spb.REASON_CODE_COOL_OFF]  # seeded the same way
    assert got["dsr-int-cust-new"] == [spb.REASON_CODE_CONSENT_MISSING]
    # The kept entries stay filed under the keyed hash: screening reads them, it does not copy them back.
    kept = "dsr:" + customer_hash(HASH_KEY.encode(), CUSTOMER)
    assert await count(s.services["risk"], text("SELECT count(*) FROM do_not_contact_entries WHERE customer_id = "
                                                 f"'{kept}'")) == 1
    assert await count(s.services["risk"], text("SELECT count(*) FROM do_not_contact_entries WHERE customer_id = "
                                                 f"'{CUSTOMER}'")) == 0


async def seed_deliveries(s: Stack) -> dict[str, str]:
    """Beside seed_launch's PENDING outbox rows: the customer's messages in every dispatcher state (delivery key
    -> state), and one QUEUED message of the other customer."""
    from services.campaign.db import DeliveryRow

    now = datetime.now(UTC)
    states = {"queued": ("QUEUED", False, None), "retrying": ("QUEUED", True, None),
              "deciding": ("SENDING", False, "worker-x"), "sending": ("SENDING", True, "worker-x"),
              "sent": ("SENT", True, None), "dead": ("DEAD", False, None)}
    keys: dict[str, str] = {}
    async with s.services["campaign"].runtime.database.sessionmaker() as session:
        for n, (label, (state, in_flight, claimant)) in enumerate(states.items()):
            for cid in ([CUSTOMER, OTHER] if label == "queued" else [CUSTOMER]):
                key = f"trigger:spring:ev{n}{cid[-4:]}"
                outbox = OutboxRow(delivery_key=key, launch_id="launch1", customer_id=cid, offer_id="card",
                                   channel=1, arm_id="a", expected_value=1.0, probability=0.5,
                                   state=state if state in ("SENT", "DEAD") else "QUEUED")
                session.add(outbox)
                await session.flush()
                session.add(DeliveryRow(
                    delivery_key=key, outbox_id=outbox.id, launch_id="launch1", channel=1, state=state,
                    next_attempt_time=now, claimed_by=claimant,
                    lease_until=now.replace(year=now.year + 1) if claimant else None, in_flight=in_flight,
                    attempts=int(in_flight), last_reason="REJECTED" if state == "DEAD" else "",
                    dead_time=now if state == "DEAD" else None, sent_time=now if state == "SENT" else None))
                keys[key] = label if cid == CUSTOMER else "other"
        await session.commit()
    return keys


async def test_erasure_cancels_the_customer_s_messages_not_yet_sent(stack: Stack) -> None:
    from services.campaign.db import CampaignUnitOfWork, DeliveryRow
    from services.campaign.dispatch import DeliveryService, Dispatcher

    await seed(stack, CUSTOMER)
    await seed_launch(stack)  # one PENDING outbox row per customer
    keys = await seed_deliveries(stack)
    campaign = stack.services["campaign"]
    factory = lambda: CampaignUnitOfWork(campaign.runtime.database)  # noqa: E731
    before = await DeliveryService(factory).stats("launch1")
    started = await stack.dsr.StartErasureRequest(pb.StartErasureRequestRequest(
        customer_id=CUSTOMER, actor="dpo-1", reason="ticket 45"), timeout=10)
    done = await wait_done(stack, started.request.name)
    assert done.state == pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED, done.status_message
    [receipt] = [step.receipt for step in done.steps if step.service == "campaign"]
    [deliveries] = [t for t in receipt.tables if t.table == "campaign_deliveries"]
    # PENDING outbox row, QUEUED, QUEUED for a retry, SENDING but not in flight: 4 cancelled
    assert deliveries.note.endswith("messages cancelled before sending (dead letter CUSTOMER_ERASED): 4")

    async with campaign.runtime.database.sessionmaker() as session:
        rows = {r.outbox_id: r for r in await session.scalars(select(DeliveryRow))}
        outbox = {o.id: o for o in await session.scalars(select(OutboxRow))}
    by_label: dict[str, tuple[str, str, str]] = {}
    for outbox_id, row in rows.items():
        label = keys.get(outbox[outbox_id].delivery_key)
        if label is None:  # keys embedding the customer were pseudonymised: the launch's outbox rows
            label = "other-pending" if outbox[outbox_id].customer_id == OTHER else "pending"
        by_label[label] = (row.state, row.last_reason, outbox[outbox_id].state)
    assert by_label == {
        "pending": ("DEAD", "CUSTOMER_ERASED", "DEAD"), "queued": ("DEAD", "CUSTOMER_ERASED", "DEAD"),
        "retrying": ("DEAD", "CUSTOMER_ERASED", "DEAD"), "deciding": ("DEAD", "CUSTOMER_ERASED", "DEAD"),
        "sending": ("SENDING", "", "QUEUED"),  # maybe at the provider right now: left to finish
        "sent": ("SENT", "", "SENT"), "dead": ("DEAD", "REJECTED", "DEAD"), "other": ("QUEUED", "", "QUEUED")}
    assert "other-pending" not in by_label  # the other customer's PENDING outbox row is untouched...
    assert [o.state for o in outbox.values() if o.customer_id == OTHER] == ["PENDING", "QUEUED"]
    # ... and the dispatcher takes it and the other QUEUED message, never a cancelled one.
    dispatcher = Dispatcher(factory, None, None, {"sms": object()}, worker_id="w-after")  # type: ignore[arg-type,dict-item]
    assert await dispatcher.enqueue() == 1
    claimed = {c.delivery_key for c in await dispatcher.claim()}
    assert claimed == {f"launch1:{OTHER}", next(k for k, v in keys.items() if v == "other")}
    # Per-launch statistics still count every message: the cancelled ones as dead letters with their reason.
    after = await DeliveryService(factory).stats("launch1")
    assert after.counts["total"] == before.counts["total"]
    assert after.dead_by_reason == {"CUSTOMER_ERASED": 4, "REJECTED": 1}
