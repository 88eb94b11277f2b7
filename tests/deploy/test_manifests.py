"""Manifest tests for deploy/k8s: render every overlay, validate it, assert the invariants.

Each overlay is rendered with ``kubectl kustomize`` (skipped only when kubectl is absent),
every object is validated with kubernetes-validate in strict mode against the bundled
schemas of Kubernetes ``K8S_VERSION`` (offline), and the tests below assert the rules of
CONVENTIONS.md ("Kubernetes") and the runtime contract of the services on the rendered YAML.
The NetworkPolicy test recomputes the reachable (from, to, port) edges from the rendered
policies and compares them with the call graph, so a missing *or an extra* allow fails.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")
from kubernetes_validate import utils as kv  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")

# The Kubernetes version the manifests are validated against (schemas bundled offline by
# kubernetes-validate; its 1.37.0 release ships 1.25 .. 1.37).
K8S_VERSION = "1.30.0"

SERVICES = {"gateway": 50050, "profile": 50051, "campaign": 50052, "risk": 50053}
# Who calls whom (gRPC), from the runtime contract.
CALL_GRAPH = {
    ("gateway", "campaign"),
    ("campaign", "profile"),
    ("campaign", "risk"),
    ("risk", "profile"),
    ("risk", "campaign"),
    ("risk", "gateway"),  # data-subject requests
}
DEPENDENCY_ENV = {
    "gateway": {"CAMPAIGN_SERVICE_ADDR": "campaign"},
    "profile": {},
    "campaign": {"PROFILE_SERVICE_ADDR": "profile", "RISK_SERVICE_ADDR": "risk"},
    "risk": {
        "PROFILE_SERVICE_ADDR": "profile",
        "CAMPAIGN_SERVICE_ADDR": "campaign",
        "GATEWAY_SERVICE_ADDR": "gateway",
    },
}
DEFAULT_DRAIN_SECONDS = 2
DEFAULT_SHUTDOWN_GRACE_SECONDS = 10
COLLECTOR = "otel-collector"
OTLP_GRPC_PORT = 4317
# Prometheus scrape endpoint (PROMETHEUS_PORT) of every service, scraped from this namespace only.
METRICS_PORT = 9464
MONITORING_NAMESPACE = "monitoring"
SCRAPER = f'ns:{{"matchLabels": {{"kubernetes.io/metadata.name": "{MONITORING_NAMESPACE}"}}}}/pods:{{}}'
POSTGRES_PORT = 5432
PLACEHOLDER_DB_CIDR = "192.0.2.0/24"  # the component's documentation-range placeholder
LABEL_NAME = "app.kubernetes.io/name"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_COMPONENT = "app.kubernetes.io/component"
WORKLOAD_KINDS = ("Deployment", "Job")
# Jobs besides `<svc>-migrate`, per service: run on demand (suspended), with the service's database and
# collector egress only (tests/deploy/test_settings.py checks them).
ON_DEMAND_JOBS = {"profile": ("profile-rotate-keys",)}
APPLY_AFTER = "lodestar.io/apply-after"


# ----------------------------------------------------------------------------- rendering


@functools.cache
def _render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not found on PATH: cannot render the kustomize overlays")
    proc = subprocess.run(
        [kubectl, "kustomize", str(K8S_DIR / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"kubectl kustomize overlays/{overlay} failed:\n{proc.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(proc.stdout) if d)
    assert docs, f"overlays/{overlay} rendered nothing"
    return docs


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objs(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(overlay)


@pytest.fixture
def prod() -> tuple[dict[str, Any], ...]:
    return _render("prod")


# ----------------------------------------------------------------------------- helpers


def of_kind(objs, kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def get(objs, kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def all_containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def workloads(objs) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def wid(o: dict[str, Any]) -> str:
    return f"{o['kind']}/{o['metadata']['name']}"


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels + matchExpressions); {} matches all."""
    if selector is None:
        return False
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def split_image(image: str) -> tuple[str, str | None]:
    """Return (repository, tag); tag None when the reference has no tag (digests count as a tag)."""
    if "@sha256:" in image:
        return image.split("@", 1)[0], image.split("@", 1)[1]
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return image, None
    repo, tag = image.rsplit(":", 1)
    return repo, tag


