# ruff: noqa: F811 - pytest fixtures imported from test_gateway_service are redefined as parameters
"""Issue 7 over gRPC: scopes, offer allow-lists, quotas across replicas, key rotation and revocation, leads and
conversions, the authorisation matrix and the no-secret/no-PII scan of logs and spans."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from lodestar.gateway.v1 import gateway_admin_service_pb2 as apb
from lodestar.gateway.v1 import partner_service_pb2 as ppb
from services.gateway import auth
from services.gateway.app import DEFINITION
from services.gateway.db import ConversionRow, IdempotencyKey, LeadRow, PartnerQuotaRow, PresentedOfferRow
from services.platform.db import utcnow
from services.platform.server import RunningService
from tests.helpers import expect_error
from tests.integration.test_gateway_service import (  # noqa: F401 - fixtures
    ADMIN,
    ADMIN_TOKEN,
    CUSTOMER,
    FakeCampaign,
    Gateway,
    JsonLines,
    api,
    capture_like_production,
    connect,
    fake_campaign,
    gateway,
    json_logs,
    rows,
)

ALL_SCOPES = ["offers:read", "leads:write", "leads:read", "conversions:write", "engagement:write"]
UNAUTH, DENIED = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED


def name(partner_id: str) -> str:
    return f"partners/{partner_id}"


async def set_scopes(gw: Gateway, partner_id: str, scopes: list[str]) -> Any:
    return await gw.admin.SetPartnerScopes(apb.SetPartnerScopesRequest(partner=name(partner_id), scopes=scopes),
                                           metadata=ADMIN)


async def set_offers(gw: Gateway, partner_id: str, offer_ids: list[str]) -> Any:
    return await gw.admin.SetPartnerOffers(apb.SetPartnerOffersRequest(partner=name(partner_id),
                                                                       offer_ids=offer_ids), metadata=ADMIN)


async def set_quota(gw: Gateway, partner_id: str, rate: float, burst: int, daily: int) -> Any:
    return await gw.admin.SetPartnerQuota(apb.SetPartnerQuotaRequest(
        partner=name(partner_id), quota=apb.Quota(rate_per_second=rate, burst=burst, daily_quota=daily)),
        metadata=ADMIN)


def quota_details(error: grpc.aio.AioRpcError) -> tuple[list[str], float | None]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    subjects: list[str] = []
    retry: float | None = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            subjects += [v.subject for v in failure.violations]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            retry = info.retry_delay.ToTimedelta().total_seconds()
    return subjects, retry


async def lead_for(gw: Gateway, key: str, ref: str, request_id: str = "lead-1", offer_id: str = "card-gold") -> Any:
    offers = await gw.get_offers(key, ref)
    response = await gw.partner.SubmitLead(ppb.SubmitLeadRequest(
        request_id=request_id, customer_ref=ref, offer_id=offer_id, decision_ref=offers.decision_ref),
        metadata=api(key))
    return response.lead


# --- scopes and allow-lists ---------------------------------------------------------------------------------------


async def test_a_new_partner_has_no_scope_and_no_offer(gateway: Gateway, fake_campaign: Any) -> None:
    await gateway.create_partner("acme")
    key = (await gateway.create_key("acme")).api_key
    ref = await gateway.pseudonym("acme")
    policy = (await gateway.admin.GetPartnerPolicy(apb.GetPartnerPolicyRequest(partner=name("acme")),
                                                   metadata=ADMIN)).policy
    assert (list(policy.scopes), list(policy.offer_ids)) == ([], [])
    assert (policy.quota.rate_per_second, policy.quota.burst, policy.quota.daily_quota) == (10.0, 20, 100_000)
    got = await expect_error(gateway.get_offers(key, ref), DENIED, "SCOPE_MISSING")
    assert got.metadata == {"scope": "offers:read"}
    # Scope checked before validation: an invalid request is still PERMISSION_DENIED.
    await expect_error(gateway.get_offers(key, "nope", max_offers=99), DENIED, "SCOPE_MISSING")
    await set_scopes(gateway, "acme", ["offers:read"])
    empty = await gateway.get_offers(key, ref)  # empty allow-list: nothing, campaign not even asked
    assert list(empty.offers) == [] and empty.decision_ref == ""
    assert fake_campaign[0].requests == []


async def test_allow_list_filters_and_re_ranks(gateway: Gateway, fake_campaign: Any) -> None:
    key, ref = await gateway.onboard("acme")
    policy = (await set_offers(gateway, "acme", ["instal-12", "other"])).policy
    assert list(policy.offer_ids) == ["instal-12", "other"]
    response = await gateway.get_offers(key, ref, max_offers=1)
    assert [(o.offer_id, o.rank) for o in response.offers] == [("instal-12", 1)]
    assert fake_campaign[0].requests[-1].max_offers == 20  # asked for campaign's maximum, then filtered
    presented = await rows(gateway, PresentedOfferRow)
    assert [(p.partner_id, p.decision_ref, p.customer_ref, p.offer_id) for p in presented] == [
        ("acme", "decisions/dec-0001", ref, "instal-12")]


@pytest.mark.parametrize(
    ("call", "reason", "field"),
    [
        (lambda gw: set_scopes(gw, "acme", ["offers:read", "admin:all"]), "UNKNOWN_SCOPE", "scopes[1]"),
        (lambda gw: set_offers(gw, "acme", ["*", "card-gold"]), "INVALID_OFFER_IDS", "offer_ids"),
        (lambda gw: set_offers(gw, "acme", ["bad id"]), "INVALID_OFFER_IDS", "offer_ids[0]"),
        (lambda gw: set_quota(gw, "acme", 0, 1, 1), "INVALID_QUOTA", "quota.rate_per_second"),
        (lambda gw: set_quota(gw, "acme", 1, 0, 1), "INVALID_QUOTA", "quota.burst"),
        (lambda gw: set_quota(gw, "acme", 1, 1, 0), "INVALID_QUOTA", "quota.daily_quota"),
    ],
)
async def test_policy_validation(gateway: Gateway, call: Callable[[Gateway], Any], reason: str, field: str) -> None:
    await gateway.create_partner("acme")
    got = await expect_error(call(gateway), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field


async def test_policy_of_an_unknown_partner(gateway: Gateway) -> None:
    await expect_error(set_scopes(gateway, "nobody", ["offers:read"]), grpc.StatusCode.NOT_FOUND,
                       "PARTNER_NOT_FOUND")
    await expect_error(set_quota(gateway, "nobody", 1, 1, 1), grpc.StatusCode.NOT_FOUND, "PARTNER_NOT_FOUND")


async def test_list_partners_pages(gateway: Gateway) -> None:
    for partner_id in ("c-shop", "a-shop", "b-shop"):
        await gateway.create_partner(partner_id)
    first = await gateway.admin.ListPartners(apb.ListPartnersRequest(page_size=2), metadata=ADMIN)
    assert [p.partner_id for p in first.partners] == ["a-shop", "b-shop"] and first.next_page_token
    second = await gateway.admin.ListPartners(apb.ListPartnersRequest(page_size=2, page_token=first.next_page_token),
                                              metadata=ADMIN)
    assert [p.partner_id for p in second.partners] == ["c-shop"] and second.next_page_token == ""


# --- quotas -------------------------------------------------------------------------------------------------------


async def test_rate_limited_with_quota_failure_and_retry_info(gateway: Gateway) -> None:
    key, ref = await gateway.onboard("acme")
    await set_quota(gateway, "acme", 0.5, 2, 1000)
    await gateway.get_offers(key, ref)
    await gateway.get_offers(key, ref)
    try:
        await gateway.get_offers(key, ref)
    except grpc.aio.AioRpcError as error:
        subjects, retry = quota_details(error)
    else:
        raise AssertionError("the third call should be rate limited")
    await expect_error(gateway.get_offers(key, ref), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
    assert subjects == ["partners/acme"]
    assert retry is not None and 0 < retry <= 2.0
    # The bucket refills with time (the service's clock moved forward 2 s: one token at 0.5/s).
    service = gateway.running.runtime.components["service"]
    service.clock = lambda: utcnow() + timedelta(seconds=2.5)
    await gateway.get_offers(key, ref)
    await expect_error(gateway.get_offers(key, ref), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")


async def test_daily_quota_exceeded_until_the_next_utc_day(gateway: Gateway) -> None:
    key, ref = await gateway.onboard("acme")
    await set_quota(gateway, "acme", 1000, 1000, 2)
    await gateway.get_offers(key, ref)
    await gateway.get_offers(key, ref)
    got = await expect_error(gateway.get_offers(key, ref), grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    assert got.metadata == {}
    service = gateway.running.runtime.components["service"]
    service.clock = lambda: utcnow() + timedelta(days=1)
    await gateway.get_offers(key, ref)
    [row] = await rows(gateway, PartnerQuotaRow)
    assert row.day_count == 1 and row.quota_day == (utcnow() + timedelta(days=1)).date().isoformat()


async def test_two_replicas_share_one_bucket_exactly(
    start: Any, fake_campaign: tuple[FakeCampaign, str], connect: Callable[[RunningService], Gateway]
) -> None:
    first = connect(await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=fake_campaign[1]))
    second = connect(await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=fake_campaign[1],
                                 DATABASE_URL=first.running.runtime.settings.database_url))
    key, ref = await first.onboard("acme")
    await set_quota(first, "acme", 0.001, 7, 1000)
    # Warm both replicas' key caches first (argon2), without spending tokens: a call missing its scope.
    await set_scopes(first, "acme", [])
    for gw in (first, second):
        await expect_error(gw.get_offers(key, ref), DENIED, "SCOPE_MISSING")
    await set_scopes(first, "acme", ALL_SCOPES)

    async def one(gw: Gateway) -> str:
        try:
            await gw.get_offers(key, ref)
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            return "limited"
        return "ok"

    results = await asyncio.gather(*(one(first if i % 2 else second) for i in range(20)))
    assert results.count("ok") == 7 and results.count("limited") == 13
    [row] = await rows(first, PartnerQuotaRow)
    assert row.day_count == 7 and row.tokens < 1


async def test_two_replicas_share_one_daily_quota_exactly(
    start: Any, fake_campaign: tuple[FakeCampaign, str], connect: Callable[[RunningService], Gateway]
) -> None:
    first = connect(await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=fake_campaign[1]))
    second = connect(await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=fake_campaign[1],
                                 DATABASE_URL=first.running.runtime.settings.database_url))
    key, ref = await first.onboard("acme")
    await set_quota(first, "acme", 1000, 1000, 5)
    outcomes = await asyncio.gather(*(gw.get_offers(key, ref) for gw in [first, second] * 6),
                                    return_exceptions=True)
    failures = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(outcomes) - len(failures) == 5
    assert all(isinstance(f, grpc.aio.AioRpcError) and f.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
               for f in failures)


# --- keys -----------------------------------------------------------------------------------------------------------


async def test_rotation_overlap_then_expiry_and_listing(gateway: Gateway) -> None:
    old_key, ref = await gateway.onboard("acme")
    old_id = auth.parse_api_key(old_key).key_id
    await gateway.get_offers(old_key, ref)  # cached in this replica
    rotated = await gateway.admin.RotateApiKey(apb.RotateApiKeyRequest(
        partner=name("acme"), key_id=old_id, overlap_seconds=3600), metadata=ADMIN)
    assert rotated.api_key.startswith(f"lsk_{rotated.key_id}_")
    assert rotated.previous_key.state == apb.API_KEY_STATE_EXPIRING
    overlap = rotated.previous_key.expire_time.ToDatetime() - rotated.previous_key.create_time.ToDatetime()
    assert timedelta(seconds=3590) < overlap < timedelta(seconds=3700)
    await gateway.get_offers(old_key, ref)  # inside the overlap window
    await gateway.get_offers(rotated.api_key, ref)
    await expect_error(gateway.admin.RotateApiKey(apb.RotateApiKeyRequest(partner=name("acme"), key_id=old_id),
                                                  metadata=ADMIN), grpc.StatusCode.FAILED_PRECONDITION,
                       "API_KEY_NOT_ACTIVE")
    service = gateway.running.runtime.components["service"]
    service.clock = lambda: utcnow() + timedelta(seconds=3601)
    await expect_error(gateway.get_offers(old_key, ref), UNAUTH, "API_KEY_EXPIRED")
    await gateway.get_offers(rotated.api_key, ref)
    listed = await gateway.admin.ListApiKeys(apb.ListApiKeysRequest(partner=name("acme")), metadata=ADMIN)
    assert [(k.key_id, k.state) for k in listed.api_keys] == [
        (old_id, apb.API_KEY_STATE_EXPIRED), (rotated.key_id, apb.API_KEY_STATE_ACTIVE)]
    wire = listed.SerializeToString()
    assert auth.parse_api_key(old_key).secret.encode() not in wire and b"argon2" not in wire


async def test_revoke_is_immediate_on_this_replica(gateway: Gateway) -> None:
    key, ref = await gateway.onboard("acme")
    key_id = auth.parse_api_key(key).key_id
    await gateway.get_offers(key, ref)  # cached
    revoked = await gateway.admin.RevokeApiKey(apb.RevokeApiKeyRequest(partner=name("acme"), key_id=key_id),
                                               metadata=ADMIN)
    assert revoked.api_key.state == apb.API_KEY_STATE_REVOKED and revoked.api_key.revoke_time.seconds > 0
    await expect_error(gateway.get_offers(key, ref), UNAUTH, "API_KEY_REVOKED")
    await gateway.create_partner("globex")
    # A key is only found under its own partner.
    await expect_error(gateway.admin.RevokeApiKey(apb.RevokeApiKeyRequest(partner=name("globex"), key_id=key_id),
                                                  metadata=ADMIN), grpc.StatusCode.NOT_FOUND, "API_KEY_NOT_FOUND")


# --- leads and conversions ---------------------------------------------------------------------------------


async def test_lead_and_conversion_are_idempotent_and_stored_unforwarded(gateway: Gateway) -> None:
    key, ref = await gateway.onboard("acme")
    lead = await lead_for(gateway, key, ref)
    assert lead.name.startswith("leads/") and lead.status == ppb.LEAD_STATUS_RECEIVED
    assert (lead.customer_ref, lead.offer_id, lead.decision_ref) == (ref, "card-gold", "decisions/dec-0001")
    replay = await gateway.partner.SubmitLead(ppb.SubmitLeadRequest(
        request_id="lead-1", customer_ref=ref, offer_id="card-gold", decision_ref="decisions/dec-0001"),
        metadata=api(key))
    assert replay.lead == lead
    await expect_error(gateway.partner.SubmitLead(ppb.SubmitLeadRequest(
        request_id="lead-1", customer_ref=ref, offer_id="instal-12", decision_ref="decisions/dec-0001"),
        metadata=api(key)), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")

    revenue = ppb.Money(currency_code="CNY", units=1200, nanos=500_000_000)
    converted = (await gateway.partner.ReportConversion(ppb.ReportConversionRequest(
        request_id="conv-1", lead=lead.name, revenue=revenue), metadata=api(key))).lead
    assert converted.status == ppb.LEAD_STATUS_CONVERTED and converted.revenue == revenue
    again = await gateway.partner.ReportConversion(ppb.ReportConversionRequest(
        request_id="conv-1", lead=lead.name, revenue=revenue), metadata=api(key))
    assert again.lead == converted
    await expect_error(gateway.partner.ReportConversion(ppb.ReportConversionRequest(
        request_id="conv-2", lead=lead.name, revenue=revenue), metadata=api(key)),
        grpc.StatusCode.FAILED_PRECONDITION, "LEAD_ALREADY_CONVERTED")
    status = await gateway.partner.GetLeadStatus(ppb.GetLeadStatusRequest(lead=lead.name), metadata=api(key))
    assert status.lead == converted

    [row] = await rows(gateway, LeadRow)
    assert (row.partner_id, row.customer_id, row.status, row.forwarded) == ("acme", CUSTOMER, "CONVERTED", False)
    [conv] = await rows(gateway, ConversionRow)
    assert (conv.currency_code, conv.revenue_units, conv.revenue_nanos, conv.forwarded) == ("CNY", 1200,
                                                                                              500_000_000, False)
    keys = await rows(gateway, IdempotencyKey)
    assert sorted((k.method, k.request_id) for k in keys) == [
        ("acme/ReportConversion", "conv-1"), ("acme/SubmitLead", "lead-1")]


async def test_a_lead_must_name_an_offer_presented_to_that_customer(gateway: Gateway) -> None:
    key, ref = await gateway.onboard("acme")
    other_ref = await gateway.pseudonym("acme", "cust-000002")
    await set_offers(gateway, "acme", ["card-gold"])
    await gateway.get_offers(key, ref)

    def submit(request_id: str, **fields: str) -> Any:
        base = {"customer_ref": ref, "offer_id": "card-gold", "decision_ref": "decisions/dec-0001"} | fields
        return gateway.partner.SubmitLead(ppb.SubmitLeadRequest(request_id=request_id, **base), metadata=api(key))

    await expect_error(submit("a", offer_id="instal-12"), grpc.StatusCode.FAILED_PRECONDITION, "OFFER_NOT_PRESENTED")
    await expect_error(submit("b", decision_ref="decisions/forged"), grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    await expect_error(submit("c", customer_ref=other_ref), grpc.StatusCode.NOT_FOUND, "DECISION_NOT_FOUND")
    missing = await expect_error(submit(""), grpc.StatusCode.INVALID_ARGUMENT, "REQUIRED_FIELD_MISSING")
    assert missing.field_violations[0][0] == "request_id"
    assert await rows(gateway, LeadRow) == []
    assert [k.request_id for k in await rows(gateway, IdempotencyKey)] == []


async def test_request_ids_are_per_partner(gateway: Gateway) -> None:
    acme_key, acme_ref = await gateway.onboard("acme")
    globex_key, globex_ref = await gateway.onboard("globex")
    acme_lead = await lead_for(gateway, acme_key, acme_ref, request_id="same")
    globex_lead = await lead_for(gateway, globex_key, globex_ref, request_id="same")
    assert acme_lead.name != globex_lead.name and globex_lead.customer_ref == globex_ref


@pytest.mark.parametrize(
    ("revenue", "reason", "field"),
    [
        (ppb.Money(currency_code="cny", units=1), "INVALID_REVENUE", "revenue.currency_code"),
        (ppb.Money(currency_code="CNY", units=-1), "INVALID_REVENUE", "revenue"),
        (None, "INVALID_ARGUMENT", "revenue"),
    ],
)
async def test_conversion_validation(gateway: Gateway, revenue: Any, reason: str, field: str) -> None:
    key, ref = await gateway.onboard("acme")
    lead = await lead_for(gateway, key, ref)
    request = ppb.ReportConversionRequest(request_id="c-1", lead=lead.name)
    if revenue is not None:
        request.revenue.CopyFrom(revenue)
    got = await expect_error(gateway.partner.ReportConversion(request, metadata=api(key)),
                             grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert got.field_violations[0][0] == field
    assert await rows(gateway, ConversionRow) == []


# --- the authorisation matrix ---------------------------------------------------------------------------------------

RPCS = ("GetOffers", "SubmitLead", "ReportConversion", "GetLeadStatus", "ReportEngagement")
SCOPE_OF = {"GetOffers": "offers:read", "SubmitLead": "leads:write", "ReportConversion": "conversions:write",
            "GetLeadStatus": "leads:read", "ReportEngagement": "engagement:write"}


class Matrix:
    """acme's key and resources, and keys in every state."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def setup(self) -> None:
        gw = self.gw
        self.key, self.ref = await gw.onboard("acme")
        self.lead = (await lead_for(gw, self.key, self.ref)).name
        self.other_key, _ = await gw.onboard("globex")
        parsed = auth.parse_api_key(self.key)
        self.wrong = auth.format_api_key(parsed.key_id, auth.new_secret())
        revoked = await gw.create_key("acme")
        await gw.admin.RevokeApiKey(apb.RevokeApiKeyRequest(partner=name("acme"), key_id=revoked.key_id),
                                    metadata=ADMIN)
        self.revoked = revoked.api_key
        expiring = await gw.create_key("acme")
        await gw.admin.RotateApiKey(apb.RotateApiKeyRequest(partner=name("acme"), key_id=expiring.key_id,
                                                            overlap_seconds=1), metadata=ADMIN)
        self.expired = expiring.api_key
        self.scopeless, _ = await gw.onboard("initech")
        await set_scopes(gw, "initech", [])
        self.limited, _ = await gw.onboard("hooli")
        await set_quota(gw, "hooli", 0.001, 1, 1000)

    def call(self, rpc: str, key: str | None) -> Any:
        metadata = api(key) if key is not None else None
        p = self.gw.partner
        if rpc == "GetOffers":
            return p.GetOffers(ppb.GetOffersRequest(customer_ref=self.ref), metadata=metadata)
        if rpc == "SubmitLead":
            return p.SubmitLead(ppb.SubmitLeadRequest(request_id="m-1", customer_ref=self.ref, offer_id="card-gold",
                                                      decision_ref="decisions/dec-0001"), metadata=metadata)
        if rpc == "ReportConversion":
            return p.ReportConversion(ppb.ReportConversionRequest(
                request_id="m-2", lead=self.lead, revenue=ppb.Money(currency_code="CNY", units=1)),
                metadata=metadata)
        if rpc == "ReportEngagement":
            return p.ReportEngagement(ppb.ReportEngagementRequest(
                request_id="m-3", customer_ref=self.ref, offer_id="card-gold", decision_ref="decisions/dec-0001",
                kind=ppb.ENGAGEMENT_KIND_CLICKED), metadata=metadata)
        return p.GetLeadStatus(ppb.GetLeadStatusRequest(lead=self.lead), metadata=metadata)


