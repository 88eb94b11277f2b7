"""gRPC handlers of RiskService: validate, map proto <-> domain, call the service layer. No SQL here.

Spans carry the customer only as `masking.customer_token` (ATTR_CUSTOMER_TOKEN), never the id.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry import trace

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import risk_service_pb2, risk_service_pb2_grpc, screening_pb2
from services.platform import pagination
from services.platform.db import utcnow
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_POLICY_VERSION
from services.platform.validation import Violations, check_date, check_enum, check_id, check_time_zone
from services.risk.domain import (
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    CustomerFacts,
    HistoryPosition,
    OfferSubject,
    ProductType,
    Reason,
    ScreeningRequest,
    ScreeningResult,
    Verdict,
)
from services.risk.service import RiskService

MAX_OFFERS = 100
MAX_SOURCE = 64
MAX_ACTOR = 64
MIN_BIRTH_DATE = date(1900, 1, 1)


# --- enums: the domain uses the proto names without their prefix -------------------------------------------

def _name_of(enum: Any, value: int, prefix: str) -> str:
    """The proto name of an enum value without its prefix: (Channel, 1, "CHANNEL_") -> "SMS"."""
    name: str = enum.DESCRIPTOR.values_by_number[value].name
    return name.removeprefix(prefix)


def channel_from_proto(value: int) -> Channel:
    return Channel(_name_of(common_pb2.Channel, value, "CHANNEL_"))


def channel_to_proto(channel: Channel) -> common_pb2.Channel.ValueType:
    return common_pb2.Channel.Value(f"CHANNEL_{channel.value}")


def purpose_from_proto(value: int) -> ConsentPurpose:
    return ConsentPurpose(_name_of(screening_pb2.ConsentPurpose, value, "CONSENT_PURPOSE_"))


def purpose_to_proto(purpose: ConsentPurpose) -> screening_pb2.ConsentPurpose.ValueType:
    return screening_pb2.ConsentPurpose.Value(f"CONSENT_PURPOSE_{purpose.value}")


def action_from_proto(value: int) -> ConsentAction:
    return ConsentAction(_name_of(screening_pb2.ConsentAction, value, "CONSENT_ACTION_"))


def action_to_proto(action: ConsentAction) -> screening_pb2.ConsentAction.ValueType:
    return screening_pb2.ConsentAction.Value(f"CONSENT_ACTION_{action.value}")


def product_type_from_proto(value: int) -> ProductType:
    return ProductType(_name_of(common_pb2.ProductType, value, "PRODUCT_TYPE_"))


def verdict_to_proto(verdict: Verdict) -> screening_pb2.Verdict.ValueType:
    return screening_pb2.Verdict.Value(f"VERDICT_{verdict.value}")


def reason_to_proto(reason: Reason) -> screening_pb2.ReasonCode.ValueType:
    return screening_pb2.ReasonCode.Value(f"REASON_CODE_{reason.value}")


# --- timestamps --------------------------------------------------------------------------------------------

def _timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _from_timestamp(value: timestamp_pb2.Timestamp, field: str, violations: Violations) -> datetime | None:
    try:
        return value.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        violations.add(field, "must be a valid timestamp")
        return None


def _mark_customer(customer_id: str) -> None:
    trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))


# --- Screen ------------------------------------------------------------------------------------------------

def offers_from_proto(offers: list[screening_pb2.OfferSubject]) -> tuple[OfferSubject, ...]:
    if not offers:
        raise InvalidArgument.field("offers", "at least one offer is required",
                                    reason="REQUIRED_FIELD_MISSING")
    if len(offers) > MAX_OFFERS:
        raise InvalidArgument.field("offers", f"at most {MAX_OFFERS} offers per call",
                                    reason="TOO_MANY_OFFERS")
    result: list[OfferSubject] = []
    seen: dict[str, int] = {}
    for i, offer in enumerate(offers):
        offer_id = check_id(offer.offer_id, f"offers[{i}].offer_id")
        if offer_id in seen:
            duplicate = f"duplicates offers[{seen[offer_id]}].offer_id"
            raise InvalidArgument.field(f"offers[{i}].offer_id", duplicate, reason="DUPLICATE_OFFER")
        seen[offer_id] = i
        product_type = check_enum(offer.product_type, common_pb2.ProductType, f"offers[{i}].product_type")
        risk_level = check_enum(offer.risk_level, common_pb2.ProductRiskLevel, f"offers[{i}].risk_level",
                                required=False)
        result.append(OfferSubject(offer_id, product_type_from_proto(product_type), risk_level))
    return tuple(result)


def facts_from_proto(facts: screening_pb2.CustomerFacts) -> CustomerFacts:
    tolerance = check_enum(
        facts.risk_tolerance, common_pb2.RiskTolerance, "facts.risk_tolerance", required=False
    )
    violations = Violations()
    check_time_zone(facts.time_zone, "facts.time_zone", violations)
    birth_date = check_date(facts.birth_date, "facts.birth_date", violations)
    if birth_date and not MIN_BIRTH_DATE <= birth_date <= utcnow().date():
        violations.add("facts.birth_date", "must be between 1900-01-01 and today")
    if len(facts.region) > 16:
        violations.add("facts.region", "must be an ISO 3166 code such as CN or CN-31")
    violations.raise_if_any()
    return CustomerFacts(
        birth_date=birth_date, time_zone=facts.time_zone, region=facts.region, risk_tolerance=tolerance,
        in_collections=facts.in_collections, vulnerable=facts.vulnerable,
    )


def screening_from_proto(request: screening_pb2.ScreenRequest) -> ScreeningRequest:
    customer_id = check_id(request.customer_id, "customer_id")
    _mark_customer(customer_id)
    channel = check_enum(request.channel, common_pb2.Channel, "channel")
    offers = offers_from_proto(list(request.offers))
    facts = facts_from_proto(request.facts)
    contact_time: datetime | None = utcnow()
    if request.HasField("contact_time"):
        violations = Violations()
        contact_time = _from_timestamp(request.contact_time, "contact_time", violations)
        violations.raise_if_any()
    assert contact_time is not None
    return ScreeningRequest(customer_id, channel_from_proto(channel), contact_time, facts, offers)


def screening_to_proto(result: ScreeningResult) -> screening_pb2.ScreenResponse:
    return screening_pb2.ScreenResponse(
        verdicts=[
            screening_pb2.OfferVerdict(
                offer_id=v.offer_id, verdict=verdict_to_proto(v.verdict),
                reasons=[reason_to_proto(r) for r in v.reasons],
            )
            for v in result.verdicts
        ],
        policy_version=result.policy_version,
    )


# --- consent -----------------------------------------------------------------------------------------------

def consent_to_proto(record: ConsentRecord) -> screening_pb2.ConsentRecord:
    message = screening_pb2.ConsentRecord(
        customer_id=record.customer_id, channel=channel_to_proto(record.channel),
        purpose=purpose_to_proto(record.purpose), action=action_to_proto(record.action), source=record.source,
        actor=record.actor,
    )
    if record.record_time:
        message.record_time.CopyFrom(_timestamp(record.record_time))
    if record.expire_time:
        message.expire_time.CopyFrom(_timestamp(record.expire_time))
    return message


def consent_from_proto(request: risk_service_pb2.RecordConsentRequest) -> ConsentRecord:
    """The client-settable fields, validated (record_time is output only and ignored)."""
    if not request.HasField("consent"):
        raise InvalidArgument.field("consent", "is required", reason="REQUIRED_FIELD_MISSING")
    consent = request.consent
    customer_id = check_id(consent.customer_id, "consent.customer_id")
    _mark_customer(customer_id)
    channel = check_enum(consent.channel, common_pb2.Channel, "consent.channel")
    purpose = check_enum(consent.purpose, screening_pb2.ConsentPurpose, "consent.purpose")
    action = check_enum(consent.action, screening_pb2.ConsentAction, "consent.action")
    if not consent.source:
        raise InvalidArgument.field("consent.source", "is required", reason="REQUIRED_FIELD_MISSING")
    violations = Violations()
    if len(consent.source) > MAX_SOURCE:
        violations.add("consent.source", f"must be at most {MAX_SOURCE} characters")
    if len(consent.actor) > MAX_ACTOR:
        violations.add("consent.actor", f"must be at most {MAX_ACTOR} characters")
    expire_time = None
    if consent.HasField("expire_time"):
        expire_time = _from_timestamp(consent.expire_time, "consent.expire_time", violations)
        if expire_time is not None and expire_time <= utcnow():
            violations.add("consent.expire_time", "must be in the future")
    violations.raise_if_any()
    return ConsentRecord(
        customer_id=customer_id, channel=channel_from_proto(channel), purpose=purpose_from_proto(purpose),
        action=action_from_proto(action), source=consent.source, actor=consent.actor, expire_time=expire_time,
    )


def _history_position(position: dict[str, object] | None) -> HistoryPosition | None:
    if position is None:
        return None
    raw_time, raw_id = position.get("t"), position.get("id")
    try:
        if not isinstance(raw_time, str) or not isinstance(raw_id, int):
            raise ValueError
        return HistoryPosition(datetime.fromisoformat(raw_time), raw_id)
    except ValueError:
        raise InvalidArgument.field(
            "page_token", "is not a token this list returned", reason="INVALID_PAGE_TOKEN"
        ) from None


class RiskHandlers(risk_service_pb2_grpc.RiskServiceServicer):
    def __init__(self, service: RiskService) -> None:
        self.service = service

    async def Screen(self, request: screening_pb2.ScreenRequest,
                     context: grpc.aio.ServicerContext) -> screening_pb2.ScreenResponse:
        screening = screening_from_proto(request)
        result = await self.service.screen(screening)
        trace.get_current_span().set_attribute(ATTR_POLICY_VERSION, result.policy_version)
        return screening_to_proto(result)

    async def RecordConsent(self, request: risk_service_pb2.RecordConsentRequest,
                            context: grpc.aio.ServicerContext) -> risk_service_pb2.RecordConsentResponse:
        consent = consent_from_proto(request)
        key = key_for("RecordConsent", request)
        recorded = await self.service.record_consent(consent, key)
        return risk_service_pb2.RecordConsentResponse(consent=consent_to_proto(recorded))

    async def ListConsentHistory(
        self, request: risk_service_pb2.ListConsentHistoryRequest, context: grpc.aio.ServicerContext
    ) -> risk_service_pb2.ListConsentHistoryResponse:
        customer_id = check_id(request.customer_id, "customer_id")
        _mark_customer(customer_id)
        channel = check_enum(request.channel, common_pb2.Channel, "channel", required=False)
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(customer_id=customer_id, channel=channel)
        after = _history_position(pagination.decode_page_token(request.page_token, fingerprint))
        page = await self.service.list_consent_history(
            customer_id, channel=channel_from_proto(channel) if channel else None, after=after, page_size=size
        )
        token = ""  # nosec B105 - an empty page token (last page), not a password
        if page.next_position is not None:
            position = {"t": page.next_position.record_time.isoformat(), "id": page.next_position.record_id}
            token = pagination.encode_page_token(position, fingerprint)
        return risk_service_pb2.ListConsentHistoryResponse(
            consents=[consent_to_proto(r) for r in page.records], next_page_token=token
        )
