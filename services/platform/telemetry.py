"""OpenTelemetry set-up, configured only by the standard OTEL_* variables (plus a local-file exporter).

OTEL_TRACES_EXPORTER: a comma-separated list of `otlp` (to OTEL_EXPORTER_OTLP_ENDPOINT), `console`, `file`
(JSON lines to LODESTAR_TRACE_FILE, what `make run` uses) or `none`. Unset: `otlp` when an OTLP endpoint is
configured, else `none`. OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the SDK itself.

Custom span attributes are namespaced `lodestar.*` and listed here, in one place. None may carry personal
data: customers appear only as `masking.customer_token`.

Metrics: `create_meter_provider` builds the service's MeterProvider from OTEL_METRICS_EXPORTER, a
comma-separated list of `otlp` (to the OTLP endpoint, every OTEL_METRIC_EXPORT_INTERVAL ms), `prometheus` (a
scrape endpoint on PROMETHEUS_PORT, bound to LISTEN_HOST), `console` or `none`. Unset: `otlp` when an OTLP
endpoint is configured, plus `prometheus` when PROMETHEUS_PORT is set; else none. Every instrument the platform
records is declared below (`METRICS`, with its attribute names) and recorded through `ServiceMetrics`; metric
attributes are bounded enumerations (RPC names, status codes, reason codes, channels), never identifiers.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from opentelemetry import metrics, trace
from opentelemetry.metrics import Counter, Histogram, MeterProvider, _Gauge
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)
from sqlalchemy.ext.asyncio import AsyncEngine

# The custom span attributes, all of them.
ATTR_CUSTOMER_TOKEN = "lodestar.customer_token"  # noqa: S105  # nosec B105 - an attribute name, no secret; masking.customer_token(), never the id itself
ATTR_ERROR_REASON = "lodestar.error.reason"  # ErrorInfo.reason of a failed RPC
ATTR_OFFERS_CONSIDERED = "lodestar.decision.offers_considered"
ATTR_OFFERS_RANKED = "lodestar.decision.offers_ranked"
ATTR_PARTNER_ID = "lodestar.partner_id"
ATTR_POLICY_VERSION = "lodestar.risk.policy_version"
ATTR_MODEL_VERSION = "lodestar.campaign.model_version"
ATTR_FEATURE_POINTS = "lodestar.features.points"  # (customer, as_of) points of one BatchGetFeatures: a count
ATTR_FEATURE_CUSTOMERS = "lodestar.features.customers"  # distinct customers among them: a count

# --- metrics ------------------------------------------------------------------------------------------------
# Metric attribute names (Prometheus turns the dots into underscores: rpc.grpc.status -> rpc_grpc_status).
ATTR_RPC_SERVICE = "rpc.service"  # "lodestar.campaign.v1.CampaignService"
ATTR_RPC_METHOD = "rpc.method"  # "Decide"
ATTR_RPC_STATUS = "rpc.grpc.status"  # the status code's name: "OK", "NOT_FOUND", ...
ATTR_DENIAL_REASON = "lodestar.risk.denial_reason"  # a risk reason code, e.g. "NO_CONSENT"
ATTR_CHANNEL = "lodestar.channel"  # a channel name, e.g. "SMS"
ATTR_FAILURE_REASON = "lodestar.delivery.failure_reason"  # a failure code, e.g. "PROVIDER_TIMEOUT"

# Metric names, all of them.
METRIC_RPC_REQUESTS = "lodestar.rpc.server.requests"
METRIC_RPC_DURATION = "lodestar.rpc.server.duration"
METRIC_SCORING_DURATION = "lodestar.campaign.scoring.duration"
METRIC_SCREENING_DENIALS = "lodestar.risk.screening.denials"
METRIC_OUTBOX_DEPTH = "lodestar.campaign.outbox.depth"
METRIC_DELIVERY_FAILURES = "lodestar.campaign.delivery.failures"

RPC_DURATION_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
SCORING_DURATION_BUCKETS_MS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100)


@dataclass(frozen=True)
class MetricSpec:
    name: str
    kind: Literal["counter", "histogram", "gauge"]
    unit: str
    description: str
    attributes: tuple[str, ...]
    buckets: tuple[float, ...] | None = None

    @property
    def prometheus_name(self) -> str:
        """The series name a Prometheus scrape shows (histograms add _bucket/_sum/_count to it)."""
        base = self.name.replace(".", "_")
        if self.unit == "ms":
            base += "_milliseconds"
        return base + "_total" if self.kind == "counter" else base


METRICS: dict[str, MetricSpec] = {spec.name: spec for spec in (
    MetricSpec(METRIC_RPC_REQUESTS, "counter", "{request}", "RPCs served, by method and status code",
               (ATTR_RPC_SERVICE, ATTR_RPC_METHOD, ATTR_RPC_STATUS)),
    MetricSpec(METRIC_RPC_DURATION, "histogram", "ms", "Server-side RPC latency, by method and status code",
               (ATTR_RPC_SERVICE, ATTR_RPC_METHOD, ATTR_RPC_STATUS), RPC_DURATION_BUCKETS_MS),
    MetricSpec(METRIC_SCORING_DURATION, "histogram", "ms", "Propensity scoring time of one decision",
               (ATTR_MODEL_VERSION,), SCORING_DURATION_BUCKETS_MS),
    MetricSpec(METRIC_SCREENING_DENIALS, "counter", "{denial}", "Offers denied by risk screening, by reason code",
               (ATTR_DENIAL_REASON, ATTR_CHANNEL)),
    MetricSpec(METRIC_OUTBOX_DEPTH, "gauge", "{message}", "Deliveries waiting in the outbox, by channel",
               (ATTR_CHANNEL,)),
    MetricSpec(METRIC_DELIVERY_FAILURES, "counter", "{failure}", "Failed delivery attempts, by channel and reason",
               (ATTR_CHANNEL, ATTR_FAILURE_REASON)),
)}


class ServiceMetrics:
    """The platform's instruments on one MeterProvider (the global one when none is given).

    Record through the named methods, which fix the attribute names; `counter`/`histogram`/`gauge` return an
    instrument declared in `METRICS` (or a new, service-specific one) for anything else.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.meter = provider.get_meter("lodestar")
        self._instruments: dict[str, tuple[str, Any]] = {}
        self._lock = threading.Lock()
        self.rpc_requests: Counter = self.counter(METRIC_RPC_REQUESTS)
        self.rpc_duration: Histogram = self.histogram(METRIC_RPC_DURATION)
        self.scoring_duration: Histogram = self.histogram(METRIC_SCORING_DURATION)
        self.screening_denials: Counter = self.counter(METRIC_SCREENING_DENIALS)
        self.outbox_depth: _Gauge = self.gauge(METRIC_OUTBOX_DEPTH)
        self.delivery_failures: Counter = self.counter(METRIC_DELIVERY_FAILURES)

    def _spec(self, name: str, kind: str, unit: str, description: str) -> MetricSpec:
        spec = METRICS.get(name)
        if spec is not None and spec.kind != kind:
            raise ValueError(f"metric {name} is a {spec.kind}, not a {kind}")
        return spec or MetricSpec(name, kind, unit, description, ())  # type: ignore[arg-type]

    def _get(self, name: str, kind: str, unit: str, description: str) -> Any:
        with self._lock:
            spec = self._spec(name, kind, unit, description)
            cached = self._instruments.get(name)
            if cached is not None and cached[0] != kind:
                raise ValueError(f"metric {name} is a {cached[0]}, not a {kind}")
            instrument = cached[1] if cached is not None else None
            if instrument is None:
                if kind == "counter":
                    instrument = self.meter.create_counter(spec.name, spec.unit, spec.description)
                elif kind == "histogram":
                    instrument = self.meter.create_histogram(
                        spec.name, spec.unit, spec.description,
                        explicit_bucket_boundaries_advisory=list(spec.buckets) if spec.buckets else None)
                else:
                    instrument = self.meter.create_gauge(spec.name, spec.unit, spec.description)
                self._instruments[name] = (kind, instrument)
            return instrument

    def counter(self, name: str, unit: str = "1", description: str = "") -> Counter:
        return self._get(name, "counter", unit, description)  # type: ignore[no-any-return]

    def histogram(self, name: str, unit: str = "ms", description: str = "") -> Histogram:
        return self._get(name, "histogram", unit, description)  # type: ignore[no-any-return]

    def gauge(self, name: str, unit: str = "1", description: str = "") -> _Gauge:
        return self._get(name, "gauge", unit, description)  # type: ignore[no-any-return]

    # -- the platform's measurements -----------------------------------------------------------------------

    def record_rpc(self, full_method: str, code: str, duration_ms: float) -> None:
        """One served RPC: `full_method` is "/package.Service/Method", `code` a status code name."""
        service, _, method = full_method.lstrip("/").rpartition("/")
        attributes = {ATTR_RPC_SERVICE: service, ATTR_RPC_METHOD: method, ATTR_RPC_STATUS: code}
        self.rpc_requests.add(1, attributes)
        self.rpc_duration.record(duration_ms, attributes)

    def record_scoring(self, duration_ms: float, model_version: str) -> None:
        self.scoring_duration.record(duration_ms, {ATTR_MODEL_VERSION: model_version})

    def record_screening_denial(self, reason: str, channel: str = "", count: int = 1) -> None:
        """An offer denied by risk screening, with its reason code (one call per reason)."""
        self.screening_denials.add(count, {ATTR_DENIAL_REASON: reason, ATTR_CHANNEL: channel})

    def set_outbox_depth(self, depth: int, channel: str = "") -> None:
        self.outbox_depth.set(depth, {ATTR_CHANNEL: channel})

    def record_delivery_failure(self, channel: str, reason: str) -> None:
        self.delivery_failures.add(1, {ATTR_CHANNEL: channel, ATTR_FAILURE_REASON: reason})


