"""gRPC handlers of TriggerService (triggered campaigns): validate, map proto <-> domain, call triggers.py."""

from __future__ import annotations

import grpc

from lodestar.campaign.v1 import trigger_pb2, trigger_pb2_grpc
from services.campaign.triggers import TriggerService, TriggerView
from services.platform import timestamps
from services.platform.errors import InvalidArgument
from services.platform.idempotency import key_for
from services.platform.validation import check_id, parse_name

MAX_CONDITION = 4000


def trigger_to_proto(view: TriggerView) -> trigger_pb2.CampaignTrigger:
    return trigger_pb2.CampaignTrigger(
        campaign=f"campaigns/{view.campaign_id}", condition=view.condition, dedupe_hours=view.dedupe_hours,
        canonical_condition=view.canonical_condition, update_time=timestamps.to_timestamp(view.update_time),
        firings=view.firings)


class TriggerHandlers(trigger_pb2_grpc.TriggerServiceServicer):
    def __init__(self, triggers: TriggerService) -> None:
        self.triggers = triggers

    async def SetCampaignTrigger(self, request: trigger_pb2.SetCampaignTriggerRequest,
                                 context: grpc.aio.ServicerContext) -> trigger_pb2.SetCampaignTriggerResponse:
        campaign_id = parse_name(request.trigger.campaign, "campaigns", "trigger.campaign")
        actor = check_id(request.actor, "actor")
        condition = request.trigger.condition.strip()
        if not condition:
            raise InvalidArgument.field("trigger.condition", "is required", reason="REQUIRED_FIELD_MISSING")
        if len(condition) > MAX_CONDITION:
            raise InvalidArgument.field("trigger.condition", f"must be at most {MAX_CONDITION} characters")
        view = await self.triggers.set_trigger(campaign_id, condition, request.trigger.dedupe_hours, actor,
                                               key_for("SetCampaignTrigger", request))
        return trigger_pb2.SetCampaignTriggerResponse(trigger=trigger_to_proto(view))

    async def GetCampaignTrigger(self, request: trigger_pb2.GetCampaignTriggerRequest,
                                 context: grpc.aio.ServicerContext) -> trigger_pb2.GetCampaignTriggerResponse:
        campaign_id = parse_name(request.campaign, "campaigns", "campaign")
        return trigger_pb2.GetCampaignTriggerResponse(trigger=trigger_to_proto(
            await self.triggers.get_trigger(campaign_id)))
