"""RiskService over a real aio server on port 0, a real stub and a real database (SQLite, or PostgreSQL when
TEST_DATABASE_URL is set)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import grpc
import pytest
from google.protobuf import timestamp_pb2
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import func, select

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import risk_service_pb2, risk_service_pb2_grpc, screening_pb2
from services.platform.masking import customer_token
from services.platform.server import RunningService
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_POLICY_VERSION
from services.risk.app import DEFINITION
from services.risk.db import ConsentRecordRow, IdempotencyKey, ScreeningDecisionRow
from tests.helpers import expect_error

SHANGHAI = ZoneInfo("Asia/Shanghai")
SCREEN_METHOD = "/lodestar.risk.v1.RiskService/Screen"
GRANT, WITHDRAW = screening_pb2.CONSENT_ACTION_GRANT, screening_pb2.CONSENT_ACTION_WITHDRAW
MARKETING = screening_pb2.CONSENT_PURPOSE_MARKETING


def _local_day(days_ahead: int, hour: int, minute: int = 0) -> datetime:
    """A wall-clock time in Shanghai `days_ahead` days from today, as UTC: always in the future."""
    day = datetime.now(SHANGHAI).date() + timedelta(days=days_ahead)
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


NOON = _local_day(3, 12)  # a daytime contact, outside quiet hours


def ts(value: datetime) -> timestamp_pb2.Timestamp:
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out


@dataclass
class Risk:
    svc: RunningService
    stub: risk_service_pb2_grpc.RiskServiceStub

    async def count(self, model: type) -> int:
        async with self.svc.runtime.database.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(model)) or 0)

    async def rows(self, model: type) -> list[Any]:
        async with self.svc.runtime.database.sessionmaker() as session:
            return list(await session.scalars(select(model).order_by(model.id)))  # type: ignore[attr-defined]

    async def rows_by(self, model: type, order: Any) -> list[Any]:
        async with self.svc.runtime.database.sessionmaker() as session:
            return list(await session.scalars(select(model).order_by(order)))


@pytest.fixture
async def risk(start: Callable[..., Any]) -> AsyncIterator[Risk]:
    svc = await start(DEFINITION)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        yield Risk(svc, risk_service_pb2_grpc.RiskServiceStub(channel))


def consent_request(customer_id: str = "cust-1", *, channel: int = common_pb2.CHANNEL_SMS,
                    purpose: int = MARKETING, action: int = GRANT, source: str = "mobile-app",
                    actor: str = "system:onboarding", expire_time: datetime | None = None,
                    request_id: str = "") -> risk_service_pb2.RecordConsentRequest:
    record = screening_pb2.ConsentRecord(customer_id=customer_id, channel=channel, purpose=purpose, action=action,
                                         source=source, actor=actor)
    if expire_time is not None:
        record.expire_time.CopyFrom(ts(expire_time))
    return risk_service_pb2.RecordConsentRequest(consent=record, request_id=request_id)


def screen_request(customer_id: str = "cust-1", *, channel: int = common_pb2.CHANNEL_SMS,
                   at: datetime | None = NOON, offers: list[screening_pb2.OfferSubject] | None = None,
                   **facts: Any) -> screening_pb2.ScreenRequest:
    facts.setdefault("time_zone", "Asia/Shanghai")
    facts.setdefault("birth_date", "1990-05-17")
    facts.setdefault("risk_tolerance", common_pb2.RISK_TOLERANCE_C3)
    request = screening_pb2.ScreenRequest(
        customer_id=customer_id, channel=channel, facts=screening_pb2.CustomerFacts(**facts),
        offers=offers if offers is not None else [
            screening_pb2.OfferSubject(offer_id="deposit-1", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT,
                                       risk_level=common_pb2.PRODUCT_RISK_LEVEL_R1)],
    )
    if at is not None:
        request.contact_time.CopyFrom(ts(at))
    return request


def verdicts(response: screening_pb2.ScreenResponse) -> list[tuple[str, int, list[int]]]:
    return [(v.offer_id, v.verdict, list(v.reasons)) for v in response.verdicts]


ALLOWED = [("deposit-1", screening_pb2.VERDICT_ALLOW, [])]
NO_CONSENT = [("deposit-1", screening_pb2.VERDICT_DENY, [screening_pb2.REASON_CODE_CONSENT_MISSING])]


# --- consent and screening ----------------------------------------------------------------------------------

async def test_recorded_consent_allows_the_contact(risk: Risk) -> None:
    before = datetime.now(UTC)
    recorded = (await risk.stub.RecordConsent(consent_request())).consent
    assert (recorded.customer_id, recorded.channel, recorded.purpose, recorded.action) == (
        "cust-1", common_pb2.CHANNEL_SMS, MARKETING, GRANT)
    assert (recorded.source, recorded.actor) == ("mobile-app", "system:onboarding")
    assert before <= recorded.record_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC)
    assert not recorded.HasField("expire_time")

    response = await risk.stub.Screen(screen_request())
    assert verdicts(response) == ALLOWED
    assert response.policy_version == "2026.12-1"


async def test_no_consent_denies(risk: Risk) -> None:
    assert verdicts(await risk.stub.Screen(screen_request())) == NO_CONSENT


async def test_consent_on_another_customer_or_channel_does_not_count(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request("cust-2"))
    await risk.stub.RecordConsent(consent_request("cust-1", channel=common_pb2.CHANNEL_EMAIL))
    assert verdicts(await risk.stub.Screen(screen_request("cust-1"))) == NO_CONSENT


async def test_withdrawal_after_a_grant_denies(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request(action=GRANT))
    assert verdicts(await risk.stub.Screen(screen_request())) == ALLOWED
    await risk.stub.RecordConsent(consent_request(action=WITHDRAW, source="call-centre"))
    # the withdrawal also starts the cool-off (policy 2026.12-1), until a later grant on the channel
    assert verdicts(await risk.stub.Screen(screen_request())) == [
        ("deposit-1", screening_pb2.VERDICT_DENY,
         [screening_pb2.REASON_CODE_CONSENT_MISSING, screening_pb2.REASON_CODE_COOL_OFF])]
    await risk.stub.RecordConsent(consent_request(action=GRANT, source="branch"))
    assert verdicts(await risk.stub.Screen(screen_request())) == ALLOWED


async def test_grant_expired_before_the_contact_time_denies(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request("cust-exp", expire_time=NOON - timedelta(hours=1)))
    await risk.stub.RecordConsent(consent_request("cust-ok", expire_time=NOON + timedelta(hours=1)))
    assert verdicts(await risk.stub.Screen(screen_request("cust-exp"))) == NO_CONSENT
    assert verdicts(await risk.stub.Screen(screen_request("cust-ok"))) == ALLOWED


async def test_grant_expiring_exactly_at_contact_time_denies(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request(expire_time=NOON))
    assert verdicts(await risk.stub.Screen(screen_request(at=NOON))) == NO_CONSENT
    assert verdicts(await risk.stub.Screen(screen_request(at=NOON - timedelta(seconds=1)))) == ALLOWED


async def test_partner_channel_needs_partner_sharing_consent(risk: Risk) -> None:
    partner = {"channel": common_pb2.CHANNEL_PARTNER}
    await risk.stub.RecordConsent(consent_request(**partner))  # marketing: not enough
    assert verdicts(await risk.stub.Screen(screen_request(**partner))) == NO_CONSENT
    await risk.stub.RecordConsent(consent_request(purpose=screening_pb2.CONSENT_PURPOSE_PARTNER_SHARING, **partner))
    assert verdicts(await risk.stub.Screen(screen_request(**partner))) == ALLOWED


async def test_all_reasons_of_all_offers_come_back(risk: Risk) -> None:
    offers = [
        screening_pb2.OfferSubject(offer_id="deposit-1", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT,
                                   risk_level=common_pb2.PRODUCT_RISK_LEVEL_R1),
        screening_pb2.OfferSubject(offer_id="card-1", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD,
                                   risk_level=common_pb2.PRODUCT_RISK_LEVEL_R4),
    ]
    response = await risk.stub.Screen(
        screen_request(at=_local_day(3, 22), offers=offers, birth_date="", in_collections=True))
    assert verdicts(response) == [
        ("deposit-1", screening_pb2.VERDICT_DENY,
         [screening_pb2.REASON_CODE_CONSENT_MISSING, screening_pb2.REASON_CODE_QUIET_HOURS]),
        ("card-1", screening_pb2.VERDICT_DENY,
         [screening_pb2.REASON_CODE_CONSENT_MISSING, screening_pb2.REASON_CODE_QUIET_HOURS,
          screening_pb2.REASON_CODE_AGE_UNKNOWN, screening_pb2.REASON_CODE_IN_COLLECTIONS,
          screening_pb2.REASON_CODE_UNSUITABLE]),
    ]


async def test_quiet_hours_alone_hold_and_unknown_zone_holds(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request())
    held = await risk.stub.Screen(screen_request(at=_local_day(3, 21)))
    assert verdicts(held) == [("deposit-1", screening_pb2.VERDICT_HOLD, [screening_pb2.REASON_CODE_QUIET_HOURS])]
    unknown = await risk.stub.Screen(screen_request(time_zone="", region="US"))
    assert verdicts(unknown) == [
        ("deposit-1", screening_pb2.VERDICT_HOLD, [screening_pb2.REASON_CODE_TIMEZONE_UNKNOWN])]
    by_region = await risk.stub.Screen(screen_request(at=_local_day(3, 21), time_zone="", region="CN-31"))
    assert verdicts(by_region) == [("deposit-1", screening_pb2.VERDICT_HOLD, [screening_pb2.REASON_CODE_QUIET_HOURS])]


async def test_quiet_hours_come_from_settings(start: Callable[..., Any]) -> None:
    svc = await start(DEFINITION, RISK_QUIET_HOURS_START="12:00", RISK_QUIET_HOURS_END="13:00")
    async with grpc.aio.insecure_channel(svc.address) as channel:
        stub = risk_service_pb2_grpc.RiskServiceStub(channel)
        await stub.RecordConsent(consent_request())
        at_lunch = await stub.Screen(screen_request(at=_local_day(3, 12, 30)))
        at_night = await stub.Screen(screen_request(at=_local_day(3, 22)))
    assert verdicts(at_lunch) == [("deposit-1", screening_pb2.VERDICT_HOLD, [screening_pb2.REASON_CODE_QUIET_HOURS])]
    assert verdicts(at_night) == ALLOWED


# --- the audit trail ----------------------------------------------------------------------------------------

async def test_every_screen_call_writes_one_audit_row(risk: Risk) -> None:
    await risk.stub.Screen(screen_request("cust-a"))
    before = datetime.now(UTC)
    await risk.stub.Screen(screen_request("cust-b", channel=common_pb2.CHANNEL_IN_APP, at=None))
    after = datetime.now(UTC)

    first, second = await risk.rows(ScreeningDecisionRow)
    assert (first.customer_id, first.channel, first.contact_time, first.policy_version) == (
        "cust-a", "SMS", NOON, "2026.12-1")
    assert first.verdicts == [{"offer_id": "deposit-1", "verdict": "DENY", "reasons": ["CONSENT_MISSING"]}]
    assert (second.customer_id, second.channel, second.policy_version) == ("cust-b", "IN_APP", "2026.12-1")
    assert before <= second.contact_time <= after  # contact_time defaults to now
    assert second.verdicts == [{"offer_id": "deposit-1", "verdict": "ALLOW", "reasons": []}]
    assert first.create_time <= second.create_time


async def test_screen_reads_consent_with_one_query(risk: Risk, span_exporter: InMemorySpanExporter) -> None:
    await risk.stub.RecordConsent(consent_request())
    await risk.stub.RecordConsent(consent_request(channel=common_pb2.CHANNEL_EMAIL))
    span_exporter.clear()
    offers = [screening_pb2.OfferSubject(offer_id=f"o-{i}", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT)
              for i in range(20)]
    await risk.stub.Screen(screen_request(offers=offers))
    server = await _server_span(span_exporter, SCREEN_METHOD)
    statements = [str(s.attributes.get("db.statement", "")) for s in _trace_of(span_exporter, server)]
    consent_reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "consent_records" in s]
    assert len(consent_reads) == 1, statements
    assert any(s.lstrip().upper().startswith("INSERT") and "screening_decisions" in s for s in statements)


# --- history ------------------------------------------------------------------------------------------------

async def test_history_is_newest_first_across_pages(risk: Risk) -> None:
    sent = [
        (common_pb2.CHANNEL_SMS, GRANT), (common_pb2.CHANNEL_EMAIL, GRANT), (common_pb2.CHANNEL_SMS, WITHDRAW),
        (common_pb2.CHANNEL_WECHAT, GRANT), (common_pb2.CHANNEL_SMS, GRANT),
    ]
    for i, (channel, action) in enumerate(sent):
        await risk.stub.RecordConsent(consent_request("cust-h", channel=channel, action=action, source=f"s{i}"))
    await risk.stub.RecordConsent(consent_request("cust-other"))

    pages: list[list[str]] = []
    token = ""
    while True:
        page = await risk.stub.ListConsentHistory(
            risk_service_pb2.ListConsentHistoryRequest(customer_id="cust-h", page_size=2, page_token=token))
        pages.append([c.source for c in page.consents])
        assert all(c.customer_id == "cust-h" for c in page.consents)
        token = page.next_page_token
        if not token:
            break
    assert pages == [["s4", "s3"], ["s2", "s1"], ["s0"]]

    sms = await risk.stub.ListConsentHistory(
        risk_service_pb2.ListConsentHistoryRequest(customer_id="cust-h", channel=common_pb2.CHANNEL_SMS))
    assert [(c.source, c.action) for c in sms.consents] == [("s4", GRANT), ("s2", WITHDRAW), ("s0", GRANT)]
    assert sms.next_page_token == ""
    times = [c.record_time.ToDatetime() for c in sms.consents]
    assert times == sorted(times, reverse=True)


async def test_history_of_an_unknown_customer_is_empty(risk: Risk) -> None:
    page = await risk.stub.ListConsentHistory(risk_service_pb2.ListConsentHistoryRequest(customer_id="nobody"))
    assert list(page.consents) == [] and page.next_page_token == ""


async def test_page_token_is_bound_to_its_query(risk: Risk) -> None:
    for _ in range(3):
        await risk.stub.RecordConsent(consent_request("cust-p"))
    first = await risk.stub.ListConsentHistory(
        risk_service_pb2.ListConsentHistoryRequest(customer_id="cust-p", page_size=1))
    assert first.next_page_token
    got = await expect_error(
        risk.stub.ListConsentHistory(risk_service_pb2.ListConsentHistoryRequest(
            customer_id="cust-other", page_size=1, page_token=first.next_page_token)),
        grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_QUERY_MISMATCH")
    assert [f for f, _ in got.field_violations] == ["page_token"]


# --- idempotency --------------------------------------------------------------------------------------------

async def test_record_consent_with_the_same_request_id_is_recorded_once(risk: Risk) -> None:
    request = consent_request(request_id="req-42")
    first = await risk.stub.RecordConsent(request)
    second = await risk.stub.RecordConsent(request)
    assert second == first
    assert await risk.count(ConsentRecordRow) == 1
    assert await risk.count(IdempotencyKey) == 1


async def test_reusing_a_request_id_for_another_consent_is_refused(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request(request_id="req-42"))
    got = await expect_error(
        risk.stub.RecordConsent(consent_request(action=WITHDRAW, request_id="req-42")),
        grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    assert [f for f, _ in got.field_violations] == ["request_id"]
    rows = await risk.rows(ConsentRecordRow)
    assert [(r.customer_id, r.action) for r in rows] == [("cust-1", "GRANT")]
    assert await risk.count(IdempotencyKey) == 1


async def test_requests_without_request_id_are_not_deduplicated(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request())
    await risk.stub.RecordConsent(consent_request())
    assert await risk.count(ConsentRecordRow) == 2
    assert await risk.count(IdempotencyKey) == 0


# --- bad input ----------------------------------------------------------------------------------------------

def _offer(**fields: Any) -> screening_pb2.OfferSubject:
    fields.setdefault("offer_id", "o-1")
    fields.setdefault("product_type", common_pb2.PRODUCT_TYPE_DEPOSIT)
    return screening_pb2.OfferSubject(**fields)


def _with(request: Any, mutate: Callable[[Any], None]) -> Any:
    mutate(request)
    return request


def _clear(message: Any, field: str) -> None:
    message.ClearField(field)


REQ, UNKNOWN, BAD_ID, INVALID = "REQUIRED_FIELD_MISSING", "UNKNOWN_ENUM_VALUE", "INVALID_ID", "INVALID_ARGUMENT"
FAR_FUTURE_BIRTH = (datetime.now(UTC) + timedelta(days=2)).date().isoformat()

SCREEN_ERRORS = [
    ("no customer", screen_request(""), REQ, "customer_id"),
    ("bad customer", screen_request("cust 1"), BAD_ID, "customer_id"),
    ("no channel", screen_request(channel=0), REQ, "channel"),
    ("unknown channel", screen_request(channel=99), UNKNOWN, "channel"),
    ("no offers", screen_request(offers=[]), REQ, "offers"),
    ("101 offers", screen_request(offers=[_offer(offer_id=f"o-{i}") for i in range(101)]), "TOO_MANY_OFFERS",
     "offers"),
    ("no offer id", screen_request(offers=[_offer(), _offer(offer_id="")]), REQ, "offers[1].offer_id"),
    ("bad offer id", screen_request(offers=[_offer(offer_id="o/1")]), BAD_ID, "offers[0].offer_id"),
    ("duplicate offer", screen_request(offers=[_offer(), _offer()]), "DUPLICATE_OFFER", "offers[1].offer_id"),
    ("no product type", screen_request(offers=[_offer(product_type=0)]), REQ, "offers[0].product_type"),
    ("unknown product", screen_request(offers=[_offer(product_type=42)]), UNKNOWN, "offers[0].product_type"),
    ("unknown risk level", screen_request(offers=[_offer(risk_level=9)]), UNKNOWN, "offers[0].risk_level"),
    ("bad time zone", screen_request(time_zone="Mars/Olympus"), INVALID, "facts.time_zone"),
    ("bad birth date", screen_request(birth_date="1990-13-01"), INVALID, "facts.birth_date"),
    ("future birth date", screen_request(birth_date=FAR_FUTURE_BIRTH), INVALID, "facts.birth_date"),
    ("unknown tolerance", screen_request(risk_tolerance=8), UNKNOWN, "facts.risk_tolerance"),
]

PAST = datetime.now(UTC) - timedelta(minutes=1)
CONSENT_ERRORS = [
    ("no consent", risk_service_pb2.RecordConsentRequest(), REQ, "consent"),
    ("no customer", consent_request(""), REQ, "consent.customer_id"),
    ("bad customer", consent_request("a b"), BAD_ID, "consent.customer_id"),
    ("no channel", consent_request(channel=0), REQ, "consent.channel"),
    ("unknown channel", consent_request(channel=77), UNKNOWN, "consent.channel"),
    ("no purpose", consent_request(purpose=0), REQ, "consent.purpose"),
    ("unknown purpose", consent_request(purpose=9), UNKNOWN, "consent.purpose"),
    ("no action", consent_request(action=0), REQ, "consent.action"),
    ("unknown action", consent_request(action=3), UNKNOWN, "consent.action"),
    ("no source", consent_request(source=""), REQ, "consent.source"),
    ("long source", consent_request(source="s" * 65), INVALID, "consent.source"),
    ("long actor", consent_request(actor="a" * 65), INVALID, "consent.actor"),
    ("expired", consent_request(expire_time=PAST), INVALID, "consent.expire_time"),
    ("bad request id", consent_request(request_id="req 1"), "INVALID_REQUEST_ID", "request_id"),
]

HISTORY_ERRORS = [
    ("no customer", risk_service_pb2.ListConsentHistoryRequest(), REQ, "customer_id"),
    ("bad customer", risk_service_pb2.ListConsentHistoryRequest(customer_id="x y"), BAD_ID, "customer_id"),
    ("unknown channel", risk_service_pb2.ListConsentHistoryRequest(customer_id="c", channel=50), UNKNOWN,
     "channel"),
    ("negative page size", risk_service_pb2.ListConsentHistoryRequest(customer_id="c", page_size=-1),
     "INVALID_PAGE_SIZE", "page_size"),
    ("forged token", risk_service_pb2.ListConsentHistoryRequest(customer_id="c", page_token="abc.def"),
     "INVALID_PAGE_TOKEN", "page_token"),
]


def _cases(rpc: str, cases: list[tuple[str, Any, str, str]]) -> list[Any]:
    return [pytest.param(rpc, request, reason, field, id=f"{rpc}:{name}") for name, request, reason, field in cases]


@pytest.mark.parametrize(
    ("rpc", "request_message", "reason", "field"),
    _cases("Screen", SCREEN_ERRORS) + _cases("RecordConsent", CONSENT_ERRORS)
    + _cases("ListConsentHistory", HISTORY_ERRORS),
)
async def test_bad_input_is_invalid_argument_naming_the_field(
    risk: Risk, rpc: str, request_message: Any, reason: str, field: str
) -> None:
    got = await expect_error(getattr(risk.stub, rpc)(request_message), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert field in [f for f, _ in got.field_violations], got.field_violations
    assert got.domain == "lodestar.risk"
    assert got.metadata.get("field") == got.field_violations[0][0]
    assert await risk.count(ConsentRecordRow) == 0
    assert await risk.count(ScreeningDecisionRow) == 0
    assert await risk.count(IdempotencyKey) == 0


# --- telemetry and logs -------------------------------------------------------------------------------------

async def _server_spans(exporter: InMemorySpanExporter, name: str, count: int = 1) -> list[ReadableSpan]:
    """The server spans of `name`, oldest first, once `count` have ended (a span may end a moment after the
    client has its answer)."""
    found: list[ReadableSpan] = []
    for _ in range(100):
        found = [s for s in exporter.get_finished_spans() if s.name == name and s.kind == SpanKind.SERVER]
        if len(found) >= count:
            return sorted(found, key=lambda s: s.start_time or 0)
        await asyncio.sleep(0.02)
    raise AssertionError(f"{len(found)} server spans {name}, expected {count}")


async def _server_span(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    (span,) = await _server_spans(exporter, name)
    return span


def _trace_of(exporter: InMemorySpanExporter, root: ReadableSpan) -> list[ReadableSpan]:
    trace_id = root.context.trace_id
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id]


async def test_spans_and_logs_carry_the_customer_token_never_the_id(
    risk: Risk, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    raw_id = "cust-9f3e7a-secret"
    caplog.set_level(logging.INFO)  # the production default; our own loggers at DEBUG too
    caplog.set_level(logging.DEBUG, logger="lodestar")
    await risk.stub.RecordConsent(consent_request(raw_id, request_id="req-span"))
    await risk.stub.ListConsentHistory(risk_service_pb2.ListConsentHistoryRequest(customer_id=raw_id))
    await risk.stub.Screen(screen_request(raw_id))
    await expect_error(risk.stub.Screen(screen_request(raw_id, channel=0)), grpc.StatusCode.INVALID_ARGUMENT)

    server, refused = await _server_spans(span_exporter, SCREEN_METHOD, count=2)
    assert server.attributes is not None and refused.attributes is not None
    assert server.attributes[ATTR_CUSTOMER_TOKEN] == customer_token(raw_id)
    assert server.attributes[ATTR_POLICY_VERSION] == "2026.12-1"
    # A refused call is still attributed to the customer (by token), and names its error reason.
    assert refused.attributes[ATTR_CUSTOMER_TOKEN] == customer_token(raw_id)
    assert refused.attributes["lodestar.error.reason"] == "REQUIRED_FIELD_MISSING"
    assert ATTR_POLICY_VERSION not in refused.attributes
    children = [s for s in _trace_of(span_exporter, server) if s.parent and s.parent.span_id == server.context.span_id]
    assert children, "the database spans belong to the Screen trace"

    for name in ("RecordConsent", "ListConsentHistory"):
        span = await _server_span(span_exporter, f"/lodestar.risk.v1.RiskService/{name}")
        assert span.attributes and span.attributes[ATTR_CUSTOMER_TOKEN] == customer_token(raw_id)

    spans = span_exporter.get_finished_spans()
    assert len(spans) > 4
    for span in spans:
        for key, value in (span.attributes or {}).items():
            assert raw_id not in str(value), f"{span.name} {key}"
        for event in span.events:
            assert raw_id not in str(dict(event.attributes or {})), span.name

    screened = [r for r in caplog.records if r.getMessage() == "screened"]
    assert screened and screened[0].customer_token == customer_token(raw_id)  # type: ignore[attr-defined]
    for record in caplog.records:
        assert raw_id not in record.getMessage()
        assert raw_id not in str(record.__dict__), record.getMessage()
