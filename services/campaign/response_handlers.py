"""ResponseService (gRPC): RecordResponses and GetArmOutcomes; and the wiring of responses, Thompson sampling
and the learning loop into the campaign service (`wire_responses`, called from app.py)."""

from __future__ import annotations

import logging
import math
from typing import Any

import grpc

from lodestar.campaign.v1 import response_service_pb2 as pb
from lodestar.campaign.v1 import response_service_pb2_grpc as pbg
from services.campaign import learning_loop, responses
from services.campaign.bandit import ThompsonArms
from services.campaign.db import CampaignUnitOfWork
from services.campaign.learning_loop import LearningLoop
from services.campaign.responses import ResponseInput, ResponseService, ResponseSettings
from services.platform import timestamps
from services.platform.config import ServiceSettings
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.server import Runtime
from services.platform.validation import ID_PATTERN, parse_name

log = logging.getLogger("lodestar.campaign.responses")

RESPONSE_SERVICE_NAMES = (pb.DESCRIPTOR.services_by_name["ResponseService"].full_name,)
RESPONSE_SETTINGS = (responses.CURRENCY_SETTING, responses.WINDOW_SETTING, learning_loop.INTERVAL_SETTING,
            learning_loop.AUTO_PROMOTE_SETTING)

_OUTCOMES = {pb.RESPONSE_OUTCOME_OPENED: responses.OPENED, pb.RESPONSE_OUTCOME_CLICKED: responses.CLICKED,
             pb.RESPONSE_OUTCOME_APPLIED: responses.APPLIED, pb.RESPONSE_OUTCOME_CONVERTED: responses.CONVERTED}
_DISPOSITIONS = {name: pb.ResponseDisposition.Value(f"RESPONSE_DISPOSITION_{name}") for name in responses.DISPOSITIONS}


def check_settings(settings: ServiceSettings) -> None:
    responses.check_settings(settings)
    learning_loop.check_settings(settings)


def _name_id(value: str, collection: str) -> tuple[str, str]:
    """(id, problem) of an optional resource name inside an event: a bad one makes the event INVALID."""
    if not value:
        return "", ""
    prefix = collection + "/"
    if not value.startswith(prefix) or not ID_PATTERN.match(value[len(prefix):]):
        return "", f"INVALID_{collection.upper().rstrip('S')}_NAME"
    return value[len(prefix):], ""


def event_from_proto(event: pb.ResponseEvent) -> ResponseInput:
    """A malformed event becomes an INVALID disposition with its reason (the stream's other events still count)."""
    problem = ""
    campaign_id, bad = _name_id(event.campaign, "campaigns")
    problem = problem or bad
    decision_id, bad = _name_id(event.decision, "decisions")
    problem = problem or bad
    if event.customer_id and not ID_PATTERN.match(event.customer_id):
        problem = problem or "INVALID_CUSTOMER_ID"
    if len(event.delivery_key) > 200:
        problem = problem or "INVALID_DELIVERY_KEY"
    if event.offer_id and not ID_PATTERN.match(event.offer_id):
        problem = problem or "INVALID_OFFER_ID"
    if event.currency_code and not (len(event.currency_code) == 3 and event.currency_code.isalpha()
                                    and event.currency_code.isupper()):
        problem = problem or "INVALID_CURRENCY_CODE"
    if event.outcome not in _OUTCOMES:
        problem = problem or "OUTCOME_REQUIRED"
    when = None
    if event.HasField("response_time"):
        if timestamps.is_valid(event.response_time):
            when = timestamps.to_datetime(event.response_time, "response_time")
        else:
            problem = problem or "INVALID_TIMESTAMP"
    if not math.isfinite(event.revenue):
        problem = problem or "INVALID_REVENUE"
    return ResponseInput(
        outcome=_OUTCOMES.get(event.outcome, ""), response_time=when, delivery_key=event.delivery_key,
        decision_id=decision_id, campaign_id=campaign_id, customer_id=event.customer_id,
        revenue=event.revenue if math.isfinite(event.revenue) else 0.0, currency_code=event.currency_code,
        offer_id=event.offer_id, event_id=event.event_id, problem=problem)


