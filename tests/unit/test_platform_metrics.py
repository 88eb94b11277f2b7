"""The platform's metric instruments and the MeterProvider configuration (no server, no network)."""

from datetime import UTC, date, datetime

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from lodestar.common.v1 import common_pb2 as c
from services.campaign.domain import CustomerSnapshot, DecisionContext, Offer
from services.campaign.service import CampaignService
from services.platform.config import ConfigError
from services.platform.telemetry import (
    METRIC_DELIVERY_FAILURES,
    METRIC_OUTBOX_DEPTH,
    METRIC_RPC_DURATION,
    METRIC_RPC_REQUESTS,
    METRIC_SCORING_DURATION,
    METRIC_SCREENING_DENIALS,
    METRICS,
    ServiceMetrics,
    create_meter_provider,
    metrics_exporter_names,
)


def points(reader: InMemoryMetricReader, name: str) -> list:
    data = reader.get_metrics_data()
    found = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


@pytest.fixture
def reader_and_metrics():
    reader = InMemoryMetricReader()
    setup = create_meter_provider("test", env={}, readers=[reader])
    yield reader, ServiceMetrics(setup.provider)
    setup.shutdown()


def test_record_rpc_counts_by_method_and_code_and_records_latency(reader_and_metrics):
    reader, metrics = reader_and_metrics
    metrics.record_rpc("/lodestar.campaign.v1.CampaignService/Decide", "OK", 12.5)
    metrics.record_rpc("/lodestar.campaign.v1.CampaignService/Decide", "OK", 7.5)
    metrics.record_rpc("/lodestar.campaign.v1.CampaignService/Decide", "NOT_FOUND", 1.0)
    counts = {(p.attributes["rpc.method"], p.attributes["rpc.grpc.status"]): p.value
              for p in points(reader, METRIC_RPC_REQUESTS)}
    assert counts == {("Decide", "OK"): 2, ("Decide", "NOT_FOUND"): 1}
    assert {p.attributes["rpc.service"] for p in points(reader, METRIC_RPC_REQUESTS)} == {
        "lodestar.campaign.v1.CampaignService"}
    ok = next(p for p in points(reader, METRIC_RPC_DURATION) if p.attributes["rpc.grpc.status"] == "OK")
    assert (ok.count, ok.sum, ok.min, ok.max) == (2, 20.0, 7.5, 12.5)
    assert tuple(ok.explicit_bounds) == METRICS[METRIC_RPC_DURATION].buckets


def test_domain_instruments_carry_their_declared_attributes(reader_and_metrics):
    reader, metrics = reader_and_metrics
    metrics.record_screening_denial("NO_CONSENT", "SMS")
    metrics.record_screening_denial("NO_CONSENT", "SMS", count=2)
    metrics.record_screening_denial("QUIET_HOURS", "SMS")
    metrics.set_outbox_depth(7, "EMAIL")
    metrics.set_outbox_depth(3, "EMAIL")
    metrics.record_delivery_failure("SMS", "PROVIDER_TIMEOUT")
    metrics.record_scoring(0.4, "heuristic-1")
    denials = {p.attributes["lodestar.risk.denial_reason"]: p.value for p in points(reader, METRIC_SCREENING_DENIALS)}
    assert denials == {"NO_CONSENT": 3, "QUIET_HOURS": 1}
    [depth] = points(reader, METRIC_OUTBOX_DEPTH)
    assert (dict(depth.attributes), depth.value) == ({"lodestar.channel": "EMAIL"}, 3)
    [failure] = points(reader, METRIC_DELIVERY_FAILURES)
    assert dict(failure.attributes) == {"lodestar.channel": "SMS",
                                        "lodestar.delivery.failure_reason": "PROVIDER_TIMEOUT"}
    [scoring] = points(reader, METRIC_SCORING_DURATION)
    assert dict(scoring.attributes) == {"lodestar.campaign.model_version": "heuristic-1"}
    for name in (METRIC_SCREENING_DENIALS, METRIC_OUTBOX_DEPTH, METRIC_DELIVERY_FAILURES, METRIC_SCORING_DURATION):
        for point in points(reader, name):
            assert set(point.attributes) <= set(METRICS[name].attributes), name


def test_named_instruments_are_shared_and_kinds_checked(reader_and_metrics):
    _, metrics = reader_and_metrics
    assert metrics.counter(METRIC_SCREENING_DENIALS) is metrics.screening_denials
    assert metrics.counter("lodestar.profile.imports") is metrics.counter("lodestar.profile.imports")
    with pytest.raises(ValueError, match="is a counter"):
        metrics.histogram(METRIC_SCREENING_DENIALS)


