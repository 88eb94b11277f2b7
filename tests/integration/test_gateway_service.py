"""The gateway over gRPC: a real server on port 0, a real database, a fake campaign service on its own port."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from sqlalchemy import select

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
from lodestar.common.v1 import common_pb2
from lodestar.gateway.v1 import (
    gateway_admin_service_pb2,
    gateway_admin_service_pb2_grpc,
    partner_service_pb2,
    partner_service_pb2_grpc,
)
from services.gateway import auth
from services.gateway.app import DEFINITION
from services.gateway.db import ApiKeyRow, Base, PartnerCustomerRow, PartnerRow
from services.gateway.domain import KNOWN_SCOPES
from services.platform.logs import JsonFormatter
from services.platform.masking import customer_token
from services.platform.server import RunningService
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_PARTNER_ID
from tests.helpers import expect_error

ADMIN_TOKEN = "t0k"
ADMIN = (("x-admin-token", ADMIN_TOKEN),)
CUSTOMER = "cust-7f3a91"
SECRET_TEXT = "password=hunter2 host=pg-campaign-0.internal:5432"
REF_PATTERN = re.compile(r"^p_[a-z2-7]{26}$")


def api(key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", key),)


# --- the fake campaign service ------------------------------------------------------------------------------------


class FakeCampaign(campaign_service_pb2_grpc.CampaignServiceServicer):
    """Decide returns canned offers (with the fields a partner must not see) and records what it was asked."""

    def __init__(self) -> None:
        self.requests: list[campaign_service_pb2.DecideRequest] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None
        self.delay = 0.0

    async def Decide(self, request: campaign_service_pb2.DecideRequest,
                     context: grpc.aio.ServicerContext) -> campaign_service_pb2.DecideResponse:
        self.requests.append(request)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail is not None:
            await context.abort(*self.fail)
        return campaign_service_pb2.DecideResponse(
            decision="decisions/dec-0001",
            offers=[
                offer_pb2.RankedOffer(
                    offer_id="card-gold", title="Gold card", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD,
                    rank=1, propensity=0.4242, expected_value=987.65,
                    reasons=[offer_pb2.Reason(code="EXPECTED_VALUE", message="ev 987.65 from model m-3"),
                             offer_pb2.Reason(code="SEGMENT_MATCH", message="segment high-spenders")],
                    disclosures=[common_pb2.Disclosure(kind="apr", text="APR 18.9%")],
                ),
                offer_pb2.RankedOffer(
                    offer_id="instal-12", title="12 instalments", product_type=common_pb2.PRODUCT_TYPE_INSTALMENT,
                    rank=2, propensity=0.1313, expected_value=55.5,
                    reasons=[offer_pb2.Reason(code="PLACEMENT_FIT", message="checkout placement")],
                ),
            ],
            suppressed=[offer_pb2.SuppressedOffer(
                offer_id="loan-suppressed", reasons=[offer_pb2.Reason(code="RISK_COLLECTIONS", message="in arrears")]
            )],
            policy_version="policy-9", model_version="m-3",
        )


@pytest.fixture
async def fake_campaign() -> AsyncIterator[tuple[FakeCampaign, str]]:
    fake = FakeCampaign()
    server = grpc.aio.server()
    campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield fake, f"127.0.0.1:{port}"
    await server.stop(0)


def closed_port_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


@dataclass
class Gateway:
    running: RunningService
    admin: Any  # GatewayAdminServiceAsyncStub
    partner: Any  # PartnerServiceAsyncStub

    async def create_partner(self, partner_id: str, display_name: str = "Acme Shop") -> None:
        await self.admin.CreatePartner(
            gateway_admin_service_pb2.CreatePartnerRequest(
                partner=gateway_admin_service_pb2.Partner(partner_id=partner_id, display_name=display_name)
            ),
            metadata=ADMIN,
        )

    async def create_key(self, partner_id: str) -> gateway_admin_service_pb2.CreateApiKeyResponse:
        return await self.admin.CreateApiKey(
            gateway_admin_service_pb2.CreateApiKeyRequest(partner=f"partners/{partner_id}"), metadata=ADMIN
        )

    async def pseudonym(self, partner_id: str, customer_id: str = CUSTOMER) -> str:
        response = await self.admin.IssuePseudonym(
            gateway_admin_service_pb2.IssuePseudonymRequest(partner=f"partners/{partner_id}", customer_id=customer_id),
            metadata=ADMIN,
        )
        return str(response.customer_ref)

    async def grant_all(self, partner_id: str) -> None:
        """Every partner scope and every offer (a new partner has none)."""
        name = f"partners/{partner_id}"
        await self.admin.SetPartnerScopes(gateway_admin_service_pb2.SetPartnerScopesRequest(
            partner=name, scopes=sorted(KNOWN_SCOPES)), metadata=ADMIN)
        await self.admin.SetPartnerOffers(gateway_admin_service_pb2.SetPartnerOffersRequest(
            partner=name, offer_ids=["*"]), metadata=ADMIN)

    async def onboard(self, partner_id: str, customer_id: str = CUSTOMER) -> tuple[str, str]:
        """A partner with every scope and offer, a key and a ref for `customer_id`: (api_key, customer_ref)."""
        await self.create_partner(partner_id)
        await self.grant_all(partner_id)
        key = await self.create_key(partner_id)
        return key.api_key, await self.pseudonym(partner_id, customer_id)

    def get_offers(self, api_key: str | None, customer_ref: str, **fields: Any) -> Any:
        request = partner_service_pb2.GetOffersRequest(customer_ref=customer_ref, **fields)
        return self.partner.GetOffers(request, metadata=api(api_key) if api_key is not None else None)


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[RunningService], Gateway]]:
    channels: list[grpc.aio.Channel] = []

    def _connect(running: RunningService) -> Gateway:
        channel = grpc.aio.insecure_channel(running.address)
        channels.append(channel)
        return Gateway(running, gateway_admin_service_pb2_grpc.GatewayAdminServiceStub(channel),
                       partner_service_pb2_grpc.PartnerServiceStub(channel))

    yield _connect
    for channel in channels:
        await channel.close()


@pytest.fixture
async def gateway(start: Any, fake_campaign: tuple[FakeCampaign, str],
                  connect: Callable[[RunningService], Gateway]) -> Gateway:
    running = await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=fake_campaign[1])
    return connect(running)


async def rows(gw: Gateway, model: type[Base]) -> list[Any]:
    async with gw.running.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model)))


# --- admin flow and GetOffers ----------------------------------------------------------------------------------------


async def test_admin_flow_then_offers_without_internal_fields(
    gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]
) -> None:
    fake, _ = fake_campaign
    created = await gateway.admin.CreatePartner(
        gateway_admin_service_pb2.CreatePartnerRequest(
            partner=gateway_admin_service_pb2.Partner(partner_id="acme", display_name="Acme Shop"), request_id="r-1"
        ),
        metadata=ADMIN,
    )
    assert created.partner.name == "partners/acme"
    assert created.partner.display_name == "Acme Shop"
    assert created.partner.create_time.seconds > 0
    await gateway.grant_all("acme")
    key = await gateway.create_key("acme")
    assert key.api_key.startswith(f"lsk_{key.key_id}_")
    ref = await gateway.pseudonym("acme")
    assert REF_PATTERN.match(ref)

    when = timestamp_pb2.Timestamp(seconds=1_900_000_000)
    response = await gateway.get_offers(
        key.api_key, ref, context=partner_service_pb2.OfferContext(placement="checkout", time=when), max_offers=2
    )

    assert response.decision_ref == "decisions/dec-0001"
    assert [(o.offer_id, o.title, o.product_type, o.rank, list(o.reason_codes)) for o in response.offers] == [
        ("card-gold", "Gold card", common_pb2.PRODUCT_TYPE_CREDIT_CARD, 1, ["EXPECTED_VALUE", "SEGMENT_MATCH"]),
        ("instal-12", "12 instalments", common_pb2.PRODUCT_TYPE_INSTALMENT, 2, ["PLACEMENT_FIT"]),
    ]
    assert [(d.kind, d.text) for d in response.offers[0].disclosures] == [("apr", "APR 18.9%")]
    wire = response.SerializeToString()
    for internal in (b"loan-suppressed", b"RISK_COLLECTIONS", b"ev 987.65", b"policy-9", b"m-3", CUSTOMER.encode()):
        assert internal not in wire, internal
    # Nothing numeric beyond the ranks and enums: propensity and expected value are not on the wire.
    for offer in response.offers:
        assert {f.name for f, _ in offer.ListFields()} <= {
            "offer_id", "title", "product_type", "rank", "disclosures", "reason_codes"}

    assert len(fake.requests) == 1
    sent = fake.requests[0]
    assert sent.customer_id == CUSTOMER
    assert sent.context.channel == common_pb2.CHANNEL_PARTNER
    assert sent.context.partner_id == "acme"
    assert sent.context.placement == "checkout"
    assert sent.context.decision_time == when
    assert sent.max_offers == 2


async def test_defaults_max_offers_and_decision_time(gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]) -> None:
    fake, _ = fake_campaign
    key, ref = await gateway.onboard("acme")
    before = datetime.now(UTC)
    await gateway.get_offers(key, ref)
    sent = fake.requests[-1]
    assert sent.max_offers == 3
    assert sent.context.placement == ""
    assert sent.context.decision_time.ToDatetime(tzinfo=UTC) >= before.replace(microsecond=0)


async def test_pseudonyms_are_stable_per_customer_and_differ_per_partner(gateway: Gateway) -> None:
    await gateway.create_partner("acme")
    await gateway.create_partner("globex", "Globex Travel")
    first = await gateway.pseudonym("acme")
    assert await gateway.pseudonym("acme") == first
    other = await gateway.pseudonym("globex")
    assert REF_PATTERN.match(other) and other != first
    assert await gateway.pseudonym("acme", "cust-000002") != first
    links = await rows(gateway, PartnerCustomerRow)
    assert sorted((r.partner_id, r.customer_ref, r.customer_id) for r in links) == sorted([
        ("acme", first, CUSTOMER), ("globex", other, CUSTOMER),
        ("acme", await gateway.pseudonym("acme", "cust-000002"), "cust-000002"),
    ])
    # Partners' HMAC keys: 32 random bytes each, never the same.
    keys = {r.partner_id: r.pseudonym_key for r in await rows(gateway, PartnerRow)}
    assert len(bytes.fromhex(keys["acme"])) == 32 and keys["acme"] != keys["globex"]


async def test_admin_rpcs_on_an_unknown_partner(gateway: Gateway) -> None:
    await expect_error(gateway.create_key("nobody"), grpc.StatusCode.NOT_FOUND, "PARTNER_NOT_FOUND")
    await expect_error(gateway.pseudonym("nobody"), grpc.StatusCode.NOT_FOUND, "PARTNER_NOT_FOUND")
    bad_name = await expect_error(
        gateway.admin.CreateApiKey(gateway_admin_service_pb2.CreateApiKeyRequest(partner="acme"), metadata=ADMIN),
        grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")
    assert bad_name.field_violations[0][0] == "partner"
    await gateway.create_partner("acme")
    bad_customer = await expect_error(gateway.pseudonym("acme", "bad id!"), grpc.StatusCode.INVALID_ARGUMENT,
                                      "INVALID_ID")
    assert bad_customer.field_violations[0][0] == "customer_id"
    assert await rows(gateway, PartnerCustomerRow) == []


# --- partner authentication -------------------------------------------------------------------------------------------


async def test_partner_authentication_errors(gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]) -> None:
    fake, _ = fake_campaign
    key, ref = await gateway.onboard("acme")
    parsed = auth.parse_api_key(key)
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED

    # Authentication comes before validation: a bad request without a key is still UNAUTHENTICATED.
    await expect_error(gateway.get_offers(None, "not-a-ref", max_offers=99), unauthenticated, "API_KEY_MISSING")
    await expect_error(gateway.get_offers(None, ref), unauthenticated, "API_KEY_MISSING")
    await expect_error(gateway.get_offers("", ref), unauthenticated, "API_KEY_MISSING")
    await expect_error(gateway.get_offers("Bearer abc", ref), unauthenticated, "API_KEY_MALFORMED")
    await expect_error(gateway.get_offers(ADMIN_TOKEN, ref), unauthenticated, "API_KEY_MALFORMED")
    await expect_error(gateway.get_offers(key + "x", ref), unauthenticated, "API_KEY_MALFORMED")
    unknown_id = auth.format_api_key("Zz0000000000", parsed.secret)
    await expect_error(gateway.get_offers(unknown_id, ref), unauthenticated, "API_KEY_INVALID")
    wrong_secret = auth.format_api_key(parsed.key_id, auth.new_secret())
    invalid = await expect_error(gateway.get_offers(wrong_secret, ref), unauthenticated, "API_KEY_INVALID")
    assert wrong_secret not in invalid.message and parsed.key_id not in invalid.message
    assert fake.requests == []

    await gateway.get_offers(key, ref)  # the real key works
    service = gateway.running.runtime.components["service"]
    assert await service.revoke_api_key(parsed.key_id)
    await expect_error(gateway.get_offers(key, ref), unauthenticated, "API_KEY_REVOKED")
    # A revoked key with a wrong secret does not reveal the revocation.
    await expect_error(gateway.get_offers(wrong_secret, ref), unauthenticated, "API_KEY_INVALID")
    assert len(fake.requests) == 1


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_revocation_by_another_replica_takes_effect_within_the_cache_ttl(gateway: Gateway) -> None:
    service = gateway.running.runtime.components["service"]
    clock = Clock()
    service.key_cache = auth.VerifiedKeyCache(auth.VERIFIED_KEY_TTL_SECONDS, clock=clock)
    key, ref = await gateway.onboard("acme")
    await gateway.get_offers(key, ref)
    # Another replica revokes the key: straight in the shared database, this process's cache untouched.
    async with gateway.running.runtime.database.sessionmaker() as session:
        row = await session.get(ApiKeyRow, auth.parse_api_key(key).key_id)
        assert row is not None
        row.revoked = True
        await session.commit()
    clock.now += auth.VERIFIED_KEY_TTL_SECONDS - 1
    await gateway.get_offers(key, ref)  # still cached: the documented window
    clock.now += 2
    await expect_error(gateway.get_offers(key, ref), grpc.StatusCode.UNAUTHENTICATED, "API_KEY_REVOKED")


async def test_api_key_is_stored_only_as_an_argon2_hash(gateway: Gateway) -> None:
    await gateway.create_partner("acme")
    issued = await gateway.create_key("acme")
    secret = auth.parse_api_key(issued.api_key).secret
    (row,) = await rows(gateway, ApiKeyRow)
    assert (row.key_id, row.partner_id, row.revoked) == (issued.key_id, "acme", False)
    assert row.secret_hash.startswith("$argon2id$")
    assert auth.verify_secret(row.secret_hash, secret)
    # The secret (or the full key) appears in no column of any table.
    async with gateway.running.runtime.database.sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            for record in (await session.execute(select(table))).all():
                for value in record:
                    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
                    assert secret not in text and issued.api_key not in text, table.name
    second = await gateway.create_key("acme")
    assert second.key_id != issued.key_id and second.api_key != issued.api_key


# --- which customer a partner may reach ------------------------------------------------------------------------------


async def test_another_partners_ref_is_indistinguishable_from_an_unknown_one(
    gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]
) -> None:
    fake, _ = fake_campaign
    acme_key, acme_ref = await gateway.onboard("acme")
    _, globex_ref = await gateway.onboard("globex")
    unknown_ref = "p_" + "a" * 26

    foreign = await expect_error(gateway.get_offers(acme_key, globex_ref), grpc.StatusCode.NOT_FOUND,
                                 "CUSTOMER_NOT_FOUND")
    unknown = await expect_error(gateway.get_offers(acme_key, unknown_ref), grpc.StatusCode.NOT_FOUND,
                                 "CUSTOMER_NOT_FOUND")
    assert foreign.message.replace(globex_ref, "REF") == unknown.message.replace(unknown_ref, "REF")
    assert foreign.metadata == unknown.metadata
    assert CUSTOMER not in foreign.message
    assert fake.requests == []
    await gateway.get_offers(acme_key, acme_ref)
    assert [r.context.partner_id for r in fake.requests] == ["acme"]


@pytest.mark.parametrize(
    ("fields", "reason", "bad_fields"),
    [
        ({"customer_ref": CUSTOMER}, "INVALID_CUSTOMER_REF", ["customer_ref"]),
        ({"customer_ref": "p_" + "A" * 26}, "INVALID_CUSTOMER_REF", ["customer_ref"]),
        ({"customer_ref": "p_" + "a" * 25}, "INVALID_CUSTOMER_REF", ["customer_ref"]),
        ({"customer_ref": ""}, "REQUIRED_FIELD_MISSING", ["customer_ref"]),
        ({"max_offers": 11}, "INVALID_MAX_OFFERS", ["max_offers"]),
        ({"max_offers": -1}, "INVALID_MAX_OFFERS", ["max_offers"]),
        ({"context": partner_service_pb2.OfferContext(placement="x" * 65)}, "INVALID_PLACEMENT",
         ["context.placement"]),
        ({"customer_ref": "nope", "max_offers": 42}, "INVALID_ARGUMENT", ["customer_ref", "max_offers"]),
    ],
)
async def test_invalid_get_offers_requests(
    gateway: Gateway, fake_campaign: tuple[FakeCampaign, str], fields: dict[str, Any], reason: str,
    bad_fields: list[str],
) -> None:
    key, ref = await gateway.onboard("acme")
    request = {"customer_ref": ref, **fields}
    got = await expect_error(gateway.get_offers(key, **request), grpc.StatusCode.INVALID_ARGUMENT, reason)
    assert [field for field, _ in got.field_violations] == bad_fields
    assert fake_campaign[0].requests == []


async def test_max_offers_bounds_are_accepted(gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]) -> None:
    key, ref = await gateway.onboard("acme")
    await gateway.get_offers(key, ref, max_offers=1)
    await gateway.get_offers(key, ref, max_offers=10)
    assert [r.max_offers for r in fake_campaign[0].requests] == [1, 10]


# --- downstream failures ---------------------------------------------------------------------------------------------


async def test_campaign_down_is_unavailable_with_a_generic_message(
    start: Any, connect: Callable[[RunningService], Gateway]
) -> None:
    address = closed_port_address()
    gw = connect(await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=address))
    key, ref = await gw.onboard("acme")
    got = await expect_error(gw.get_offers(key, ref), grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE")
    port = address.rsplit(":", 1)[1]
    for internal in ("campaign", "127.0.0.1", port, "DEPENDENCY", "connect", CUSTOMER):
        assert internal not in got.message, (internal, got.message)
    assert "dependency" not in got.metadata
    assert got.domain == "lodestar.gateway"


@pytest.mark.parametrize(
    ("code", "expected_code", "expected_reason"),
    [
        (grpc.StatusCode.INTERNAL, grpc.StatusCode.INTERNAL, "INTERNAL"),
        (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INTERNAL, "INTERNAL"),
        (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INTERNAL, "INTERNAL"),
        (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INTERNAL, "INTERNAL"),
        (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND"),
        (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE, "SERVICE_UNAVAILABLE"),
    ],
)
async def test_campaign_errors_never_pass_internal_text_through(
    gateway: Gateway, fake_campaign: tuple[FakeCampaign, str], code: grpc.StatusCode,
    expected_code: grpc.StatusCode, expected_reason: str,
) -> None:
    fake, _ = fake_campaign
    key, ref = await gateway.onboard("acme")
    fake.fail = (code, SECRET_TEXT)
    got = await expect_error(gateway.get_offers(key, ref), expected_code, expected_reason)
    for internal in ("hunter2", "pg-campaign", "5432", "campaign", SECRET_TEXT):
        assert internal not in got.message, (internal, got.message)
    assert all("hunter2" not in value for value in got.metadata.values())


async def test_campaign_too_slow_is_deadline_exceeded(
    gateway: Gateway, fake_campaign: tuple[FakeCampaign, str]
) -> None:
    fake, _ = fake_campaign
    key, ref = await gateway.onboard("acme")
    gateway.running.runtime.components["campaign"].default_timeout = 0.2
    fake.delay = 1.0
    got = await expect_error(gateway.get_offers(key, ref), grpc.StatusCode.DEADLINE_EXCEEDED, "SERVICE_TIMEOUT")
    assert "campaign" not in got.message


# --- admin API -------------------------------------------------------------------------------------------------------


async def test_create_partner_is_idempotent_by_request_id(gateway: Gateway) -> None:
    def request(display_name: str, request_id: str) -> Any:
        return gateway.admin.CreatePartner(
            gateway_admin_service_pb2.CreatePartnerRequest(
                partner=gateway_admin_service_pb2.Partner(partner_id="acme", display_name=display_name),
                request_id=request_id,
            ),
            metadata=ADMIN,
        )

    first = await request("Acme Shop", "req-1")
    replay = await request("Acme Shop", "req-1")
    assert replay == first
    await expect_error(request("Acme Shop Ltd", "req-1"), grpc.StatusCode.INVALID_ARGUMENT, "REQUEST_ID_REUSED")
    exists = await expect_error(request("Acme Shop", "req-2"), grpc.StatusCode.ALREADY_EXISTS,
                                "PARTNER_ALREADY_EXISTS")
    assert exists.message == "partner already exists"  # the name stays in ResourceInfo, never in messages
    partners = await rows(gateway, PartnerRow)
    assert [(p.partner_id, p.display_name) for p in partners] == [("acme", "Acme Shop")]


@pytest.mark.parametrize(
    ("partner", "reason", "field"),
    [
        ({"partner_id": "", "display_name": "Acme"}, "REQUIRED_FIELD_MISSING", "partner.partner_id"),
        ({"partner_id": "bad id", "display_name": "Acme"}, "INVALID_ID", "partner.partner_id"),
        ({"partner_id": "acme", "display_name": "  "}, "REQUIRED_FIELD_MISSING", "partner.display_name"),
        ({"partner_id": "acme", "display_name": "x" * 101}, "INVALID_DISPLAY_NAME", "partner.display_name"),
    ],
)
async def test_create_partner_validation(gateway: Gateway, partner: dict[str, str], reason: str, field: str) -> None:
    got = await expect_error(
        gateway.admin.CreatePartner(
            gateway_admin_service_pb2.CreatePartnerRequest(partner=gateway_admin_service_pb2.Partner(**partner)),
            metadata=ADMIN,
        ),
        grpc.StatusCode.INVALID_ARGUMENT, reason,
    )
    assert got.field_violations[0][0] == field
    assert await rows(gateway, PartnerRow) == []


async def test_create_partner_accepts_a_100_character_display_name(gateway: Gateway) -> None:
    await gateway.create_partner("acme", "x" * 100)
    assert [p.display_name for p in await rows(gateway, PartnerRow)] == ["x" * 100]


def admin_calls(gw: Gateway, metadata: Any) -> list[Any]:
    return [
        gw.admin.CreatePartner(gateway_admin_service_pb2.CreatePartnerRequest(
            partner=gateway_admin_service_pb2.Partner(partner_id="evil", display_name="Evil")), metadata=metadata),
        gw.admin.CreateApiKey(gateway_admin_service_pb2.CreateApiKeyRequest(partner="partners/acme"),
                              metadata=metadata),
        gw.admin.IssuePseudonym(gateway_admin_service_pb2.IssuePseudonymRequest(
            partner="partners/acme", customer_id=CUSTOMER), metadata=metadata),
    ]


async def test_admin_token_errors(gateway: Gateway) -> None:
    key, _ = await gateway.onboard("acme")
    unauthenticated = grpc.StatusCode.UNAUTHENTICATED
    for call in admin_calls(gateway, None):
        await expect_error(call, unauthenticated, "ADMIN_TOKEN_MISSING")
    for call in admin_calls(gateway, (("x-admin-token", "t0K"),)):
        await expect_error(call, unauthenticated, "ADMIN_TOKEN_INVALID")
    # A partner API key is never an admin credential, in either header.
    for call in admin_calls(gateway, api(key)):
        await expect_error(call, unauthenticated, "ADMIN_TOKEN_MISSING")
    for call in admin_calls(gateway, (("x-admin-token", key),)):
        await expect_error(call, unauthenticated, "ADMIN_TOKEN_INVALID")
    # Checked before validation: an invalid request without a token is still UNAUTHENTICATED.
    await expect_error(
        gateway.admin.CreatePartner(gateway_admin_service_pb2.CreatePartnerRequest()), unauthenticated,
        "ADMIN_TOKEN_MISSING")
    assert [p.partner_id for p in await rows(gateway, PartnerRow)] == ["acme"]
    assert len(await rows(gateway, ApiKeyRow)) == 1


async def test_admin_api_disabled_without_a_token(
    start: Any, fake_campaign: tuple[FakeCampaign, str], connect: Callable[[RunningService], Gateway]
) -> None:
    gw = connect(await start(DEFINITION, CAMPAIGN_SERVICE_ADDR=fake_campaign[1]))
    for metadata in (None, ADMIN):
        for call in admin_calls(gw, metadata):
            await expect_error(call, grpc.StatusCode.PERMISSION_DENIED, "ADMIN_API_DISABLED")
    assert await rows(gw, PartnerRow) == []


# --- telemetry and logs -----------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_sql_log_level() -> Any:
    logger = logging.getLogger("sqlalchemy.engine")
    level = logger.level
    yield
    logger.setLevel(level)


class JsonLines(logging.Handler):
    """Formats each record as it is emitted (inside the request's span), exactly as production's handler."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("gateway"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_logs() -> Any:
    handler = JsonLines()
    root = logging.getLogger()
    root.addHandler(handler)
    yield handler
    root.removeHandler(handler)


def capture_like_production(caplog: pytest.LogCaptureFixture) -> None:
    """Every record at INFO (the default LOG_LEVEL), with SQLAlchemy's statement log kept at WARNING as
    configure_logging does (its INFO lines carry bound parameters)."""
    caplog.set_level(logging.INFO)
    logging.getLogger("sqlalchemy.engine").setLevel(logging.WARNING)


async def test_spans_and_logs_carry_no_key_and_no_customer_id(
    gateway: Gateway, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture, json_logs: JsonLines
) -> None:
    capture_like_production(caplog)
    key, ref = await gateway.onboard("acme")
    secret = auth.parse_api_key(key).secret
    span_exporter.clear()
    caplog.clear()
    json_logs.lines.clear()

    await gateway.get_offers(key, ref, context=partner_service_pb2.OfferContext(placement="checkout"))
    await expect_error(gateway.get_offers(key[:-1] + "!", ref), grpc.StatusCode.UNAUTHENTICATED,
                       "API_KEY_MALFORMED")

    spans = span_exporter.get_finished_spans()
    servers = [s for s in spans if s.kind == SpanKind.SERVER
               and s.name == "/lodestar.gateway.v1.PartnerService/GetOffers"]
    clients = [s for s in spans if s.kind == SpanKind.CLIENT
               and s.name == "/lodestar.campaign.v1.CampaignService/Decide"]
    assert len(servers) == 2 and len(clients) == 1
    served = next(s for s in servers if s.context.trace_id == clients[0].context.trace_id)
    assert clients[0].parent is not None
    assert clients[0].parent.span_id == served.context.span_id
    assert served.attributes is not None
    assert served.attributes[ATTR_PARTNER_ID] == "acme"
    assert served.attributes[ATTR_CUSTOMER_TOKEN] == customer_token(CUSTOMER)

    forbidden = (key, secret, CUSTOMER, key[:-1] + "!")
    for span in spans:
        texts = [str(v) for v in (span.attributes or {}).values()]
        texts += [str(span.status.description or ""), span.name]
        texts += [str(v) for event in span.events for v in (event.attributes or {}).values()]
        for text in texts:
            assert not any(f in text for f in forbidden), (span.name, text)

    assert caplog.records
    for record in caplog.records:
        texts = [record.getMessage(), *(str(v) for v in record.__dict__.values())]
        assert not any(f in text for text in texts for f in forbidden), record.__dict__
    for line in json_logs.lines:
        assert not any(f in line for f in forbidden), line

    audits = [a for a in map(json.loads, json_logs.lines) if a["logger"] == "lodestar.gateway.audit"]
    assert [(a["rpc"], a["partner_id"], a["result"], a["error_reason"]) for a in audits] == [
        ("GetOffers", "acme", "OK", ""),
        ("GetOffers", "", "UNAUTHENTICATED", "API_KEY_MALFORMED"),
    ]
    assert audits[0]["caller"] == "partner" and audits[0]["trace_id"] == format(served.context.trace_id, "032x")


async def test_admin_calls_do_not_log_or_trace_the_customer_id(
    gateway: Gateway, span_exporter: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    capture_like_production(caplog)
    await gateway.create_partner("acme")
    issued = await gateway.create_key("acme")
    await gateway.pseudonym("acme")
    formatter = JsonFormatter("gateway")
    lines = [formatter.format(r) for r in caplog.records]
    assert any('"rpc": "IssuePseudonym"' in line for line in lines)
    for line in lines:
        assert CUSTOMER not in line and issued.api_key not in line, line
    for span in span_exporter.get_finished_spans():
        for value in (span.attributes or {}).values():
            assert CUSTOMER not in str(value) and issued.api_key not in str(value)
    pseudonym_spans = [s for s in span_exporter.get_finished_spans()
                       if s.name == "/lodestar.gateway.v1.GatewayAdminService/IssuePseudonym"]
    assert pseudonym_spans and pseudonym_spans[0].attributes is not None
    assert pseudonym_spans[0].attributes[ATTR_CUSTOMER_TOKEN] == customer_token(CUSTOMER)
