"""The gateway's use cases. Owns the transactions; raises domain errors; imports no grpc.

Partner-facing errors are deliberately coarse: a downstream failure is translated to one of a few reasons with
a generic message, so nothing of the bank's internals (service names, messages, ids) reaches a partner; the
downstream code and reason are logged (never its message, which is not ours to vouch for).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Protocol

import sqlalchemy.exc
from opentelemetry import trace

from services.gateway import auth
from services.gateway.db import ConversionRow, EngagementRow, GatewayUnitOfWork, LeadRow, lead_from_rows
from services.gateway.db import IdempotencyKey as IdempotencyKeyRow
from services.gateway.domain import (
    ALL_OFFERS,
    DEFAULT_OVERLAP_SECONDS,
    KEY_ACTIVE,
    KNOWN_SCOPES,
    LEAD_CONVERTED,
    LEAD_RECEIVED,
    MAX_BURST,
    MAX_DAILY_QUOTA,
    MAX_OVERLAP_SECONDS,
    MAX_RATE_PER_SECOND,
    RPC_SCOPES,
    ApiKeyRecord,
    ClientCertificate,
    ConversionInput,
    Decision,
    Engagement,
    EngagementInput,
    IssuedApiKey,
    Lead,
    LeadInput,
    OfferQuery,
    Partner,
    PartnerPolicy,
    Principal,
    Quota,
    engagement_from_json,
    engagement_to_json,
    lead_from_json,
    lead_to_json,
    partner_from_json,
    partner_name,
    partner_to_json,
)
from services.platform.db import utcnow
from services.platform.errors import (
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.pagination import decode_page_token, encode_page_token, page_size, query_fingerprint
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_PARTNER_ID
from services.platform.validation import ID_PATTERN, ID_RULE, Violations

log = logging.getLogger("lodestar.gateway")

PARTNER_CODEC = Codec(encode=partner_to_json, decode=partner_from_json)
LEAD_CODEC = Codec(encode=lead_to_json, decode=lead_from_json)
ENGAGEMENT_CODEC = Codec(encode=engagement_to_json, decode=engagement_from_json)

# Campaign's own maximum: asked for when the allow-list filters the ranking, so that n allowed offers remain.
CAMPAIGN_MAX_OFFERS = 20


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


def lead_not_found(lead_id: str) -> NotFound:
    """Unknown lead and another partner's lead alike."""
    return NotFound("lead", f"leads/{lead_id}", reason="LEAD_NOT_FOUND")


def _annotate(partner_id: str | None = None, customer_id: str | None = None) -> None:
    """Tag the current (server) span: the partner id as is, the customer only as a masked token."""
    span = trace.get_current_span()
    if partner_id is not None:
        span.set_attribute(ATTR_PARTNER_ID, partner_id)
    if customer_id is not None:
        span.set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))


