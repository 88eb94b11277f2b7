"""The client of profile's event feed (EventService.ListEventsSince), for triggered campaigns (triggers.py).

Returns the campaign's own FeedEvent objects, so the trigger follower never sees protobuf or gRPC.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any

from lodestar.profile.v1 import event_service_pb2 as pb
from lodestar.profile.v1 import event_service_pb2_grpc as pbg
from services.campaign.triggers import FeedEvent
from services.platform.clients import ServiceClient


def _name(enum: Any, value: int, prefix: str) -> str:
    return str(enum.Name(value)).removeprefix(prefix).lower() if value else ""


def feed_event(event: pb.Event) -> FeedEvent:
    kind = event.WhichOneof("payload") or ""
    fields: dict[str, Any] = {"kind": kind}
    if kind == "transaction":
        t = event.transaction
        fields.update(amount=t.amount, currency=t.currency, merchant_category=t.merchant_category,
                      channel=t.channel, direction=_name(pb.TransactionDirection, t.direction,
                                                         "TRANSACTION_DIRECTION_") or "debit")
    elif kind == "digital_activity":
        d = event.digital_activity
        fields.update(action=_name(pb.DigitalAction, d.action, "DIGITAL_ACTION_"), channel=d.channel,
                      target=d.target)
    elif kind == "repayment":
        r = event.repayment
        fields.update(amount=r.amount, due_date=r.due_date, days_late=r.days_late, product=r.product)
    elif kind == "campaign_response":
        c = event.campaign_response
        fields.update(campaign_id=c.campaign_id, offer_id=c.offer_id,
                      response_kind=_name(pb.ResponseKind, c.kind, "RESPONSE_KIND_"))
    return FeedEvent(event.event_id, event.customer_id, event.occurred_at.ToDatetime(tzinfo=UTC),
                     event.recorded_at.ToDatetime(tzinfo=UTC), fields)


class EventFeedClient(ServiceClient):
    service_names = ("lodestar.profile.v1.EventService",)

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__("profile", address, pbg.EventServiceStub, **kwargs)

    async def events_since(self, cursor: str, limit: int) -> tuple[list[FeedEvent], str]:
        response = await self.call(self.stub.ListEventsSince, pb.ListEventsSinceRequest(cursor=cursor, limit=limit),
                                   timeout=10.0)
        return [feed_event(e) for e in response.events], response.next_cursor
