"""Typed clients of the services the gateway calls: campaign (Decide), behind a circuit breaker.

The breaker (one per downstream service and process) opens after `FAILURE_THRESHOLD` consecutive calls that
failed as UNAVAILABLE or DEADLINE_EXCEEDED at the dependency (after the channel's own UNAVAILABLE retries).
While open, calls fail at once with UNAVAILABLE SERVICE_UNAVAILABLE, without touching the network. After
`COOL_DOWN_SECONDS` one call is let through as a probe (half-open): its success closes the breaker, its failure
opens it for another cool-down; other calls fail fast while the probe is in flight. Any answer from the
dependency (even NOT_FOUND or INVALID_ARGUMENT) counts as a success: the service is up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from google.protobuf import timestamp_pb2
from opentelemetry.sdk.trace import TracerProvider

from lodestar.campaign.v1 import (
    campaign_service_pb2,
    campaign_service_pb2_grpc,
    offer_pb2,
    response_service_pb2,
    response_service_pb2_grpc,
)
from lodestar.common.v1 import common_pb2
from services.gateway.domain import Decision, Disclosure, PartnerOffer
from services.platform.clients import ServiceClient
from services.platform.errors import DomainError, Unavailable

log = logging.getLogger("lodestar.gateway.breaker")

TResp = TypeVar("TResp")

FAILURE_THRESHOLD = 5
COOL_DOWN_SECONDS = 5.0
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# The reasons `services.platform.clients.translate_rpc_error` gives a dependency that is down or too slow.
_TRIPPING_REASONS = frozenset({"DEPENDENCY_UNAVAILABLE", "DEPENDENCY_DEADLINE_EXCEEDED"})
# Our own request's deadline ran out before the call (`services.platform.clients.call_timeout`): says nothing.
_NEUTRAL_REASONS = frozenset({"DEADLINE_EXCEEDED"})


class CircuitBreaker:
    """closed -> (N consecutive failures) -> open -> (cool-down) -> half-open -> one probe -> closed | open.

    Not thread-safe by design: it lives on one asyncio event loop, and no await happens inside its methods.
    """

    def __init__(self, dependency: str, *, failure_threshold: int = FAILURE_THRESHOLD,
                 cool_down_seconds: float = COOL_DOWN_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.dependency = dependency
        self.failure_threshold = failure_threshold
        self.cool_down_seconds = cool_down_seconds
        self._clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self._probe_in_flight = False

    def _open_error(self) -> Unavailable:
        return Unavailable("SERVICE_UNAVAILABLE", f"the {self.dependency} service is unavailable; retry later",
                           metadata={"dependency": self.dependency, "circuit": OPEN})

    def _transition(self, state: str) -> None:
        if state != self.state:
            log.warning("circuit %s", state, extra={"dependency": self.dependency, "circuit": state,
                                                     "failures": self.failures})
        self.state = state

    def before_call(self) -> bool:
        """Admits a call or raises UNAVAILABLE SERVICE_UNAVAILABLE; True when the call is the half-open probe."""
        if self.state == OPEN:
            if self._clock() - self.opened_at < self.cool_down_seconds:
                raise self._open_error()
            self._transition(HALF_OPEN)
        if self.state == HALF_OPEN:
            if self._probe_in_flight:
                raise self._open_error()
            self._probe_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        self._probe_in_flight = False
        self.failures = 0
        self._transition(CLOSED)

    def record_failure(self) -> None:
        self._probe_in_flight = False
        self.failures += 1
        if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.opened_at = self._clock()
            self._transition(OPEN)

    def release(self, probe: bool) -> None:
        """The call ended without telling anything about the dependency (e.g. our own deadline ran out)."""
        if probe:
            self._probe_in_flight = False

    async def call(self, invoke: Callable[[], Awaitable[TResp]]) -> TResp:
        probe = self.before_call()
        settled = False
        try:
            result = await invoke()
        except DomainError as error:
            if error.reason in _TRIPPING_REASONS:
                self.record_failure()
                settled = True
            elif error.reason not in _NEUTRAL_REASONS:
                self.record_success()  # the dependency answered, with an error of its own
                settled = True
            raise
        else:
            self.record_success()
            settled = True
            return result
        finally:
            if not settled:
                self.release(probe)


CAMPAIGN_SERVICE = campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name

# A partner page is waiting: keep well under a typical partner-side timeout.
DECIDE_TIMEOUT_SECONDS = 1.5


class CampaignClient(ServiceClient):
    """CampaignService, with deadlines and UNAVAILABLE retries from the platform client.

    Errors come out as platform domain errors (see `services.platform.clients.translate_rpc_error`); what a
    partner may see of them is decided by the service layer.
    """

    service_names = (CAMPAIGN_SERVICE,)

    def __init__(self, address: str, *, tracer_provider: TracerProvider | None = None,
                 default_timeout: float = DECIDE_TIMEOUT_SECONDS) -> None:
        super().__init__("campaign", address, campaign_service_pb2_grpc.CampaignServiceStub,
                         tracer_provider=tracer_provider, default_timeout=default_timeout)
        self.breaker = CircuitBreaker("campaign")

    async def call(self, method: Callable[..., Awaitable[TResp]], request: Any,
                   timeout: float | None = None) -> TResp:
        return await self.breaker.call(lambda: super(CampaignClient, self).call(method, request, timeout))

    async def decide(self, customer_id: str, *, partner_id: str, placement: str, decision_time: datetime,
                     max_offers: int) -> Decision:
        """Next-best offers for a customer on a partner's placement, reduced to what a partner may see."""
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(decision_time)
        request = campaign_service_pb2.DecideRequest(
            customer_id=customer_id,
            context=offer_pb2.DecisionContext(
                channel=common_pb2.CHANNEL_PARTNER, partner_id=partner_id, placement=placement, decision_time=when
            ),
            max_offers=max_offers,
        )
        response: campaign_service_pb2.DecideResponse = await self.call(self.stub.Decide, request)
        return decision_for_partner(response)


