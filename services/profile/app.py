"""Wires the profile service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.profile.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    profile_service_pb2,
    profile_service_pb2_grpc,
    segment_service_pb2,
    segment_service_pb2_grpc,
)
from services.platform.config import env_bool
from services.platform.server import Runtime, ServiceDefinition
from services.profile.db import ProfileUnitOfWork
from services.profile.event_handlers import EventHandlers
from services.profile.events import EventsService
from services.profile.events_db import EventsUnitOfWork
from services.profile.handlers import ProfileHandlers
from services.profile.segment_handlers import SegmentHandlers
from services.profile.segments import SegmentsService
from services.profile.segments_db import SegmentsUnitOfWork
from services.profile.service import ProfileService

SERVICE_NAMES = (
    profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    segment_service_pb2.DESCRIPTOR.services_by_name["SegmentService"].full_name,
)
# Attributes the registry marks as personal data may appear in segment conditions and exports only when true.
ALLOW_PII_IN_SEGMENTS = "PROFILE_ALLOW_PII_IN_SEGMENTS"


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    service = ProfileService(lambda: ProfileUnitOfWork(runtime.database))
    runtime.components["service"] = service
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileHandlers(service), server)
    events = EventsService(lambda: EventsUnitOfWork(runtime.database),
                           tracer=runtime.tracer_provider.get_tracer("lodestar.profile.events"))
    runtime.components["events"] = events
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventHandlers(events), server)
    segments = SegmentsService(lambda: SegmentsUnitOfWork(runtime.database),
                               allow_pii=env_bool(runtime.settings.extra, ALLOW_PII_IN_SEGMENTS, False))
    runtime.components["segments"] = segments
    segment_service_pb2_grpc.add_SegmentServiceServicer_to_server(SegmentHandlers(segments), server)


DEFINITION = ServiceDefinition(
    name="profile",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    extra_settings=(ALLOW_PII_IN_SEGMENTS,),
    validate_settings=lambda settings: env_bool(settings.extra, ALLOW_PII_IN_SEGMENTS, False),
)
