"""gRPC handlers of EventService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from lodestar.profile.v1 import event_service_pb2 as pb
from lodestar.profile.v1 import event_service_pb2_grpc as pbg
from services.platform import timestamps
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import ID_PATTERN, ID_RULE, Violations, check_id
from services.profile.events import FUTURE_SKEW, MAX_BATCH, MAX_FEATURE_POINTS, EventsService, StoredTag

_KEY = re.compile(r"^[a-z0-9][a-z0-9_]{0,31}$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_MAX_AMOUNT = Decimal("1e14")
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
MAX_DAYS_LATE = 3650


def to_datetime(ts: timestamp_pb2.Timestamp, field: str = "as_of") -> datetime:
    return timestamps.to_datetime(ts, field)


to_timestamp = timestamps.to_timestamp


def _enum_name(enum: Any, value: int, prefix: str) -> str | None:
    """The lower-case name of a set, known enum value; None for UNSPECIFIED or unknown numbers."""
    if value == 0 or value not in {v.number for v in enum.DESCRIPTOR.values}:
        return None
    return str(enum.Name(value)).removeprefix(prefix).lower()


def _amount(raw: str, field: str, violations: Violations) -> Decimal | None:
    try:
        amount = Decimal(raw)
    except InvalidOperation:
        amount = None
    if amount is None or not amount.is_finite() or amount <= 0 or amount >= _MAX_AMOUNT:
        violations.add(field, "must be a positive decimal number such as 129.90")
        return None
    exponent = amount.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -4:
        violations.add(field, "must have at most 4 decimals")
        return None
    return amount


def _key(raw: str, field: str, violations: Violations, *, default: str = "unknown") -> str:
    value = raw.strip().lower()
    if not value:
        return default
    if not _KEY.match(value):
        violations.add(field, "must be lower_snake_case letters, digits and '_', at most 32 characters")
    return value


def event_from_proto(event: pb.Event, p: str, violations: Violations, now: datetime) -> dict[str, Any]:
    """The event's row (without recorded_at), every problem added to `violations` under the prefix `p`."""
    row: dict[str, Any] = {"event_id": event.event_id, "customer_id": event.customer_id}
    for name in ("event_id", "customer_id"):
        value = getattr(event, name)
        if not value:
            violations.add(f"{p}.{name}", "is required")
        elif not ID_PATTERN.match(value):
            violations.add(f"{p}.{name}", ID_RULE)
    if not event.HasField("occurred_at"):
        violations.add(f"{p}.occurred_at", "is required")
    elif not timestamps.is_valid(event.occurred_at):
        violations.add(f"{p}.occurred_at", "must be a timestamp between 0001 and 9999 with nanos in [0, 1e9)")
    else:
        occurred = to_datetime(event.occurred_at)
        if occurred < _EARLIEST or occurred > now + FUTURE_SKEW:
            violations.add(f"{p}.occurred_at", "must be after 1970 and not in the future")
        row["occurred_at"] = occurred
    kind = event.WhichOneof("payload")
    row["kind"] = kind
    if kind is None:
        violations.add(f"{p}.payload", "one of transaction, digital_activity, repayment, campaign_response is "
                                       "required")
    elif kind == "transaction":
        t, q = event.transaction, f"{p}.transaction"
        row["amount"] = _amount(t.amount, f"{q}.amount", violations)
        if not _CURRENCY.match(t.currency):
            violations.add(f"{q}.currency", "must be an ISO 4217 code such as CNY")
        row["currency"] = t.currency
        row["merchant_category"] = _key(t.merchant_category, f"{q}.merchant_category", violations)
        row["channel"] = _key(t.channel, f"{q}.channel", violations)
        if t.direction == 0:
            row["direction"] = "debit"
        else:
            direction = _enum_name(pb.TransactionDirection, t.direction, "TRANSACTION_DIRECTION_")
            if direction is None:
                violations.add(f"{q}.direction", f"unknown value {t.direction}")
            row["direction"] = direction
    elif kind == "digital_activity":
        d, q = event.digital_activity, f"{p}.digital_activity"
        action = _enum_name(pb.DigitalAction, d.action, "DIGITAL_ACTION_")
        if action is None:
            violations.add(f"{q}.action", "is required: view, click, application or login")
        row["action"] = action
        row["channel"] = _key(d.channel, f"{q}.channel", violations)
        if len(d.target) > 128:
            violations.add(f"{q}.target", "must be at most 128 characters")
        row["target"] = d.target
    elif kind == "repayment":
        r, q = event.repayment, f"{p}.repayment"
        row["amount"] = _amount(r.amount, f"{q}.amount", violations)
        row["due_date"] = None
        if r.due_date:
            try:
                row["due_date"] = date.fromisoformat(r.due_date)
            except ValueError:
                violations.add(f"{q}.due_date", "must be a date YYYY-MM-DD")
        if not 0 <= r.days_late <= MAX_DAYS_LATE:
            violations.add(f"{q}.days_late", f"must be between 0 and {MAX_DAYS_LATE}")
        row["days_late"] = r.days_late
        row["product"] = _key(r.product, f"{q}.product", violations, default="")
    else:
        c, q = event.campaign_response, f"{p}.campaign_response"
        if not c.campaign_id or not ID_PATTERN.match(c.campaign_id):
            violations.add(f"{q}.campaign_id", "is required; " + ID_RULE)
        if c.offer_id and not ID_PATTERN.match(c.offer_id):
            violations.add(f"{q}.offer_id", ID_RULE)
        response = _enum_name(pb.ResponseKind, c.kind, "RESPONSE_KIND_")
        if response is None:
            violations.add(f"{q}.kind", "is required: delivered, opened, clicked, applied, converted or declined")
        row.update(campaign_id=c.campaign_id, offer_id=c.offer_id, response_kind=response)
    return row