class ResponseHandlers(pbg.ResponseServiceServicer):
    def __init__(self, service: ResponseService) -> None:
        self.service = service

    async def RecordResponses(self, request_iterator: Any, context: grpc.aio.ServicerContext
                              ) -> pb.RecordResponsesResponse:
        merged = pb.RecordResponsesRequest()
        async for message in request_iterator:
            if message.request_id:
                if merged.request_id and message.request_id != merged.request_id:
                    raise InvalidArgument.field("request_id", "must be the same on every message of the stream",
                                                reason="REQUEST_ID_CHANGED")
                merged.request_id = message.request_id
            if len(merged.events) + len(message.events) > responses.MAX_EVENTS_PER_STREAM:
                raise InvalidArgument.field("events", f"at most {responses.MAX_EVENTS_PER_STREAM} events per stream",
                                            reason="TOO_MANY_EVENTS")
            merged.events.extend(message.events)
        key = key_for("RecordResponses", merged)
        result = await self.service.record([event_from_proto(e) for e in merged.events], key)
        return pb.RecordResponsesResponse(
            received=result.received, recorded=result.recorded,
            counts=[pb.DispositionCount(disposition=_DISPOSITIONS[name], count=n)  # type: ignore[arg-type]
                    for name, n in sorted(result.counts.items(), key=lambda item: _DISPOSITIONS[item[0]])],
            rejections=[pb.ResponseRejection(index=i, disposition=_DISPOSITIONS[d], reason=r)  # type: ignore[arg-type]
                        for i, d, r in result.rejections])

    async def GetArmOutcomes(self, request: pb.GetArmOutcomesRequest, context: grpc.aio.ServicerContext
                             ) -> pb.GetArmOutcomesResponse:
        campaign_id = parse_name(request.campaign, "campaigns", field="campaign")
        arms = await self.service.arm_outcomes(campaign_id)
        return pb.GetArmOutcomesResponse(
            campaign=f"campaigns/{campaign_id}", currency_code=self.service.settings.currency,
            attribution_window_days=self.service.settings.attribution_window.days,
            arms=[pb.ArmOutcome(
                arm_id=a.arm_id, assigned=a.assigned, contacted=a.contacted, opened=a.outcomes[responses.OPENED],
                clicked=a.outcomes[responses.CLICKED], applied=a.outcomes[responses.APPLIED],
                converted=a.outcomes[responses.CONVERTED], revenue=a.revenue,
                posterior_alpha=a.posterior_alpha if a.arm_id not in (responses.CONTROL, responses.GLOBAL_HOLDOUT)
                else 0.0,
                posterior_beta=a.posterior_beta if a.arm_id not in (responses.CONTROL, responses.GLOBAL_HOLDOUT)
                else 0.0,
                probability_best=a.probability_best) for a in arms])


def wire_responses(server: grpc.aio.Server, runtime: Runtime, service: Any, launches: Any, learning: Any) -> None:
    """ResponseService; Thompson sampling in Decide and launches; the learning loop's background task."""
    settings = ResponseSettings.from_settings(runtime.settings)

    def uow() -> CampaignUnitOfWork:
        return CampaignUnitOfWork(runtime.database)

    intake = ResponseService(uow, settings)
    runtime.components["responses"] = intake
    pbg.add_ResponseServiceServicer_to_server(ResponseHandlers(intake), server)
    arms = ThompsonArms(uow)
    runtime.components["bandit"] = arms
    service.arms = arms
    launches.arms = arms
    loop = LearningLoop(uow, learning, settings=settings, auto_promote=learning_loop.auto_promote(runtime.settings))
    runtime.components["learning_loop"] = loop
    interval = float(runtime.settings.extra.get(learning_loop.INTERVAL_SETTING)
                     or learning_loop.DEFAULT_INTERVAL_SECONDS)
    # Every replica runs it; runs are claimed through the database, so a campaign is learned from once.
    runtime.run_in_background("learning loop", loop.step, interval)
