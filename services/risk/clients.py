"""Typed clients of the services risk calls: the data-subject half of profile, campaign and gateway.

Each call has a deadline (DEFAULT_TIMEOUT_SECONDS, an erasure scans a service's tables) and is retried on
UNAVAILABLE by the channel's policy; errors arrive as domain errors naming the dependency.
"""

from __future__ import annotations

import functools
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lodestar.common.v1 import data_subject_pb2, data_subject_pb2_grpc
from lodestar.profile.v1 import event_service_pb2, event_service_pb2_grpc
from services.platform.clients import ServiceClient

DEFAULT_TIMEOUT_SECONDS = 30.0
ADMIN_TOKEN_HEADER = "x-admin-token"  # noqa: S105  # nosec B105 - a header name


class DataSubjectClient(ServiceClient):
    """lodestar.common.v1.DataSubjectService of one service. `admin_token` is sent as x-admin-token (the
    gateway requires it; profile and campaign ignore it)."""

    service_names = (data_subject_pb2.DESCRIPTOR.services_by_name["DataSubjectService"].full_name,)

    def __init__(self, dependency: str, address: str, *, admin_token: str = "", **kwargs: object) -> None:
        kwargs.setdefault("default_timeout", DEFAULT_TIMEOUT_SECONDS)
        super().__init__(dependency, address, data_subject_pb2_grpc.DataSubjectServiceStub, **kwargs)  # type: ignore[arg-type]
        self.metadata = ((ADMIN_TOKEN_HEADER, admin_token),) if admin_token else ()

    async def export(self, customer_id: str, request_id: str, *,
                     counts_only: bool = False) -> data_subject_pb2.ExportCustomerDataResponse:
        return await self.call(
            functools.partial(self.stub.ExportCustomerData, metadata=self.metadata),
            data_subject_pb2.ExportCustomerDataRequest(customer_id=customer_id, request_id=request_id,
                                                       counts_only=counts_only))

    async def erase(self, customer_id: str, request_id: str) -> data_subject_pb2.ErasureReceipt:
        response = await self.call(
            functools.partial(self.stub.EraseCustomerData, metadata=self.metadata),
            data_subject_pb2.EraseCustomerDataRequest(customer_id=customer_id, request_id=request_id))
        return response.receipt


# --- profile's event feed: event-based credit default labels (RiskService.train_credit_model) -------------------

@dataclass(frozen=True)
class LabelEvent:
    customer_id: str
    kind: str  # transaction, digital_activity, repayment, campaign_response
    occurred_at: datetime
    days_late: int  # repayments only, else 0


class ProfileEventsClient(ServiceClient):
    """profile's EventService.ListEventsSince: the feed of behaviour events in ingestion order. The feed has no
    filter, so a label read walks it from the beginning (FEED_PAGE events per call) and keeps what it needs."""

    service_names = (event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,)
    FEED_PAGE = 1000

    def __init__(self, address: str, **kwargs: Any) -> None:
        kwargs.setdefault("default_timeout", DEFAULT_TIMEOUT_SECONDS)
        super().__init__("profile", address, event_service_pb2_grpc.EventServiceStub, **kwargs)

    async def events(self, customers: Collection[str], kinds: Collection[str], after: datetime,
                     until: datetime) -> list[LabelEvent]:
        """Events of these customers and kinds with after < occurred_at <= until."""
        wanted, out, cursor = set(customers), [], ""
        while True:
            page = await self.call(self.stub.ListEventsSince,
                                   event_service_pb2.ListEventsSinceRequest(cursor=cursor, limit=self.FEED_PAGE))
            for event in page.events:
                kind = event.WhichOneof("payload") or ""
                if event.customer_id not in wanted or kind not in kinds:
                    continue
                occurred = event.occurred_at.ToDatetime(tzinfo=UTC)
                if after < occurred <= until:
                    days_late = event.repayment.days_late if kind == "repayment" else 0
                    out.append(LabelEvent(event.customer_id, kind, occurred, days_late))
            if not page.events or page.next_cursor == cursor:
                return out
            cursor = page.next_cursor