def effective_env(objs, container: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """The container's environment as Kubernetes builds it: envFrom first, env overrides.

    Values are ("value", str) | ("secretKeyRef", (name, key)) | ("fieldRef", path) | (kind, ref).
    """
    env: dict[str, tuple[str, Any]] = {}
    for src in container.get("envFrom", []):
        prefix = src.get("prefix", "")
        if "configMapRef" in src:
            cm = get(objs, "ConfigMap", src["configMapRef"]["name"])
            for k, v in (cm.get("data") or {}).items():
                env[prefix + k] = ("value", str(v))
        elif "secretRef" in src:
            # Keys unknown offline: a whole Secret imported as env (not expected here).
            env[f"{prefix}<secretRef:{src['secretRef']['name']}>"] = ("secretRef", src["secretRef"]["name"])
    for e in container.get("env", []):
        if "valueFrom" in e:
            vf = e["valueFrom"]
            if "secretKeyRef" in vf:
                env[e["name"]] = ("secretKeyRef", (vf["secretKeyRef"]["name"], vf["secretKeyRef"]["key"]))
            elif "fieldRef" in vf:
                env[e["name"]] = ("fieldRef", vf["fieldRef"]["fieldPath"])
            elif "configMapKeyRef" in vf:
                ref = vf["configMapKeyRef"]
                env[e["name"]] = ("value", str(get(objs, "ConfigMap", ref["name"])["data"][ref["key"]]))
            else:
                env[e["name"]] = (next(iter(vf)), vf)
        else:
            env[e["name"]] = ("value", str(e.get("value", "")))
    return env


def service_deployment(objs, svc: str) -> tuple[dict[str, Any], dict[str, Any]]:
    dep = get(objs, "Deployment", svc)
    containers = pod_spec(dep)["containers"]
    assert len(containers) == 1, f"Deployment/{svc}: expected one container, got {len(containers)}"
    return dep, containers[0]


def named_port(container: dict[str, Any], name: str) -> int:
    ports = [p for p in container.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"container {container['name']}: expected one port named {name!r}"
    return ports[0]["containerPort"]


def resolve_target(objs, service_ref: str, expected_port: int) -> None:
    """`host:port` (or http://host:port) must name a rendered Service exposing that port."""
    m = re.fullmatch(r"(?:https?://)?([a-z0-9-]+)(?:\.[a-z0-9.-]+)?:(\d+)", service_ref)
    assert m, f"{service_ref!r} is not host:port"
    host, port = m.group(1), int(m.group(2))
    assert port == expected_port, f"{service_ref!r}: port {port}, expected {expected_port}"
    svc = get(objs, "Service", host)
    assert port in [p["port"] for p in svc["spec"]["ports"]], f"Service/{host} does not expose {port}"


# ----------------------------------------------------------------------------- schema validation


def test_pinned_kubernetes_version_is_bundled():
    assert K8S_VERSION in kv.all_versions(), (
        f"kubernetes-validate {kubernetes_validate.__version__} bundles no schemas for {K8S_VERSION}"
    )


def test_every_object_validates_strictly(overlay, objs):
    errors = []
    for o in objs:
        try:
            kv.validate(o, K8S_VERSION, strict=True)
        except kv.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            errors.append(f"{o['kind']}/{o['metadata']['name']}: {path}: {e.message}")
        except kv.SchemaNotFoundError as e:  # the CLI only warns; an unknown kind is an error here
            errors.append(e.message)
    assert not errors, f"overlays/{overlay} against Kubernetes {K8S_VERSION}:\n" + "\n".join(errors)


# ----------------------------------------------------------------------------- workloads


def test_every_container_has_requests_and_limits(objs):
    for w in workloads(objs):
        for c in all_containers(w):
            res = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    assert (res.get(kind) or {}).get(r), f"{wid(w)}/{c['name']}: no {kind}.{r}"


def test_security_context_everywhere(objs):
    for w in workloads(objs):
        spec = pod_spec(w)
        psc = spec.get("securityContext") or {}
        assert psc.get("runAsNonRoot") is True, f"{wid(w)}: pod runAsNonRoot"
        assert psc.get("runAsUser") == 10001, f"{wid(w)}: pod runAsUser"
        assert (psc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{wid(w)}: pod seccomp"
        assert spec.get("automountServiceAccountToken") is False, f"{wid(w)}: automountServiceAccountToken"
        assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
        for c in all_containers(w):
            where = f"{wid(w)}/{c['name']}"
            csc = c.get("securityContext") or {}
            assert csc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, f"{where}: runAsNonRoot"
            assert csc.get("runAsUser", psc.get("runAsUser")) == 10001, f"{where}: runAsUser"
            assert csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem"
            assert csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation"
            assert csc.get("privileged") is not True, f"{where}: privileged"
            assert (csc.get("capabilities") or {}).get("drop") == ["ALL"], f"{where}: capabilities.drop"
            assert not (csc.get("capabilities") or {}).get("add"), f"{where}: capabilities.add"
            seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            assert seccomp == "RuntimeDefault", f"{where}: seccompProfile"


def test_every_workload_has_its_own_service_account(objs):
    for w in workloads(objs):
        sa_name = pod_spec(w).get("serviceAccountName")
        assert sa_name and sa_name != "default", f"{wid(w)}: uses the default ServiceAccount"
        sa = get(objs, "ServiceAccount", sa_name)
        assert sa.get("automountServiceAccountToken") is False, f"ServiceAccount/{sa_name}: automount"
    for svc in SERVICES:
        assert pod_spec(get(objs, "Deployment", svc))["serviceAccountName"] == svc


def test_writable_tmp_is_an_empty_dir(objs):
    for w in workloads(objs):
        volumes = {v["name"]: v for v in pod_spec(w).get("volumes", [])}
        for c in all_containers(w):
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1, f"{wid(w)}/{c['name']}: no /tmp mount"
            assert "emptyDir" in volumes[tmp[0]["name"]], f"{wid(w)}/{c['name']}: /tmp is not an emptyDir"


def test_images_are_tagged_and_never_latest(objs):
    for w in workloads(objs):
        for c in all_containers(w):
            _, tag = split_image(c["image"])
            assert tag is not None, f"{wid(w)}/{c['name']}: untagged image {c['image']!r}"
            assert tag != "latest", f"{wid(w)}/{c['name']}: image {c['image']!r} uses latest"
            assert c.get("imagePullPolicy") != "Always" or tag.startswith("sha256:"), c["image"]
    lodestar_images = {
        c["image"] for w in workloads(objs) if w["metadata"]["name"] != COLLECTOR for c in all_containers(w)
    }
    assert len(lodestar_images) == 1, f"services and Jobs must run one image, got {lodestar_images}"


def test_consistent_labels(objs):
    for o in objs:
        if o["kind"] in ("Namespace", "NetworkPolicy"):
            assert o["metadata"].get("labels", {}).get(LABEL_PART_OF) == "lodestar", f"{wid(o)}: part-of"
            continue
        labels = o["metadata"].get("labels") or {}
        for key in (LABEL_NAME, LABEL_COMPONENT):
            assert labels.get(key), f"{wid(o)}: missing label {key}"
        assert labels.get(LABEL_PART_OF) == "lodestar", f"{wid(o)}: {LABEL_PART_OF}"
        if o["kind"] in WORKLOAD_KINDS:
            tpl = o["spec"]["template"]["metadata"]["labels"]
            for key in (LABEL_NAME, LABEL_COMPONENT, LABEL_PART_OF):
                assert tpl.get(key) == labels[key], f"{wid(o)}: pod template label {key} differs"
    for svc in SERVICES:
        for kind in ("Deployment", "Service", "ServiceAccount"):
            assert get(objs, kind, svc)["metadata"]["labels"][LABEL_NAME] == svc, f"{kind}/{svc}"


def test_grpc_port_probes_and_service(objs):
    for svc, port in SERVICES.items():
        _, c = service_deployment(objs, svc)
        assert named_port(c, "grpc") == port, f"{svc}: grpc containerPort"
        assert c["ports"][0]["name"] == "grpc"
        for probe in ("readinessProbe", "livenessProbe"):
            p = c.get(probe) or {}
            assert "grpc" in p, f"{svc}: {probe} is not a native grpc probe"
            assert p["grpc"]["port"] == named_port(c, "grpc"), f"{svc}: {probe} not on the grpc port"
        if "startupProbe" in c:
            assert c["startupProbe"]["grpc"]["port"] == port, f"{svc}: startupProbe port"
        # Readiness asks the overall health (database up and migrated); liveness the process-only name, so a
        # database outage removes pods from the Service without restarting them.
        assert c["readinessProbe"]["grpc"].get("service", "") == "", f"{svc}: readiness must ask overall health"
        assert c["livenessProbe"]["grpc"].get("service") == "liveness", f"{svc}: liveness must ask 'liveness'"

        service = get(objs, "Service", svc)
        ports = service["spec"]["ports"]
        assert len(ports) == 1, f"Service/{svc}: one port expected"
        sp = ports[0]
        assert sp["name"] == "grpc" and sp.get("appProtocol") == "grpc", f"Service/{svc}: grpc port"
        assert sp["port"] == port, f"Service/{svc}: port {sp['port']} != {port}"
        target = sp.get("targetPort", sp["port"])
        resolved = named_port(c, target) if isinstance(target, str) else target
        assert resolved == port, f"Service/{svc}: targetPort {target!r} resolves to {resolved}"


def test_metrics_port_and_scrape_annotations(objs):
    """Where PROMETHEUS_PORT is set, the container names that port `metrics` and the pod carries the scrape
    annotations for it; where it is not, neither exists (no scrape of a port nobody serves)."""
    deployments = [d for d in of_kind(objs, "Deployment") if d["metadata"]["name"] in SERVICES]
    assert len(deployments) == len(SERVICES)
    for dep in of_kind(objs, "Deployment"):
        (c,) = pod_spec(dep)["containers"]
        env = effective_env(objs, c)
        annotations = dep["spec"]["template"]["metadata"].get("annotations") or {}
        name = dep["metadata"]["name"]
        if "PROMETHEUS_PORT" not in env:
            assert name not in SERVICES, f"{name}: PROMETHEUS_PORT not set"
            assert "prometheus.io/scrape" not in annotations, f"{name}: scraped without PROMETHEUS_PORT"
            continue
        kind, value = env["PROMETHEUS_PORT"]
        assert kind == "value" and int(value) == METRICS_PORT, f"{name}: PROMETHEUS_PORT"
        assert named_port(c, "metrics") == int(value), f"{name}: metrics containerPort"
        assert named_port(c, "metrics") != named_port(c, "grpc")
        assert annotations.get("prometheus.io/scrape") == "true", f"{name}: scrape annotation"
        assert annotations.get("prometheus.io/port") == value, f"{name}: scrape port annotation"
        assert annotations.get("prometheus.io/path") == "/metrics", f"{name}: scrape path annotation"


def test_selectors_agree(objs):
    for svc in SERVICES:
        dep = get(objs, "Deployment", svc)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert selector_matches(dep["spec"]["selector"], pod_labels), f"Deployment/{svc}: selector"
        service_sel = get(objs, "Service", svc)["spec"]["selector"]
        assert service_sel, f"Service/{svc}: no selector"
        for w in workloads(objs):
            matched = selector_matches(
                {"matchLabels": service_sel}, w["spec"]["template"]["metadata"]["labels"]
            )
            # Exactly its own Deployment's pods: never the migration Job's or another service's.
            assert matched == (w is dep), (
                f"Service/{svc} selector {'matches' if matched else 'misses'} {wid(w)}"
            )


def test_graceful_shutdown_budget(objs):
    for svc in SERVICES:
        dep, c = service_deployment(objs, svc)
        env = effective_env(objs, c)
        drain = int(env.get("DRAIN_SECONDS", ("value", DEFAULT_DRAIN_SECONDS))[1])
        grace = int(env.get("SHUTDOWN_GRACE_SECONDS", ("value", DEFAULT_SHUTDOWN_GRACE_SECONDS))[1])
        tgps = pod_spec(dep).get("terminationGracePeriodSeconds", 30)
        assert tgps > drain + grace, f"{svc}: terminationGracePeriodSeconds {tgps} <= {drain} + {grace}"


def test_runtime_environment_contract(objs):
    for svc, port in SERVICES.items():
        _, c = service_deployment(objs, svc)
        env = effective_env(objs, c)
        assert env.get("LISTEN_HOST") == ("value", "0.0.0.0"), f"{svc}: LISTEN_HOST"
        assert env.get("AUTO_MIGRATE") == ("value", "false"), f"{svc}: AUTO_MIGRATE"
        assert env.get("GRPC_PORT") == ("value", str(port)), f"{svc}: GRPC_PORT"
        assert env.get("DATABASE_URL") == ("secretKeyRef", (f"{svc}-db", "url")), f"{svc}: DATABASE_URL"
        assert env.get("OTEL_SERVICE_NAME") == ("fieldRef", f"metadata.labels['{LABEL_NAME}']"), svc
        assert env.get("OTEL_TRACES_EXPORTER") == ("value", "otlp"), f"{svc}: OTEL_TRACES_EXPORTER"
        kind, endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", (None, ""))
        assert kind == "value", f"{svc}: OTEL_EXPORTER_OTLP_ENDPOINT"
        resolve_target(objs, endpoint, OTLP_GRPC_PORT)
        for var, dep in DEPENDENCY_ENV[svc].items():
            kind, addr = env.get(var, (None, ""))
            assert kind == "value", f"{svc}: {var} missing"
            resolve_target(objs, addr, SERVICES[dep])
        exporters = env.get("OTEL_METRICS_EXPORTER", (None, ""))
        assert exporters[0] == "value" and set(exporters[1].split(",")) == {"otlp", "prometheus"}, svc
        stray = {k for k in env if k.endswith("_SERVICE_ADDR")} - set(DEPENDENCY_ENV[svc])
        assert not stray, f"{svc}: addresses outside the call graph: {stray}"
        if svc in ("gateway", "risk"):  # risk: data-subject requests call the gateway's DataSubjectService
            kind, ref = env.get("GATEWAY_ADMIN_TOKEN", (None, None))
            assert kind == "secretKeyRef", f"{svc}: GATEWAY_ADMIN_TOKEN must come from a Secret"
            assert ref == ("gateway-admin-token", "token"), f"{svc}: GATEWAY_ADMIN_TOKEN"


def test_no_secrets_in_configmaps(objs):
    for cm in of_kind(objs, "ConfigMap"):
        for key, value in (cm.get("data") or {}).items():
            assert not re.search(r"DATABASE_URL|TOKEN|PASSWORD|SECRET", key), (
                f"ConfigMap/{cm['metadata']['name']}"
            )
            assert not re.search(r"postgres(ql)?(\+\w+)?://[^/\s]*:[^@\s]*@", str(value)), key


def test_a_migration_job_per_service(objs):
    jobs = of_kind(objs, "Job")
    for svc in SERVICES:
        _, server = service_deployment(objs, svc)
        mine = [
            j
            for j in jobs
            if any(
                c.get("command", []) + c.get("args", []) == ["python", "-m", f"services.{svc}", "migrate"]
                for c in pod_spec(j)["containers"]
            )
        ]
        assert len(mine) == 1, f"{svc}: expected one migration Job, found {len(mine)}"
        job = mine[0]
        spec = job["spec"]
        assert isinstance(spec.get("backoffLimit"), int) and spec["backoffLimit"] >= 1, f"{wid(job)}"
        assert isinstance(spec.get("ttlSecondsAfterFinished"), int), f"{wid(job)}: ttlSecondsAfterFinished"
        assert pod_spec(job)["restartPolicy"] in ("Never", "OnFailure")
        (c,) = pod_spec(job)["containers"]
        assert c["image"] == server["image"], f"{wid(job)}: migrates with another image than it serves"
        env = effective_env(objs, c)
        assert env.get("DATABASE_URL") == ("secretKeyRef", (f"{svc}-db", "url")), f"{wid(job)}"
        assert job["spec"]["template"]["metadata"]["labels"][LABEL_NAME] == svc


def test_deploy_order_label_selects_exactly_the_service_deployments(objs):
    # docs/operations.md applies `-l 'lodestar.io/apply-after!=migrations'` first, waits for the
    # migration Jobs, then `-l lodestar.io/apply-after=migrations`: only the four Deployments.
    later = {wid(o) for o in objs if o["metadata"].get("labels", {}).get(APPLY_AFTER) == "migrations"}
    assert later == {f"Deployment/{svc}" for svc in SERVICES}, sorted(later)


def test_collector_is_present_and_reachable(objs):
    dep = get(objs, "Deployment", COLLECTOR)
    (c,) = pod_spec(dep)["containers"]
    assert split_image(c["image"])[0].endswith("opentelemetry-collector-contrib")
    svc = get(objs, "Service", COLLECTOR)
    assert {p["port"] for p in svc["spec"]["ports"]} == {4317, 4318}
    assert selector_matches(
        {"matchLabels": svc["spec"]["selector"]}, dep["spec"]["template"]["metadata"]["labels"]
    )
    cfg = yaml.safe_load(get(objs, "ConfigMap", "otel-collector-config")["data"]["config.yaml"])
    protocols = cfg["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317") and protocols["http"]["endpoint"].endswith(":4318")
    for signal in ("traces", "metrics"):  # the services export both over OTLP
        pipeline = cfg["service"]["pipelines"][signal]
        assert pipeline["receivers"] == ["otlp"], signal
        assert pipeline["exporters"] and all(e in cfg["exporters"] for e in pipeline["exporters"]), signal


# ----------------------------------------------------------------------------- per overlay


def test_dev_runs_one_replica_each():
    objs = _render("dev")
    for svc in SERVICES:
        assert get(objs, "Deployment", svc)["spec"]["replicas"] == 1, svc


def test_prod_replicas_hpa_pdb_and_spread(prod):
    hpas = of_kind(prod, "HorizontalPodAutoscaler")
    pdbs = of_kind(prod, "PodDisruptionBudget")
    for svc in SERVICES:
        dep = get(prod, "Deployment", svc)
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["replicas"] >= 2, f"{svc}: replicas"

        mine = [
            h
            for h in hpas
            if h["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": svc}
        ]
        assert len(mine) == 1, f"{svc}: expected one HPA"
        hpa = mine[0]
        assert hpa["apiVersion"] == "autoscaling/v2"
        assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
        assert hpa["spec"].get("metrics"), f"{svc}: HPA without metrics"

        covering = [p for p in pdbs if selector_matches(p["spec"]["selector"], pod_labels)]
        assert len(covering) == 1, f"{svc}: expected one PDB, found {len(covering)}"
        pdb = covering[0]
        assert "minAvailable" in pdb["spec"] or "maxUnavailable" in pdb["spec"]
        for w in workloads(prod):
            if w is not dep:
                assert not selector_matches(
                    pdb["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]
                )

        spread = pod_spec(dep).get("topologySpreadConstraints") or []
        keys = {t["topologyKey"] for t in spread if selector_matches(t["labelSelector"], pod_labels)}
        assert {"kubernetes.io/hostname", "topology.kubernetes.io/zone"} <= keys, f"{svc}: spread {keys}"


# ----------------------------------------------------------------------------- network policies

EXTERNAL = "EXTERNAL"  # any client outside the cluster (partners)
ANY = "ANY"  # an egress rule without `to`


def _rule_ports(rule: dict[str, Any]) -> list[tuple[str, int | str, int | None]] | None:
    """None means all ports."""
    if not rule.get("ports"):
        return None
    return [(p.get("protocol", "TCP"), p.get("port", "*"), p.get("endPort")) for p in rule["ports"]]


def _port_ok(rule, container_ports: dict[str, int], port: int, proto: str) -> bool:
    ports = _rule_ports(rule)
    if ports is None:
        return True
    for p_proto, p_port, end in ports:
        if p_proto != proto:
            continue
        if p_port == "*":
            return True
        number = container_ports.get(p_port) if isinstance(p_port, str) else p_port
        if number is not None and (number == port or (end is not None and number <= port <= end)):
            return True
    return False


class Graph:
    """Reachability implied by the rendered NetworkPolicies (one namespace)."""

    def __init__(self, objs):
        self.policies = of_kind(objs, "NetworkPolicy")
        namespaces = {o["metadata"].get("namespace", "default") for o in objs if "metadata" in o}
        namespaces.discard(None)
        self.namespace_labels = {}
        for ns in namespaces:
            labels = {"kubernetes.io/metadata.name": ns}
            for n in of_kind(objs, "Namespace"):
                if n["metadata"]["name"] == ns:
                    labels.update(n["metadata"].get("labels") or {})
            self.namespace_labels[ns] = labels
        self.pods = []
        for w in workloads(objs):
            ports = {}
            named = {}
            for c in all_containers(w):
                for p in c.get("ports", []):
                    ports[(p["containerPort"], p.get("protocol", "TCP"))] = True
                    if p.get("name"):
                        named[p["name"]] = p["containerPort"]
            self.pods.append(
                {
                    "id": wid(w),
                    "ns": w["metadata"].get("namespace", "default"),
                    "labels": w["spec"]["template"]["metadata"]["labels"],
                    "ports": sorted(ports),
                    "named": named,
                }
            )
        for p in self.policies:
            assert p["spec"].get("policyTypes"), f"NetworkPolicy/{p['metadata']['name']}: set policyTypes"

    def _selecting(self, pod, direction: str):
        return [
            p
            for p in self.policies
            if p["metadata"].get("namespace", "default") == pod["ns"]
            and direction in p["spec"]["policyTypes"]
            and selector_matches(p["spec"]["podSelector"], pod["labels"])
        ]

    def _peer_targets(self, peer, policy_ns: str) -> tuple[set[str], set[str]]:
        """(pod ids matched, symbolic peers outside the rendered namespace)."""
        if "ipBlock" in peer:
            block = peer["ipBlock"]
            return set(), {
                f"cidr:{block['cidr']}" + (f" except {block['except']}" if block.get("except") else "")
            }
        pods, symbolic = set(), set()
        ns_sel = peer.get("namespaceSelector")
        pod_sel = peer.get("podSelector", {})
        if ns_sel is None:
            namespaces = [policy_ns]
        else:
            namespaces = [
                ns for ns, labels in self.namespace_labels.items() if selector_matches(ns_sel, labels)
            ]
            if ns_sel == {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}} and pod_sel == {
                "matchLabels": {"k8s-app": "kube-dns"}
            }:
                symbolic.add("kube-dns")
            else:
                symbolic.add(
                    f"ns:{json.dumps(ns_sel, sort_keys=True)}/pods:{json.dumps(pod_sel, sort_keys=True)}"
                )
        for pod in self.pods:
            if pod["ns"] in namespaces and selector_matches(pod_sel, pod["labels"]):
                pods.add(pod["id"])
        return pods, symbolic

    def _ingress_ok(self, dst, src_id: str, port: int, proto: str) -> bool:
        policies = self._selecting(dst, "Ingress")
        if not policies:
            return True  # not isolated for ingress
        for pol in policies:
            for rule in pol["spec"].get("ingress") or []:
                if not _port_ok(rule, dst["named"], port, proto):
                    continue
                peers = rule.get("from") or []
                if not peers:
                    return True
                for peer in peers:
                    pods, _ = self._peer_targets(peer, pol["metadata"].get("namespace", "default"))
                    if src_id == EXTERNAL and "ipBlock" in peer:
                        return True
                    if src_id in pods:
                        return True
        return False

    def edges(self, *, through_ingress: bool = True) -> set[tuple[str, str, str]]:
        """(from, to, port/proto) connections allowed by egress and (unless off) ingress policies."""
        out: set[tuple[str, str, str]] = set()
        by_id = {p["id"]: p for p in self.pods}
        for src in self.pods:
            policies = self._selecting(src, "Egress")
            rules = [
                (rule, pol["metadata"].get("namespace", "default"))
                for pol in policies
                for rule in (pol["spec"].get("egress") or [])
            ]
            if not policies:
                out.add((src["id"], ANY, "*"))  # not isolated for egress
            for dst in self.pods:
                for port, proto in dst["ports"]:
                    egress_ok = not policies
                    for rule, ns in rules:
                        if not _port_ok(rule, dst["named"], port, proto):
                            continue
                        peers = rule.get("to") or []
                        if not peers or any(dst["id"] in self._peer_targets(p, ns)[0] for p in peers):
                            egress_ok = True
                    if egress_ok and (not through_ingress or self._ingress_ok(dst, src["id"], port, proto)):
                        out.add((src["id"], dst["id"], f"{port}/{proto}"))
            for rule, ns in rules:
                symbolic = set()
                peers = rule.get("to") or []
                if not peers:
                    symbolic.add(ANY)
                for peer in peers:
                    symbolic |= self._peer_targets(peer, ns)[1]
                ports = _rule_ports(rule)
                for sym in symbolic:
                    if ports is None:
                        out.add((src["id"], sym, "*"))
                    for proto, port, end in ports or []:
                        label = f"{port}-{end}" if end else str(port)
                        out.add((src["id"], sym, f"{label}/{proto}"))
        for dst in self.pods:
            for port, proto in dst["ports"]:
                if through_ingress and self._ingress_ok(dst, EXTERNAL, port, proto):
                    out.add((EXTERNAL, dst["id"], f"{port}/{proto}"))
        assert set(by_id) >= {e[0] for e in out} - {EXTERNAL}
        return out

    def ingress_edges(self) -> set[tuple[str, str, str]]:
        """What each pod's ingress policies admit on its declared ports, on their own
        (ANY = a rule without `from`), so a too-wide ingress is caught even when the
        sources' egress happens to block it today."""
        out: set[tuple[str, str, str]] = set()
        for dst in self.pods:
            policies = self._selecting(dst, "Ingress")
            for port, proto in dst["ports"]:
                if not policies:
                    out.add((ANY, dst["id"], f"{port}/{proto}"))
                for pol in policies:
                    ns = pol["metadata"].get("namespace", "default")
                    for rule in pol["spec"].get("ingress") or []:
                        if not _port_ok(rule, dst["named"], port, proto):
                            continue
                        peers = rule.get("from") or []
                        if not peers:
                            out.add((ANY, dst["id"], f"{port}/{proto}"))
                        for peer in peers:
                            pods, symbolic = self._peer_targets(peer, ns)
                            for src in pods | symbolic:
                                out.add((src, dst["id"], f"{port}/{proto}"))
        return out


def expected_edges(db_peer: str, pod_ids: list[str]) -> set[tuple[str, str, str]]:
    exp = {(f"Deployment/{a}", f"Deployment/{b}", f"{SERVICES[b]}/TCP") for a, b in CALL_GRAPH}
    exp.add((EXTERNAL, "Deployment/gateway", f"{SERVICES['gateway']}/TCP"))
    for svc in SERVICES:
        jobs = (f"{svc}-migrate", *ON_DEMAND_JOBS.get(svc, ()))
        for src in (f"Deployment/{svc}", *(f"Job/{job}" for job in jobs)):
            exp.add((src, f"Deployment/{COLLECTOR}", f"{OTLP_GRPC_PORT}/TCP"))
            exp.add((src, db_peer, f"{POSTGRES_PORT}/TCP"))
    for pod in pod_ids:
        exp.add((pod, "kube-dns", "53/UDP"))
        exp.add((pod, "kube-dns", "53/TCP"))
    return exp


def test_network_policies_allow_exactly_the_call_graph(prod):
    policies = of_kind(prod, "NetworkPolicy")
    deny_all = [
        p
        for p in policies
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert deny_all, "no default deny-all (ingress and egress) NetworkPolicy"

    graph = Graph(prod)
    edges = graph.edges()
    # The PostgreSQL peer is configurable: exactly one destination outside the namespace
    # (besides kube-dns), reached only on 5432, not "anything" and not the placeholder.
    outside = {dst for _, dst, _ in edges if dst not in {p["id"] for p in graph.pods}} - {"kube-dns"}
    assert len(outside) == 1, f"expected one external peer (PostgreSQL), got {sorted(outside)}"
    (db_peer,) = outside
    assert db_peer != ANY and db_peer not in ("cidr:0.0.0.0/0", "cidr:::/0"), db_peer
    if db_peer.startswith("cidr:"):
        net = ipaddress.ip_network(db_peer[len("cidr:") :].split()[0])
        assert net != ipaddress.ip_network(PLACEHOLDER_DB_CIDR), "prod still uses the placeholder DB CIDR"
        assert net.prefixlen >= 16, f"PostgreSQL egress CIDR {net} is too broad"

    expected = expected_edges(db_peer, [p["id"] for p in graph.pods])
    missing = sorted(expected - edges)
    extra = sorted(edges - expected)
    assert not missing and not extra, f"missing allows: {missing}\nextra allows: {extra}"

    # Each half on its own must be exact too (an extra egress or ingress allow that the
    # other side happens to block today is still an extra allow).
    egress_only = graph.edges(through_ingress=False)
    expected_egress = {e for e in expected if e[0] != EXTERNAL}
    extra, missing = sorted(egress_only - expected_egress), sorted(expected_egress - egress_only)
    assert not extra and not missing, f"egress: extra {extra}, missing {missing}"
    gateway = ("Deployment/gateway", f"{SERVICES['gateway']}/TCP")
    expected_ingress = {(ANY, *gateway)} | {
        e for e in expected if e[1].startswith("Deployment/") and e[0] != EXTERNAL and e[1:] != gateway
    } | {(SCRAPER, f"Deployment/{svc}", f"{METRICS_PORT}/TCP") for svc in SERVICES}
    ingress_only = graph.ingress_edges()
    extra, missing = sorted(ingress_only - expected_ingress), sorted(expected_ingress - ingress_only)
    assert not extra and not missing, f"ingress: extra {extra}, missing {missing}"
