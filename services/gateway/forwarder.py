"""Partner leads and conversions, forwarded to campaign's responses intake (docs/gateway.md, "Forwarding").

Every gateway replica runs `Forwarder.forward_once()` in a loop. It takes the oldest leads and conversions with
`forwarded = false`, turns them into response events — a lead is APPLIED, a conversion CONVERTED with its
revenue and currency — attributed by the decision that presented the offer (`decisions/{id}`, with the offer
and the bank's customer id, which the gateway resolved from the partner's pseudonym when the lead came in;
partners never see it and it is never logged), sends them in one RecordResponses stream and, once campaign has
answered, marks exactly those rows forwarded.

Exactly-once effect without a coordinator: the stream's request id is a hash of the events it carries, so a
retry after a crash between campaign's answer and the marking gets the first answer back; two replicas sending
the same rows, or a batch that grew meanwhile, are caught by campaign's uniqueness key (DUPLICATE, never counted
twice). Whatever campaign decided for an event — recorded, duplicate, not attributed (a lead for an offer no
campaign measured), rejected with a reason — is final: the row is marked and the counts are logged. When
campaign is unreachable nothing is marked and the next tick retries.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import select, update

from lodestar.campaign.v1 import response_service_pb2 as rpb
from services.gateway.db import ConversionRow, EngagementRow, GatewayUnitOfWork, LeadRow
from services.gateway.domain import ENGAGEMENT_OUTCOMES
from services.platform.config import ConfigError, ServiceSettings
from services.platform.errors import DomainError
from services.platform.timestamps import to_timestamp

log = logging.getLogger("lodestar.gateway.forwarder")

INTERVAL_SETTING = "GATEWAY_FORWARD_INTERVAL_SECONDS"
DEFAULT_INTERVAL_SECONDS = 5.0
BATCH_SIZE = 500


class ResponseSink(Protocol):
    """What the forwarder needs of campaign (clients.ResponsesClient)."""

    async def record_responses(self, request_id: str, events: list[rpb.ResponseEvent]
                               ) -> rpb.RecordResponsesResponse: ...


@dataclass(frozen=True)
class ForwardResult:
    leads: int
    conversions: int
    # disposition name -> count, as campaign answered
    dispositions: dict[str, int]


def check_settings(settings: ServiceSettings) -> None:
    raw = settings.extra.get(INTERVAL_SETTING)
    if raw is None:
        return
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 3600:
        raise ConfigError(f"{INTERVAL_SETTING} must be a number of seconds between 0.05 and 3600, got {raw!r}")


def lead_event(lead: LeadRow) -> rpb.ResponseEvent:
    return rpb.ResponseEvent(decision=lead.decision_ref, customer_id=lead.customer_id, offer_id=lead.offer_id,
                             outcome=rpb.RESPONSE_OUTCOME_APPLIED, response_time=to_timestamp(lead.create_time),
                             event_id=f"gateway:lead:{lead.lead_id}")


def conversion_event(conversion: ConversionRow, lead: LeadRow) -> rpb.ResponseEvent:
    revenue = conversion.revenue_units + conversion.revenue_nanos / 1e9
    return rpb.ResponseEvent(decision=lead.decision_ref, customer_id=lead.customer_id, offer_id=lead.offer_id,
                             outcome=rpb.RESPONSE_OUTCOME_CONVERTED,
                             response_time=to_timestamp(conversion.conversion_time), revenue=revenue,
                             currency_code=conversion.currency_code if revenue else "",
                             event_id=f"gateway:conversion:{lead.lead_id}")


def engagement_event(row: EngagementRow) -> rpb.ResponseEvent:
    """A partner's VIEWED is campaign's OPENED, CLICKED is CLICKED (domain.ENGAGEMENT_OUTCOMES)."""
    return rpb.ResponseEvent(decision=row.decision_ref, customer_id=row.customer_id, offer_id=row.offer_id,
                             outcome=rpb.ResponseOutcome.Value(f"RESPONSE_OUTCOME_{ENGAGEMENT_OUTCOMES[row.kind]}"),
                             response_time=to_timestamp(row.event_time),
                             event_id=f"gateway:engagement:{row.engagement_id}")


def request_id_for(events: list[rpb.ResponseEvent]) -> str:
    digest = hashlib.sha256("\n".join(e.event_id for e in events).encode()).hexdigest()
    return f"gateway-forward-{digest[:40]}"


class Forwarder:
    def __init__(self, uow_factory: Callable[[], GatewayUnitOfWork], sink: ResponseSink, *, batch_size: int = BATCH_SIZE
                 ) -> None:
        self.uow_factory = uow_factory
        self.sink = sink
        self.batch_size = batch_size

    async def forward_once(self) -> ForwardResult:
        """One batch: send what is not forwarded yet, mark it; ForwardResult(0, 0, {}) when nothing waited."""
        async with self.uow_factory() as uow:
            leads = list(await uow.session.scalars(
                select(LeadRow).where(LeadRow.forwarded.is_(False))
                .order_by(LeadRow.create_time, LeadRow.lead_id).limit(self.batch_size)))
            pairs = list((await uow.session.execute(
                select(ConversionRow, LeadRow).join(LeadRow, LeadRow.lead_id == ConversionRow.lead_id)
                .where(ConversionRow.forwarded.is_(False))
                .order_by(ConversionRow.create_time, ConversionRow.lead_id).limit(self.batch_size))).tuples())
            engagements = list(await uow.session.scalars(
                select(EngagementRow).where(EngagementRow.forwarded.is_(False))
                .order_by(EngagementRow.create_time, EngagementRow.engagement_id).limit(self.batch_size)))
            events = [lead_event(lead) for lead in leads] + [conversion_event(c, lead) for c, lead in pairs] + [
                engagement_event(e) for e in engagements]
            lead_ids = [lead.lead_id for lead in leads]
            conversion_ids = [c.lead_id for c, _ in pairs]
            engagement_ids = [e.engagement_id for e in engagements]
        if not events:
            return ForwardResult(0, 0, {})
        try:
            answer = await self.sink.record_responses(request_id_for(events), events)
        except DomainError as error:
            log.warning("forwarding waits: campaign answered %s", error.reason,
                        extra={"leads": len(lead_ids), "conversions": len(conversion_ids)})
            raise
        async with self.uow_factory() as uow:
            if lead_ids:
                await uow.session.execute(update(LeadRow).where(LeadRow.lead_id.in_(lead_ids),
                                                                LeadRow.forwarded.is_(False))
                                          .values(forwarded=True).execution_options(synchronize_session=False))
            if conversion_ids:
                await uow.session.execute(update(ConversionRow).where(ConversionRow.lead_id.in_(conversion_ids),
                                                                      ConversionRow.forwarded.is_(False))
                                          .values(forwarded=True).execution_options(synchronize_session=False))
            if engagement_ids:
                await uow.session.execute(update(EngagementRow).where(EngagementRow.engagement_id.in_(engagement_ids),
                                                                      EngagementRow.forwarded.is_(False))
                                          .values(forwarded=True).execution_options(synchronize_session=False))
            await uow.commit()
        dispositions = dict(Counter({rpb.ResponseDisposition.Name(c.disposition).removeprefix(
            "RESPONSE_DISPOSITION_"): int(c.count) for c in answer.counts}))
        log.info("leads and conversions forwarded", extra={
            "leads": len(lead_ids), "conversions": len(conversion_ids), "engagements": len(engagement_ids),
            "dispositions": dispositions})
        return ForwardResult(len(lead_ids), len(conversion_ids), dispositions)

    async def tick(self) -> bool:
        """One tick of the background loop: whether anything was forwarded (then the next batch goes at once).
        Campaign unavailable is logged by forward_once and retried on the next tick."""
        try:
            result = await self.forward_once()
        except DomainError:
            return False
        return bool(result.dispositions)


def start_forwarder(runtime: Any, sink: ResponseSink) -> None:
    """The forwarding loop as a background task of the gateway (stopped first at shutdown)."""
    forwarder = Forwarder(lambda: GatewayUnitOfWork(runtime.database), sink)
    runtime.components["forwarder"] = forwarder
    interval = float(runtime.settings.extra.get(INTERVAL_SETTING) or DEFAULT_INTERVAL_SECONDS)
    runtime.run_in_background("forwarder", forwarder.tick, interval)
