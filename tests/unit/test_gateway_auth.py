"""The gateway's credential and pseudonym primitives, and its partner-facing shaping of campaign answers."""

from __future__ import annotations

import re

import grpc
import pytest

from lodestar.campaign.v1 import campaign_service_pb2, offer_pb2
from lodestar.common.v1 import common_pb2
from services.gateway import auth
from services.gateway.clients import decision_for_partner
from services.gateway.service import partner_facing
from services.platform.errors import (
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

# --- API key format ------------------------------------------------------------------------------------------


def test_new_key_has_the_documented_format_and_parses_back() -> None:
    key_id, secret = auth.new_key_id(), auth.new_secret()
    raw = auth.format_api_key(key_id, secret)
    assert re.fullmatch(r"lsk_[A-Za-z0-9]{12}_[A-Za-z0-9_-]{32}", raw), raw
    parsed = auth.parse_api_key(raw)
    assert (parsed.key_id, parsed.secret) == (key_id, secret)


def test_secret_containing_underscores_parses_unambiguously() -> None:
    secret = "_" * 5 + "a" * 27
    parsed = auth.parse_api_key(f"lsk_ABCdef123456_{secret}")
    assert parsed.key_id == "ABCdef123456"
    assert parsed.secret == secret


def test_key_ids_and_secrets_are_random() -> None:
    assert len({auth.new_key_id() for _ in range(50)}) == 50
    assert len({auth.new_secret() for _ in range(50)}) == 50


@pytest.mark.parametrize("raw", [None, ""])
def test_missing_key(raw: str | None) -> None:
    with pytest.raises(Unauthenticated) as caught:
        auth.parse_api_key(raw)
    assert caught.value.reason == "API_KEY_MISSING"


@pytest.mark.parametrize(
    "raw",
    [
        "not-a-key",
        "lsk_",
        "lsk_ABCdef123456",  # no secret
        "lsk_ABCdef123456_" + "a" * 31,  # secret too short
        "lsk_ABCdef123456_" + "a" * 33,  # secret too long
        "lsk_ABCdef12345_" + "a" * 32,  # key id too short
        "lsk_ABC-ef123456_" + "a" * 32,  # key id with a non-alphanumeric
        "LSK_ABCdef123456_" + "a" * 32,  # wrong prefix
        "Bearer lsk_ABCdef123456_" + "a" * 32,
        "lsk_ABCdef123456_" + "a" * 31 + "!",
    ],
)
def test_malformed_keys(raw: str) -> None:
    with pytest.raises(Unauthenticated) as caught:
        auth.parse_api_key(raw)
    assert caught.value.reason == "API_KEY_MALFORMED"
    if len(raw) > len("lsk_"):
        assert raw not in caught.value.message  # the presented key is never echoed


# --- argon2 ----------------------------------------------------------------------------------------------------


def test_argon2_hash_verifies_the_secret_and_only_it() -> None:
    secret = auth.new_secret()
    hashed = auth.hash_secret(secret)
    assert hashed.startswith("$argon2id$")
    assert secret not in hashed
    assert auth.verify_secret(hashed, secret)
    assert not auth.verify_secret(hashed, secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    assert not auth.verify_secret(hashed, "")
    assert not auth.verify_secret("not-a-hash", secret)


def test_argon2_hashes_are_salted() -> None:
    secret = auth.new_secret()
    assert auth.hash_secret(secret) != auth.hash_secret(secret)


# --- verification cache ------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_remembers_a_verification_for_its_ttl_only() -> None:
    clock = FakeClock()
    cache = auth.VerifiedKeyCache(60, clock=clock)
    digest = auth.key_digest("lsk_x")
    cache.put("kid", digest, "acme")
    assert cache.get("kid", digest) == "acme"
    assert cache.get("kid", auth.key_digest("lsk_y")) is None  # another secret for the same key id
    clock.now += 59.9
    assert cache.get("kid", digest) == "acme"
    clock.now += 0.2
    assert cache.get("kid", digest) is None
    assert len(cache) == 0


def test_cache_eviction_and_bound() -> None:
    clock = FakeClock()
    cache = auth.VerifiedKeyCache(60, max_entries=3, clock=clock)
    for i in range(5):
        cache.put(f"k{i}", "d", "p")
    assert len(cache) == 3
    assert cache.get("k4", "d") == "p"
    assert cache.get("k0", "d") is None  # the oldest went first
    cache.evict("k4")
    assert cache.get("k4", "d") is None


def test_key_digest_is_not_the_key() -> None:
    raw = auth.format_api_key(auth.new_key_id(), auth.new_secret())
    digest = auth.key_digest(raw)
    assert len(digest) == 64
    assert raw not in digest


# --- admin token --------------------------------------------------------------------------------------------------


def test_admin_token_checks() -> None:
    with pytest.raises(PermissionDenied) as disabled:
        auth.check_admin_token("", "anything")
    assert disabled.value.reason == "ADMIN_API_DISABLED"
    with pytest.raises(Unauthenticated) as missing:
        auth.check_admin_token("s3cret", None)
    assert missing.value.reason == "ADMIN_TOKEN_MISSING"
    with pytest.raises(Unauthenticated) as wrong:
        auth.check_admin_token("s3cret", "s3creT")
    assert wrong.value.reason == "ADMIN_TOKEN_INVALID"
    with pytest.raises(Unauthenticated) as non_ascii:
        auth.check_admin_token("s3cret", "s3cré")
    assert non_ascii.value.reason == "ADMIN_TOKEN_INVALID"
    auth.check_admin_token("s3cret", "s3cret")


# --- pseudonyms ------------------------------------------------------------------------------------------------------


def test_pseudonym_is_deterministic_and_well_formed() -> None:
    key = auth.new_pseudonym_key()
    assert len(bytes.fromhex(key)) == 32
    ref = auth.pseudonym(key, "cust-1")
    assert ref == auth.pseudonym(key, "cust-1")
    assert re.fullmatch(r"p_[a-z2-7]{26}", ref), ref
    assert "cust-1" not in ref
    assert auth.pseudonym(key, "cust-2") != ref


def test_pseudonym_differs_per_partner() -> None:
    first, second = auth.new_pseudonym_key(), auth.new_pseudonym_key()
    assert first != second
    assert auth.pseudonym(first, "cust-1") != auth.pseudonym(second, "cust-1")


def test_pseudonym_known_answer() -> None:
    # HMAC-SHA256(key=32 zero bytes, "cust-1"), first 16 bytes, base32 lower, unpadded.
    import base64
    import hashlib
    import hmac

    digest = hmac.new(bytes(32), b"cust-1", hashlib.sha256).digest()[:16]
    expected = "p_" + base64.b32encode(digest).decode().rstrip("=").lower()
    assert auth.pseudonym("00" * 32, "cust-1") == expected
    assert len(expected) == 28


# --- what a partner may see ----------------------------------------------------------------------------------------


def test_decision_for_partner_strips_internal_fields() -> None:
    response = campaign_service_pb2.DecideResponse(
        decision="decisions/d-1",
        offers=[
            offer_pb2.RankedOffer(
                offer_id="card-gold", title="Gold card", product_type=common_pb2.PRODUCT_TYPE_CREDIT_CARD, rank=1,
                propensity=0.42, expected_value=123.5,
                reasons=[offer_pb2.Reason(code="EXPECTED_VALUE", message="internal scoring detail")],
                disclosures=[common_pb2.Disclosure(kind="apr", text="APR 18%")],
            )
        ],
        suppressed=[offer_pb2.SuppressedOffer(offer_id="loan-x", reasons=[offer_pb2.Reason(code="RISK_X")])],
        policy_version="p-7", model_version="m-3",
    )
    decision = decision_for_partner(response)
    assert decision.decision_ref == "decisions/d-1"
    assert len(decision.offers) == 1
    offer = decision.offers[0]
    assert (offer.offer_id, offer.title, offer.product_type, offer.rank) == (
        "card-gold", "Gold card", common_pb2.PRODUCT_TYPE_CREDIT_CARD, 1)
    assert offer.reason_codes == ("EXPECTED_VALUE",)
    assert [(d.kind, d.text) for d in offer.disclosures] == [("apr", "APR 18%")]
    assert not hasattr(offer, "propensity") and not hasattr(offer, "expected_value")
    assert "internal scoring detail" not in repr(decision) and "loan-x" not in repr(decision)


@pytest.mark.parametrize(
    ("downstream", "code", "reason"),
    [
        (Unavailable("DEPENDENCY_UNAVAILABLE", "campaign at 10.0.0.7 down"), grpc.StatusCode.UNAVAILABLE,
         "SERVICE_UNAVAILABLE"),
        (DeadlineExceeded("DEPENDENCY_DEADLINE_EXCEEDED", "campaign slow"), grpc.StatusCode.DEADLINE_EXCEEDED,
         "SERVICE_TIMEOUT"),
        (NotFound("customer", "customers/c-123"), grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND"),
        (FailedPrecondition("MODEL_MISSING", "no model for c-123"), grpc.StatusCode.INTERNAL, "INTERNAL"),
    ],
)
def test_partner_facing_errors_are_generic(downstream: DomainError, code: grpc.StatusCode, reason: str) -> None:
    error = partner_facing(downstream, "p_" + "a" * 26)
    assert (error.code, error.reason) == (code, reason)
    for internal in ("c-123", "campaign", "10.0.0.7", "slow", "model"):
        assert internal not in error.message
    assert error.metadata.get("dependency") is None