def test_prometheus_names():
    assert METRICS[METRIC_RPC_REQUESTS].prometheus_name == "lodestar_rpc_server_requests_total"
    assert METRICS[METRIC_RPC_DURATION].prometheus_name == "lodestar_rpc_server_duration_milliseconds"
    assert METRICS[METRIC_OUTBOX_DEPTH].prometheus_name == "lodestar_campaign_outbox_depth"


@pytest.mark.parametrize(("env", "expected"), [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ["otlp"]),
    ({"PROMETHEUS_PORT": "9464"}, ["prometheus"]),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "PROMETHEUS_PORT": "9464"}, ["otlp", "prometheus"]),
    ({"OTEL_METRICS_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}, []),
    ({"OTEL_METRICS_EXPORTER": "console, prometheus"}, ["console", "prometheus"]),
])
def test_exporters_from_the_standard_variables(env, expected):
    assert metrics_exporter_names(env) == expected


def test_bad_metrics_configuration_names_the_variable():
    with pytest.raises(ConfigError, match="OTEL_METRICS_EXPORTER: unknown exporter 'statsd'"):
        metrics_exporter_names({"OTEL_METRICS_EXPORTER": "statsd"})
    with pytest.raises(ConfigError, match="PROMETHEUS_PORT is required"):
        create_meter_provider("test", env={"OTEL_METRICS_EXPORTER": "prometheus"})
    with pytest.raises(ConfigError, match="PROMETHEUS_PORT must be an integer"):
        create_meter_provider("test", env={"PROMETHEUS_PORT": "nine"})


def test_no_exporter_configured_means_no_readers():
    setup = create_meter_provider("test", env={})
    assert setup.exporters == [] and setup.prometheus is None
    setup.shutdown()


async def test_campaign_records_scoring_latency_once_per_decision(reader_and_metrics):
    reader, metrics = reader_and_metrics
    service = CampaignService(lambda: None, None, None, metrics=metrics)  # type: ignore[arg-type]
    customer = CustomerSnapshot("c-1", date(1988, 4, 2), "CN-31", "Asia/Shanghai", {"income": "15000"})
    offers = [Offer(f"o-{i}", f"O{i}", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 100.0, 1.0) for i in range(3)]
    context = DecisionContext(c.CHANNEL_SMS, "", "", datetime(2026, 6, 1, 12, tzinfo=UTC))
    await service._score(customer, offers[:2], context)  # the two offers risk allowed: one measurement
    await service._score(customer, [], context)  # nothing scored: nothing recorded
    [scoring] = points(reader, METRIC_SCORING_DURATION)
    assert scoring.count == 1
    assert dict(scoring.attributes) == {"lodestar.campaign.model_version": service.model.version}


async def test_risk_counts_screening_refusals_by_reason_and_channel(reader_and_metrics, tmp_path):
    from datetime import date

    from services.platform import migrations
    from services.platform.db import Database
    from services.platform.telemetry import METRIC_SCREENING_DENIALS
    from services.risk.app import DEFINITION as RISK
    from services.risk.db import RiskUnitOfWork
    from services.risk.domain import Channel, CustomerFacts, OfferSubject, ProductType, ScreeningRequest
    from services.risk.service import RiskService

    reader, metrics = reader_and_metrics
    url = f"sqlite+aiosqlite:///{tmp_path}/risk.db"
    migrations.upgrade(url, RISK.migrations)
    database = Database.from_url(url)
    service = RiskService(lambda: RiskUnitOfWork(database), metrics=metrics)
    minor = CustomerFacts(birth_date=date(2015, 1, 1), time_zone="Asia/Shanghai", region="CN-31", risk_tolerance=5)
    offers = (OfferSubject("card", ProductType.CREDIT_CARD, 2), OfferSubject("deposit", ProductType.DEPOSIT, 1))
    # No consent on SMS (both offers), and the credit card is refused to a minor.
    await service.screen(ScreeningRequest("c-1", Channel.SMS, datetime(2026, 6, 1, 4, tzinfo=UTC), minor, offers))
    await database.dispose()
    counts = {(p.attributes["lodestar.risk.denial_reason"], p.attributes["lodestar.channel"]): p.value
              for p in points(reader, METRIC_SCREENING_DENIALS)}
    assert counts == {("CONSENT_MISSING", "SMS"): 2, ("UNDERAGE", "SMS"): 1}