async def test_authorisation_matrix(gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]) -> None:
    matrix = Matrix(gateway)
    await matrix.setup()
    service = gateway.running.runtime.components["service"]
    service.clock = lambda: utcnow() + timedelta(seconds=5)  # past the rotated key's 1 s overlap
    decides = len(fake_campaign[0].requests)
    other_partner_reason = {"GetOffers": "CUSTOMER_NOT_FOUND", "SubmitLead": "CUSTOMER_NOT_FOUND",
                            "ReportConversion": "LEAD_NOT_FOUND", "GetLeadStatus": "LEAD_NOT_FOUND",
                            "ReportEngagement": "CUSTOMER_NOT_FOUND"}
    checked = 0
    for rpc in RPCS:
        cases: list[tuple[str, str | None, grpc.StatusCode, str]] = [
            ("no key", None, UNAUTH, "API_KEY_MISSING"),
            ("malformed key", "lsk_short", UNAUTH, "API_KEY_MALFORMED"),
            ("wrong key", matrix.wrong, UNAUTH, "API_KEY_INVALID"),
            ("revoked key", matrix.revoked, UNAUTH, "API_KEY_REVOKED"),
            ("expired key", matrix.expired, UNAUTH, "API_KEY_EXPIRED"),
            # No existence oracle: another partner's ref or lead is NOT_FOUND, never PERMISSION_DENIED.
            ("another partner's key", matrix.other_key, grpc.StatusCode.NOT_FOUND, other_partner_reason[rpc]),
            ("missing scope", matrix.scopeless, DENIED, "SCOPE_MISSING"),
        ]
        for label, key, code, reason in cases:
            got = await expect_error(matrix.call(rpc, key), code, reason)
            assert got.domain == "lodestar.gateway", (rpc, label)
            if reason == "SCOPE_MISSING":
                assert got.metadata == {"scope": SCOPE_OF[rpc]}
            checked += 1
        # Over quota: hooli's bucket holds one token; the first call spends it (hooli's own NOT_FOUND).
        with pytest.raises(grpc.aio.AioRpcError):
            await matrix.call(rpc, matrix.limited)
        await expect_error(matrix.call(rpc, matrix.limited), grpc.StatusCode.RESOURCE_EXHAUSTED, "RATE_LIMITED")
        await set_quota(gateway, "hooli", 0.001, 1, 1000)  # refill for the next rpc
        checked += 1
    assert checked == len(RPCS) * 8
    assert len(fake_campaign[0].requests) == decides  # none of them reached campaign
    assert len(await rows(gateway, LeadRow)) == 1 and await rows(gateway, ConversionRow) == []


