"""Wires the campaign service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc
from services.campaign.clients import ProfileClient, RiskClient
from services.campaign.db import CampaignUnitOfWork
from services.campaign.handlers import CampaignHandlers
from services.campaign.service import CampaignService
from services.platform.server import Runtime, ServiceDefinition

SERVICE_NAMES = (campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,)


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    deps = runtime.settings.dependencies
    profile = ProfileClient(deps["profile"], tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    risk = RiskClient(deps["risk"], tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    runtime.closers += [profile.close, risk.close]
    service = CampaignService(lambda: CampaignUnitOfWork(runtime.database), profile, risk)
    runtime.components["service"] = service
    campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server(CampaignHandlers(service), server)


DEFINITION = ServiceDefinition(
    name="campaign",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    dependencies=("profile", "risk"),
)
