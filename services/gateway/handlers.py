"""gRPC handlers of PartnerService and GatewayAdminService: authenticate from metadata (before anything else),
validate, map proto <-> domain, call the service layer, write the audit line. No SQL here."""

from __future__ import annotations

import logging
import types
from datetime import UTC

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
    CUSTOMER_REF_PATTERN,
    DEFAULT_MAX_OFFERS,
    MAX_DISPLAY_NAME,
    MAX_OFFERS,
    MAX_PLACEMENT,
    PLACEMENT_PATTERN,
    Decision,
    OfferQuery,
    Partner,
)
from services.gateway.service import GatewayService
from services.platform.context import current_request
from services.platform.errors import FieldViolation, InvalidArgument, from_infrastructure
from services.platform.idempotency import key_for
from services.platform.validation import check_id, parse_name

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


class Audit:
    """One JSON line per call on `lodestar.gateway.audit`: caller, partner, rpc, result. Never a key, never a
    customer id or ref."""

    def __init__(self, rpc: str, caller: str) -> None:
        self.rpc = rpc
        self.caller = caller
        self.partner_id = ""
        self.key_id = ""

    def __enter__(self) -> Audit:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: types.TracebackType | None) -> None:
        code, reason = "OK", ""
        if exc is not None:
            error = from_infrastructure(exc)
            code, reason = (error.code.name, error.reason) if error is not None else ("INTERNAL", "INTERNAL")
        audit_log.info(
            "%s %s %s", self.caller, self.rpc, code,
            extra={"caller": self.caller, "rpc": self.rpc, "partner_id": self.partner_id, "key_id": self.key_id,
                   "result": code, "error_reason": reason},
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
    when = request.context.time.ToDatetime(tzinfo=UTC) if request.context.HasField("time") else None
    return OfferQuery(customer_ref=ref, placement=placement, decision_time=when, max_offers=max_offers)


def _timestamp(partner: Partner) -> timestamp_pb2.Timestamp | None:
    if partner.create_time is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(partner.create_time)
    return ts


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

    async def GetOffers(self, request: partner_service_pb2.GetOffersRequest,
                        context: grpc.aio.ServicerContext) -> partner_service_pb2.GetOffersResponse:
        with Audit("GetOffers", "partner") as audit:
            principal = await self.service.authenticate(metadata_value(context, API_KEY_HEADER))
            audit.partner_id, audit.key_id = principal.partner_id, principal.key_id
            query = offer_query_from_proto(request)
            decision = await self.service.get_offers(principal, query)
            return decision_to_proto(decision)


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
