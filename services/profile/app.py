"""Wires the profile service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.profile.v1 import event_service_pb2, event_service_pb2_grpc, profile_service_pb2, profile_service_pb2_grpc
from services.platform.server import Runtime, ServiceDefinition
from services.profile.db import ProfileUnitOfWork
from services.profile.event_handlers import EventHandlers
from services.profile.events import EventsService
from services.profile.events_db import EventsUnitOfWork
from services.profile.handlers import ProfileHandlers
from services.profile.service import ProfileService

SERVICE_NAMES = (
    profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
)


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    service = ProfileService(lambda: ProfileUnitOfWork(runtime.database))
    runtime.components["service"] = service
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileHandlers(service), server)
    events = EventsService(lambda: EventsUnitOfWork(runtime.database),
                           tracer=runtime.tracer_provider.get_tracer("lodestar.profile.events"))
    runtime.components["events"] = events
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventHandlers(events), server)


DEFINITION = ServiceDefinition(
    name="profile",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
)
