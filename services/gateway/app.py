"""Wires the gateway service into the shared server."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from lodestar.common.v1 import data_subject_pb2, data_subject_pb2_grpc
from lodestar.gateway.v1 import (
    gateway_admin_service_pb2,
    gateway_admin_service_pb2_grpc,
    partner_service_pb2,
    partner_service_pb2_grpc,
)
from services.gateway import forwarder
from services.gateway.clients import CampaignClient, ResponsesClient
from services.gateway.data_subject import DataSubjectHandlers, GatewayDataSubject
from services.gateway.db import GatewayUnitOfWork
from services.gateway.handlers import AdminHandlers, PartnerHandlers
from services.gateway.service import GatewayService
from services.platform.server import Runtime, ServiceDefinition

log = logging.getLogger("lodestar.gateway")

SERVICE_NAMES = (
    partner_service_pb2.DESCRIPTOR.services_by_name["PartnerService"].full_name,
    gateway_admin_service_pb2.DESCRIPTOR.services_by_name["GatewayAdminService"].full_name,
    data_subject_pb2.DESCRIPTOR.services_by_name["DataSubjectService"].full_name,
)

# The bank-side admin token; empty or unset disables GatewayAdminService (PERMISSION_DENIED ADMIN_API_DISABLED).
# (The name of a variable, not a secret.)
ADMIN_TOKEN_SETTING = "GATEWAY_ADMIN_TOKEN"  # noqa: S105  # nosec B105


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    settings = runtime.settings
    campaign = CampaignClient(settings.dependencies["campaign"], tracer_provider=runtime.tracer_provider)
    runtime.closers.append(campaign.close)
    admin_token = settings.extra.get(ADMIN_TOKEN_SETTING, "")
    service = GatewayService(lambda: GatewayUnitOfWork(runtime.database), campaign, admin_token=admin_token)
    runtime.components["service"] = service
    runtime.components["campaign"] = campaign
    # Leads and conversions forwarded to campaign's responses intake (forwarder.py).
    responses = ResponsesClient(settings.dependencies["campaign"], tracer_provider=runtime.tracer_provider)
    runtime.closers.append(responses.close)
    forwarder.start_forwarder(runtime, responses)
    partner_service_pb2_grpc.add_PartnerServiceServicer_to_server(PartnerHandlers(service), server)
    gateway_admin_service_pb2_grpc.add_GatewayAdminServiceServicer_to_server(AdminHandlers(service), server)
    # Data-subject requests (access, erasure), driven by risk with the admin token (data_subject.py).
    data_subject_pb2_grpc.add_DataSubjectServiceServicer_to_server(
        DataSubjectHandlers(GatewayDataSubject(runtime.database), admin_token), server)
    log.info("admin API %s", "enabled" if admin_token else "disabled", extra={"admin_api": bool(admin_token)})


DEFINITION = ServiceDefinition(
    name="gateway",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    dependencies=("campaign",),
    extra_settings=(ADMIN_TOKEN_SETTING, forwarder.INTERVAL_SETTING),
    validate_settings=forwarder.check_settings,
)
