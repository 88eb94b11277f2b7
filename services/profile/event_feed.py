"""The event feed: behaviour events in ingestion order, after a cursor (EventService.ListEventsSince).

Followers (campaign's triggered campaigns) keep the cursor and ask for what came after it. The order is
(recorded_at, event_id): recorded_at is this service's clock when the ingest began, so an ingest that is still
committing can hold events *older* than ones already visible. The feed therefore only returns events recorded at
least `settle` ago (default 2 s): an ingest transaction slower than that could be passed over (docs/triggers.md).
The cursor is opaque (the pagination module's signed token) and holds the last (recorded_at, event_id) returned.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import grpc
from sqlalchemy import and_, or_, select

from lodestar.profile.v1 import event_service_pb2 as pb
from services.platform import pagination
from services.platform.db import utcnow
from services.platform.errors import InvalidArgument
from services.platform.timestamps import to_timestamp
from services.profile.event_handlers import EventHandlers
from services.profile.events import EventsService
from services.profile.events_db import EventRow, EventsUnitOfWork

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
DEFAULT_SETTLE = timedelta(seconds=2)
_FINGERPRINT = "lodestar.profile.v1.EventService/ListEventsSince"


@dataclass(frozen=True)
class FeedPage:
    events: list[EventRow]
    next_cursor: str


def _decode(cursor: str) -> tuple[datetime, str] | None:
    try:
        position = pagination.decode_page_token(cursor, _FINGERPRINT)
    except InvalidArgument:
        raise InvalidArgument.field("cursor", "is not a cursor this feed returned", reason="INVALID_CURSOR") from None
    if position is None:
        return None
    try:
        return datetime.fromisoformat(str(position["t"])), str(position["e"])
    except (KeyError, ValueError):
        raise InvalidArgument.field("cursor", "is not a cursor this feed returned", reason="INVALID_CURSOR") from None


def _encode(recorded_at: datetime, event_id: str) -> str:
    return pagination.encode_page_token({"t": recorded_at.isoformat(), "e": event_id}, _FINGERPRINT)


class EventFeed:
    def __init__(self, uow_factory: Callable[[], EventsUnitOfWork], *, settle: timedelta = DEFAULT_SETTLE,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.settle = settle
        self.clock = clock

    async def since(self, cursor: str, limit: int) -> FeedPage:
        after = _decode(cursor)
        horizon = self.clock() - self.settle
        query = select(EventRow).where(EventRow.recorded_at <= horizon)
        if after is not None:
            at, event_id = after
            query = query.where(or_(EventRow.recorded_at > at,
                                    and_(EventRow.recorded_at == at, EventRow.event_id > event_id)))
        query = query.order_by(EventRow.recorded_at, EventRow.event_id).limit(limit)
        async with self.uow_factory() as uow:
            rows = list(await uow.session.scalars(query))
            for row in rows:
                uow.session.expunge(row)
        next_cursor = _encode(rows[-1].recorded_at, rows[-1].event_id) if rows else cursor
        return FeedPage(rows, next_cursor)


def event_to_proto(row: EventRow) -> pb.Event:
    event = pb.Event(event_id=row.event_id, customer_id=row.customer_id, occurred_at=to_timestamp(row.occurred_at),
                     recorded_at=to_timestamp(row.recorded_at))
    amount = format(row.amount.normalize(), "f") if row.amount is not None else ""
    if row.kind == "transaction":
        direction: Any = pb.TransactionDirection.Value(f"TRANSACTION_DIRECTION_{(row.direction or 'debit').upper()}")
        event.transaction.CopyFrom(pb.Transaction(amount=amount, currency=row.currency,
                                                  merchant_category=row.merchant_category, channel=row.channel,
                                                  direction=direction))
    elif row.kind == "digital_activity":
        action: Any = pb.DigitalAction.Value(f"DIGITAL_ACTION_{row.action.upper()}") if row.action else 0
        event.digital_activity.CopyFrom(pb.DigitalActivity(action=action, channel=row.channel, target=row.target))
    elif row.kind == "repayment":
        event.repayment.CopyFrom(pb.Repayment(amount=amount, due_date=row.due_date.isoformat() if row.due_date
                                              else "", days_late=row.days_late or 0, product=row.product))
    elif row.kind == "campaign_response":
        kind: Any = (pb.ResponseKind.Value(f"RESPONSE_KIND_{row.response_kind.upper()}") if row.response_kind
                     else 0)
        event.campaign_response.CopyFrom(pb.CampaignResponse(campaign_id=row.campaign_id, offer_id=row.offer_id,
                                                             kind=kind))
    return event


class EventHandlersWithFeed(EventHandlers):
    """EventService's handlers plus ListEventsSince (registered in app.py in place of EventHandlers)."""

    def __init__(self, service: EventsService, feed: EventFeed) -> None:
        super().__init__(service)
        self.feed = feed

    async def ListEventsSince(self, request: pb.ListEventsSinceRequest,
                              context: grpc.aio.ServicerContext) -> pb.ListEventsSinceResponse:
        for name in ("limit", "page_size"):
            if getattr(request, name) < 0:
                raise InvalidArgument.field(name, "must not be negative", reason="INVALID_LIMIT")
        if request.cursor and request.page_token and request.cursor != request.page_token:
            raise InvalidArgument.field("page_token", "must equal cursor when both are given",
                                        reason="INVALID_CURSOR")
        limit = min(request.limit or request.page_size or DEFAULT_LIMIT, MAX_LIMIT)
        page = await self.feed.since(request.cursor or request.page_token, limit)
        return pb.ListEventsSinceResponse(events=[event_to_proto(r) for r in page.events],
                                          next_cursor=page.next_cursor,
                                          next_page_token=page.next_cursor if len(page.events) == limit else "")