class GatewayService:
    def __init__(self, uow_factory: Callable[[], GatewayUnitOfWork], campaign: CampaignDecider, *,
                 admin_token: str = "", key_cache: auth.VerifiedKeyCache | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.campaign = campaign
        self.admin_token = admin_token
        self.key_cache = key_cache if key_cache is not None else auth.VerifiedKeyCache()
        self._verifying: dict[tuple[str, str], asyncio.Lock] = {}
        # Wall clock of key expiry, quotas and leads (tests move it).
        self.clock = clock

    # --- authentication ------------------------------------------------------------------------------------

    def authorize_admin(self, presented_token: str | None) -> None:
        auth.check_admin_token(self.admin_token, presented_token)

    async def authenticate(self, raw_key: str | None, client_cert_pem: bytes | None = None) -> Principal:
        """The partner behind the call's credentials. Without a client certificate: the API key alone (below).
        With one (the call came over mutual TLS, the certificate already verified against the client CA): it
        must be registered to a partner (UNAUTHENTICATED CLIENT_CERT_UNKNOWN otherwise, key or no key); an API
        key may accompany it only if it is valid and of the same partner (UNAUTHENTICATED CREDENTIALS_CONFLICT
        otherwise)."""
        if client_cert_pem is None:
            return await self.authenticate_key(raw_key)
        identity = auth.certificate_identity(client_cert_pem)
        unknown = Unauthenticated("CLIENT_CERT_UNKNOWN", "the client certificate is not registered to a partner")
        if identity is None:
            raise unknown
        async with self.uow_factory() as uow:
            registered = await uow.client_certs.by_fingerprint(identity.fingerprint)
        if registered is None:
            raise unknown
        key_id = ""
        if raw_key:
            by_key = await self.authenticate_key(raw_key)
            if by_key.partner_id != registered.partner_id:
                raise Unauthenticated("CREDENTIALS_CONFLICT",
                                      "the API key and the client certificate belong to different partners")
            key_id = by_key.key_id
        _annotate(partner_id=registered.partner_id)
        return Principal(partner_id=registered.partner_id, key_id=key_id, cert_fingerprint=identity.fingerprint)

    async def authenticate_key(self, raw_key: str | None) -> Principal:
        """The partner behind an API key, or UNAUTHENTICATED: API_KEY_MISSING, API_KEY_MALFORMED,
        API_KEY_INVALID (unknown key id or wrong secret), API_KEY_REVOKED (right secret, revoked key)."""
        parsed = auth.parse_api_key(raw_key)
        principal = self._from_cache(parsed)
        if principal is not None:
            return principal
        # Single flight: a burst of first calls with one key waits for one argon2 check, then hits the cache,
        # instead of queueing hundreds of checks in the thread pool (seconds of outage for everyone).
        flight = (parsed.key_id, parsed.digest)
        lock = self._verifying.get(flight)
        if lock is None:
            if len(self._verifying) > 10_000:  # wrong secrets are one-offs: never let this grow unbounded
                self._verifying.clear()
            lock = self._verifying[flight] = asyncio.Lock()
        async with lock:
            principal = self._from_cache(parsed)
            if principal is not None:
                return principal
            return await self._verify_key(parsed)

    def _from_cache(self, parsed: auth.ParsedApiKey) -> Principal | None:
        cached = self.key_cache.lookup(parsed.key_id, parsed.digest)
        if cached is None:
            return None
        if cached.expire_time is not None and self.clock() >= cached.expire_time:
            self.key_cache.evict(parsed.key_id)
            raise Unauthenticated("API_KEY_EXPIRED", "the API key has expired (it was rotated)")
        _annotate(partner_id=cached.partner_id)
        return Principal(partner_id=cached.partner_id, key_id=parsed.key_id)

    async def _verify_key(self, parsed: auth.ParsedApiKey) -> Principal:
        expired = Unauthenticated("API_KEY_EXPIRED", "the API key has expired (it was rotated)")
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
        if record.expire_time is not None and self.clock() >= record.expire_time:
            raise expired
        self.key_cache.put(parsed.key_id, parsed.digest, record.partner_id, record.expire_time)
        _annotate(partner_id=record.partner_id)
        return Principal(partner_id=record.partner_id, key_id=record.key_id)

    async def admit(self, raw_key: str | None, rpc: str, client_cert_pem: bytes | None = None) -> Principal:
        """Authentication (API key and/or mTLS client certificate), then the RPC's scope (PERMISSION_DENIED
        SCOPE_MISSING), then one token of the
        partner's rate limit and daily quota (RESOURCE_EXHAUSTED RATE_LIMITED / QUOTA_EXCEEDED)."""
        principal = await self.authenticate(raw_key, client_cert_pem)
        scope = RPC_SCOPES[rpc]
        async with self.uow_factory() as uow:
            scopes = await uow.policies.scopes(principal.partner_id)
        if scope not in scopes:
            raise PermissionDenied("SCOPE_MISSING", f"this API key's partner lacks the scope {scope}",
                                   metadata={"scope": scope})
        await self.consume_quota(principal.partner_id)
        return principal

    async def consume_quota(self, partner_id: str) -> None:
        now = self.clock()
        epoch, today = now.timestamp(), now.date().isoformat()
        for _attempt in (1, 2, 3):
            # The UPDATE is the transaction's first statement (SQLite: no stale read snapshot to upgrade).
            async with self.uow_factory() as uow:
                if await uow.quotas.try_consume(partner_id, epoch, today):
                    await uow.commit()
                    return
                row = await uow.quotas.get(partner_id)
                if row is None:  # a partner from before quotas, or never limited: the defaults, created once
                    uow.quotas.add_default(partner_id, epoch, today)
                    try:
                        await uow.commit()
                    except sqlalchemy.exc.IntegrityError:
                        pass  # another call created it first
                    continue
                subject = partner_name(partner_id)
                if row.quota_day == today and row.day_count >= row.daily_quota:
                    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), now.tzinfo)
                    raise ResourceExhausted("QUOTA_EXCEEDED", "the daily quota of calls is used up",
                                            subject=subject, retry_after_seconds=(midnight - now).total_seconds())
                tokens = min(float(row.burst), row.tokens + max(0.0, epoch - row.refilled_at) * row.rate_per_second)
                wait = max(0.001, (1.0 - tokens) / row.rate_per_second) if row.rate_per_second > 0 else 1.0
                raise ResourceExhausted("RATE_LIMITED", "too many calls; slow down", subject=subject,
                                        retry_after_seconds=round(wait, 3))
        raise Unavailable("QUOTA_UNAVAILABLE", "the quota could not be checked; retry later")

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
        """Immediate in this process; other replicas honour it within the cache TTL."""
        async with self.uow_factory() as uow:
            found = await uow.api_keys.revoke(key_id, self.clock())
            await uow.commit()
        self.key_cache.evict(key_id)
        return found

    async def _partner_key(self, uow: GatewayUnitOfWork, partner_id: str, key_id: str) -> ApiKeyRecord:
        if await uow.partners.get(partner_id) is None:
            raise NotFound("partner", partner_name(partner_id))
        record = await uow.api_keys.get(key_id)
        if record is None or record.partner_id != partner_id:
            raise NotFound("api_key", f"{partner_name(partner_id)}/apiKeys/{key_id}", reason="API_KEY_NOT_FOUND")
        return record

    async def revoke_partner_key(self, partner_id: str, key_id: str) -> ApiKeyRecord:
        _annotate(partner_id=partner_id)
        async with self.uow_factory() as uow:
            await self._partner_key(uow, partner_id, key_id)
            await uow.api_keys.revoke(key_id, self.clock())
            await uow.commit()
            record = await uow.api_keys.get(key_id)
        self.key_cache.evict(key_id)
        assert record is not None
        log.info("api key revoked", extra={"partner_id": partner_id, "key_id": key_id})
        return record

    async def list_api_keys(self, partner_id: str, size: int = 0, token: str = "") -> tuple[list[ApiKeyRecord], str]:
        """Oldest first. A partner holds a handful of keys: the page is cut from the whole ordered list."""
        _annotate(partner_id=partner_id)
        size = page_size(size)
        fingerprint = query_fingerprint(list="api_keys", partner=partner_id)
        position = decode_page_token(token, fingerprint)
        async with self.uow_factory() as uow:
            if await uow.partners.get(partner_id) is None:
                raise NotFound("partner", partner_name(partner_id))
            keys = await uow.api_keys.list_for(partner_id)
        if position is not None:
            ids = [k.key_id for k in keys]
            after = str(position.get("after", ""))
            keys = keys[ids.index(after) + 1:] if after in ids else []
        page = keys[:size]
        next_token = encode_page_token({"after": page[-1].key_id}, fingerprint) if len(keys) > size else ""
        return page, next_token

    async def rotate_api_key(self, partner_id: str, key_id: str,
                             overlap_seconds: int) -> tuple[IssuedApiKey, ApiKeyRecord]:
        """A new key for the partner; the old one (which must be ACTIVE) works until now + overlap."""
        _annotate(partner_id=partner_id)
        if not 0 <= overlap_seconds <= MAX_OVERLAP_SECONDS:
            raise InvalidArgument.field("overlap_seconds", f"must be between 0 and {MAX_OVERLAP_SECONDS}",
                                        reason="INVALID_OVERLAP")
        overlap = overlap_seconds or DEFAULT_OVERLAP_SECONDS
        new_id, secret = auth.new_key_id(), auth.new_secret()
        secret_hash = await asyncio.to_thread(auth.hash_secret, secret)
        now = self.clock()
        async with self.uow_factory() as uow:
            old = await self._partner_key(uow, partner_id, key_id)
            state = old.state(now)
            if state != KEY_ACTIVE:
                raise FailedPrecondition("API_KEY_NOT_ACTIVE", f"only an active key can be rotated (this one is "
                                         f"{state.lower()})", metadata={"state": state})
            await uow.api_keys.set_expiry(key_id, now + timedelta(seconds=overlap))
            await uow.api_keys.add(new_id, partner_id, secret_hash)
            await uow.commit()
            previous = await uow.api_keys.get(key_id)
        self.key_cache.evict(key_id)  # re-verified with its expiry on next use
        assert previous is not None
        log.info("api key rotated", extra={"partner_id": partner_id, "key_id": key_id, "new_key_id": new_id,
                                           "overlap_seconds": overlap})
        return IssuedApiKey(key_id=new_id, api_key=auth.format_api_key(new_id, secret)), previous

    async def set_client_certificate(self, partner_id: str, certificate_pem: str) -> ClientCertificate | None:
        """Registers (replaces) the partner's mTLS client certificate; an empty PEM removes it. INVALID_ARGUMENT
        INVALID_CERTIFICATE, NOT_FOUND partner, ALREADY_EXISTS CLIENT_CERT_IN_USE (another partner's)."""
        identity = None
        if certificate_pem.strip():
            identity = auth.certificate_identity(certificate_pem)
            if identity is None:
                raise InvalidArgument.field("certificate_pem", "not a PEM X.509 certificate",
                                            reason="INVALID_CERTIFICATE")
        async with self.uow_factory() as uow:
            await self._existing_partner(uow, partner_id)
            if identity is not None:
                holder = await uow.client_certs.by_fingerprint(identity.fingerprint)
                if holder is not None and holder.partner_id != partner_id:
                    raise AlreadyExists("client_certificate", partner_name(partner_id), reason="CLIENT_CERT_IN_USE")
            try:
                registered = await uow.client_certs.replace(
                    partner_id, identity.fingerprint if identity else None, identity.common_name if identity else "")
                await uow.commit()
            except sqlalchemy.exc.IntegrityError:  # registered to another partner concurrently
                raise AlreadyExists("client_certificate", partner_name(partner_id),
                                    reason="CLIENT_CERT_IN_USE") from None
        log.info("client certificate %s", "set" if identity else "removed",
                 extra={"partner_id": partner_id, "cert_fingerprint": identity.fingerprint if identity else ""})
        return registered

    async def list_partners(self, size: int, token: str) -> tuple[list[Partner], str]:
        size = page_size(size)
        fingerprint = query_fingerprint(list="partners")
        position = decode_page_token(token, fingerprint)
        after = str(position["after"]) if position else None
        async with self.uow_factory() as uow:
            partners = await uow.partners.list_after(after, size + 1)
        more = len(partners) > size
        partners = partners[:size]
        next_token = encode_page_token({"after": partners[-1].partner_id}, fingerprint) if more else ""
        return partners, next_token

    async def _existing_partner(self, uow: GatewayUnitOfWork, partner_id: str) -> None:
        _annotate(partner_id=partner_id)
        if await uow.partners.get(partner_id) is None:
            raise NotFound("partner", partner_name(partner_id))

    async def get_policy(self, partner_id: str) -> PartnerPolicy:
        async with self.uow_factory() as uow:
            await self._existing_partner(uow, partner_id)
            return await uow.policies.get(partner_id)

    async def set_scopes(self, partner_id: str, scopes: list[str]) -> PartnerPolicy:
        violations = Violations()
        for index, scope in enumerate(scopes):
            if scope not in KNOWN_SCOPES:
                violations.add(f"scopes[{index}]", f"unknown scope; one of {', '.join(sorted(KNOWN_SCOPES))}")
        violations.raise_if_any(reason="UNKNOWN_SCOPE")
        async with self.uow_factory() as uow:
            await self._existing_partner(uow, partner_id)
            await uow.policies.set_scopes(partner_id, set(scopes))
            await uow.commit()
            policy = await uow.policies.get(partner_id)
        log.info("partner scopes set", extra={"partner_id": partner_id, "scopes": ",".join(policy.scopes)})
        return policy

    async def set_offers(self, partner_id: str, offer_ids: list[str]) -> PartnerPolicy:
        violations = Violations()
        if ALL_OFFERS in offer_ids and len(set(offer_ids)) > 1:
            violations.add("offer_ids", f'"{ALL_OFFERS}" must be the only entry')
        for index, offer_id in enumerate(offer_ids):
            if offer_id != ALL_OFFERS and not ID_PATTERN.match(offer_id):
                violations.add(f"offer_ids[{index}]", ID_RULE)
        violations.raise_if_any(reason="INVALID_OFFER_IDS")
        async with self.uow_factory() as uow:
            await self._existing_partner(uow, partner_id)
            await uow.policies.set_offers(partner_id, set(offer_ids))
            await uow.commit()
            policy = await uow.policies.get(partner_id)
        log.info("partner offers set", extra={"partner_id": partner_id, "offer_count": len(policy.offer_ids)})
        return policy

    async def set_quota(self, partner_id: str, quota: Quota) -> PartnerPolicy:
        violations = Violations()
        if not 0 < quota.rate_per_second <= MAX_RATE_PER_SECOND:
            violations.add("quota.rate_per_second", f"must be greater than 0 and at most {MAX_RATE_PER_SECOND:g}")
        if not 1 <= quota.burst <= MAX_BURST:
            violations.add("quota.burst", f"must be between 1 and {MAX_BURST}")
        if not 1 <= quota.daily_quota <= MAX_DAILY_QUOTA:
            violations.add("quota.daily_quota", f"must be between 1 and {MAX_DAILY_QUOTA}")
        violations.raise_if_any(reason="INVALID_QUOTA")
        now = self.clock()
        async with self.uow_factory() as uow:
            await self._existing_partner(uow, partner_id)
            await uow.policies.set_quota(partner_id, quota, now.timestamp(), now.date().isoformat())
            await uow.commit()
            policy = await uow.policies.get(partner_id)
        log.info("partner quota set", extra={"partner_id": partner_id, "rate_per_second": quota.rate_per_second,
                                             "burst": quota.burst, "daily_quota": quota.daily_quota})
        return policy

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
        """Campaign's ranking, filtered to the partner's allow-list and re-ranked 1..n; every offer shown is
        recorded (it is what a later lead must refer to)."""
        async with self.uow_factory() as uow:
            customer_id = await uow.links.customer_id(principal.partner_id, query.customer_ref)
            allowed = await uow.policies.offer_ids(principal.partner_id)
        # The transaction is closed before the downstream call: no connection is held while campaign decides.
        if customer_id is None:
            raise customer_not_found(query.customer_ref)
        _annotate(customer_id=customer_id)
        if not allowed:
            return Decision(decision_ref="", offers=())
        everything = ALL_OFFERS in allowed
        try:
            decision = await self.campaign.decide(
                customer_id, partner_id=principal.partner_id, placement=query.placement,
                decision_time=query.decision_time or self.clock(),
                max_offers=query.max_offers if everything else CAMPAIGN_MAX_OFFERS,
            )
        except DomainError as error:
            log.warning(
                "campaign decide failed",
                extra={"partner_id": principal.partner_id, "dependency_code": error.code.name,
                       "dependency_reason": error.reason},
            )
            raise partner_facing(error, query.customer_ref) from None
        if not everything:
            kept = [offer for offer in decision.offers if offer.offer_id in allowed][:query.max_offers]
            decision = Decision(decision_ref=decision.decision_ref, offers=tuple(
                dataclasses.replace(offer, rank=rank) for rank, offer in enumerate(kept, start=1)))
        if decision.offers and decision.decision_ref:
            async with self.uow_factory() as uow:
                await uow.leads.record_presented(principal.partner_id, decision.decision_ref, query.customer_ref,
                                                 [offer.offer_id for offer in decision.offers], self.clock())
                await uow.commit()
        return decision

    async def submit_lead(self, principal: Principal, lead: LeadInput, key: IdempotencyKey | None) -> Lead:
        """A lead must name an offer GetOffers presented to this partner for this customer in that decision.
        Campaign's Decide screened that offer with risk for the partner channel (partner-sharing consent
        included), so a lead is only ever accepted for a customer who consented at decision time."""

        async def create(uow: GatewayUnitOfWork) -> Lead:
            customer_id = await uow.links.customer_id(principal.partner_id, lead.customer_ref)
            if customer_id is None:
                raise customer_not_found(lead.customer_ref)
            _annotate(customer_id=customer_id)
            if not await uow.leads.decision_known(principal.partner_id, lead.decision_ref, lead.customer_ref):
                raise NotFound("decision", lead.decision_ref, reason="DECISION_NOT_FOUND")
            if not await uow.leads.was_presented(principal.partner_id, lead.decision_ref, lead.customer_ref,
                                                 lead.offer_id):
                raise FailedPrecondition("OFFER_NOT_PRESENTED",
                                         "the offer was not presented to this customer in that decision")
            now = self.clock()
            row = LeadRow(lead_id=uuid.uuid4().hex, partner_id=principal.partner_id,
                          customer_ref=lead.customer_ref, customer_id=customer_id, offer_id=lead.offer_id,
                          decision_ref=lead.decision_ref, status=LEAD_RECEIVED, forwarded=False, create_time=now,
                          update_time=now)
            await uow.leads.add(row)
            return lead_from_rows(row, None)

        created = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, LEAD_CODEC, create)
        log.info("lead received", extra={"partner_id": principal.partner_id, "lead": created.name,
                                         "offer_id": created.offer_id})
        return created

    async def report_conversion(self, principal: Principal, conversion: ConversionInput,
                                key: IdempotencyKey | None) -> Lead:
        async def convert(uow: GatewayUnitOfWork) -> Lead:
            row = await uow.leads.get_row(principal.partner_id, conversion.lead_id)
            if row is None:
                raise lead_not_found(conversion.lead_id)
            _annotate(customer_id=row.customer_id)
            if await uow.leads.conversion(row.lead_id) is not None:
                raise FailedPrecondition("LEAD_ALREADY_CONVERTED", "a conversion was already reported for this lead")
            now = self.clock()
            converted = ConversionRow(
                lead_id=row.lead_id, partner_id=principal.partner_id,
                currency_code=conversion.revenue.currency_code, revenue_units=conversion.revenue.units,
                revenue_nanos=conversion.revenue.nanos, conversion_time=conversion.conversion_time or now,
                forwarded=False, create_time=now,
            )
            await uow.leads.add_conversion(converted)
            row.status, row.update_time = LEAD_CONVERTED, now
            await uow.session.flush()
            return lead_from_rows(row, converted)

        converted = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, LEAD_CODEC, convert)
        log.info("conversion received", extra={"partner_id": principal.partner_id, "lead": converted.name})
        return converted

    async def report_engagement(self, principal: Principal, engagement: EngagementInput,
                                key: IdempotencyKey | None) -> Engagement:
        """Like a lead, an engagement must name an offer GetOffers presented to this partner for this customer in
        that decision; it is stored and forwarded to campaign's RecordResponses (forwarder.py)."""

        async def create(uow: GatewayUnitOfWork) -> Engagement:
            customer_id = await uow.links.customer_id(principal.partner_id, engagement.customer_ref)
            if customer_id is None:
                raise customer_not_found(engagement.customer_ref)
            _annotate(customer_id=customer_id)
            if not await uow.leads.decision_known(principal.partner_id, engagement.decision_ref,
                                                  engagement.customer_ref):
                raise NotFound("decision", engagement.decision_ref, reason="DECISION_NOT_FOUND")
            if not await uow.leads.was_presented(principal.partner_id, engagement.decision_ref,
                                                 engagement.customer_ref, engagement.offer_id):
                raise FailedPrecondition("OFFER_NOT_PRESENTED",
                                         "the offer was not presented to this customer in that decision")
            now = self.clock()
            when = engagement.event_time or now
            if when > now + timedelta(minutes=5):
                raise InvalidArgument.field("event_time", "is in the future", reason="EVENT_TIME_IN_THE_FUTURE")
            row = EngagementRow(engagement_id=uuid.uuid4().hex, partner_id=principal.partner_id,
                                customer_ref=engagement.customer_ref, customer_id=customer_id,
                                offer_id=engagement.offer_id, decision_ref=engagement.decision_ref,
                                kind=engagement.kind, event_time=when, forwarded=False, create_time=now)
            uow.session.add(row)
            await uow.session.flush()
            return Engagement(row.engagement_id, row.kind, when)

        created = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, ENGAGEMENT_CODEC, create)
        log.info("engagement received", extra={"partner_id": principal.partner_id, "engagement": created.name,
                                               "kind": created.kind})
        return created

    async def get_lead(self, principal: Principal, lead_id: str) -> Lead:
        async with self.uow_factory() as uow:
            lead = await uow.leads.get(principal.partner_id, lead_id)
        if lead is None:
            raise lead_not_found(lead_id)
        return lead