_global_metrics: ServiceMetrics | None = None


def service_metrics() -> ServiceMetrics:
    """The instruments on the global MeterProvider (set by `server.main`; a no-op until then)."""
    global _global_metrics
    if _global_metrics is None:
        _global_metrics = ServiceMetrics()
    return _global_metrics


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON object per finished span to a local file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        lines = [json.dumps(span_to_dict(span), ensure_ascii=False) for span in spans]
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write("".join(line + "\n" for line in lines))
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


def span_to_dict(span: ReadableSpan) -> dict[str, Any]:
    context = span.get_span_context()
    assert context is not None
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else None,
        "name": span.name,
        "kind": span.kind.name,
        "service": span.resource.attributes.get(SERVICE_NAME),
        "start_time_ns": span.start_time,
        "end_time_ns": span.end_time,
        "status": span.status.status_code.name,
        "attributes": dict(span.attributes or {}),
    }


def build_exporters(env: Mapping[str, str]) -> list[SpanExporter]:
    names = env.get("OTEL_TRACES_EXPORTER", "").strip()
    if not names:
        names = "otlp" if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else "none"
    exporters: list[SpanExporter] = []
    for name in (part.strip() for part in names.split(",")):
        if name == "none" or not name:
            continue
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporters.append(OTLPSpanExporter())
        elif name == "console":
            exporters.append(ConsoleSpanExporter())
        elif name == "file":
            exporters.append(JsonLinesSpanExporter(env.get("LODESTAR_TRACE_FILE", "var/traces.jsonl")))
        else:
            from services.platform.config import ConfigError

            raise ConfigError(f"OTEL_TRACES_EXPORTER: unknown exporter {name!r} (otlp, console, file, none)")
    return exporters


