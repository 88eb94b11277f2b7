"""Wires the profile service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.common.v1 import data_subject_pb2, data_subject_pb2_grpc
from lodestar.profile.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    profile_service_pb2,
    profile_service_pb2_grpc,
    segment_service_pb2,
    segment_service_pb2_grpc,
    tag_service_pb2,
    tag_service_pb2_grpc,
)
from services.platform.config import ConfigError, ServiceSettings, env_bool
from services.platform.data_subject import DataSubjectHandlers
from services.platform.server import Runtime, ServiceDefinition
from services.profile.data_subject import ProfileDataSubject
from services.profile.db import ProfileUnitOfWork
from services.profile.event_feed import EventFeed, EventHandlersWithFeed
from services.profile.events import EventsService
from services.profile.events_db import EventsUnitOfWork
from services.profile.handlers import ProfileHandlers
from services.profile.pii import PII_SETTINGS, pii_keyring
from services.profile.segment_handlers import SegmentHandlers
from services.profile.segments import SegmentsService
from services.profile.segments_db import SegmentsUnitOfWork
from services.profile.service import ProfileService
from services.profile.tag_handlers import TagHandlers
from services.profile.tag_job import TagsService, TagsUnitOfWork

SERVICE_NAMES = (
    profile_service_pb2.DESCRIPTOR.services_by_name["ProfileService"].full_name,
    event_service_pb2.DESCRIPTOR.services_by_name["EventService"].full_name,
    segment_service_pb2.DESCRIPTOR.services_by_name["SegmentService"].full_name,
    tag_service_pb2.DESCRIPTOR.services_by_name["TagService"].full_name,
    data_subject_pb2.DESCRIPTOR.services_by_name["DataSubjectService"].full_name,
)
# Attributes the registry marks as personal data may appear in segment conditions and exports only when true.
# Since PII values are encrypted at rest (pii.py) no SQL can match them, so "true" is refused at start-up rather
# than letting such a condition silently match no one.
ALLOW_PII_IN_SEGMENTS = "PROFILE_ALLOW_PII_IN_SEGMENTS"


def _check_settings(settings: ServiceSettings) -> None:
    if env_bool(settings.extra, ALLOW_PII_IN_SEGMENTS, False):
        raise ConfigError(f"{ALLOW_PII_IN_SEGMENTS}=true is no longer possible: attribute values flagged PII are "
                          "encrypted at rest (docs/pii.md) and cannot be matched by a segment condition; unset it")


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    # PII attribute values are encrypted at rest under PROFILE_PII_KEYS (pii.py, docs/pii.md).
    keyring = pii_keyring(runtime.settings)
    runtime.components["pii_keyring"] = keyring
    service = ProfileService(lambda: ProfileUnitOfWork(runtime.database, keyring))
    runtime.components["service"] = service
    profile_service_pb2_grpc.add_ProfileServiceServicer_to_server(ProfileHandlers(service), server)
    events = EventsService(lambda: EventsUnitOfWork(runtime.database),
                           tracer=runtime.tracer_provider.get_tracer("lodestar.profile.events"))
    runtime.components["events"] = events
    feed = EventFeed(lambda: EventsUnitOfWork(runtime.database))  # ListEventsSince (event_feed.py)
    runtime.components["event_feed"] = feed
    event_service_pb2_grpc.add_EventServiceServicer_to_server(EventHandlersWithFeed(events, feed), server)
    segments = SegmentsService(lambda: SegmentsUnitOfWork(runtime.database),
                               allow_pii=env_bool(runtime.settings.extra, ALLOW_PII_IN_SEGMENTS, False))
    runtime.components["segments"] = segments
    segment_service_pb2_grpc.add_SegmentServiceServicer_to_server(SegmentHandlers(segments), server)
    # Rule and external tags, the batch tag job (tag_job.py).
    tags = TagsService(lambda: TagsUnitOfWork(runtime.database),
                       allow_pii=env_bool(runtime.settings.extra, ALLOW_PII_IN_SEGMENTS, False),
                       tracer=runtime.tracer_provider.get_tracer("lodestar.profile.tags"))
    runtime.components["tags"] = tags
    tag_service_pb2_grpc.add_TagServiceServicer_to_server(TagHandlers(tags), server)
    runtime.closers.insert(0, tags.stop)
    # Data-subject requests (access, erasure), driven by risk (data_subject.py).
    data_subject_pb2_grpc.add_DataSubjectServiceServicer_to_server(
        DataSubjectHandlers(ProfileDataSubject(runtime.database, keyring)), server)


DEFINITION = ServiceDefinition(
    name="profile",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    extra_settings=(ALLOW_PII_IN_SEGMENTS, *PII_SETTINGS),
    validate_settings=_check_settings,
)
