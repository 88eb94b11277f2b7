"""gRPC handlers of RiskService: validate, map proto <-> domain, call the service layer. No SQL here.

Spans carry the customer only as `masking.customer_token` (ATTR_CUSTOMER_TOKEN), never the id.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc
from google.protobuf import timestamp_pb2
from opentelemetry import trace

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import (
    audit_pb2,
    contact_policy_pb2,
    content_pb2,
    credit_pb2,
    fraud_pb2,
    risk_service_pb2,
    risk_service_pb2_grpc,
    screening_pb2,
)
from services.platform import pagination, timestamps
from services.platform.db import utcnow
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_POLICY_VERSION
from services.platform.validation import (
    ID_PATTERN,
    ID_RULE,
    Violations,
    check_date,
    check_enum,
    check_id,
    check_time_zone,
    parse_name,
)
from services.risk import content, fraud
from services.risk.credit import CreditScore
from services.risk.credit_support import TrainingRow
from services.risk.domain import (
    BatchItem,
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    CreditLimit,
    CreditModelInfo,
    CreditModelStatus,
    CustomerFacts,
    DoNotContactAction,
    DoNotContactEntry,
    HistoryPosition,
    OfferSubject,
    ProductType,
    Reason,
    Reservation,
    ScreeningRequest,
    ScreeningResult,
    Verdict,
)
from services.risk.rules import OUTBOUND_CHANNELS, POLICY_VERSION
from services.risk.service import DEFAULT_MIN_DAYS_LATE, LABEL_EVENT_KINDS, EventLabel, RiskService

MAX_OFFERS = 100
MAX_SOURCE = 64
MAX_ACTOR = 64
MAX_REASON = 256
MAX_CATEGORY = 64
MAX_OCCUPATION = 64
MIN_BIRTH_DATE = date(1900, 1, 1)
MAX_BATCH_ITEMS = 10_000
MAX_CONTENT_CHARS = 20_000
MAX_CREDIT_FEATURES = 200
MAX_FEATURE_NAME = 64
MAX_FEATURE_VALUE = 128
MAX_TRAINING_ROWS = 200_000
MAX_WINDOW_ENTRIES = 16
_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_DELIVERY_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_PHONE_HASH = re.compile(r"^[0-9A-Fa-f]{32,128}$")
# How far ahead of the server's clock an activity event may be dated (clock skew).
MAX_EVENT_SKEW_SECONDS = 300


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
    if not timestamps.is_valid(value):
        violations.add(field, "must be a valid timestamp")
        return None
    return value.ToDatetime(tzinfo=UTC)


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
    if len(facts.occupation) > MAX_OCCUPATION:
        violations.add("facts.occupation", f"must be at most {MAX_OCCUPATION} characters")
    violations.raise_if_any()
    return CustomerFacts(
        birth_date=birth_date, time_zone=facts.time_zone, region=facts.region, risk_tolerance=tolerance,
        in_collections=facts.in_collections, vulnerable=facts.vulnerable,
        credit_features=credit_features_from_proto(facts.credit_features, "facts.credit_features"),
        monthly_income=income_from_proto(facts, "facts.monthly_income"),
        student=facts.student, occupation=facts.occupation,
    )


def check_features(features: Mapping[str, str], field: str) -> dict[str, str]:
    """Feature names and values of a credit map (values are text; never echoed in an error)."""
    if len(features) > MAX_CREDIT_FEATURES:
        raise InvalidArgument.field(field, f"at most {MAX_CREDIT_FEATURES} features", reason="TOO_MANY_FEATURES")
    for name, value in features.items():
        if not _FEATURE_NAME.match(name):
            raise InvalidArgument.field(f"{field}[{name[:MAX_FEATURE_NAME]}]",
                                        "a feature name is 1-64 letters, digits, '_', '.', '-', starting with a "
                                        "letter or '_'", reason="INVALID_FEATURE_NAME")
        if len(value) > MAX_FEATURE_VALUE:
            raise InvalidArgument.field(f"{field}[{name}]", f"must be at most {MAX_FEATURE_VALUE} characters",
                                        reason="INVALID_FEATURE_VALUE")
    return dict(features)


def credit_features_from_proto(features: Mapping[str, str], field: str) -> tuple[tuple[str, str], ...]:
    if not features:
        return ()
    return tuple(sorted(check_features(features, field).items()))


def income_from_proto(message: screening_pb2.CustomerFacts | credit_pb2.ScoreCreditRequest,
                      field: str) -> float | None:
    if not message.HasField("monthly_income"):
        return None
    income = message.monthly_income
    if not (math.isfinite(income) and income >= 0):
        raise InvalidArgument.field(field, "must be a non-negative number", reason="INVALID_INCOME")
    return income


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


def limit_to_proto(limit: CreditLimit) -> credit_pb2.CreditLimitBand:
    band = credit_pb2.CreditLimitBand(band=limit.band, income_multiple=limit.income_multiple,
                                      declined=limit.declined)
    if limit.max_limit is not None:
        band.max_limit = limit.max_limit
    return band


def screening_to_proto(result: ScreeningResult) -> screening_pb2.ScreenResponse:
    response = screening_pb2.ScreenResponse(policy_version=result.policy_version)
    for v in result.verdicts:
        out = response.verdicts.add(offer_id=v.offer_id, verdict=verdict_to_proto(v.verdict),
                                    reasons=[reason_to_proto(r) for r in v.reasons])
        if v.limit_band is not None:
            out.limit_band.CopyFrom(limit_to_proto(v.limit_band))
            out.credit_model = f"creditModels/{v.limit_band.model_version}"
    return response


# --- credit models -----------------------------------------------------------------------------------------

_MODEL_STATUS = {s: credit_pb2.CreditModelStatus.Value(f"CREDIT_MODEL_STATUS_{s.value}") for s in CreditModelStatus}


def credit_model_to_proto(info: CreditModelInfo) -> credit_pb2.CreditModel:
    message = credit_pb2.CreditModel(
        name=f"creditModels/{info.version}", version=info.version, status=_MODEL_STATUS[info.status],
        features=list(info.features), candidate_features=list(info.candidate_features),
        training_window=info.training_window, rows=info.rows, default_rate=info.default_rate, auc=info.auc,
        ks=info.ks, brier=info.brier, decline_pd=info.decline_pd,
    )
    message.create_time.CopyFrom(_timestamp(info.create_time))
    if info.promote_time is not None:
        message.promote_time.CopyFrom(_timestamp(info.promote_time))
    return message


def training_rows_from_proto(request: credit_pb2.TrainCreditModelRequest) -> list[TrainingRow]:
    if len(request.rows) > MAX_TRAINING_ROWS:
        raise InvalidArgument.field("rows", f"at most {MAX_TRAINING_ROWS} rows per call", reason="TOO_MANY_ROWS")
    rows = []
    seen: set[str] = set()
    for i, row in enumerate(request.rows):
        customer_id = check_id(row.customer_id, f"rows[{i}].customer_id")
        if customer_id in seen:
            raise InvalidArgument.field(f"rows[{i}].customer_id", "a customer appears at most once",
                                        reason="DUPLICATE_CUSTOMER")
        seen.add(customer_id)
        rows.append(TrainingRow(customer_id, check_features(row.features, f"rows[{i}].features"), row.defaulted))
    for field, names in (("features", request.features), ("categorical", request.categorical)):
        for j, name in enumerate(names):
            if not _FEATURE_NAME.match(name):
                raise InvalidArgument.field(f"{field}[{j}]", "is not a valid feature name",
                                            reason="INVALID_FEATURE_NAME")
    if len(request.training_window) > MAX_WINDOW_ENTRIES or any(
            len(k) > 64 or len(v) > 64 for k, v in request.training_window.items()):
        raise InvalidArgument.field("training_window", f"at most {MAX_WINDOW_ENTRIES} entries of at most 64 "
                                    "characters", reason="INVALID_TRAINING_WINDOW")
    return rows


def event_label_from_proto(request: credit_pb2.TrainCreditModelRequest, now: datetime) -> EventLabel:
    """TrainCreditModelRequest.event_label, validated: a known event type, a date, a window of 1 to 3650 days
    that is over by now; the rows' own `defaulted` must then be false."""
    label = request.event_label
    violations = Violations()
    if label.event_type not in LABEL_EVENT_KINDS:
        raise InvalidArgument.field("event_label.event_type", f"must be one of {', '.join(LABEL_EVENT_KINDS)}",
                                    reason="UNKNOWN_EVENT_TYPE")
    cutoff = check_date(label.cutoff_date, "event_label.cutoff_date", violations)
    if not label.cutoff_date:
        violations.add("event_label.cutoff_date", "is required, as YYYY-MM-DD")
    violations.raise_if_any(reason="INVALID_CUTOFF")
    assert cutoff is not None
    if not 1 <= label.window_days <= 3650:
        raise InvalidArgument.field("event_label.window_days", "must be between 1 and 3650 days",
                                    reason="INVALID_WINDOW")
    start = datetime(cutoff.year, cutoff.month, cutoff.day, tzinfo=UTC) + timedelta(days=1)
    if start + timedelta(days=label.window_days) > now:
        raise InvalidArgument.field("event_label.window_days", "the window after the cut-off is not over yet: "
                                    "late defaults would be missed", reason="WINDOW_NOT_OBSERVED")
    if label.min_days_late < 0 or (label.min_days_late and label.event_type != "repayment_late"):
        raise InvalidArgument.field("event_label.min_days_late", "must be 0 or more, and only with repayment_late",
                                    reason="INVALID_ARGUMENT")
    for i, row in enumerate(request.rows):
        if row.defaulted:
            raise InvalidArgument.field(f"rows[{i}].defaulted", "must be false when event_label labels the rows",
                                        reason="LABEL_CONFLICT")
    return EventLabel(label.event_type, start, label.window_days, label.min_days_late or DEFAULT_MIN_DAYS_LATE)


