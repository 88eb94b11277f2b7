"""gRPC handlers of CampaignService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

import math
from datetime import datetime

import grpc
from google.protobuf import timestamp_pb2

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
from lodestar.common.v1 import common_pb2
from services.campaign.domain import Decision, DecisionContext, Disclosure, Offer
from services.campaign.service import CampaignService
from services.platform import pagination
from services.platform.db import utcnow
from services.platform.idempotency import key_for
from services.platform.validation import Violations, check_enum, check_id, parse_name

MAX_OFFERS_LIMIT = 20
DEFAULT_MAX_OFFERS = 3


def _ts(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _from_ts(message: object, field: str) -> datetime | None:
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    return getattr(message, field).ToDatetime(tzinfo=utcnow().tzinfo)  # type: ignore[no-any-return]


def offer_to_proto(offer: Offer) -> offer_pb2.Offer:
    return offer_pb2.Offer(
        name=f"offers/{offer.offer_id}", offer_id=offer.offer_id, title=offer.title,
        product_type=offer.product_type, risk_level=offer.risk_level,  # type: ignore[arg-type]
        conversion_value=offer.conversion_value, contact_cost=offer.contact_cost,
        disclosures=[common_pb2.Disclosure(kind=d.kind, text=d.text) for d in offer.disclosures],
        valid_from=_ts(offer.valid_from), valid_until=_ts(offer.valid_until), etag=offer.etag,
        create_time=_ts(offer.create_time),
    )


def offer_from_proto(message: offer_pb2.Offer) -> Offer:
    check_id(message.offer_id, "offer.offer_id")
    violations = Violations()
    if not message.title.strip():
        violations.add("offer.title", "is required")
    elif len(message.title) > 200:
        violations.add("offer.title", "must be at most 200 characters")
    for field, enum in (("product_type", common_pb2.ProductType), ("risk_level", common_pb2.ProductRiskLevel)):
        value = getattr(message, field)
        if value not in {v.number for v in enum.DESCRIPTOR.values}:
            violations.add(f"offer.{field}", f"unknown value {value}")
        elif value == 0:
            violations.add(f"offer.{field}", "is required")
    for field in ("conversion_value", "contact_cost"):
        value = getattr(message, field)
        if not math.isfinite(value) or value < 0:
            violations.add(f"offer.{field}", "must be a finite number, zero or more")
    for i, disclosure in enumerate(message.disclosures):
        if not disclosure.kind.strip() or not disclosure.text.strip():
            violations.add(f"offer.disclosures[{i}]", "needs a kind and a text")
    valid_from, valid_until = _from_ts(message, "valid_from"), _from_ts(message, "valid_until")
    if valid_from and valid_until and valid_until <= valid_from:
        violations.add("offer.valid_until", "must be after valid_from")
    violations.raise_if_any()
    return Offer(
        offer_id=message.offer_id, title=message.title.strip(), product_type=message.product_type,
        risk_level=message.risk_level, conversion_value=message.conversion_value,
        contact_cost=message.contact_cost,
        disclosures=[Disclosure(d.kind.strip(), d.text.strip()) for d in message.disclosures],
        valid_from=valid_from, valid_until=valid_until,
    )


def decision_to_proto(decision: Decision) -> campaign_service_pb2.DecideResponse:
    return campaign_service_pb2.DecideResponse(
        decision=f"decisions/{decision.decision_id}",
        offers=[
            offer_pb2.RankedOffer(
                offer_id=r.offer.offer_id, title=r.offer.title, product_type=r.offer.product_type,  # type: ignore[arg-type]
                rank=r.rank, propensity=r.propensity, expected_value=r.expected_value,
                reasons=[offer_pb2.Reason(code=x.code, message=x.message) for x in r.reasons],
                disclosures=[common_pb2.Disclosure(kind=d.kind, text=d.text) for d in r.offer.disclosures],
            )
            for r in decision.offers
        ],
        suppressed=[
            offer_pb2.SuppressedOffer(offer_id=s.offer_id,
                                      reasons=[offer_pb2.Reason(code=x.code, message=x.message) for x in s.reasons])
            for s in decision.suppressed
        ],
        policy_version=decision.policy_version,
        model_version=decision.model_version,
    )


class CampaignHandlers(campaign_service_pb2_grpc.CampaignServiceServicer):
    def __init__(self, service: CampaignService) -> None:
        self.service = service

    async def Decide(self, request: campaign_service_pb2.DecideRequest,
                     context: grpc.aio.ServicerContext) -> campaign_service_pb2.DecideResponse:
        check_id(request.customer_id, "customer_id")
        channel = check_enum(request.context.channel, common_pb2.Channel, "context.channel", required=False)
        if not 0 <= request.max_offers <= MAX_OFFERS_LIMIT:
            violations = Violations()
            violations.add("max_offers", f"must be between 1 and {MAX_OFFERS_LIMIT} (0 means {DEFAULT_MAX_OFFERS})")
            violations.raise_if_any(reason="OUT_OF_RANGE")
        if request.context.partner_id:
            check_id(request.context.partner_id, "context.partner_id")
        if len(request.context.placement) > 128:
            violations = Violations()
            violations.add("context.placement", "must be at most 128 characters")
            violations.raise_if_any()
        decision_context = DecisionContext(
            channel=channel or common_pb2.CHANNEL_IN_APP,
            partner_id=request.context.partner_id,
            placement=request.context.placement,
            decision_time=_from_ts(request.context, "decision_time") or utcnow(),
        )
        decision = await self.service.decide(request.customer_id, decision_context,
                                             request.max_offers or DEFAULT_MAX_OFFERS)
        return decision_to_proto(decision)

    async def CreateOffer(self, request: campaign_service_pb2.CreateOfferRequest,
                          context: grpc.aio.ServicerContext) -> campaign_service_pb2.CreateOfferResponse:
        offer = offer_from_proto(request.offer)
        created = await self.service.create_offer(offer, key_for("CreateOffer", request))
        return campaign_service_pb2.CreateOfferResponse(offer=offer_to_proto(created))

    async def GetOffer(self, request: campaign_service_pb2.GetOfferRequest,
                       context: grpc.aio.ServicerContext) -> campaign_service_pb2.GetOfferResponse:
        offer = await self.service.get_offer(parse_name(request.name, "offers"))
        return campaign_service_pb2.GetOfferResponse(offer=offer_to_proto(offer))

    async def ListOffers(self, request: campaign_service_pb2.ListOffersRequest,
                         context: grpc.aio.ServicerContext) -> campaign_service_pb2.ListOffersResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint()
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = position.get("after") if position else None
        page = await self.service.list_offers(after_id=after if isinstance(after, str) else None, page_size=size)
        token = pagination.encode_page_token({"after": page.next_after_id}, fingerprint) if page.next_after_id else ""
        return campaign_service_pb2.ListOffersResponse(offers=[offer_to_proto(o) for o in page.offers],
                                                       next_page_token=token)
