"""Wires cross-sell, churn and pricing (personalisation.py) into the campaign server: the RecommendationService and
PricingService servicers, the profile client they use, and the Decide hook (CampaignService.personalisation)."""

from __future__ import annotations

from typing import Any

import grpc

from lodestar.campaign.v1 import recommendation_service_pb2, recommendation_service_pb2_grpc
from services.campaign.db import CampaignUnitOfWork
from services.campaign.personalisation import PersonalisationService
from services.campaign.personalisation_clients import ProfileFacts, ProfileTagWriter, RiskPd
from services.campaign.personalisation_handlers import PricingHandlers, RecommendationHandlers
from services.platform.server import Runtime

PERSONALISATION_SERVICE_NAMES = tuple(
    recommendation_service_pb2.DESCRIPTOR.services_by_name[name].full_name
    for name in ("RecommendationService", "PricingService"))


def wire_personalisation(server: grpc.aio.Server, runtime: Runtime, campaign_service: Any,
                         profile_address: str, risk_address: str) -> PersonalisationService:
    facts = ProfileFacts(profile_address, tracer_provider=runtime.tracer_provider, default_timeout=2.0)
    risk = RiskPd(risk_address, tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    runtime.closers += [facts.close, risk.close]
    service = PersonalisationService(lambda: CampaignUnitOfWork(runtime.database), facts, ProfileTagWriter(facts),
                                     pd_source=risk)
    runtime.components["personalisation"] = service
    campaign_service.personalisation = service  # the Decide hook (service.py)
    recommendation_service_pb2_grpc.add_RecommendationServiceServicer_to_server(
        RecommendationHandlers(service), server)
    recommendation_service_pb2_grpc.add_PricingServiceServicer_to_server(PricingHandlers(service), server)
    return service
