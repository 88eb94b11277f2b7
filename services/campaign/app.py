"""Wires the campaign service into the shared server."""

from __future__ import annotations

import logging
from pathlib import Path

import grpc

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc
from lodestar.common.v1 import data_subject_pb2, data_subject_pb2_grpc
from services.campaign.clients import ProfileClient, RiskClient, SegmentClient
from services.campaign.data_subject import CampaignDataSubject
from services.campaign.db import CampaignUnitOfWork
from services.campaign.delivery_handlers import (
    DELIVERY_SERVICE_NAMES,
    DELIVERY_SETTINGS,
    check_delivery_settings,
    wire_delivery,
)
from services.campaign.handlers import CampaignHandlers
from services.campaign.launch import LaunchService
from services.campaign.learning import LearningService
from services.campaign.lifecycle import CampaignLifecycle
from services.campaign.personalisation_app import PERSONALISATION_SERVICE_NAMES, wire_personalisation
from services.campaign.response_handlers import RESPONSE_SERVICE_NAMES, RESPONSE_SETTINGS, wire_responses
from services.campaign.response_handlers import check_settings as check_response_settings
from services.campaign.service import CampaignService
from services.campaign.triggers_app import (
    TRIGGER_SERVICE_NAMES,
    TRIGGER_SETTINGS,
    check_trigger_settings,
    wire_reports,
    wire_triggers,
)
from services.platform.config import ConfigError, ServiceSettings
from services.platform.data_subject import DataSubjectHandlers
from services.platform.server import Runtime, ServiceDefinition

log = logging.getLogger("lodestar.campaign")

