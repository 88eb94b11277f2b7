"""OpenTelemetry set-up, configured only by the standard OTEL_* variables (plus a local-file exporter).

OTEL_TRACES_EXPORTER: a comma-separated list of `otlp` (to OTEL_EXPORTER_OTLP_ENDPOINT), `console`, `file`
(JSON lines to LODESTAR_TRACE_FILE, what `make run` uses) or `none`. Unset: `otlp` when an OTLP endpoint is
configured, else `none`. OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are read by the SDK itself.

Custom span attributes are namespaced `lodestar.*` and listed here, in one place. None may carry personal
data: customers appear only as `masking.customer_token`.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
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