def events_from_proto(events: Any, now: datetime) -> list[dict[str, Any]]:
    if not events:
        raise InvalidArgument.field("events", "at least one event is required", reason="REQUIRED_FIELD_MISSING")
    if len(events) > MAX_BATCH:
        raise InvalidArgument.field("events", f"at most {MAX_BATCH} events per request", reason="BATCH_TOO_LARGE")
    violations = Violations()
    rows = [event_from_proto(event, f"events[{i}]", violations, now) for i, event in enumerate(events)]
    violations.raise_if_any()
    return rows


def _as_of(request: Any) -> datetime | None:
    return to_datetime(request.as_of) if request.HasField("as_of") else None


def feature_points_from_proto(points: Any, now: datetime) -> list[tuple[str, datetime | None]]:
    """(customer_id, as_of) of each point; every problem is a field violation `points[i].<field>`, and the
    error's reason is that of the first one (REQUIRED_FIELD_MISSING, INVALID_ID, INVALID_TIMESTAMP,
    AS_OF_IN_FUTURE)."""
    if not points:
        raise InvalidArgument.field("points", "at least one point is required", reason="REQUIRED_FIELD_MISSING")
    if len(points) > MAX_FEATURE_POINTS:
        raise InvalidArgument.field("points", f"at most {MAX_FEATURE_POINTS} points per request",
                                    reason="BATCH_TOO_LARGE")
    violations = Violations()
    reasons: list[str] = []

    def bad(field: str, description: str, reason: str) -> None:
        violations.add(field, description)
        reasons.append(reason)

    out: list[tuple[str, datetime | None]] = []
    for i, point in enumerate(points):
        if not point.customer_id:
            bad(f"points[{i}].customer_id", "is required", "REQUIRED_FIELD_MISSING")
        elif not ID_PATTERN.match(point.customer_id):
            bad(f"points[{i}].customer_id", ID_RULE, "INVALID_ID")
        as_of: datetime | None = None
        if point.HasField("as_of"):
            if not timestamps.is_valid(point.as_of):
                bad(f"points[{i}].as_of", "must be a timestamp between 0001-01-01 and 9999-12-31 with nanos in "
                                          "[0, 1e9)", "INVALID_TIMESTAMP")
            else:
                as_of = to_datetime(point.as_of)
                if as_of > now + FUTURE_SKEW:
                    bad(f"points[{i}].as_of", "must not be in the future", "AS_OF_IN_FUTURE")
        out.append((point.customer_id, as_of))
    violations.raise_if_any(reason=reasons[0] if reasons else "INVALID_ARGUMENT")
    return out


