"""The Grafana dashboard: valid, on a Prometheus datasource variable, and every query names a metric (and labels)
that the code really exports, as a Prometheus scrape of the platform's instruments shows them."""

import json
import re
from pathlib import Path

import pytest
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from services.platform.telemetry import METRICS, ServiceMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "lodestar-dashboard.json"
METRIC_NAME = re.compile(r"\blodestar_[a-z0-9_]+\b")


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def exported() -> dict[str, set[str]]:
    """Sample name -> label names, from a real Prometheus exposition of every platform instrument."""
    registry = CollectorRegistry()
    reader = PrometheusMetricReader(registry=registry)
    provider = MeterProvider(metric_readers=[reader])
    metrics = ServiceMetrics(provider)
    metrics.record_rpc("/lodestar.campaign.v1.CampaignService/Decide", "OK", 3.0)
    metrics.record_scoring(0.2, "heuristic-1")
    metrics.record_screening_denial("NO_CONSENT", "SMS")
    metrics.set_outbox_depth(4, "SMS")
    metrics.record_delivery_failure("SMS", "PROVIDER_TIMEOUT")
    text = generate_latest(registry).decode()
    provider.shutdown()
    samples: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).update(sample.labels)
    return samples


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (label names in `by (...)` and `{...}` are not metric names)."""
    bare = re.sub(r"by \([^)]*\)|\{[^}]*\}", " ", expr)
    return set(METRIC_NAME.findall(bare))


def panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return [p for p in out if p.get("type") != "row"]


def test_dashboard_is_a_grafana_dashboard_on_a_prometheus_variable(dashboard):
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(dashboard):
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_query_names_exported_metrics_and_labels(dashboard, exported):
    for panel in panels(dashboard):
        for target in panel["targets"]:
            expr = target["expr"]
            names = metric_names(expr)
            assert names, f"{panel['title']}: no lodestar metric in {expr!r}"
            unknown = names - set(exported)
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not exported; exported: {sorted(exported)}"
            labels = set().union(*(exported[n] for n in names))
            used = {label for group in re.findall(r"by \(([^)]*)\)", expr) for label in re.split(r"\s*,\s*", group)}
            used |= set(re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)\s*\"", expr))
            assert used <= labels, f"{panel['title']}: labels {sorted(used - labels)} not on {sorted(names)}"


def test_every_declared_metric_is_on_the_dashboard(dashboard):
    shown = {name for panel in panels(dashboard) for t in panel["targets"] for name in metric_names(t["expr"])}
    for spec in METRICS.values():
        assert any(name.startswith(spec.prometheus_name) for name in shown), f"{spec.name} has no panel"


def test_the_service_variable_queries_an_exported_label(dashboard, exported):
    service = next(v for v in dashboard["templating"]["list"] if v["name"] == "service")
    metric, label = re.fullmatch(r"label_values\((\w+), (\w+)\)", service["definition"]).groups()
    assert label in exported[metric]
