"""gRPC handlers of PartnerService and GatewayAdminService: authenticate from metadata (before anything else),
validate, map proto <-> domain, call the service layer, write the audit line. No SQL here."""

from __future__ import annotations

import asyncio
import logging
import types
from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from lodestar.common.v1 import common_pb2
from lodestar.gateway.v1 import (
    gateway_admin_service_pb2,
    gateway_admin_service_pb2_grpc,
    partner_service_pb2,
    partner_service_pb2_grpc,
)
from services.gateway.auth import ADMIN_TOKEN_HEADER, API_KEY_HEADER
from services.gateway.domain import (
    CURRENCY_PATTERN,
    CUSTOMER_REF_PATTERN,
    DEFAULT_MAX_OFFERS,
    ENGAGEMENT_OUTCOMES,
    KEY_ACTIVE,
    KEY_EXPIRED,
    KEY_EXPIRING,
    KEY_REVOKED,
    LEAD_CONVERTED,
    LEAD_RECEIVED,
    MAX_DISPLAY_NAME,
    MAX_NANOS,
    MAX_OFFERS,
    MAX_PLACEMENT,
    PLACEMENT_PATTERN,
    ApiKeyRecord,
    ClientCertificate,
    ConversionInput,
    Decision,
    EngagementInput,
    Lead,
    LeadInput,
    Money,
    OfferQuery,
    Partner,
    PartnerPolicy,
    Principal,
    Quota,
)
from services.gateway.service import GatewayService
from services.platform import timestamps
from services.platform.context import current_request
from services.platform.errors import FieldViolation, InvalidArgument, from_infrastructure
from services.platform.idempotency import key_for
from services.platform.validation import Violations, check_id, parse_name

audit_log = logging.getLogger("lodestar.gateway.audit")


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str | None:
    """One metadata value of the call being served (keys are lower-case on the wire)."""
    request = current_request()
    if request is not None:
        return request.metadata.get(key) or None
    for name, value in context.invocation_metadata() or ():
        if name == key and isinstance(value, str):
            return value or None
    return None


def client_certificate(context: grpc.aio.ServicerContext) -> bytes | None:
    """The PEM client certificate of a call that came over mutual TLS (verified against the server's client CA
    during the handshake), else None."""
    try:
        auth_context = context.auth_context() or {}
    except Exception:  # a context without transport security information
        return None
    certs = auth_context.get("x509_pem_cert") or []
    return certs[0] if certs and isinstance(certs[0], bytes) else None


class Audit:
    """One JSON line per call on `lodestar.gateway.audit`: caller, partner, rpc, result. Never a key, never a
    customer id or ref."""

    def __init__(self, rpc: str, caller: str) -> None:
        self.rpc = rpc
        self.caller = caller
        self.partner_id = ""
        self.key_id = ""
        # The fingerprint of the mTLS client certificate the partner authenticated with (public, not a secret).
        self.cert_fingerprint = ""
        # A resource name the call acted on (partners/..., leads/...): never a customer id or ref.
        self.resource = ""

    def __enter__(self) -> Audit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        code, reason = "OK", ""
        if isinstance(exc, asyncio.CancelledError):  # the caller gave up (deadline or cancel)
            code, reason = "CANCELLED", "CANCELLED"
        elif exc is not None:
            error = from_infrastructure(exc)
            code, reason = (error.code.name, error.reason) if error is not None else ("INTERNAL", "INTERNAL")
        audit_log.info(
            "%s %s %s", self.caller, self.rpc, code,
            extra={"caller": self.caller, "rpc": self.rpc, "partner_id": self.partner_id, "key_id": self.key_id,
                   "cert_fingerprint": self.cert_fingerprint, "resource": self.resource, "result": code,
                   "error_reason": reason},
        )


def decision_to_proto(decision: Decision) -> partner_service_pb2.GetOffersResponse:
    return partner_service_pb2.GetOffersResponse(
        decision_ref=decision.decision_ref,
        offers=[
            partner_service_pb2.PartnerOffer(
                offer_id=offer.offer_id, title=offer.title, product_type=offer.product_type,  # type: ignore[arg-type]
                rank=offer.rank, reason_codes=list(offer.reason_codes),
                disclosures=[common_pb2.Disclosure(kind=d.kind, text=d.text) for d in offer.disclosures],
            )
            for offer in decision.offers
        ],
    )