def tag_to_proto(tag: StoredTag) -> pb.Tag:
    return pb.Tag(name=tag.name, value=tag.value, source=tag.source, rule_version=tag.rule_version,
                  as_of=to_timestamp(tag.as_of), computed_at=to_timestamp(tag.computed_at))


class EventHandlers(pbg.EventServiceServicer):
    def __init__(self, service: EventsService) -> None:
        self.service = service

    async def IngestEvents(self, request: pb.IngestEventsRequest,
                           context: grpc.aio.ServicerContext) -> pb.IngestEventsResponse:
        rows = events_from_proto(request.events, self.service.clock())
        result = await self.service.ingest(rows, key_for("IngestEvents", request))
        return pb.IngestEventsResponse(accepted=result.accepted, duplicates=result.duplicates,
                                       recorded_at=to_timestamp(result.recorded_at))

    async def StreamIngestEvents(self, request_iterator: AsyncIterator[pb.StreamIngestEventsRequest],
                                 context: grpc.aio.ServicerContext) -> pb.StreamIngestEventsResponse:
        accepted = duplicates = batches = 0
        async for message in request_iterator:
            try:
                rows = events_from_proto(message.events, self.service.clock())
            except InvalidArgument as error:
                raise InvalidArgument(
                    error.violations, reason=error.reason,
                    message=f"message {batches} (earlier messages are stored): {error.message}",
                ) from None
            result = await self.service.ingest(rows)
            accepted, duplicates, batches = accepted + result.accepted, duplicates + result.duplicates, batches + 1
        return pb.StreamIngestEventsResponse(accepted=accepted, duplicates=duplicates, batches=batches)

    async def GetFeatures(self, request: pb.GetFeaturesRequest,
                          context: grpc.aio.ServicerContext) -> pb.GetFeaturesResponse:
        customer_id = check_id(request.customer_id, "customer_id")
        features, as_of = await self.service.get_features(customer_id, _as_of(request))
        return pb.GetFeaturesResponse(customer_id=customer_id, as_of=to_timestamp(as_of),
                                      features=features.values, products_held=features.products_held)

    async def BatchGetFeatures(self, request: pb.BatchGetFeaturesRequest,
                               context: grpc.aio.ServicerContext) -> pb.BatchGetFeaturesResponse:
        points = feature_points_from_proto(request.points, self.service.clock())
        results = await self.service.features_at(points)
        return pb.BatchGetFeaturesResponse(results=[
            pb.PointFeatures(customer_id=r.customer_id, as_of=to_timestamp(r.as_of), found=r.found,
                             features=r.features.values if r.found else {},
                             products_held=r.features.products_held if r.found else [])
            for r in results])

    async def ComputeTags(self, request: pb.ComputeTagsRequest,
                          context: grpc.aio.ServicerContext) -> pb.ComputeTagsResponse:
        if not request.customer_ids:
            raise InvalidArgument.field("customer_ids", "at least one id is required",
                                        reason="REQUIRED_FIELD_MISSING")
        if len(request.customer_ids) > MAX_BATCH:
            raise InvalidArgument.field("customer_ids", f"at most {MAX_BATCH} ids per request",
                                        reason="BATCH_TOO_LARGE")
        violations = Violations()
        for i, customer_id in enumerate(request.customer_ids):
            if not ID_PATTERN.match(customer_id):
                violations.add(f"customer_ids[{i}]", ID_RULE)
        violations.raise_if_any(reason="INVALID_ID")
        tags = await self.service.compute_tags(list(request.customer_ids), _as_of(request))
        return pb.ComputeTagsResponse(customers=[
            pb.CustomerTags(customer_id=c, tags=[tag_to_proto(t) for t in items]) for c, items in tags.items()
        ])

    async def GetTags(self, request: pb.GetTagsRequest, context: grpc.aio.ServicerContext) -> pb.GetTagsResponse:
        customer_id = check_id(request.customer_id, "customer_id")
        tags = await self.service.get_tags(customer_id)
        return pb.GetTagsResponse(customer_id=customer_id, tags=[tag_to_proto(t) for t in tags])