# Every gRPC service this process serves (health and reflection list them), with the module that wires it.
SERVICE_NAMES: tuple[str, ...] = (
    campaign_service_pb2.DESCRIPTOR.services_by_name["CampaignService"].full_name,
    data_subject_pb2.DESCRIPTOR.services_by_name["DataSubjectService"].full_name,  # platform/data_subject.py
    *TRIGGER_SERVICE_NAMES,  # TriggerService, CampaignReportService (triggers_app.py)
    *RESPONSE_SERVICE_NAMES,  # ResponseService (response_handlers.py)
    *PERSONALISATION_SERVICE_NAMES,  # RecommendationService, PricingService (personalisation_app.py)
    *DELIVERY_SERVICE_NAMES,  # DeliveryService and the dispatcher (delivery_handlers.py)
)


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    deps = runtime.settings.dependencies
    profile = ProfileClient(deps["profile"], tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    risk = RiskClient(deps["risk"], tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    segments = SegmentClient(deps["profile"], tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    batch_risk = RiskClient(deps["risk"], tracer_provider=runtime.tracer_provider, default_timeout=1.0)
    runtime.closers += [profile.close, risk.close, segments.close, batch_risk.close]
    # Profile's behaviour features, point in time: joined into training rows as of their contact time, and asked
    # as of the decision time when a champion model reads them (learning.py).
    learning = LearningService(lambda: CampaignUnitOfWork(runtime.database), profile, features=profile)
    service = CampaignService(lambda: CampaignUnitOfWork(runtime.database), profile, risk,
                              metrics=runtime.metrics, champions=learning, features=profile)
    lifecycle = CampaignLifecycle(lambda: CampaignUnitOfWork(runtime.database), content=risk)
    runtime.components["service"] = service
    runtime.components["lifecycle"] = lifecycle
    runtime.components["learning"] = learning
    launches = LaunchService(lambda: CampaignUnitOfWork(runtime.database), segments, batch_risk, champions=learning,
                             partition_size=int(runtime.settings.extra.get(PARTITION_SIZE, DEFAULT_PARTITION_SIZE)),
                             features=profile, concurrency=int(runtime.settings.extra.get(
                                 LAUNCH_CONCURRENCY, DEFAULT_LAUNCH_CONCURRENCY)))
    runtime.components["launches"] = launches
    runtime.closers.append(launches.stop)  # closers run last-first: before the clients its partitions use close
    # Responses, Thompson sampling in Decide and launches, the learning loop (response_handlers.py).
    wire_responses(server, runtime, service, launches, learning)
    # Cross-sell, churn and pricing; their Decide hook (personalisation_app.py).
    wire_personalisation(server, runtime, service, deps["profile"], deps["risk"])
    # Global holdout, launch cancellation, triggered campaigns (triggers_app.py).
    wire_triggers(server, runtime, service, launches, profile_address=deps["profile"])
    wire_reports(server, runtime, lifecycle, segments, profile)
    campaign_service_pb2_grpc.add_CampaignServiceServicer_to_server(
        CampaignHandlers(service, lifecycle, learning, launches), server)
    # Outbox -> channel adapters, status callbacks, dead letters (delivery_handlers.py, dispatch.py).
    wire_delivery(server, runtime)
    # Data-subject requests (access, erasure), driven by risk (data_subject.py).
    data_subject_pb2_grpc.add_DataSubjectServiceServicer_to_server(
        DataSubjectHandlers(CampaignDataSubject(runtime.database)), server)
    # Every replica runs both; transitions and launch steps are claimed through the database.
    runtime.run_in_background("campaign scheduler", lifecycle.advance_schedules, float(runtime.settings.extra.get(
        SCHEDULER_INTERVAL, DEFAULT_SCHEDULER_INTERVAL_SECONDS)))
    runtime.run_in_background("launch worker", launches.step, float(runtime.settings.extra.get(
        LAUNCH_INTERVAL, DEFAULT_LAUNCH_INTERVAL_SECONDS)))


SCHEDULER_INTERVAL = "CAMPAIGN_SCHEDULER_INTERVAL_SECONDS"
DEFAULT_SCHEDULER_INTERVAL_SECONDS = 5.0


LAUNCH_INTERVAL = "CAMPAIGN_LAUNCH_POLL_SECONDS"
DEFAULT_LAUNCH_INTERVAL_SECONDS = 1.0
# Members per launch partition: the unit replicas claim (and redo after a crash).
PARTITION_SIZE = "CAMPAIGN_LAUNCH_PARTITION_SIZE"
DEFAULT_PARTITION_SIZE = 5000
# Partitions one replica selects side by side (one's scoring or calls overlap another's Python).
LAUNCH_CONCURRENCY = "CAMPAIGN_LAUNCH_CONCURRENCY"
DEFAULT_LAUNCH_CONCURRENCY = 2


def _check_settings(settings: ServiceSettings) -> None:
    check_trigger_settings(settings)
    check_response_settings(settings)
    check_delivery_settings(settings)
    for name in (SCHEDULER_INTERVAL, LAUNCH_INTERVAL):
        raw = settings.extra.get(name)
        if raw is None:
            continue
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.05 <= value <= 3600:
            raise ConfigError(f"{name} must be a number of seconds between 0.05 and 3600, got {raw!r}")
    raw = settings.extra.get(PARTITION_SIZE)
    if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= 10_000):
        raise ConfigError(f"{PARTITION_SIZE} must be a whole number from 1 to 10000, got {raw!r}")
    raw = settings.extra.get(LAUNCH_CONCURRENCY)
    if raw is not None and (not raw.isdigit() or not 1 <= int(raw) <= 8):
        raise ConfigError(f"{LAUNCH_CONCURRENCY} must be a whole number from 1 to 8, got {raw!r}")


DEFINITION = ServiceDefinition(
    name="campaign",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    dependencies=("profile", "risk"),
    extra_settings=(*TRIGGER_SETTINGS, *RESPONSE_SETTINGS, *DELIVERY_SETTINGS, SCHEDULER_INTERVAL, LAUNCH_INTERVAL,
                    PARTITION_SIZE, LAUNCH_CONCURRENCY),
    validate_settings=_check_settings,
)