def offer_query_from_proto(request: partner_service_pb2.GetOffersRequest) -> OfferQuery:
    """The validated request; INVALID_ARGUMENT naming every bad field (with that field's reason when only one)."""
    violations: list[tuple[FieldViolation, str]] = []
    ref = request.customer_ref
    if not ref:
        violations.append((FieldViolation("customer_ref", "is required"), "REQUIRED_FIELD_MISSING"))
    elif not CUSTOMER_REF_PATTERN.match(ref):
        violations.append((FieldViolation("customer_ref", "must be a customer ref issued to this partner (p_...)"),
                           "INVALID_CUSTOMER_REF"))
    max_offers = request.max_offers or DEFAULT_MAX_OFFERS
    if not 1 <= max_offers <= MAX_OFFERS:
        violations.append((FieldViolation("max_offers", f"must be between 1 and {MAX_OFFERS}; 0 means "
                                                        f"{DEFAULT_MAX_OFFERS}"), "INVALID_MAX_OFFERS"))
    placement = request.context.placement
    if len(placement) > MAX_PLACEMENT or not PLACEMENT_PATTERN.match(placement):
        violations.append((FieldViolation("context.placement", f"must be at most {MAX_PLACEMENT} letters, digits, "
                                                               "'.', '_' or '-'"), "INVALID_PLACEMENT"))
    if violations:
        reason = violations[0][1] if len(violations) == 1 else "INVALID_ARGUMENT"
        raise InvalidArgument([v for v, _ in violations], reason=reason)
    when = timestamps.from_field(request.context, "time", "context.time")
    return OfferQuery(customer_ref=ref, placement=placement, decision_time=when, max_offers=max_offers)


def _timestamp(partner: Partner) -> timestamp_pb2.Timestamp | None:
    return _ts(partner.create_time)


_ts = timestamps.to_timestamp


_KEY_STATES = {
    KEY_ACTIVE: gateway_admin_service_pb2.API_KEY_STATE_ACTIVE,
    KEY_EXPIRING: gateway_admin_service_pb2.API_KEY_STATE_EXPIRING,
    KEY_EXPIRED: gateway_admin_service_pb2.API_KEY_STATE_EXPIRED,
    KEY_REVOKED: gateway_admin_service_pb2.API_KEY_STATE_REVOKED,
}
_LEAD_STATUSES = {
    LEAD_RECEIVED: partner_service_pb2.LEAD_STATUS_RECEIVED,
    LEAD_CONVERTED: partner_service_pb2.LEAD_STATUS_CONVERTED,
}


def api_key_to_proto(record: ApiKeyRecord, now: datetime) -> gateway_admin_service_pb2.ApiKey:
    """Public id, state and times: never the secret or its hash."""
    return gateway_admin_service_pb2.ApiKey(
        key_id=record.key_id, partner=f"partners/{record.partner_id}", state=_KEY_STATES[record.state(now)],
        create_time=_ts(record.create_time), expire_time=_ts(record.expire_time),
        revoke_time=_ts(record.revoke_time),
    )


def policy_to_proto(policy: PartnerPolicy) -> gateway_admin_service_pb2.PartnerPolicy:
    return gateway_admin_service_pb2.PartnerPolicy(
        partner=f"partners/{policy.partner_id}", scopes=list(policy.scopes), offer_ids=list(policy.offer_ids),
        quota=gateway_admin_service_pb2.Quota(rate_per_second=policy.quota.rate_per_second,
                                              burst=policy.quota.burst, daily_quota=policy.quota.daily_quota),
    )


def lead_to_proto(lead: Lead) -> partner_service_pb2.Lead:
    message = partner_service_pb2.Lead(
        name=lead.name, customer_ref=lead.customer_ref, offer_id=lead.offer_id, decision_ref=lead.decision_ref,
        status=_LEAD_STATUSES[lead.status], create_time=_ts(lead.create_time), update_time=_ts(lead.update_time),
        conversion_time=_ts(lead.conversion_time),
    )
    if lead.revenue is not None:
        message.revenue.CopyFrom(partner_service_pb2.Money(
            currency_code=lead.revenue.currency_code, units=lead.revenue.units, nanos=lead.revenue.nanos))
    return message


def _check_ref(ref: str, violations: Violations) -> None:
    if not ref:
        violations.add("customer_ref", "is required")
    elif not CUSTOMER_REF_PATTERN.match(ref):
        violations.add("customer_ref", "must be a customer ref issued to this partner (p_...)")


def _require_request_id(request_id: str) -> None:
    if not request_id:
        raise InvalidArgument.field("request_id", "is required: a unique id per lead or conversion, reused on "
                                                  "retries", reason="REQUIRED_FIELD_MISSING")


