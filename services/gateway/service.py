"""The gateway's use cases. Owns the transactions; raises domain errors; imports no grpc.

Partner-facing errors are deliberately coarse: a downstream failure is translated to one of a few reasons with
a generic message, so nothing of the bank's internals (service names, messages, ids) reaches a partner; the
downstream code and reason are logged (never its message, which is not ours to vouch for).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

import sqlalchemy.exc
from opentelemetry import trace

from services.gateway import auth
from services.gateway.db import GatewayUnitOfWork
from services.gateway.db import IdempotencyKey as IdempotencyKeyRow
from services.gateway.domain import (
    Decision,
    IssuedApiKey,
    OfferQuery,
    Partner,
    Principal,
    partner_from_json,
    partner_name,
    partner_to_json,
)
from services.platform.db import utcnow
from services.platform.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    Internal,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_PARTNER_ID

log = logging.getLogger("lodestar.gateway")

PARTNER_CODEC = Codec(encode=partner_to_json, decode=partner_from_json)


class CampaignDecider(Protocol):
    async def decide(self, customer_id: str, *, partner_id: str, placement: str, decision_time: datetime,
                     max_offers: int) -> Decision: ...


def customer_not_found(customer_ref: str) -> NotFound:
    """The one answer for an unknown ref, another partner's ref, or a customer campaign does not know: the
    partner cannot tell them apart (no existence oracle)."""
    return NotFound("customer", customer_ref, reason="CUSTOMER_NOT_FOUND")


def partner_facing(error: DomainError, customer_ref: str) -> DomainError:
    """A downstream failure as a partner may see it: a stable reason and a generic message."""
    if error.code.name == "UNAVAILABLE":
        return Unavailable("SERVICE_UNAVAILABLE", "the service is temporarily unavailable; retry later")
    if error.code.name == "DEADLINE_EXCEEDED":
        return DeadlineExceeded("SERVICE_TIMEOUT", "the service did not answer in time; retry later")
    if error.code.name == "NOT_FOUND":
        return customer_not_found(customer_ref)
    return Internal("INTERNAL", "the request could not be completed")


def _annotate(partner_id: str | None = None, customer_id: str | None = None) -> None:
    """Tag the current (server) span: the partner id as is, the customer only as a masked token."""
    span = trace.get_current_span()
    if partner_id is not None:
        span.set_attribute(ATTR_PARTNER_ID, partner_id)
    if customer_id is not None:
        span.set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))


class GatewayService:
    def __init__(self, uow_factory: Callable[[], GatewayUnitOfWork], campaign: CampaignDecider, *,
                 admin_token: str = "", key_cache: auth.VerifiedKeyCache | None = None) -> None:
        self.uow_factory = uow_factory
        self.campaign = campaign
        self.admin_token = admin_token
        self.key_cache = key_cache if key_cache is not None else auth.VerifiedKeyCache()

    # --- authentication ------------------------------------------------------------------------------------

    def authorize_admin(self, presented_token: str | None) -> None:
        auth.check_admin_token(self.admin_token, presented_token)

    async def authenticate(self, raw_key: str | None) -> Principal:
        """The partner behind an API key, or UNAUTHENTICATED: API_KEY_MISSING, API_KEY_MALFORMED,
        API_KEY_INVALID (unknown key id or wrong secret), API_KEY_REVOKED (right secret, revoked key)."""
        parsed = auth.parse_api_key(raw_key)
        cached = self.key_cache.get(parsed.key_id, parsed.digest)
        if cached is not None:
            _annotate(partner_id=cached)
            return Principal(partner_id=cached, key_id=parsed.key_id)
        async with self.uow_factory() as uow:
            record = await uow.api_keys.get(parsed.key_id)
        invalid = Unauthenticated("API_KEY_INVALID", "the API key is not valid")
        if record is None:
            raise invalid
        # argon2 is CPU-bound by design: keep it off the event loop.
        if not await asyncio.to_thread(auth.verify_secret, record.secret_hash, parsed.secret):
            raise invalid
        if record.revoked:
            raise Unauthenticated("API_KEY_REVOKED", "the API key has been revoked")
        self.key_cache.put(parsed.key_id, parsed.digest, record.partner_id)
        _annotate(partner_id=record.partner_id)
        return Principal(partner_id=record.partner_id, key_id=record.key_id)

    # --- admin -----------------------------------------------------------------------------------------------

    async def create_partner(self, partner: Partner, key: IdempotencyKey | None) -> Partner:
        async def create(uow: GatewayUnitOfWork) -> Partner:
            if await uow.partners.get(partner.partner_id) is not None:
                raise AlreadyExists("partner", partner_name(partner.partner_id))
            return await uow.partners.add(partner, auth.new_pseudonym_key())

        _annotate(partner_id=partner.partner_id)
        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, PARTNER_CODEC, create)

    async def create_api_key(self, partner_id: str) -> IssuedApiKey:
        _annotate(partner_id=partner_id)
        key_id, secret = auth.new_key_id(), auth.new_secret()
        secret_hash = await asyncio.to_thread(auth.hash_secret, secret)
        async with self.uow_factory() as uow:
            if await uow.partners.get(partner_id) is None:
                raise NotFound("partner", partner_name(partner_id))
            await uow.api_keys.add(key_id, partner_id, secret_hash)
            await uow.commit()
        log.info("api key created", extra={"partner_id": partner_id, "key_id": key_id})
        return IssuedApiKey(key_id=key_id, api_key=auth.format_api_key(key_id, secret))

    async def revoke_api_key(self, key_id: str) -> bool:
        """Not exposed over gRPC yet (operations use it). Other replicas honour it within the cache TTL."""
        async with self.uow_factory() as uow:
            found = await uow.api_keys.revoke(key_id)
            await uow.commit()
        self.key_cache.evict(key_id)
        return found

    async def issue_pseudonym(self, partner_id: str, customer_id: str) -> str:
        """The partner's ref for a customer, the same every time; the link is stored on first use."""
        _annotate(partner_id=partner_id, customer_id=customer_id)
        for attempt in (1, 2):
            async with self.uow_factory() as uow:
                pseudonym_key = await uow.partners.pseudonym_key(partner_id)
                if pseudonym_key is None:
                    raise NotFound("partner", partner_name(partner_id))
                existing = await uow.links.customer_ref(partner_id, customer_id)
                if existing is not None:
                    return existing
                ref = auth.pseudonym(pseudonym_key, customer_id)
                await uow.links.add(partner_id, ref, customer_id)
                try:
                    await uow.commit()
                except sqlalchemy.exc.IntegrityError:
                    if attempt == 2:
                        raise
                    continue  # a concurrent twin stored the link first: read it back
                return ref
        raise AssertionError("unreachable")

    # --- partner API -------------------------------------------------------------------------------------------

    async def get_offers(self, principal: Principal, query: OfferQuery) -> Decision:
        async with self.uow_factory() as uow:
            customer_id = await uow.links.customer_id(principal.partner_id, query.customer_ref)
        # The transaction is closed before the downstream call: no connection is held while campaign decides.
        if customer_id is None:
            raise customer_not_found(query.customer_ref)
        _annotate(customer_id=customer_id)
        try:
            return await self.campaign.decide(
                customer_id, partner_id=principal.partner_id, placement=query.placement,
                decision_time=query.decision_time or utcnow(), max_offers=query.max_offers,
            )
        except DomainError as error:
            log.warning(
                "campaign decide failed",
                extra={"partner_id": principal.partner_id, "dependency_code": error.code.name,
                       "dependency_reason": error.reason},
            )
            raise partner_facing(error, query.customer_ref) from None
