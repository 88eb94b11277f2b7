"""Wires the profile service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
from services.platform.server import Runtime, ServiceDefinition
from services.profile.db import ProfileUnitOfWork
from services.profile.handlers import ProfileHandlers
from services.profile.service import ProfileService

SERVICE_NAMES = (profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,)


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    service = ProfileService(lambda: ProfileUnitOfWork(runtime.database))
    runtime.components["service"] = service
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileHandlers(service), server)


DEFINITION = ServiceDefinition(
    name="profile",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
)
