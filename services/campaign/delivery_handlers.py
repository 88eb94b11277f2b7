"""DeliveryService: the gRPC face of the dispatcher (validate, map proto <-> domain, call dispatch.DeliveryService)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

import grpc

from lodestar.campaign.v1 import delivery_service_pb2 as pb
from lodestar.campaign.v1 import delivery_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2
from services.campaign import dispatch
from services.campaign.dispatch import DeliveryService, DeliveryStats, DeliveryView
from services.platform import pagination, timestamps
from services.platform.config import ServiceSettings
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.server import Runtime
from services.platform.validation import check_enum, check_id, parse_name

log = logging.getLogger("lodestar.campaign.delivery")

_STATES = {"PENDING": pb.DELIVERY_STATE_PENDING, "QUEUED": pb.DELIVERY_STATE_QUEUED,
           "SENDING": pb.DELIVERY_STATE_SENDING, "SENT": pb.DELIVERY_STATE_SENT, "DEAD": pb.DELIVERY_STATE_DEAD}
_STATUSES = {"DELIVERED": pb.DELIVERY_STATUS_DELIVERED, "FAILED": pb.DELIVERY_STATUS_FAILED,
             "OPENED": pb.DELIVERY_STATUS_OPENED, "CLICKED": pb.DELIVERY_STATUS_CLICKED}
_OUTCOMES = {"APPLIED": pb.CALLBACK_OUTCOME_APPLIED, "DUPLICATE": pb.CALLBACK_OUTCOME_DUPLICATE,
             "STALE": pb.CALLBACK_OUTCOME_STALE, "CONFLICT": pb.CALLBACK_OUTCOME_CONFLICT}
MAX_KEY_LENGTH = 200


def delivery_to_proto(view: DeliveryView) -> pb.Delivery:
    out = pb.Delivery(
        delivery_key=view.delivery_key, launch=f"launches/{view.launch_id}" if view.launch_id else "",
        channel=view.channel,  # type: ignore[arg-type]
        state=_STATES.get(view.state, pb.DELIVERY_STATE_UNSPECIFIED), attempts=view.attempts,
        deferrals=view.deferrals, last_reason=view.last_reason, provider_message_id=view.provider_message_id,
        status=_STATUSES.get(view.status, pb.DELIVERY_STATUS_UNSPECIFIED), ignored_callbacks=view.ignored_callbacks)
    for name, value in (("next_attempt_time", view.next_attempt_time), ("sent_time", view.sent_time),
                        ("dead_time", view.dead_time), ("open_time", view.opened_time),
                        ("click_time", view.clicked_time)):
        stamp = timestamps.to_timestamp(value)
        if stamp is not None:
            getattr(out, name).CopyFrom(stamp)
    return out


def _counts(values: dict[str, int]) -> pb.DeliveryCounts:
    return pb.DeliveryCounts(**values)


def stats_to_proto(stats: DeliveryStats) -> pb.GetDeliveryStatsResponse:
    return pb.GetDeliveryStatsResponse(
        launch=f"launches/{stats.launch_id}", counts=_counts(stats.counts),
        channels=[pb.ChannelDeliveryCounts(channel=channel, counts=_counts(counts))  # type: ignore[arg-type]
                  for channel, counts in sorted(stats.by_channel.items())],
        dead_by_reason=stats.dead_by_reason)


def _delivery_key(value: str, field: str = "delivery_key") -> str:
    if not value:
        raise InvalidArgument.field(field, "is required", reason="REQUIRED_FIELD_MISSING")
    if len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise InvalidArgument.field(field, f"must be at most {MAX_KEY_LENGTH} printable characters",
                                    reason="INVALID_DELIVERY_KEY")
    return value


class DeliveryHandlers(pbg.DeliveryServiceServicer):
    def __init__(self, service: DeliveryService) -> None:
        self.service = service

    async def RecordDeliveryStatus(self, request: pb.RecordDeliveryStatusRequest,
                                   context: grpc.aio.ServicerContext) -> pb.RecordDeliveryStatusResponse:
        key_for("RecordDeliveryStatus", request)  # the request id's form; callbacks are idempotent by status
        if bool(request.delivery_key) == bool(request.provider_message_id):
            raise InvalidArgument.field("delivery_key", "exactly one of delivery_key and provider_message_id is "
                                        "required", reason="DELIVERY_REFERENCE_REQUIRED")
        if request.delivery_key:
            _delivery_key(request.delivery_key)
        else:
            _delivery_key(request.provider_message_id, "provider_message_id")
        status = check_enum(request.status, pb.DeliveryStatus, "status")
        event_time: datetime | None = timestamps.from_field(request, "event_time")
        if event_time is None:
            raise InvalidArgument.field("event_time", "is required", reason="REQUIRED_FIELD_MISSING")
        if len(request.reason) > 64:
            raise InvalidArgument.field("reason", "must be at most 64 characters", reason="REASON_TOO_LONG")
        outcome, view = await self.service.record_status(
            delivery_key=request.delivery_key, provider_message_id=request.provider_message_id,
            status=pb.DeliveryStatus.Name(status).removeprefix("DELIVERY_STATUS_"),  # type: ignore[arg-type]
            event_time=event_time, reason=request.reason)
        return pb.RecordDeliveryStatusResponse(outcome=_OUTCOMES[outcome], delivery=delivery_to_proto(view))

    async def ListDeadLetters(self, request: pb.ListDeadLettersRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListDeadLettersResponse:
        launch_id = parse_name(request.launch, "launches", "launch") if request.launch else None
        channel = check_enum(request.channel, common_pb2.Channel, "channel") if request.channel else None
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(launch=launch_id, channel=channel)
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = None
        if position is not None:
            try:
                after = (datetime.fromisoformat(position["t"]), str(position["k"]))
            except (KeyError, TypeError, ValueError):
                raise InvalidArgument.field("page_token", "is not a token this list returned",
                                            reason="INVALID_PAGE_TOKEN") from None
        views, last = await self.service.list_dead_letters(launch_id=launch_id, channel=channel, after=after,
                                                           page_size=size)
        token = pagination.encode_page_token({"t": last[0].isoformat(), "k": last[1]}, fingerprint) if last else ""
        return pb.ListDeadLettersResponse(deliveries=[delivery_to_proto(v) for v in views], next_page_token=token)

    async def RequeueDeadLetter(self, request: pb.RequeueDeadLetterRequest,
                                context: grpc.aio.ServicerContext) -> pb.RequeueDeadLetterResponse:
        delivery_key = _delivery_key(request.delivery_key)
        actor = check_id(request.actor, "actor")
        view = await self.service.requeue(delivery_key, actor, key_for("RequeueDeadLetter", request))
        return pb.RequeueDeadLetterResponse(delivery=delivery_to_proto(view))

    async def GetDeliveryStats(self, request: pb.GetDeliveryStatsRequest,
                               context: grpc.aio.ServicerContext) -> pb.GetDeliveryStatsResponse:
        launch_id = parse_name(request.launch, "launches", "launch")
        return stats_to_proto(await self.service.stats(launch_id))


# --- wiring (called from app.py) ------------------------------------------------------------------------------

DELIVERY_SERVICE_NAMES = (pb.DESCRIPTOR.services_by_name["DeliveryService"].full_name,)
DELIVERY_SETTINGS = dispatch.SETTINGS
DEPTH_REPORT_SECONDS = 5.0


def check_delivery_settings(settings: ServiceSettings) -> None:
    dispatch.settings_from(settings.extra)
    dispatch.check_endpoint_settings(settings.extra)


def wire_delivery(server: grpc.aio.Server, runtime: Runtime) -> None:
    """DeliveryService, and the dispatcher loop on every replica unless CAMPAIGN_DISPATCH_ENABLED=false."""
    from services.campaign.clients import ProfileClient, RiskClient
    from services.campaign.db import CampaignUnitOfWork

    def uow() -> CampaignUnitOfWork:
        return CampaignUnitOfWork(runtime.database)

    pbg.add_DeliveryServiceServicer_to_server(DeliveryHandlers(DeliveryService(uow, metrics=runtime.metrics)),
                                              server)
    settings = dispatch.settings_from(runtime.settings.extra)
    if not settings.enabled:
        return
    adapters = dispatch.adapters_from(runtime.settings.extra)
    if not adapters:
        log.info("no delivery channel configured (CAMPAIGN_PROVIDER_URL, CAMPAIGN_SMTP_HOST, CAMPAIGN_CALL_LIST_DIR): "
                 "the dispatcher does not run")
        return
    deps = runtime.settings.dependencies
    profile = ProfileClient(deps["profile"], tracer_provider=runtime.tracer_provider, default_timeout=2.0)
    risk = RiskClient(deps["risk"], tracer_provider=runtime.tracer_provider, default_timeout=2.0)
    runtime.closers += [profile.close, risk.close]
    dispatcher = dispatch.Dispatcher(uow, dispatch.ProfileContacts(profile), dispatch.RiskContactPolicy(risk),
                                     adapters, settings=settings, metrics=runtime.metrics,
                                     tracer_provider=runtime.tracer_provider)
    runtime.components["dispatcher"] = dispatcher
    runtime.run_in_background("dispatcher", DispatchLoop(dispatcher).step, settings.poll_seconds)


class DispatchLoop:
    """One tick of the dispatcher's background loop: claim and send due deliveries (work found: truthy), and
    report the outbox depth gauge every DEPTH_REPORT_SECONDS."""

    def __init__(self, dispatcher: dispatch.Dispatcher) -> None:
        self.dispatcher = dispatcher
        self.reported = float("-inf")

    async def step(self) -> int:
        now = asyncio.get_running_loop().time()
        if now - self.reported >= DEPTH_REPORT_SECONDS:
            self.reported = now
            try:
                await self.dispatcher.report_depth()
            except Exception:  # the gauge must not stop the sending
                log.warning("outbox depth report failed", exc_info=True)
        return await self.dispatcher.step()