def decision_for_partner(response: campaign_service_pb2.DecideResponse) -> Decision:
    """Only the fields a partner may see: never propensity, expected value, suppressed offers or ids of the
    customer. Built field by field (an allow-list), so a field added to RankedOffer later stays internal."""
    offers = tuple(
        PartnerOffer(
            offer_id=offer.offer_id,
            title=offer.title,
            product_type=offer.product_type,
            rank=offer.rank,
            disclosures=tuple(Disclosure(kind=d.kind, text=d.text) for d in offer.disclosures),
            reason_codes=tuple(reason.code for reason in offer.reasons),
        )
        for offer in response.offers
    )
    return Decision(decision_ref=response.decision, offers=offers)


# --- campaign's ResponseService: partner leads and conversions forwarded as responses (forwarder.py) ----------

RESPONSE_SERVICE = response_service_pb2.DESCRIPTOR.services_by_name["ResponseService"].full_name
FORWARD_TIMEOUT_SECONDS = 10.0


class ResponsesClient(ServiceClient):
    """campaign's ResponseService (RecordResponses, client streaming), with a deadline on every call."""

    service_names = (RESPONSE_SERVICE,)

    def __init__(self, address: str, *, tracer_provider: TracerProvider | None = None,
                 default_timeout: float = FORWARD_TIMEOUT_SECONDS) -> None:
        super().__init__("campaign", address, response_service_pb2_grpc.ResponseServiceStub,
                         tracer_provider=tracer_provider, default_timeout=default_timeout)

    async def record_responses(self, request_id: str, events: list[response_service_pb2.ResponseEvent]
                               ) -> response_service_pb2.RecordResponsesResponse:
        """One stream of one message (the forwarder's batches are small); idempotent under `request_id`."""
        message = response_service_pb2.RecordResponsesRequest(request_id=request_id, events=events)
        response: response_service_pb2.RecordResponsesResponse = await self.call(
            self.stub.RecordResponses, iter([message]))
        return response
