"""Typed clients of the services the gateway calls: campaign (Decide)."""

from __future__ import annotations

from datetime import datetime

from google.protobuf import timestamp_pb2
from opentelemetry.sdk.trace import TracerProvider

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
from lodestar.common.v1 import common_pb2
from services.gateway.domain import Decision, Disclosure, PartnerOffer
from services.platform.clients import ServiceClient

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