def create_tracer_provider(
    service_name: str, env: Mapping[str, str] | None = None, exporters: Sequence[SpanExporter] | None = None
) -> TracerProvider:
    """A provider for one service. OTEL_SERVICE_NAME, when set, wins over the default name."""
    env = os.environ if env is None else env
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name})
    provider = TracerProvider(resource=resource)
    for exporter in build_exporters(env) if exporters is None else exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def instrument_engine(engine: AsyncEngine, tracer_provider: TracerProvider) -> None:
    """Client spans for every SQL statement on this engine (statement text only, never parameters)."""
    from opentelemetry.instrumentation.sqlalchemy import __version__
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer

    tracer = trace.get_tracer("opentelemetry.instrumentation.sqlalchemy", __version__, tracer_provider)
    usage = metrics.get_meter("opentelemetry.instrumentation.sqlalchemy").create_up_down_counter(
        "db.client.connections.usage", unit="connections"
    )
    EngineTracer(tracer, engine.sync_engine, usage)


@dataclass
class PrometheusEndpoint:
    """prometheus_client's HTTP server, serving one provider's metrics on its own port."""

    host: str
    port: int
    server: Any
    thread: threading.Thread

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@dataclass
class MeterSetup:
    """A service's MeterProvider and, when enabled, its Prometheus endpoint; `shutdown()` on exit."""

    provider: SdkMeterProvider
    prometheus: PrometheusEndpoint | None = None
    exporters: list[str] = field(default_factory=list)

    def shutdown(self) -> None:
        if self.prometheus is not None:
            self.prometheus.close()
        self.provider.shutdown()  # flushes the periodic readers