def credit_score_to_proto(version: str, score: CreditScore) -> credit_pb2.ScoreCreditResponse:
    band = score.limit_band
    response = credit_pb2.ScoreCreditResponse(
        model=f"creditModels/{version}", pd=score.pd, score=score.score,
        reasons=[credit_pb2.CreditReason(code=r.code, feature=r.feature, bin=r.bin, points_lost=r.points_lost)
                 for r in score.reasons],
        limit_band=credit_pb2.CreditLimitBand(band=band.band, income_multiple=band.income_multiple,
                                              declined=band.declined),
    )
    if band.max_limit is not None:
        response.limit_band.max_limit = band.max_limit
    return response


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



# --- ScreenBatch: the per-item conversion, kept lean (thousands of items per message) ----------------------

_CHANNELS = {v.number: Channel(v.name.removeprefix("CHANNEL_")) for v in common_pb2.Channel.DESCRIPTOR.values
             if v.number}
_TOLERANCES = {v.number for v in common_pb2.RiskTolerance.DESCRIPTOR.values}
_VERDICTS = {v: verdict_to_proto(v) for v in Verdict}
_REASONS = {r: reason_to_proto(r) for r in Reason}


@lru_cache(maxsize=4096)
def _zone_ok(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


@lru_cache(maxsize=65536)
def _birth_date(value: str) -> date | None:
    try:
        parsed = date.fromisoformat(value)
    except ValueError:
        return None
    return parsed if MIN_BIRTH_DATE <= parsed <= utcnow().date() else None


def _batch_facts(facts: screening_pb2.CustomerFacts, field: str) -> CustomerFacts:
    birth: date | None = None
    if facts.birth_date:
        birth = _birth_date(facts.birth_date)
        if birth is None:
            raise InvalidArgument.field(f"{field}.birth_date", "must be a date YYYY-MM-DD between 1900-01-01 and "
                                        "today")
    if facts.time_zone and not _zone_ok(facts.time_zone):
        raise InvalidArgument.field(f"{field}.time_zone", "must be an IANA time zone such as Asia/Shanghai")
    if facts.risk_tolerance not in _TOLERANCES:
        raise InvalidArgument.field(f"{field}.risk_tolerance", f"unknown value {facts.risk_tolerance}",
                                    reason="UNKNOWN_ENUM_VALUE")
    if len(facts.region) > 16:
        raise InvalidArgument.field(f"{field}.region", "must be an ISO 3166 code such as CN or CN-31")
    if len(facts.occupation) > MAX_OCCUPATION:
        raise InvalidArgument.field(f"{field}.occupation", f"must be at most {MAX_OCCUPATION} characters")
    if facts.credit_features or facts.HasField("monthly_income"):
        return CustomerFacts(
            birth_date=birth, time_zone=facts.time_zone, region=facts.region, risk_tolerance=facts.risk_tolerance,
            in_collections=facts.in_collections, vulnerable=facts.vulnerable,
            credit_features=credit_features_from_proto(facts.credit_features, f"{field}.credit_features"),
            monthly_income=income_from_proto(facts, f"{field}.monthly_income"),
            student=facts.student, occupation=facts.occupation,
        )
    if facts.student or facts.occupation:
        return CustomerFacts(birth, facts.time_zone, facts.region, facts.risk_tolerance, facts.in_collections,
                             facts.vulnerable, student=facts.student, occupation=facts.occupation)
    return CustomerFacts(birth, facts.time_zone, facts.region, facts.risk_tolerance, facts.in_collections,
                         facts.vulnerable)


def batch_from_proto(request: screening_pb2.ScreenBatchRequest,
                     now: datetime) -> tuple[tuple[OfferSubject, ...], list[BatchItem]]:
    offers = offers_from_proto(list(request.offers))
    index = {offer.offer_id: i for i, offer in enumerate(offers)}
    everything = tuple(range(len(offers)))
    if len(request.items) > MAX_BATCH_ITEMS:
        raise InvalidArgument.field("items", f"at most {MAX_BATCH_ITEMS} items per message", reason="TOO_MANY_ITEMS")
    items: list[BatchItem] = []
    seen: set[str] = set()
    for i, item in enumerate(request.items):
        customer_id = item.customer_id
        if not ID_PATTERN.match(customer_id):
            raise InvalidArgument.field(f"items[{i}].customer_id", ID_RULE if customer_id else "is required",
                                        reason="INVALID_ID" if customer_id else "REQUIRED_FIELD_MISSING")
        if customer_id in seen:
            raise InvalidArgument.field(f"items[{i}].customer_id", "a customer appears at most once per message",
                                        reason="DUPLICATE_CUSTOMER")
        seen.add(customer_id)
        channel = _CHANNELS.get(item.channel)
        if channel is None:
            raise InvalidArgument.field(
                f"items[{i}].channel", "is required" if item.channel == 0 else f"unknown value {item.channel}",
                reason="REQUIRED_FIELD_MISSING" if item.channel == 0 else "UNKNOWN_ENUM_VALUE")
        if item.HasField("contact_time"):
            try:
                contact_time = item.contact_time.ToDatetime(tzinfo=UTC)
            except (ValueError, OverflowError):
                raise InvalidArgument.field(f"items[{i}].contact_time", "must be a valid timestamp") from None
        else:
            contact_time = now
        chosen = everything
        if item.offer_ids:
            try:
                chosen = tuple(index[offer_id] for offer_id in item.offer_ids)
            except KeyError:
                raise InvalidArgument.field(f"items[{i}].offer_ids", "names an offer not in the message's offers",
                                            reason="UNKNOWN_OFFER") from None
            if len(set(chosen)) != len(chosen):
                raise InvalidArgument.field(f"items[{i}].offer_ids", "names an offer twice",
                                            reason="DUPLICATE_OFFER")
        items.append(BatchItem(customer_id, channel, contact_time, _batch_facts(item.facts, f"items[{i}].facts"),
                               chosen))
    return offers, items


def batch_to_proto(batch_id: str, items: list[BatchItem],
                   results: list[ScreeningResult]) -> screening_pb2.ScreenBatchResponse:
    response = screening_pb2.ScreenBatchResponse(batch_id=batch_id, policy_version=POLICY_VERSION)
    out = response.results
    for item, result in zip(items, results, strict=True):
        customer = out.add(customer_id=item.customer_id)
        verdicts = customer.verdicts
        for v in result.verdicts:
            if v.reasons:
                out_v = verdicts.add(offer_id=v.offer_id, verdict=_VERDICTS[v.verdict],
                                     reasons=[_REASONS[r] for r in v.reasons])
            else:
                out_v = verdicts.add(offer_id=v.offer_id, verdict=_VERDICTS[v.verdict])
            if v.limit_band is not None:
                out_v.limit_band.CopyFrom(limit_to_proto(v.limit_band))
                out_v.credit_model = f"creditModels/{v.limit_band.model_version}"
    return response


# --- contact policy ----------------------------------------------------------------------------------------

def _text(value: str, field: str, limit: int, violations: Violations, *, required: bool = False) -> str:
    if required and not value:
        raise InvalidArgument.field(field, "is required", reason="REQUIRED_FIELD_MISSING")
    if len(value) > limit:
        violations.add(field, f"must be at most {limit} characters")
    return value


def dnc_from_proto(request: contact_policy_pb2.AddToDoNotContactRequest
                   | contact_policy_pb2.RemoveFromDoNotContactRequest,
                   action: DoNotContactAction) -> DoNotContactEntry:
    customer_id = check_id(request.customer_id, "customer_id")
    _mark_customer(customer_id)
    violations = Violations()
    source = _text(request.source, "source", MAX_SOURCE, violations, required=True)
    actor = _text(request.actor, "actor", MAX_ACTOR, violations)
    reason = _text(request.reason, "reason", MAX_REASON, violations)
    violations.raise_if_any()
    return DoNotContactEntry(customer_id, action, source, actor, reason)


def dnc_to_proto(entry: DoNotContactEntry) -> contact_policy_pb2.DoNotContactEntry:
    message = contact_policy_pb2.DoNotContactEntry(
        customer_id=entry.customer_id,
        action=contact_policy_pb2.DoNotContactAction.Value(f"DO_NOT_CONTACT_ACTION_{entry.action.value}"),
        source=entry.source, actor=entry.actor, reason=entry.reason,
    )
    if entry.record_time:
        message.record_time.CopyFrom(_timestamp(entry.record_time))
    return message


def _delivery_key(value: str) -> str:
    if not value:
        raise InvalidArgument.field("delivery_key", "is required", reason="REQUIRED_FIELD_MISSING")
    if not _DELIVERY_KEY.match(value):
        raise InvalidArgument.field(
            "delivery_key", "must be 1-128 characters of letters, digits, '.', '_', ':', '/' or '-'",
            reason="INVALID_DELIVERY_KEY")
    return value


def reservation_to_proto(reservation: Reservation) -> contact_policy_pb2.ContactReservation:
    message = contact_policy_pb2.ContactReservation(
        delivery_key=reservation.delivery_key, customer_id=reservation.customer_id,
        channel=channel_to_proto(reservation.channel),
        state=contact_policy_pb2.ReservationState.Value(f"RESERVATION_STATE_{reservation.state.value}"),
    )
    message.contact_time.CopyFrom(_timestamp(reservation.contact_time))
    message.create_time.CopyFrom(_timestamp(reservation.create_time))
    message.expire_time.CopyFrom(_timestamp(reservation.expire_time))
    return message


_VIOLATION_KINDS = {"BANNED_CLAIM": content_pb2.VIOLATION_KIND_BANNED_CLAIM,
                    "MISSING_DISCLOSURE": content_pb2.VIOLATION_KIND_MISSING_DISCLOSURE}


# --- fraud and abuse ---------------------------------------------------------------------------------------

def activity_from_proto(event: fraud_pb2.ActivityEvent, now: datetime) -> fraud.ActivityEvent:
    """Validates an activity event. Error descriptions never echo a phone hash, an IP address or a customer id."""
    kind = check_enum(event.kind, fraud_pb2.ActivityKind, "event.kind")
    partner_id = check_id(event.partner_id, "event.partner_id")
    customer_id = check_id(event.customer_id, "event.customer_id") if event.customer_id else ""
    if customer_id:
        _mark_customer(customer_id)
    device_id = check_id(event.device_id, "event.device_id") if event.device_id else ""
    if event.phone_hash and not _PHONE_HASH.match(event.phone_hash):
        raise InvalidArgument.field("event.phone_hash", "must be a hash of the phone number: 32-128 hex digits",
                                    reason="INVALID_PHONE_HASH")
    if event.ip_address:
        try:
            ip = str(ipaddress.ip_address(event.ip_address))
        except ValueError:
            raise InvalidArgument.field("event.ip_address", "must be an IPv4 or IPv6 address",
                                        reason="INVALID_IP_ADDRESS") from None
    else:
        ip = ""
    if not (device_id or event.phone_hash or ip):
        raise InvalidArgument.field("event.device_id", "at least one of device_id, phone_hash and ip_address is "
                                    "required", reason="ACTIVITY_KEY_MISSING")
    event_time = now
    if event.HasField("event_time"):
        violations = Violations()
        parsed = _from_timestamp(event.event_time, "event.event_time", violations)
        violations.raise_if_any()
        assert parsed is not None
        if (parsed - now).total_seconds() > MAX_EVENT_SKEW_SECONDS:
            raise InvalidArgument.field("event.event_time", "must not be in the future",
                                        reason="EVENT_TIME_IN_FUTURE")
        event_time = parsed
    return fraud.ActivityEvent(
        kind=fraud.ActivityKind(_name_of(fraud_pb2.ActivityKind, kind, "ACTIVITY_KIND_")), partner_id=partner_id,
        event_time=event_time, customer_id=customer_id, device_id=device_id, phone_hash=event.phone_hash.lower(),
        ip_address=ip)


def fraud_check_to_proto(check: fraud.FraudCheck) -> fraud_pb2.CheckActivityResponse:
    a = check.anomaly
    response = fraud_pb2.CheckActivityResponse(
        name=f"fraudChecks/{check.check_id}",
        decision=fraud_pb2.FraudDecision.Value(f"FRAUD_DECISION_{check.decision.value}"),
        hits=[fraud_pb2.VelocityHit(rule_id=h.rule_id, key=h.key.value, observed=h.observed, limit=h.limit)
              for h in check.hits],
        anomaly=fraud_pb2.AnomalyAssessment(scored=a.scored, score=a.score, threshold=a.threshold,
                                            flagged=a.flagged, training_events=a.training_events),
    )
    if check.suspected:
        response.reasons.append(reason_to_proto(Reason.FRAUD_SUSPECTED))
    return response


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

    async def ScreenBatch(
        self, request_iterator: AsyncIterator[screening_pb2.ScreenBatchRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[screening_pb2.ScreenBatchResponse]:
        span = trace.get_current_span()
        span.set_attribute(ATTR_POLICY_VERSION, POLICY_VERSION)
        messages = customers = 0
        async for request in request_iterator:
            offers, items = batch_from_proto(request, utcnow())
            results = await self.service.screen_batch(offers, items)
            messages += 1
            customers += len(items)
            yield batch_to_proto(request.batch_id, items, results)
        span.set_attribute("lodestar.risk.batch_messages", messages)
        span.set_attribute("lodestar.risk.batch_customers", customers)

    async def AddToDoNotContact(
        self, request: contact_policy_pb2.AddToDoNotContactRequest, context: grpc.aio.ServicerContext
    ) -> contact_policy_pb2.AddToDoNotContactResponse:
        entry = dnc_from_proto(request, DoNotContactAction.ADD)
        stored = await self.service.change_do_not_contact(entry, key_for("AddToDoNotContact", request))
        return contact_policy_pb2.AddToDoNotContactResponse(entry=dnc_to_proto(stored))

    async def RemoveFromDoNotContact(
        self, request: contact_policy_pb2.RemoveFromDoNotContactRequest, context: grpc.aio.ServicerContext
    ) -> contact_policy_pb2.RemoveFromDoNotContactResponse:
        entry = dnc_from_proto(request, DoNotContactAction.REMOVE)
        stored = await self.service.change_do_not_contact(entry, key_for("RemoveFromDoNotContact", request))
        return contact_policy_pb2.RemoveFromDoNotContactResponse(entry=dnc_to_proto(stored))

    async def RecordComplaint(
        self, request: contact_policy_pb2.RecordComplaintRequest, context: grpc.aio.ServicerContext
    ) -> contact_policy_pb2.RecordComplaintResponse:
        customer_id = check_id(request.customer_id, "customer_id")
        _mark_customer(customer_id)
        channel = check_enum(request.channel, common_pb2.Channel, "channel", required=False)
        violations = Violations()
        source = _text(request.source, "source", MAX_SOURCE, violations, required=True)
        actor = _text(request.actor, "actor", MAX_ACTOR, violations)
        category = _text(request.category, "category", MAX_CATEGORY, violations)
        violations.raise_if_any()
        recorded, until = await self.service.record_complaint(
            customer_id, channel_from_proto(channel) if channel else None, source, actor, category,
            key_for("RecordComplaint", request),
        )
        return contact_policy_pb2.RecordComplaintResponse(record_time=_timestamp(recorded),
                                                          cool_off_until=_timestamp(until))

    async def ReserveContact(
        self, request: contact_policy_pb2.ReserveContactRequest, context: grpc.aio.ServicerContext
    ) -> contact_policy_pb2.ReserveContactResponse:
        delivery_key = _delivery_key(request.delivery_key)
        key_for("ReserveContact", request)  # checks the request id's form; the delivery key deduplicates
        customer_id = check_id(request.customer_id, "customer_id")
        _mark_customer(customer_id)
        channel = channel_from_proto(check_enum(request.channel, common_pb2.Channel, "channel"))
        if channel not in OUTBOUND_CHANNELS:
            raise InvalidArgument.field("channel", "must be an outbound channel (SMS, EMAIL, APP_PUSH, WECHAT, PHONE)",
                                        reason="CHANNEL_NOT_OUTBOUND")
        contact_time = utcnow()
        if request.HasField("contact_time"):
            violations = Violations()
            parsed = _from_timestamp(request.contact_time, "contact_time", violations)
            violations.raise_if_any()
            assert parsed is not None
            contact_time = parsed
        outcome = await self.service.reserve_contact(delivery_key, customer_id, channel, contact_time)
        response = contact_policy_pb2.ReserveContactResponse(granted=outcome.granted)
        if outcome.reservation is not None:
            response.reservation.CopyFrom(reservation_to_proto(outcome.reservation))
        if not outcome.granted:
            response.reasons.append(reason_to_proto(Reason.FREQUENCY_CAP))
            response.exceeded_caps.extend(cap.label for cap in outcome.exceeded)
        return response

    async def ConfirmContact(
        self, request: contact_policy_pb2.ConfirmContactRequest, context: grpc.aio.ServicerContext
    ) -> contact_policy_pb2.ConfirmContactResponse:
        key_for("ConfirmContact", request)  # form only: confirming is idempotent per delivery key
        reservation = await self.service.confirm_contact(_delivery_key(request.delivery_key))
        return contact_policy_pb2.ConfirmContactResponse(reservation=reservation_to_proto(reservation))

    async def ReleaseContact(
        self, request: contact_policy_pb2.ReleaseContactRequest, context: grpc.aio.ServicerContext
    ) -> contact_policy_pb2.ReleaseContactResponse:
        key_for("ReleaseContact", request)  # form only: releasing is idempotent per delivery key
        reservation = await self.service.release_contact(_delivery_key(request.delivery_key))
        return contact_policy_pb2.ReleaseContactResponse(reservation=reservation_to_proto(reservation))

    async def CheckContent(
        self, request: content_pb2.CheckContentRequest, context: grpc.aio.ServicerContext
    ) -> content_pb2.CheckContentResponse:
        if not request.text.strip():
            raise InvalidArgument.field("text", "is required", reason="REQUIRED_FIELD_MISSING")
        if len(request.text) > MAX_CONTENT_CHARS:
            raise InvalidArgument.field("text", f"must be at most {MAX_CONTENT_CHARS} characters",
                                        reason="TEXT_TOO_LONG")
        product_type = product_type_from_proto(check_enum(request.product_type, common_pb2.ProductType,
                                                          "product_type"))
        if request.language not in ("", *content.LANGUAGES):
            raise InvalidArgument.field("language", "must be zh, en or empty (both)", reason="UNSUPPORTED_LANGUAGE")
        rules = content.default_rules()
        violations = content.check(request.text, product_type, request.language, rules)
        return content_pb2.CheckContentResponse(
            violations=[
                content_pb2.ContentViolation(kind=_VIOLATION_KINDS[v.kind], rule_id=v.rule_id, start=v.start,
                                             end=v.end, description=v.description)
                for v in violations
            ],
            compliant=not violations, rules_version=rules.version,
        )

    async def VerifyAuditLog(
        self, request: audit_pb2.VerifyAuditLogRequest, context: grpc.aio.ServicerContext
    ) -> audit_pb2.VerifyAuditLogResponse:
        result = await self.service.verify_audit_log()
        return audit_pb2.VerifyAuditLogResponse(
            intact=result.intact, entries_checked=result.entries_checked, first_bad_seq=result.first_bad_seq,
            problem=audit_pb2.AuditProblem.Value(f"AUDIT_PROBLEM_{result.problem or 'UNSPECIFIED'}"),
            detail=result.detail, head_hash=result.head_hash,
        )

    # --- credit models -------------------------------------------------------------------------------------------

    async def TrainCreditModel(self, request: credit_pb2.TrainCreditModelRequest,
                               context: grpc.aio.ServicerContext) -> credit_pb2.TrainCreditModelResponse:
        key = key_for("TrainCreditModel", request)
        rows = training_rows_from_proto(request)
        window = dict(request.training_window)
        label = None
        if request.HasField("event_label"):
            label = event_label_from_proto(request, utcnow())
            window.setdefault("label_event_type", label.event_type)
            window.setdefault("cutoff", request.event_label.cutoff_date)
            window.setdefault("window_days", str(label.window_days))
        info = await self.service.train_credit_model(
            rows, features=list(request.features), categorical=list(request.categorical),
            training_window=window, folds=request.folds or 5, promote=request.promote,
            actor="api", key=key, label=label)
        return credit_pb2.TrainCreditModelResponse(model=credit_model_to_proto(info))

    async def ListCreditModels(self, request: credit_pb2.ListCreditModelsRequest,
                               context: grpc.aio.ServicerContext) -> credit_pb2.ListCreditModelsResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(collection="creditModels")
        position = pagination.decode_page_token(request.page_token, fingerprint)
        before = None
        if position is not None:
            before = position.get("before")
            if not isinstance(before, int):
                raise InvalidArgument.field("page_token", "is not a token this list returned",
                                            reason="INVALID_PAGE_TOKEN")
        models, next_before = await self.service.list_credit_models(before, size)
        token = ""  # nosec B105 - an empty page token (last page), not a password
        if next_before is not None:
            token = pagination.encode_page_token({"before": next_before}, fingerprint)
        return credit_pb2.ListCreditModelsResponse(models=[credit_model_to_proto(m) for m in models],
                                                   next_page_token=token)

    async def PromoteCreditModel(self, request: credit_pb2.PromoteCreditModelRequest,
                                 context: grpc.aio.ServicerContext) -> credit_pb2.PromoteCreditModelResponse:
        version = parse_name(request.name, "creditModels")
        info = await self.service.promote_credit_model(version, "api", key_for("PromoteCreditModel", request))
        return credit_pb2.PromoteCreditModelResponse(model=credit_model_to_proto(info))

    async def ScoreCredit(self, request: credit_pb2.ScoreCreditRequest,
                          context: grpc.aio.ServicerContext) -> credit_pb2.ScoreCreditResponse:
        customer_id = check_id(request.customer_id, "customer_id")
        _mark_customer(customer_id)
        features = check_features(request.features, "features")
        income = income_from_proto(request, "monthly_income")
        version = parse_name(request.model, "creditModels", "model") if request.model else None
        used, score = await self.service.score_credit(customer_id, features, income, version)
        return credit_score_to_proto(used, score)

    async def CheckActivity(self, request: fraud_pb2.CheckActivityRequest,
                            context: grpc.aio.ServicerContext) -> fraud_pb2.CheckActivityResponse:
        key = key_for("CheckActivity", request)
        event = activity_from_proto(request.event, utcnow())
        check = await self.service.check_activity(event, key)
        span = trace.get_current_span()
        span.set_attribute("lodestar.risk.fraud_decision", check.decision.value)
        span.set_attribute("lodestar.risk.fraud_hits", len(check.hits))
        return fraud_check_to_proto(check)
