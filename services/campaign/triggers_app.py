"""Wiring of triggered campaigns, the global holdout, the fairness gate of approval and campaign reports into the
campaign service (called from app.py's register): settings, TriggerService's and CampaignReportService's
handlers, the feed-following loop."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from lodestar.campaign.v1 import campaign_report_pb2, campaign_report_pb2_grpc, trigger_pb2, trigger_pb2_grpc
from services.campaign.campaign_report import CampaignReports
from services.campaign.clients import ProfileClient, SegmentClient
from services.campaign.composition_client import ProfileComposition
from services.campaign.db import CampaignUnitOfWork
from services.campaign.fairness_gate import THRESHOLD_SETTING, FairnessGate, parse_threshold
from services.campaign.feed_client import EventFeedClient
from services.campaign.holdout import SETTING as HOLDOUT_SHARE
from services.campaign.holdout import GlobalHoldout, parse_share
from services.campaign.report_handlers import ReportHandlers
from services.campaign.trigger_handlers import TriggerHandlers
from services.campaign.triggers import TriggerService
from services.platform.config import ConfigError, ServiceSettings
from services.platform.server import Runtime

log = logging.getLogger("lodestar.campaign.triggers")

TRIGGER_SERVICE_NAMES = (trigger_pb2.DESCRIPTOR.services_by_name["TriggerService"].full_name,
                         campaign_report_pb2.DESCRIPTOR.services_by_name["CampaignReportService"].full_name)
TRIGGER_POLL = "CAMPAIGN_TRIGGER_POLL_SECONDS"
DEFAULT_TRIGGER_POLL_SECONDS = 1.0
TRIGGER_SETTINGS = (HOLDOUT_SHARE, TRIGGER_POLL, THRESHOLD_SETTING)


def check_trigger_settings(settings: ServiceSettings) -> None:
    try:
        parse_share(settings.extra.get(HOLDOUT_SHARE))
    except ValueError:
        raise ConfigError(f"{HOLDOUT_SHARE} must be a share between 0 and 0.5, got "
                          f"{settings.extra.get(HOLDOUT_SHARE)!r}") from None
    try:
        parse_threshold(settings.extra.get(THRESHOLD_SETTING))
    except ValueError:
        raise ConfigError(f"{THRESHOLD_SETTING} must be a number in (0, 1], got "
                          f"{settings.extra.get(THRESHOLD_SETTING)!r}") from None
    raw = settings.extra.get(TRIGGER_POLL)
    if raw is not None:
        try:
            value = float(raw)
        except ValueError:
            value = -1.0
        if not 0.05 <= value <= 3600:
            raise ConfigError(f"{TRIGGER_POLL} must be a number of seconds between 0.05 and 3600, got {raw!r}")


def wire_triggers(server: grpc.aio.Server, runtime: Runtime, service: Any, launches: Any, *,
                  profile_address: str) -> TriggerService:
    holdout = GlobalHoldout(parse_share(runtime.settings.extra.get(HOLDOUT_SHARE)))
    service.holdout = holdout  # Decide: members get no offer (service.py)
    launches.holdout = holdout  # batch launches: members are recorded, never candidates (launch.py)
    feed = EventFeedClient(profile_address, tracer_provider=runtime.tracer_provider, default_timeout=10.0)
    runtime.closers.append(feed.close)
    triggers = TriggerService(lambda: CampaignUnitOfWork(runtime.database), feed, service, holdout=holdout)
    runtime.components["triggers"] = triggers
    runtime.components["holdout"] = holdout
    trigger_pb2_grpc.add_TriggerServiceServicer_to_server(TriggerHandlers(triggers), server)
    # Every replica runs it; one holds the feed's lease at a time.
    runtime.run_in_background("trigger feed", triggers.step, float(runtime.settings.extra.get(
        TRIGGER_POLL, DEFAULT_TRIGGER_POLL_SECONDS)))
    return triggers


def wire_reports(server: grpc.aio.Server, runtime: Runtime, lifecycle: Any, segments: SegmentClient,
                 profile: ProfileClient) -> CampaignReports:
    """The fairness gate of ApproveCampaign and CampaignReportService."""
    threshold = parse_threshold(runtime.settings.extra.get(THRESHOLD_SETTING))
    composition = ProfileComposition(segments, profile)
    lifecycle.fairness = FairnessGate(composition, threshold)
    reports = CampaignReports(lambda: CampaignUnitOfWork(runtime.database), composition, threshold=threshold)
    runtime.components["reports"] = reports
    campaign_report_pb2_grpc.add_CampaignReportServiceServicer_to_server(ReportHandlers(reports), server)
    return reports