# --- no secret and no personal data in logs and spans; every call audited ---------------------------------


async def test_logs_and_spans_of_a_partner_session_carry_no_secret_and_no_pii(
    gateway: Gateway, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, json_logs: JsonLines
) -> None:
    capture_like_production(caplog)
    pii_customer = "cust-13812345678"  # a bank id shaped like a phone number, to be sure neither leaks
    key, ref = await gateway.onboard("acme", pii_customer)
    rotated = await gateway.admin.RotateApiKey(apb.RotateApiKeyRequest(
        partner=name("acme"), key_id=auth.parse_api_key(key).key_id), metadata=ADMIN)
    lead = await lead_for(gateway, rotated.api_key, ref)
    await gateway.partner.ReportConversion(ppb.ReportConversionRequest(
        request_id="c-1", lead=lead.name, revenue=ppb.Money(currency_code="CNY", units=88)), metadata=api(key))
    await gateway.partner.GetLeadStatus(ppb.GetLeadStatusRequest(lead=lead.name), metadata=api(key))
    await expect_error(gateway.get_offers(auth.format_api_key(auth.parse_api_key(key).key_id, auth.new_secret()),
                                          ref), UNAUTH, "API_KEY_INVALID")

    secrets = [key, rotated.api_key, auth.parse_api_key(key).secret, auth.parse_api_key(rotated.api_key).secret]
    forbidden = [*secrets, pii_customer, "13812345678", ref]
    texts: list[str] = list(json_logs.lines)
    texts += [r.getMessage() for r in caplog.records]
    for span in span_exporter.get_finished_spans():
        texts += [span.name, str(span.status.description or "")]
        texts += [str(v) for v in (span.attributes or {}).values()]
        texts += [str(v) for event in span.events for v in (event.attributes or {}).values()]
    assert len(texts) > 20
    for text in texts:
        for value in forbidden:
            assert value not in text, (value, text)

    audits = [a for a in map(json.loads, json_logs.lines) if a["logger"] == "lodestar.gateway.audit"]
    partner_audits = [(a["rpc"], a["partner_id"], a["result"], a["error_reason"]) for a in audits
                      if a["caller"] == "partner"]
    assert partner_audits == [
        ("GetOffers", "acme", "OK", ""), ("SubmitLead", "acme", "OK", ""), ("ReportConversion", "acme", "OK", ""),
        ("GetLeadStatus", "acme", "OK", ""), ("GetOffers", "", "UNAUTHENTICATED", "API_KEY_INVALID"),
    ]
    resources = [a["resource"] for a in audits if a["caller"] == "partner"]
    assert resources[1:4] == [lead.name] * 3
    assert all(a.get("trace_id") for a in audits)
    rotate = next(a for a in audits if a["rpc"] == "RotateApiKey")
    assert rotate["caller"] == "admin" and rotate["key_id"] == auth.parse_api_key(key).key_id


async def test_presented_offers_are_recorded_per_partner(gateway: Gateway) -> None:
    key, ref = await gateway.onboard("acme")
    await gateway.get_offers(key, ref)
    async with gateway.running.runtime.database.sessionmaker() as session:
        offers = sorted(await session.scalars(select(PresentedOfferRow.offer_id)))
    assert offers == ["card-gold", "instal-12"]
