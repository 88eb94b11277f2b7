# ruff: noqa: RUF001  (full-width characters are the point of these tests)
"""Risk's batch screening, do-not-contact, cool-off, contact caps with reservations, content checks and the
audit chain, over a real aio server on port 0 and a real database (SQLite, or PostgreSQL when
TEST_DATABASE_URL is set)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import delete, func, insert, select, update

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import audit_pb2, contact_policy_pb2, content_pb2, risk_service_pb2_grpc, screening_pb2
from services.platform.masking import customer_token
from services.risk.app import DEFINITION
from services.risk.audit import entry_hash
from services.risk.db import (
    AuditEntryRow,
    ComplaintRow,
    DoNotContactRow,
    ReservationRow,
    ScreeningDecisionRow,
)
from tests.helpers import expect_error
from tests.integration.test_risk_service import NOON, Risk, consent_request, screen_request, verdicts

R = screening_pb2
SMS, EMAIL, IN_APP = common_pb2.CHANNEL_SMS, common_pb2.CHANNEL_EMAIL, common_pb2.CHANNEL_IN_APP


@pytest.fixture
async def risk(start: Callable[..., Any]) -> AsyncIterator[Risk]:
    svc = await start(DEFINITION, RISK_CAPS="sms:2/day;email:1/week;all:3/week", RISK_COOL_OFF_DAYS="10")
    async with grpc.aio.insecure_channel(svc.address) as channel:
        yield Risk(svc, risk_service_pb2_grpc.RiskServiceStub(channel))


def _reasons(response: screening_pb2.ScreenResponse) -> list[int]:
    [verdict] = response.verdicts
    return list(verdict.reasons)


# --- ScreenBatch ------------------------------------------------------------------------------------------------

def _batch(n: int, *, batch_id: str = "b1", at: datetime = NOON, channel: int = SMS) -> R.ScreenBatchRequest:
    offers = [R.OfferSubject(offer_id="deposit-1", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT,
                             risk_level=common_pb2.PRODUCT_RISK_LEVEL_R1),
              R.OfferSubject(offer_id="card-1", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD)]
    request = R.ScreenBatchRequest(batch_id=batch_id, offers=offers)
    for i in range(n):
        item = request.items.add(customer_id=f"cust-{i}", channel=channel)
        item.facts.time_zone = "Asia/Shanghai"
        item.facts.birth_date = "2012-01-01" if i % 4 == 1 else "1980-01-01"
        item.facts.risk_tolerance = common_pb2.RISK_TOLERANCE_C3
        item.contact_time.FromDatetime(at)
    return request


async def test_screen_batch_gives_the_same_verdicts_as_screen(risk: Risk) -> None:
    for i in range(0, 12, 3):
        await risk.stub.RecordConsent(consent_request(f"cust-{i}"))
    await risk.stub.AddToDoNotContact(contact_policy_pb2.AddToDoNotContactRequest(customer_id="cust-6",
                                                                                  source="call-centre"))
    first, second = _batch(12, batch_id="one"), _batch(5, batch_id="two", channel=IN_APP)
    second.items[0].offer_ids.append("card-1")
    responses = [r async for r in risk.stub.ScreenBatch(iter([first, second]))]
    assert [r.batch_id for r in responses] == ["one", "two"]
    assert [len(r.results) for r in responses] == [12, 5]
    assert responses[0].policy_version == "2026.12-1"
    for request, response in zip([first, second], responses, strict=True):
        for item, result in zip(request.items, response.results, strict=True):
            assert result.customer_id == item.customer_id
            single = screen_request(item.customer_id, channel=item.channel, offers=[
                o for o in request.offers if not item.offer_ids or o.offer_id in item.offer_ids],
                birth_date=item.facts.birth_date)
            expected = await risk.stub.Screen(single)
            assert list(result.verdicts) == list(expected.verdicts), item.customer_id
    # spot checks: consent + adult -> allowed; do-not-contact; minors get UNDERAGE on the card
    by_id = {r.customer_id: r for r in responses[0].results}
    assert [(v.offer_id, v.verdict) for v in by_id["cust-0"].verdicts] == [
        ("deposit-1", R.VERDICT_ALLOW), ("card-1", R.VERDICT_ALLOW)]
    assert list(by_id["cust-6"].verdicts[0].reasons) == [R.REASON_CODE_DO_NOT_CONTACT]
    assert list(by_id["cust-5"].verdicts[1].reasons) == [R.REASON_CODE_CONSENT_MISSING, R.REASON_CODE_UNDERAGE]
    assert [v.offer_id for v in responses[1].results[0].verdicts] == ["card-1"]


async def test_screen_batch_writes_a_decision_row_per_customer_and_one_audit_entry_per_message(risk: Risk) -> None:
    responses = [r async for r in risk.stub.ScreenBatch(iter([_batch(30, batch_id="a"), _batch(20, batch_id="b")]))]
    assert len(responses) == 2
    rows = await risk.rows(ScreeningDecisionRow)
    assert len(rows) == 50
    assert rows[0].customer_id == "cust-0" and rows[0].verdicts[0]["offer_id"] == "deposit-1"
    entries = await risk.rows_by(AuditEntryRow, AuditEntryRow.seq)
    assert [(e.seq, e.kind, e.subject) for e in entries] == [(1, "SCREEN_BATCH", "batch:30"),
                                                            (2, "SCREEN_BATCH", "batch:20")]
    assert '"customers":30' in entries[0].summary and '"screenings":60' in entries[0].summary
    assert all("cust-" not in e.summary + e.subject for e in entries)
    verified = await risk.stub.VerifyAuditLog(audit_pb2.VerifyAuditLogRequest())
    assert (verified.intact, verified.entries_checked) == (True, 2)


@pytest.mark.parametrize(("mutate", "field", "reason"), [
    (lambda r: setattr(r.items[1], "customer_id", ""), "items[1].customer_id", "REQUIRED_FIELD_MISSING"),
    (lambda r: setattr(r.items[1], "customer_id", "cust-0"), "items[1].customer_id", "DUPLICATE_CUSTOMER"),
    (lambda r: setattr(r.items[2], "channel", 99), "items[2].channel", "UNKNOWN_ENUM_VALUE"),
    (lambda r: setattr(r.items[2], "channel", 0), "items[2].channel", "REQUIRED_FIELD_MISSING"),
    (lambda r: r.items[0].offer_ids.append("nope"), "items[0].offer_ids", "UNKNOWN_OFFER"),
    (lambda r: setattr(r.items[0].facts, "time_zone", "Mars/Olympus"), "items[0].facts.time_zone",
     "INVALID_ARGUMENT"),
    (lambda r: setattr(r.items[0].facts, "birth_date", "1990-13-40"), "items[0].facts.birth_date",
     "INVALID_ARGUMENT"),
    (lambda r: r.ClearField("offers"), "offers", "REQUIRED_FIELD_MISSING"),
])
async def test_screen_batch_bad_input_names_the_item(risk: Risk, mutate: Callable[[Any], None], field: str,
                                                     reason: str) -> None:
    request = _batch(3)
    mutate(request)
    call = risk.stub.ScreenBatch(iter([request]))
    got = await expect_error(_drain(call), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field
    assert await risk.count(ScreeningDecisionRow) == 0


async def _drain(call: Any) -> None:
    async for _ in call:
        pass


# --- do-not-contact and cool-off -----------------------------------------------------------------------------------

async def test_do_not_contact_denies_every_outbound_channel_until_removed(risk: Risk) -> None:
    for channel in (SMS, EMAIL):
        await risk.stub.RecordConsent(consent_request(channel=channel))
    added = (await risk.stub.AddToDoNotContact(contact_policy_pb2.AddToDoNotContactRequest(
        customer_id="cust-1", source="regulator", actor="agent-7", reason="registry match"))).entry
    assert (added.action, added.source, added.actor, added.reason) == (
        contact_policy_pb2.DO_NOT_CONTACT_ACTION_ADD, "regulator", "agent-7", "registry match")
    for channel in (SMS, EMAIL, common_pb2.CHANNEL_PHONE):
        reasons = _reasons(await risk.stub.Screen(screen_request(channel=channel)))
        assert R.REASON_CODE_DO_NOT_CONTACT in reasons, channel
    assert _reasons(await risk.stub.Screen(screen_request(channel=IN_APP))) == []  # not outbound
    await risk.stub.RemoveFromDoNotContact(contact_policy_pb2.RemoveFromDoNotContactRequest(
        customer_id="cust-1", source="call-centre", actor="agent-8"))
    assert _reasons(await risk.stub.Screen(screen_request(channel=SMS))) == []
    history = await risk.rows(DoNotContactRow)
    assert [(r.action, r.source, r.actor) for r in history] == [("ADD", "regulator", "agent-7"),
                                                               ("REMOVE", "call-centre", "agent-8")]
    kinds = [e.kind for e in await risk.rows_by(AuditEntryRow, AuditEntryRow.seq)]
    assert kinds.count("DO_NOT_CONTACT") == 2 and kinds.count("CONSENT") == 2


async def test_do_not_contact_is_idempotent_per_request_id(risk: Risk) -> None:
    request = contact_policy_pb2.AddToDoNotContactRequest(customer_id="cust-1", source="branch", request_id="r-1")
    first = await risk.stub.AddToDoNotContact(request)
    assert await risk.stub.AddToDoNotContact(request) == first
    assert await risk.count(DoNotContactRow) == 1
    request.reason = "another"
    await expect_error(risk.stub.AddToDoNotContact(request), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (contact_policy_pb2.AddToDoNotContactRequest(source="x"), "customer_id", "REQUIRED_FIELD_MISSING"),
    (contact_policy_pb2.AddToDoNotContactRequest(customer_id="c 1", source="x"), "customer_id", "INVALID_ID"),
    (contact_policy_pb2.AddToDoNotContactRequest(customer_id="c1"), "source", "REQUIRED_FIELD_MISSING"),
    (contact_policy_pb2.AddToDoNotContactRequest(customer_id="c1", source="x", reason="r" * 300), "reason",
     "INVALID_ARGUMENT"),
])
async def test_do_not_contact_bad_input(risk: Risk, request_: Any, field: str, reason: str) -> None:
    got = await expect_error(risk.stub.AddToDoNotContact(request_), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field
    assert await risk.count(DoNotContactRow) == 0


def daytime(at: datetime) -> datetime:
    """The first 12:00 in Asia/Shanghai (04:00 UTC) at or after `at`: a contact outside quiet hours whatever the
    hour the test runs at (the screenings below are relative to now)."""
    noon = at.astimezone(UTC).replace(hour=4, minute=0, second=0, microsecond=0)
    return noon if noon >= at else noon + timedelta(days=1)


async def test_complaint_starts_a_cool_off_on_every_outbound_channel(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request(channel=SMS))
    await risk.stub.RecordConsent(consent_request(channel=EMAIL))
    response = await risk.stub.RecordComplaint(contact_policy_pb2.RecordComplaintRequest(
        customer_id="cust-1", channel=SMS, source="call-centre", category="unwanted-contact"))
    recorded = response.record_time.ToDatetime(tzinfo=UTC)
    assert response.cool_off_until.ToDatetime(tzinfo=UTC) - recorded == timedelta(days=10)
    for channel in (SMS, EMAIL):
        screened = await risk.stub.Screen(screen_request(channel=channel, at=daytime(recorded + timedelta(days=3))))
        assert verdicts(screened) == [("deposit-1", R.VERDICT_DENY, [R.REASON_CODE_COOL_OFF])]
    after = await risk.stub.Screen(screen_request(at=daytime(recorded + timedelta(days=10, hours=1))))
    assert _reasons(after) == []
    [row] = await risk.rows(ComplaintRow)
    assert (row.customer_id, row.channel, row.category) == ("cust-1", "SMS", "unwanted-contact")


async def test_a_withdrawal_cools_off_other_channels_until_regranted(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request(channel=EMAIL))
    await risk.stub.RecordConsent(consent_request(channel=SMS, action=R.CONSENT_ACTION_WITHDRAW))
    email = await risk.stub.Screen(screen_request(channel=EMAIL, at=daytime(datetime.now(UTC) + timedelta(days=1))))
    assert _reasons(email) == [R.REASON_CODE_COOL_OFF]
    email_later = await risk.stub.Screen(screen_request(channel=EMAIL,
                                                        at=daytime(datetime.now(UTC) + timedelta(days=11))))
    assert _reasons(email_later) == []
    await risk.stub.RecordConsent(consent_request(channel=SMS))
    assert _reasons(await risk.stub.Screen(screen_request(
        channel=EMAIL, at=daytime(datetime.now(UTC) + timedelta(days=1))))) == []


async def test_withdrawal_for_a_customer_risk_never_saw_is_recorded(risk: Risk) -> None:
    """Risk does not own customers: a withdrawal is always accepted (recording it can never harm)."""
    response = await risk.stub.RecordConsent(consent_request("never-seen", action=R.CONSENT_ACTION_WITHDRAW))
    assert response.consent.customer_id == "never-seen"


# --- reservations and caps ---------------------------------------------------------------------------------------

def _reserve(key: str, customer: str = "cust-1", channel: int = SMS,
             at: datetime = NOON) -> contact_policy_pb2.ReserveContactRequest:
    request = contact_policy_pb2.ReserveContactRequest(delivery_key=key, customer_id=customer, channel=channel)
    request.contact_time.FromDatetime(at)
    return request


async def test_reservations_enforce_the_caps_and_are_idempotent_per_delivery_key(risk: Risk) -> None:
    first = await risk.stub.ReserveContact(_reserve("camp-1/cust-1/sms"))
    assert first.granted and first.reservation.state == contact_policy_pb2.RESERVATION_STATE_RESERVED
    assert await risk.stub.ReserveContact(_reserve("camp-1/cust-1/sms")) == first
    assert (await risk.stub.ReserveContact(_reserve("camp-2", at=NOON + timedelta(hours=1)))).granted
    refused = await risk.stub.ReserveContact(_reserve("camp-3", at=NOON + timedelta(hours=2)))
    assert (refused.granted, list(refused.reasons), list(refused.exceeded_caps)) == (
        False, [R.REASON_CODE_FREQUENCY_CAP], ["sms:2/day"])
    assert not refused.HasField("reservation")
    # the cross-channel cap: all:3/week (email:1/week is its own)
    assert (await risk.stub.ReserveContact(_reserve("camp-4", channel=EMAIL))).granted
    email_again = await risk.stub.ReserveContact(_reserve("camp-5", channel=EMAIL, at=NOON + timedelta(days=2)))
    assert list(email_again.exceeded_caps) == ["email:1/week", "all:3/week"]
    assert await risk.count(ReservationRow) == 3
    await expect_error(risk.stub.ReserveContact(_reserve("camp-1/cust-1/sms", customer="cust-2")),
                       grpc.StatusCode.INVALID_ARGUMENT, "DELIVERY_KEY_REUSED")


async def test_release_frees_the_slot_and_confirm_keeps_it(risk: Risk) -> None:
    await risk.stub.ReserveContact(_reserve("k1"))
    await risk.stub.ReserveContact(_reserve("k2"))
    confirmed = await risk.stub.ConfirmContact(contact_policy_pb2.ConfirmContactRequest(delivery_key="k1"))
    assert confirmed.reservation.state == contact_policy_pb2.RESERVATION_STATE_CONFIRMED
    released = await risk.stub.ReleaseContact(contact_policy_pb2.ReleaseContactRequest(delivery_key="k2"))
    assert released.reservation.state == contact_policy_pb2.RESERVATION_STATE_RELEASED
    assert (await risk.stub.ReserveContact(_reserve("k3"))).granted
    assert not (await risk.stub.ReserveContact(_reserve("k4"))).granted
    await expect_error(risk.stub.ReleaseContact(contact_policy_pb2.ReleaseContactRequest(delivery_key="k1")),
                       grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CONFIRMED")
    await expect_error(risk.stub.ConfirmContact(contact_policy_pb2.ConfirmContactRequest(delivery_key="k2")),
                       grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_RELEASED")
    await expect_error(risk.stub.ConfirmContact(contact_policy_pb2.ConfirmContactRequest(delivery_key="nope")),
                       grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND")
    # confirming twice is harmless
    again = await risk.stub.ConfirmContact(contact_policy_pb2.ConfirmContactRequest(delivery_key="k1"))
    assert again.reservation.state == contact_policy_pb2.RESERVATION_STATE_CONFIRMED


async def test_unconfirmed_reservations_expire_and_stop_counting(risk: Risk) -> None:
    service = risk.svc.runtime.components["service"]
    await risk.stub.ReserveContact(_reserve("k1"))
    await risk.stub.ReserveContact(_reserve("k2"))
    assert not (await risk.stub.ReserveContact(_reserve("k3"))).granted
    real_clock = service.clock
    service.clock = lambda: real_clock() + timedelta(seconds=901)  # RISK_RESERVATION_TTL_SECONDS default 900
    assert (await risk.stub.ReserveContact(_reserve("k3"))).granted
    await expect_error(risk.stub.ConfirmContact(contact_policy_pb2.ConfirmContactRequest(delivery_key="k1")),
                       grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_EXPIRED")


async def test_screen_holds_with_frequency_cap_when_a_cap_is_reached(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request())
    assert _reasons(await risk.stub.Screen(screen_request())) == []
    await risk.stub.ReserveContact(_reserve("k1", at=NOON - timedelta(hours=3)))
    await risk.stub.ReserveContact(_reserve("k2", at=NOON - timedelta(hours=2)))
    held = await risk.stub.Screen(screen_request())
    assert verdicts(held) == [("deposit-1", R.VERDICT_HOLD, [R.REASON_CODE_FREQUENCY_CAP])]
    # outside the rolling day the sms cap is not reached
    assert _reasons(await risk.stub.Screen(screen_request(at=NOON + timedelta(days=1)))) == []


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (_reserve(""), "delivery_key", "REQUIRED_FIELD_MISSING"),
    (_reserve("bad key"), "delivery_key", "INVALID_DELIVERY_KEY"),
    (_reserve("k", customer=""), "customer_id", "REQUIRED_FIELD_MISSING"),
    (_reserve("k", channel=IN_APP), "channel", "CHANNEL_NOT_OUTBOUND"),
    (_reserve("k", channel=42), "channel", "UNKNOWN_ENUM_VALUE"),
])
async def test_reserve_bad_input(risk: Risk, request_: Any, field: str, reason: str) -> None:
    got = await expect_error(risk.stub.ReserveContact(request_), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field


async def test_concurrent_reservations_from_several_clients_never_exceed_a_cap(risk: Risk) -> None:
    """40 concurrent ReserveContact calls for one customer over 4 channels (connections): with sms:2/day,
    email:1/week and all:3/week, exactly 3 may be granted."""
    channels = [grpc.aio.insecure_channel(risk.svc.address) for _ in range(4)]
    try:
        stubs = [risk_service_pb2_grpc.RiskServiceStub(c) for c in channels]
        calls = [
            stubs[i % 4].ReserveContact(_reserve(f"d-{i}", channel=SMS if i % 2 else EMAIL,
                                                 at=NOON + timedelta(minutes=i)), timeout=30)
            for i in range(40)
        ]
        responses = await asyncio.gather(*calls)
    finally:
        for c in channels:
            await c.close()
    granted = [r for r in responses if r.granted]
    assert len(granted) == 3
    rows = await risk.rows(ReservationRow)
    assert len(rows) == 3
    assert sum(r.channel == "SMS" for r in rows) <= 2 and sum(r.channel == "EMAIL" for r in rows) <= 1


# --- content ---------------------------------------------------------------------------------------------------

async def test_check_content_finds_hidden_claims_with_positions(risk: Risk) -> None:
    text = "本理财 保 本，ｒｉｓｋ－ｆｒｅｅ, g u a r a n t e e d  r e t u r n s. 投资有风险。过往业绩不代表未来表现。"
    response = await risk.stub.CheckContent(content_pb2.CheckContentRequest(
        text=text, product_type=common_pb2.PRODUCT_TYPE_WEALTH))
    found = [(v.kind, v.rule_id, text[v.start:v.end]) for v in response.violations]
    assert found == [
        (content_pb2.VIOLATION_KIND_BANNED_CLAIM, "banned.principal-guaranteed", "保 本"),
        (content_pb2.VIOLATION_KIND_BANNED_CLAIM, "banned.no-risk", "ｒｉｓｋ－ｆｒｅｅ"),
        (content_pb2.VIOLATION_KIND_BANNED_CLAIM, "banned.guaranteed-return", "g u a r a n t e e d  r e t u r n s"),
    ]
    assert not response.compliant and response.rules_version == "2026.12-1"


async def test_check_content_reports_missing_disclosures(risk: Risk) -> None:
    response = await risk.stub.CheckContent(content_pb2.CheckContentRequest(
        text="Get our card today, APR 18%.", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD, language="en"))
    assert [(v.kind, v.rule_id, v.start, v.end) for v in response.violations] == [
        (content_pb2.VIOLATION_KIND_MISSING_DISCLOSURE, "disclosure.fees", 0, 0)]
    ok = await risk.stub.CheckContent(content_pb2.CheckContentRequest(
        text="定期存款，受存款保险保护。", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT))
    assert ok.compliant and list(ok.violations) == []


@pytest.mark.parametrize(("request_", "field", "reason"), [
    (content_pb2.CheckContentRequest(text=" ", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT), "text",
     "REQUIRED_FIELD_MISSING"),
    (content_pb2.CheckContentRequest(text="x" * 20001, product_type=common_pb2.PRODUCT_TYPE_DEPOSIT), "text",
     "TEXT_TOO_LONG"),
    (content_pb2.CheckContentRequest(text="hi"), "product_type", "REQUIRED_FIELD_MISSING"),
    (content_pb2.CheckContentRequest(text="hi", product_type=common_pb2.PRODUCT_TYPE_DEPOSIT, language="fr"),
     "language", "UNSUPPORTED_LANGUAGE"),
])
async def test_check_content_bad_input(risk: Risk, request_: Any, field: str, reason: str) -> None:
    got = await expect_error(risk.stub.CheckContent(request_), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field


# --- audit chain ----------------------------------------------------------------------------------------------

async def _some_history(risk: Risk) -> None:
    await risk.stub.RecordConsent(consent_request())
    await risk.stub.Screen(screen_request())
    await risk.stub.AddToDoNotContact(contact_policy_pb2.AddToDoNotContactRequest(customer_id="cust-1",
                                                                                  source="branch"))
    await risk.stub.RecordComplaint(contact_policy_pb2.RecordComplaintRequest(customer_id="cust-2", source="web"))
    await risk.stub.Screen(screen_request("cust-2"))


async def _verify(risk: Risk) -> audit_pb2.VerifyAuditLogResponse:
    return await risk.stub.VerifyAuditLog(audit_pb2.VerifyAuditLogRequest())


async def test_audit_log_records_changes_and_decisions_with_tokens_only(risk: Risk) -> None:
    await _some_history(risk)
    entries = await risk.rows_by(AuditEntryRow, AuditEntryRow.seq)
    assert [(e.seq, e.kind) for e in entries] == [(1, "CONSENT"), (2, "SCREEN"), (3, "DO_NOT_CONTACT"),
                                                  (4, "COMPLAINT"), (5, "SCREEN")]
    assert entries[0].subject == customer_token("cust-1") and entries[3].subject == customer_token("cust-2")
    assert all(e.prev_hash == p.hash for p, e in itertools.pairwise(entries))
    assert not any("cust-" in e.summary for e in entries)
    verified = await _verify(risk)
    assert (verified.intact, verified.entries_checked, verified.first_bad_seq, verified.head_hash) == (
        True, 5, 0, entries[-1].hash)


async def test_tampering_is_detected_and_located(risk: Risk) -> None:
    await _some_history(risk)
    sessionmaker = risk.svc.runtime.database.sessionmaker

    async def run(statement: Any) -> None:
        async with sessionmaker() as session:
            await session.execute(statement)
            await session.commit()

    # edited: a summary rewritten in place
    original = (await risk.rows_by(AuditEntryRow, AuditEntryRow.seq))[2]
    await run(update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(summary='{"action":"REMOVE"}'))
    verified = await _verify(risk)
    assert (verified.intact, verified.problem, verified.first_bad_seq) == (False, audit_pb2.AUDIT_PROBLEM_EDITED, 3)
    await run(update(AuditEntryRow).where(AuditEntryRow.seq == 3).values(summary=original.summary))
    assert (await _verify(risk)).intact

    # deleted: an entry removed from the middle
    await run(delete(AuditEntryRow).where(AuditEntryRow.seq == 2))
    verified = await _verify(risk)
    assert (verified.problem, verified.first_bad_seq, verified.entries_checked) == (
        audit_pb2.AUDIT_PROBLEM_DELETED, 2, 1)

    # inserted: a forged, self-consistent entry put in the gap, linked to its own invented predecessor
    forged_time = datetime.now(UTC)
    forged_hash = entry_hash("f" * 64, 2, forged_time, "SCREEN", "risk", "cust_x", "{}", "0" * 64)
    await run(insert(AuditEntryRow).values(seq=2, entry_time=forged_time, kind="SCREEN", actor="risk",
                                           subject="cust_x", summary="{}", payload_hash="0" * 64,
                                           prev_hash="f" * 64, hash=forged_hash))
    verified = await _verify(risk)
    assert (verified.problem, verified.first_bad_seq) == (audit_pb2.AUDIT_PROBLEM_INSERTED, 2)


async def test_an_entry_appended_behind_the_services_back_is_detected(risk: Risk) -> None:
    await _some_history(risk)
    last = (await risk.rows_by(AuditEntryRow, AuditEntryRow.seq))[-1]
    when = datetime.now(UTC)
    digest = entry_hash(last.hash, 6, when, "CONSENT", "x", "cust_y", "{}", "0" * 64)
    async with risk.svc.runtime.database.sessionmaker() as session:
        await session.execute(insert(AuditEntryRow).values(
            seq=6, entry_time=when, kind="CONSENT", actor="x", subject="cust_y", summary="{}",
            payload_hash="0" * 64, prev_hash=last.hash, hash=digest))
        await session.commit()
        assert await session.scalar(select(func.count()).select_from(AuditEntryRow)) == 6
    verified = await _verify(risk)
    assert (verified.problem, verified.first_bad_seq) == (audit_pb2.AUDIT_PROBLEM_INSERTED, 6)