def lead_from_proto(request: partner_service_pb2.SubmitLeadRequest) -> LeadInput:
    _require_request_id(request.request_id)
    violations = Violations()
    _check_ref(request.customer_ref, violations)
    if not request.offer_id:
        violations.add("offer_id", "is required")
    elif len(request.offer_id) > 128:
        violations.add("offer_id", "must be at most 128 characters")
    if not request.decision_ref:
        violations.add("decision_ref", "is required: the decision_ref of the GetOffers answer")
    elif len(request.decision_ref) > 200:
        violations.add("decision_ref", "must be at most 200 characters")
    violations.raise_if_any()
    return LeadInput(customer_ref=request.customer_ref, offer_id=request.offer_id,
                     decision_ref=request.decision_ref)


def engagement_from_proto(request: partner_service_pb2.ReportEngagementRequest) -> EngagementInput:
    _require_request_id(request.request_id)
    lead = lead_from_proto(partner_service_pb2.SubmitLeadRequest(  # the same reference checks as a lead
        request_id=request.request_id, customer_ref=request.customer_ref, offer_id=request.offer_id,
        decision_ref=request.decision_ref))
    kind = partner_service_pb2.EngagementKind.Name(request.kind).removeprefix("ENGAGEMENT_KIND_") \
        if request.kind in partner_service_pb2.EngagementKind.values() else ""
    if kind not in ENGAGEMENT_OUTCOMES:
        raise InvalidArgument.field("kind", "must be VIEWED or CLICKED", reason="INVALID_ENGAGEMENT_KIND")
    return EngagementInput(customer_ref=lead.customer_ref, offer_id=lead.offer_id, decision_ref=lead.decision_ref,
                           kind=kind, event_time=timestamps.from_field(request, "event_time"))


def conversion_from_proto(request: partner_service_pb2.ReportConversionRequest) -> ConversionInput:
    _require_request_id(request.request_id)
    lead_id = parse_name(request.lead, "leads", field="lead")
    violations = Violations()
    revenue = request.revenue
    if not request.HasField("revenue"):
        violations.add("revenue", "is required (0 when the conversion brought none)")
    else:
        if not CURRENCY_PATTERN.match(revenue.currency_code):
            violations.add("revenue.currency_code", "must be an ISO 4217 code such as CNY")
        if revenue.units < 0 or revenue.nanos < 0:
            violations.add("revenue", "must not be negative")
        if abs(revenue.nanos) > MAX_NANOS:
            violations.add("revenue.nanos", f"must be between 0 and {MAX_NANOS}")
    violations.raise_if_any(reason="INVALID_REVENUE" if request.HasField("revenue") else "INVALID_ARGUMENT")
    when = timestamps.from_field(request, "conversion_time")
    return ConversionInput(lead_id=lead_id, revenue=Money(revenue.currency_code, revenue.units, revenue.nanos),
                           conversion_time=when)


def client_certificate_to_proto(cert: ClientCertificate) -> gateway_admin_service_pb2.ClientCertificate:
    return gateway_admin_service_pb2.ClientCertificate(
        partner=f"partners/{cert.partner_id}", sha256_fingerprint=cert.fingerprint,
        subject_common_name=cert.subject_common_name, create_time=_ts(cert.create_time))


def partner_to_proto(partner: Partner) -> gateway_admin_service_pb2.Partner:
    return gateway_admin_service_pb2.Partner(
        name=partner.name, partner_id=partner.partner_id, display_name=partner.display_name,
        create_time=_timestamp(partner),
    )


def partner_from_proto(message: gateway_admin_service_pb2.Partner) -> Partner:
    check_id(message.partner_id, "partner.partner_id")
    if not message.display_name.strip():
        raise InvalidArgument.field("partner.display_name", "is required", reason="REQUIRED_FIELD_MISSING")
    if len(message.display_name) > MAX_DISPLAY_NAME:
        raise InvalidArgument.field("partner.display_name", f"must be at most {MAX_DISPLAY_NAME} characters",
                                    reason="INVALID_DISPLAY_NAME")
    return Partner(partner_id=message.partner_id, display_name=message.display_name)


