"""RPC metrics from the shared interceptor on a real aio server: in memory, and scraped over HTTP from the
Prometheus endpoint. A minimal service (raw-bytes echo) keeps this independent of any service's contract."""

import asyncio
import re
import urllib.request
from dataclasses import replace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from services.platform.errors import NotFound
from services.platform.server import start_service
from services.platform.telemetry import METRIC_RPC_DURATION, METRIC_RPC_REQUESTS, create_meter_provider
from services.profile.app import DEFINITION as PROFILE
from tests.conftest import tracer_provider_for

ECHO_SERVICE = "lodestar.test.v1.EchoService"


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    if request == b"missing":
        raise NotFound("thing", "things/missing")
    return request


async def _register(server, runtime):
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(ECHO_SERVICE, {
        "Echo": grpc.unary_unary_rpc_method_handler(_echo),
    }),))


DEFINITION = replace(PROFILE, service_names=(ECHO_SERVICE,), register=_register)


@pytest.fixture
async def serve(database_url, span_exporter):
    started = []

    async def _serve(meter_provider):
        settings = DEFINITION.settings_from_env({
            # No schema needed: the echo touches no table, so the test does not depend on profile's migrations.
            "DATABASE_URL": database_url("profile"), "GRPC_PORT": "0", "DRAIN_SECONDS": "0", "AUTO_MIGRATE": "false",
            "SHUTDOWN_GRACE_SECONDS": "1"})
        service = await start_service(DEFINITION, settings, tracer_provider_for("profile", span_exporter),
                                      meter_provider)
        started.append(service)
        return service

    yield _serve
    for service in started:
        await service.stop(drain_seconds=0, grace_seconds=0.5)


async def call(address: str, payload: bytes) -> grpc.StatusCode:
    async with grpc.aio.insecure_channel(address) as channel:
        echo = channel.unary_unary(f"/{ECHO_SERVICE}/Echo")
        try:
            assert await echo(payload, timeout=5) == payload
        except grpc.aio.AioRpcError as error:
            return error.code()
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return grpc.StatusCode.OK


def points(reader, name):
    return [p for rm in reader.get_metrics_data().resource_metrics for sm in rm.scope_metrics
            for m in sm.metrics if m.name == name for p in m.data.data_points]


async def test_each_rpc_is_counted_by_method_and_code_with_its_latency(serve):
    reader = InMemoryMetricReader()
    setup = create_meter_provider("profile", env={}, readers=[reader])
    try:
        service = await serve(setup.provider)
        assert await call(service.address, b"hello") == grpc.StatusCode.OK
        assert await call(service.address, b"hello") == grpc.StatusCode.OK
        assert await call(service.address, b"missing") == grpc.StatusCode.NOT_FOUND
        counts = {(p.attributes["rpc.service"], p.attributes["rpc.method"], p.attributes["rpc.grpc.status"]): p.value
                  for p in points(reader, METRIC_RPC_REQUESTS)}
        # Health checks (one per successful call above) are not counted.
        assert counts == {(ECHO_SERVICE, "Echo", "OK"): 2, (ECHO_SERVICE, "Echo", "NOT_FOUND"): 1}
        durations = {p.attributes["rpc.grpc.status"]: p for p in points(reader, METRIC_RPC_DURATION)}
        assert durations["OK"].count == 2 and durations["NOT_FOUND"].count == 1
        assert durations["OK"].sum > 0
    finally:
        setup.shutdown()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        return response.read().decode()


async def test_prometheus_endpoint_serves_the_rpc_metrics(serve):
    setup = create_meter_provider("profile", env={
        "OTEL_METRICS_EXPORTER": "prometheus", "PROMETHEUS_PORT": "0", "LISTEN_HOST": "127.0.0.1"})
    assert setup.prometheus is not None and setup.prometheus.port > 0
    try:
        service = await serve(setup.provider)
        assert await call(service.address, b"missing") == grpc.StatusCode.NOT_FOUND
        assert await call(service.address, b"x") == grpc.StatusCode.OK
        text = await asyncio.to_thread(scrape, setup.prometheus.port)
    finally:
        setup.shutdown()
    samples = {}
    for line in text.splitlines():
        match = re.match(r'^(lodestar_rpc_server_\w+)\{([^}]*)\} (\S+)$', line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2)))
            samples[(match.group(1), labels.get("rpc_method"), labels.get("rpc_grpc_status"), labels.get("le"))] = (
                float(match.group(3)))
    assert samples[("lodestar_rpc_server_requests_total", "Echo", "NOT_FOUND", None)] == 1.0
    assert samples[("lodestar_rpc_server_requests_total", "Echo", "OK", None)] == 1.0
    assert samples[("lodestar_rpc_server_duration_milliseconds_count", "Echo", "OK", None)] == 1.0
    assert samples[("lodestar_rpc_server_duration_milliseconds_bucket", "Echo", "OK", "+Inf")] == 1.0
    assert 'service_name="profile"' in text  # target_info carries the resource
    with pytest.raises(OSError):  # shut down with the provider
        await asyncio.to_thread(scrape, setup.prometheus.port)
