"""Wires the risk service into the shared server."""

from __future__ import annotations

from pathlib import Path

import grpc

from lodestar.risk.v1 import (
    aml_pb2,
    aml_pb2_grpc,
    data_subject_request_pb2,
    data_subject_request_pb2_grpc,
    risk_service_pb2,
    risk_service_pb2_grpc,
)
from services.platform.config import ConfigError
from services.platform.server import Runtime, ServiceDefinition
from services.risk import aml, dsr, fraud, rules
from services.risk.aml_handlers import AmlHandlers
from services.risk.clients import DataSubjectClient, ProfileEventsClient
from services.risk.config import EXTRA_SETTINGS, contact_policy_from, quiet_hours_from, validate
from services.risk.data_subject import RiskDataSubject
from services.risk.db import RiskUnitOfWork
from services.risk.handlers import RiskHandlers
from services.risk.service import RiskService

SERVICE_NAMES = (risk_service_pb2.DESCRIPTOR.services_by_name["RiskService"].full_name,
                 aml_pb2.DESCRIPTOR.services_by_name["AmlService"].full_name,
                 data_subject_request_pb2.DESCRIPTOR.services_by_name["DataSubjectRequestService"].full_name)


def student_rules_from(extra: dict[str, str]) -> rules.StudentRules:
    """RISK_STUDENT_RULES (rules.py, rule 9); a bad value stops the service at start-up."""
    try:
        return rules.parse_student_rules(extra.get(rules.STUDENT_RULES_SETTING))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _validate(extra: dict[str, str]) -> None:
    validate(extra)
    student_rules_from(extra)
    dsr.settings_from(extra)


def _profile_events(runtime: Runtime) -> ProfileEventsClient:
    """profile's event feed, for event-based credit labels (TrainCreditModelRequest.event_label)."""
    client = ProfileEventsClient(runtime.settings.dependencies["profile"], tracer_provider=runtime.tracer_provider)
    runtime.closers.append(client.close)
    return client


async def register(server: grpc.aio.Server, runtime: Runtime) -> None:
    service = RiskService(
        lambda: RiskUnitOfWork(runtime.database), quiet_hours=quiet_hours_from(runtime.settings.extra),
        policy=contact_policy_from(runtime.settings.extra), metrics=runtime.metrics,
        fraud_policy=fraud.policy_from(runtime.settings.extra),
        student_rules=student_rules_from(runtime.settings.extra),
        label_events=_profile_events(runtime).events,
        dsr_hash_key=dsr.settings_from(runtime.settings.extra).hash_key,  # erased customers stay suppressed
    )
    runtime.components["service"] = service
    risk_service_pb2_grpc.add_RiskServiceServicer_to_server(RiskHandlers(service), server)
    monitor = aml.AmlMonitor(lambda: RiskUnitOfWork(runtime.database),
                             hash_key=fraud.policy_from(runtime.settings.extra).hash_key)
    runtime.components["aml"] = monitor
    aml_pb2_grpc.add_AmlServiceServicer_to_server(AmlHandlers(monitor), server)
    await _register_dsr(server, runtime)


async def _register_dsr(server: grpc.aio.Server, runtime: Runtime) -> None:
    """Data-subject requests (dsr.py): the other services' DataSubjectService, risk's own data, the worker."""
    settings = dsr.settings_from(runtime.settings.extra)
    deps = runtime.settings.dependencies
    targets: dict[str, dsr.Target] = {}
    for name in ("profile", "campaign", "gateway"):
        client = DataSubjectClient(name, deps[name], tracer_provider=runtime.tracer_provider,
                                   admin_token=settings.gateway_admin_token if name == "gateway" else "")
        runtime.closers.append(client.close)
        targets[name] = client
    targets["risk"] = dsr.LocalTarget(RiskDataSubject(lambda: RiskUnitOfWork(runtime.database), settings.hash_key))
    requests = dsr.DsrService(lambda: RiskUnitOfWork(runtime.database), targets, settings,
                              tracer=runtime.tracer_provider.get_tracer("lodestar.risk.dsr"))
    runtime.components["dsr"] = requests
    data_subject_request_pb2_grpc.add_DataSubjectRequestServiceServicer_to_server(
        dsr.DataSubjectRequestHandlers(requests), server)
    runtime.run_in_background("data-subject requests", requests.step, requests.settings.poll_seconds)


DEFINITION = ServiceDefinition(
    name="risk",
    service_names=SERVICE_NAMES,
    migrations=Path(__file__).parent / "migrations",
    register=register,
    # Data-subject requests (dsr.py) reach every other service's DataSubjectService.
    dependencies=("profile", "campaign", "gateway"),
    extra_settings=(*EXTRA_SETTINGS, rules.STUDENT_RULES_SETTING, *dsr.DSR_SETTINGS),
    validate_settings=lambda settings: _validate(settings.extra),
)
