"""Wires the risk service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.risk.v1 import risk_service_pb2, risk_service_pb2_grpc
from services.platform.server import Runtime, ServiceDefinition
from services.risk import fraud
from services.risk.config import EXTRA_SETTINGS, contact_policy_from, quiet_hours_from, validate
from services.risk.db import RiskUnitOfWork
from services.risk.handlers import RiskHandlers
from services.risk.service import RiskService

SERVICE_NAMES = (risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name,)


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    service = RiskService(
        lambda: RiskUnitOfWork(runtime.database), quiet_hours=quiet_hours_from(runtime.settings.extra),
        policy=contact_policy_from(runtime.settings.extra), metrics=runtime.metrics,
        fraud_policy=fraud.policy_from(runtime.settings.extra),
    )
    runtime.components["service"] = service
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(RiskHandlers(service), server)


DEFINITION = ServiceDefinition(
    name="risk",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    # Reached later for data-subject requests (erasure, export); declared now so *_SERVICE_ADDR is configured.
    dependencies=("profile", "campaign", "gateway"),
    extra_settings=EXTRA_SETTINGS,
    validate_settings=lambda settings: validate(settings.extra),
)