class PartnerHandlers(partner_service_pb2_grpc.PartnerServiceServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def _admit(self, context: grpc.aio.ServicerContext, rpc: str, audit: Audit) -> Principal:
        """Authenticates the call (API key or client certificate), checks the RPC's scope, rate and quota, and
        names the partner in its audit line."""
        principal = await self.service.admit(metadata_value(context, API_KEY_HEADER), rpc, client_certificate(context))
        audit.partner_id, audit.key_id = principal.partner_id, principal.key_id
        audit.cert_fingerprint = principal.cert_fingerprint
        return principal

    async def GetOffers(self, request: partner_service_pb2.GetOffersRequest,
                        context: grpc.aio.ServicerContext) -> partner_service_pb2.GetOffersResponse:
        with Audit("GetOffers", "partner") as audit:
            principal = await self._admit(context, "GetOffers", audit)
            query = offer_query_from_proto(request)
            decision = await self.service.get_offers(principal, query)
            return decision_to_proto(decision)

    async def SubmitLead(self, request: partner_service_pb2.SubmitLeadRequest,
                         context: grpc.aio.ServicerContext) -> partner_service_pb2.SubmitLeadResponse:
        with Audit("SubmitLead", "partner") as audit:
            principal = await self._admit(context, "SubmitLead", audit)
            lead = lead_from_proto(request)
            # Request ids are per partner: another partner's id never collides, never replays.
            key = key_for(f"{principal.partner_id}/SubmitLead", request)
            created = await self.service.submit_lead(principal, lead, key)
            audit.resource = created.name
            return partner_service_pb2.SubmitLeadResponse(lead=lead_to_proto(created))

    async def ReportConversion(self, request: partner_service_pb2.ReportConversionRequest,
                               context: grpc.aio.ServicerContext) -> partner_service_pb2.ReportConversionResponse:
        with Audit("ReportConversion", "partner") as audit:
            principal = await self._admit(context, "ReportConversion", audit)
            conversion = conversion_from_proto(request)
            audit.resource = f"leads/{conversion.lead_id}"
            key = key_for(f"{principal.partner_id}/ReportConversion", request)
            converted = await self.service.report_conversion(principal, conversion, key)
            return partner_service_pb2.ReportConversionResponse(lead=lead_to_proto(converted))

    async def ReportEngagement(self, request: partner_service_pb2.ReportEngagementRequest,
                               context: grpc.aio.ServicerContext) -> partner_service_pb2.ReportEngagementResponse:
        with Audit("ReportEngagement", "partner") as audit:
            principal = await self._admit(context, "ReportEngagement", audit)
            engagement = engagement_from_proto(request)
            key = key_for(f"{principal.partner_id}/ReportEngagement", request)
            created = await self.service.report_engagement(principal, engagement, key)
            audit.resource = created.name
            return partner_service_pb2.ReportEngagementResponse(
                engagement=created.name, event_time=_ts(created.event_time),
                kind=partner_service_pb2.EngagementKind.Value(f"ENGAGEMENT_KIND_{created.kind}"))

    async def GetLeadStatus(self, request: partner_service_pb2.GetLeadStatusRequest,
                            context: grpc.aio.ServicerContext) -> partner_service_pb2.GetLeadStatusResponse:
        with Audit("GetLeadStatus", "partner") as audit:
            principal = await self._admit(context, "GetLeadStatus", audit)
            lead_id = parse_name(request.lead, "leads", field="lead")
            audit.resource = f"leads/{lead_id}"
            lead = await self.service.get_lead(principal, lead_id)
            return partner_service_pb2.GetLeadStatusResponse(lead=lead_to_proto(lead))


class AdminHandlers(gateway_admin_service_pb2_grpc.GatewayAdminServiceServicer):
    def __init__(self, service: GatewayService) -> None:
        self.service = service

    async def CreatePartner(self, request: gateway_admin_service_pb2.CreatePartnerRequest,
                            context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.CreatePartnerResponse:
        with Audit("CreatePartner", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner = partner_from_proto(request.partner)
            audit.partner_id = partner.partner_id
            key = key_for("CreatePartner", request)
            created = await self.service.create_partner(partner, key)
            return gateway_admin_service_pb2.CreatePartnerResponse(partner=partner_to_proto(created))

    async def CreateApiKey(self, request: gateway_admin_service_pb2.CreateApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.CreateApiKeyResponse:
        with Audit("CreateApiKey", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner_id = parse_name(request.partner, "partners", field="partner")
            audit.partner_id = partner_id
            issued = await self.service.create_api_key(partner_id)
            audit.key_id = issued.key_id
            return gateway_admin_service_pb2.CreateApiKeyResponse(api_key=issued.api_key, key_id=issued.key_id)

    async def IssuePseudonym(self, request: gateway_admin_service_pb2.IssuePseudonymRequest,
                             context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.IssuePseudonymResponse:
        with Audit("IssuePseudonym", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner_id = parse_name(request.partner, "partners", field="partner")
            audit.partner_id = partner_id
            check_id(request.customer_id, "customer_id")
            ref = await self.service.issue_pseudonym(partner_id, request.customer_id)
            return gateway_admin_service_pb2.IssuePseudonymResponse(customer_ref=ref)

    async def ListPartners(self, request: gateway_admin_service_pb2.ListPartnersRequest,
                           context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.ListPartnersResponse:
        with Audit("ListPartners", "admin"):
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partners, token = await self.service.list_partners(request.page_size, request.page_token)
            return gateway_admin_service_pb2.ListPartnersResponse(
                partners=[partner_to_proto(p) for p in partners], next_page_token=token)

    def _partner(self, audit: Audit, partner: str) -> str:
        partner_id = parse_name(partner, "partners", field="partner")
        audit.partner_id = partner_id
        return partner_id

    async def GetPartnerPolicy(self, request: gateway_admin_service_pb2.GetPartnerPolicyRequest,
                               context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.GetPartnerPolicyResponse:
        with Audit("GetPartnerPolicy", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            policy = await self.service.get_policy(self._partner(audit, request.partner))
            return gateway_admin_service_pb2.GetPartnerPolicyResponse(policy=policy_to_proto(policy))

    async def SetPartnerScopes(self, request: gateway_admin_service_pb2.SetPartnerScopesRequest,
                               context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.SetPartnerScopesResponse:
        with Audit("SetPartnerScopes", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            policy = await self.service.set_scopes(self._partner(audit, request.partner), list(request.scopes))
            return gateway_admin_service_pb2.SetPartnerScopesResponse(policy=policy_to_proto(policy))

    async def SetPartnerOffers(self, request: gateway_admin_service_pb2.SetPartnerOffersRequest,
                               context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.SetPartnerOffersResponse:
        with Audit("SetPartnerOffers", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            policy = await self.service.set_offers(self._partner(audit, request.partner), list(request.offer_ids))
            return gateway_admin_service_pb2.SetPartnerOffersResponse(policy=policy_to_proto(policy))

    async def SetPartnerQuota(self, request: gateway_admin_service_pb2.SetPartnerQuotaRequest,
                              context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.SetPartnerQuotaResponse:
        with Audit("SetPartnerQuota", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner_id = self._partner(audit, request.partner)
            q = request.quota
            policy = await self.service.set_quota(partner_id, Quota(q.rate_per_second, q.burst, q.daily_quota))
            return gateway_admin_service_pb2.SetPartnerQuotaResponse(policy=policy_to_proto(policy))

    async def ListApiKeys(self, request: gateway_admin_service_pb2.ListApiKeysRequest,
                          context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.ListApiKeysResponse:
        with Audit("ListApiKeys", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            keys, token = await self.service.list_api_keys(self._partner(audit, request.partner), request.page_size,
                                                           request.page_token)
            now = self.service.clock()
            return gateway_admin_service_pb2.ListApiKeysResponse(api_keys=[api_key_to_proto(k, now) for k in keys],
                                                                 next_page_token=token)

    async def RotateApiKey(self, request: gateway_admin_service_pb2.RotateApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.RotateApiKeyResponse:
        with Audit("RotateApiKey", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner_id = self._partner(audit, request.partner)
            audit.key_id = check_id(request.key_id, "key_id")
            issued, previous = await self.service.rotate_api_key(partner_id, request.key_id, request.overlap_seconds)
            return gateway_admin_service_pb2.RotateApiKeyResponse(
                api_key=issued.api_key, key_id=issued.key_id,
                previous_key=api_key_to_proto(previous, self.service.clock()))

    async def RevokeApiKey(self, request: gateway_admin_service_pb2.RevokeApiKeyRequest,
                           context: grpc.aio.ServicerContext) -> gateway_admin_service_pb2.RevokeApiKeyResponse:
        with Audit("RevokeApiKey", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner_id = self._partner(audit, request.partner)
            audit.key_id = check_id(request.key_id, "key_id")
            record = await self.service.revoke_partner_key(partner_id, request.key_id)
            return gateway_admin_service_pb2.RevokeApiKeyResponse(
                api_key=api_key_to_proto(record, self.service.clock()))

    async def SetPartnerClientCertificate(
        self, request: gateway_admin_service_pb2.SetPartnerClientCertificateRequest,
        context: grpc.aio.ServicerContext,
    ) -> gateway_admin_service_pb2.SetPartnerClientCertificateResponse:
        with Audit("SetPartnerClientCertificate", "admin") as audit:
            self.service.authorize_admin(metadata_value(context, ADMIN_TOKEN_HEADER))
            partner_id = self._partner(audit, request.partner)
            registered = await self.service.set_client_certificate(partner_id, request.certificate_pem)
            if registered is None:
                return gateway_admin_service_pb2.SetPartnerClientCertificateResponse()
            audit.cert_fingerprint = registered.fingerprint
            return gateway_admin_service_pb2.SetPartnerClientCertificateResponse(
                client_certificate=client_certificate_to_proto(registered))