def metrics_exporter_names(env: Mapping[str, str]) -> list[str]:
    names = env.get("OTEL_METRICS_EXPORTER", "").strip()
    if not names:
        chosen = []
        if env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT"):
            chosen.append("otlp")
        if env.get("PROMETHEUS_PORT", "").strip():
            chosen.append("prometheus")
        return chosen
    result = [part.strip() for part in names.split(",") if part.strip() and part.strip() != "none"]
    unknown = [name for name in result if name not in {"otlp", "prometheus", "console"}]
    if unknown:
        from services.platform.config import ConfigError

        raise ConfigError(f"OTEL_METRICS_EXPORTER: unknown exporter {unknown[0]!r} (otlp, prometheus, console, none)")
    return result


def create_meter_provider(
    service_name: str, env: Mapping[str, str] | None = None, readers: Sequence[MetricReader] | None = None
) -> MeterSetup:
    """The MeterProvider of one service, from the OTEL_* variables (see the module docstring).

    `readers`, when given, replaces the configured exporters (tests pass an InMemoryMetricReader). With
    `prometheus`, PROMETHEUS_PORT is required (0 picks a free port: see `MeterSetup.prometheus.port`).
    """
    from services.platform.config import ConfigError, env_int, env_str

    env = os.environ if env is None else env
    resource = Resource.create({SERVICE_NAME: env.get("OTEL_SERVICE_NAME") or service_name})
    names = [] if readers is not None else metrics_exporter_names(env)
    all_readers: list[MetricReader] = list(readers or ())
    prometheus_registry = None
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

            all_readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        elif name == "console":
            all_readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter()))
        elif name == "prometheus":
            from opentelemetry.exporter.prometheus import PrometheusMetricReader
            from prometheus_client import CollectorRegistry

            if not env.get("PROMETHEUS_PORT", "").strip():
                raise ConfigError("PROMETHEUS_PORT is required when OTEL_METRICS_EXPORTER includes prometheus")
            prometheus_registry = CollectorRegistry(auto_describe=True)
            all_readers.append(PrometheusMetricReader(registry=prometheus_registry))
    provider = SdkMeterProvider(resource=resource, metric_readers=all_readers)
    setup = MeterSetup(provider, exporters=names)
    if prometheus_registry is not None:
        from prometheus_client import start_http_server

        port = env_int(env, "PROMETHEUS_PORT", 0)
        host = env_str(env, "LISTEN_HOST", "127.0.0.1")
        try:
            server, thread = start_http_server(port, addr=host, registry=prometheus_registry)
        except OSError as error:
            provider.shutdown()
            raise ConfigError(f"PROMETHEUS_PORT: cannot listen on {host}:{port}: {error.strerror}") from None
        setup.prometheus = PrometheusEndpoint(host, server.server_port, server, thread)
    return setup
