"""Settings and Secrets wiring of deploy/k8s, checked on the rendered overlays against the services' own code.

- Every name in a service's ``DEFINITION.extra_settings`` is in its ConfigMap, set in its Deployment (a value,
  a ``secretKeyRef`` or a mounted Secret file), or in ``LEFT_TO_DEFAULTS`` below, with the reason why.
- Secret-like settings come from Secrets (never a ConfigMap), each Secret is read only by the workloads that need
  it, and every Secret referenced is either rendered or listed in the overlay's kustomization.yaml as provided
  outside the manifests (and documented in docs/operations.md).
- The base ConfigMaps state the code's defaults, and every rendered environment passes the service's own
  start-up validation (a value that would stop a pod fails here).
- profile's PII master keys are a read-only Secret file in the Deployment and the on-demand rotation Job.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_manifests import (
    APPLY_AFTER,
    K8S_DIR,
    LABEL_COMPONENT,
    LABEL_NAME,
    ON_DEMAND_JOBS,
    OVERLAYS,
    REPO,
    SERVICES,
    _render,
    all_containers,
    effective_env,
    get,
    of_kind,
    pod_spec,
    service_deployment,
    wid,
    workloads,
)

PII_KEYS_DIR = "/var/run/secrets/profile-pii"
PII_KEYS_FILE = f"{PII_KEYS_DIR}/keys"
ROTATE_JOB = "profile-rotate-keys"

# Settings deliberately NOT set by the manifests: the service's default applies. Each with its reason.
LEFT_TO_DEFAULTS: dict[str, dict[str, str]] = {
    "gateway": {},
    "profile": {
        # Default false; "true" is refused at start-up (PII values are encrypted at rest and cannot be matched).
        "PROFILE_ALLOW_PII_IN_SEGMENTS": "refused when true",
        # Injected by the kubelet into every pod (it makes PROFILE_PII_KEYS required); not ours to set.
        "KUBERNETES_SERVICE_HOST": "set by Kubernetes",
        # Default SQLite files and the development PII key file: unused with PostgreSQL and mounted keys.
        "DATA_DIR": "development only",
    },
    "campaign": {
        # Outbound-call lists are personal data written as CSV: they need an access-controlled volume these
        # manifests do not provide. Unset, the phone channel is "not configured" (messages wait).
        "CAMPAIGN_CALL_LIST_DIR": "needs a dedicated volume",
    },
    "risk": {},
}

# Settings that are secrets: (Secret, key). Read through a secretKeyRef, or (PROFILE_PII_KEYS) as a file of a
# mounted Secret volume.
SECRET_SETTINGS: dict[str, dict[str, tuple[str, str]]] = {
    "gateway": {"GATEWAY_ADMIN_TOKEN": ("gateway-admin-token", "token")},
    "profile": {"PROFILE_PII_KEYS": ("profile-pii-keys", "keys")},
    "campaign": {},
    "risk": {
        "GATEWAY_ADMIN_TOKEN": ("gateway-admin-token", "token"),
        "RISK_DSR_HASH_KEY": ("risk-dsr-hash-key", "key"),
        "RISK_FRAUD_HASH_KEY": ("risk-fraud-hash-key", "key"),
    },
}
# A setting whose name looks like one of these must be in SECRET_SETTINGS, unless listed as NOT_SECRET.
SECRET_LIKE = re.compile(r"KEYS?$|TOKEN|PASSWORD|SECRET|CREDENTIAL")
NOT_SECRET = {"PROFILE_PII_REQUIRE_KEYS"}  # a flag: refuse to start without PROFILE_PII_KEYS

# Who may read each Secret (least privilege): exactly these workloads, in every overlay.
SECRET_CONSUMERS: dict[str, set[str]] = {
    **{f"{svc}-db": {f"Deployment/{svc}", f"Job/{svc}-migrate"} for svc in SERVICES},
    "profile-db": {"Deployment/profile", "Job/profile-migrate", f"Job/{ROTATE_JOB}"},
    "gateway-admin-token": {"Deployment/gateway", "Deployment/risk"},
    "profile-pii-keys": {"Deployment/profile", f"Job/{ROTATE_JOB}"},
    "risk-dsr-hash-key": {"Deployment/risk"},
    "risk-fraud-hash-key": {"Deployment/risk"},
}
# "secret: <name> key: <key>" lines in an overlay's kustomization.yaml: Secrets provided outside the manifests.
DOCUMENTED_SECRET = re.compile(r"secret:\s*([a-z0-9][a-z0-9.-]*)\s+key:\s*([A-Za-z0-9_.-]+)")


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def objs(overlay: str) -> tuple[dict[str, Any], ...]:
    return _render(overlay)


def definition(svc: str) -> Any:
    return importlib.import_module(f"services.{svc}.app").DEFINITION


def base_configmap(svc: str) -> dict[str, str]:
    doc = yaml.safe_load((K8S_DIR / "base" / svc / "configmap.yaml").read_text(encoding="utf-8"))
    return {k: str(v) for k, v in (doc.get("data") or {}).items()}


def job(objs, name: str) -> dict[str, Any]:
    return get(objs, "Job", name)


def secret_file(workload: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str] | None:
    """(Secret, key) when `path` is a file of a Secret volume mounted in the container, else None."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        directory = mount["mountPath"].rstrip("/")
        if not path.startswith(directory + "/") or "subPath" in mount:
            continue
        relative = path[len(directory) + 1:]
        secret = volumes[mount["name"]].get("secret")
        if secret is None:
            continue
        items = secret.get("items")
        if items is None:
            return secret["secretName"], relative
        for item in items:
            if item["path"] == relative:
                return secret["secretName"], item["key"]
    return None


def secret_references(objs) -> dict[tuple[str, str | None], set[str]]:
    """{(Secret, key or None for a whole Secret): {workload ids}} from env, envFrom, volumes and projections."""
    refs: dict[tuple[str, str | None], set[str]] = {}

    def add(name: str, key: str | None, w: dict[str, Any]) -> None:
        refs.setdefault((name, key), set()).add(wid(w))

    for w in workloads(objs):
        for c in all_containers(w):
            for e in c.get("env", []):
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref:
                    add(ref["name"], ref["key"], w)
            for src in c.get("envFrom", []):
                if "secretRef" in src:
                    add(src["secretRef"]["name"], None, w)
        for v in pod_spec(w).get("volumes", []):
            sources = [v["secret"]] if "secret" in v else [
                s["secret"] for s in (v.get("projected") or {}).get("sources", []) if "secret" in s]
            for s in sources:
                name = s.get("secretName") or s.get("name")
                for item in s.get("items") or [{"key": None}]:
                    add(name, item["key"], w)
    return refs


# ----------------------------------------------------------------------------- every setting is wired


def test_every_extra_setting_is_configured_set_or_deliberately_left_to_its_default(objs):
    for svc in SERVICES:
        extra = definition(svc).extra_settings
        _, c = service_deployment(objs, svc)
        env = effective_env(objs, c)
        unwired = [name for name in extra
                   if name not in env and name not in LEFT_TO_DEFAULTS[svc]]
        assert not unwired, (f"{svc}: settings neither in ConfigMap {svc}-config, nor set in Deployment/{svc}, nor in "
                             f"LEFT_TO_DEFAULTS: {unwired}")
        stale = set(LEFT_TO_DEFAULTS[svc]) - set(extra)
        assert not stale, f"{svc}: LEFT_TO_DEFAULTS names settings the service does not read: {sorted(stale)}"
        contradictions = set(LEFT_TO_DEFAULTS[svc]) & set(env)
        assert not contradictions, f"{svc}: allow-listed as default but set: {sorted(contradictions)}"
        stale = set(SECRET_SETTINGS[svc]) - set(extra)
        assert not stale, f"{svc}: SECRET_SETTINGS names settings the service does not read: {sorted(stale)}"


def test_secret_settings_come_from_their_secrets(objs):
    for svc in SERVICES:
        secret_like = {name for name in definition(svc).extra_settings
                       if SECRET_LIKE.search(name) and name not in NOT_SECRET}
        assert secret_like <= set(SECRET_SETTINGS[svc]), (
            f"{svc}: secret-like settings without a Secret: {sorted(secret_like - set(SECRET_SETTINGS[svc]))}")
        dep, c = service_deployment(objs, svc)
        env = effective_env(objs, c)
        for name, expected in SECRET_SETTINGS[svc].items():
            kind, value = env.get(name, (None, None))
            if kind == "secretKeyRef":
                assert value == expected, f"{svc}: {name} from {value}, expected {expected}"
            else:
                assert kind == "value" and value.startswith("/"), f"{svc}: {name} is neither a Secret nor a file"
                assert secret_file(dep, c, value) == expected, f"{svc}: {name}={value} is not a file of {expected}"
    for cm in of_kind(objs, "ConfigMap"):
        leaked = {name for names in SECRET_SETTINGS.values() for name in names} & set(cm.get("data") or {})
        assert not leaked, f"ConfigMap/{cm['metadata']['name']} carries secret settings {sorted(leaked)}"


def test_each_secret_is_read_only_by_the_workloads_that_need_it(objs):
    consumers: dict[str, set[str]] = {}
    for (name, _), users in secret_references(objs).items():
        consumers.setdefault(name, set()).update(users)
    assert consumers == SECRET_CONSUMERS


def test_every_referenced_secret_is_rendered_or_documented_by_the_overlay(overlay, objs):
    rendered = {s["metadata"]["name"]: {*(s.get("data") or {}), *(s.get("stringData") or {})}
                for s in of_kind(objs, "Secret")}
    kustomization = (K8S_DIR / "overlays" / overlay / "kustomization.yaml").read_text(encoding="utf-8")
    documented = set(DOCUMENTED_SECRET.findall(kustomization))
    operations = (REPO / "docs" / "operations.md").read_text(encoding="utf-8")
    external = set()
    for (name, key), users in secret_references(objs).items():
        assert key is not None, f"{sorted(users)}: a whole Secret {name} imported (list its keys instead)"
        if name in rendered:
            assert key in rendered[name], f"Secret/{name} has no key {key!r} (read by {sorted(users)})"
        else:
            assert (name, key) in documented, (
                f"Secret {name} (key {key}, read by {sorted(users)}) is neither rendered nor listed in "
                f"overlays/{overlay}/kustomization.yaml as 'secret: {name} key: {key}'")
            external.add((name, key))
    assert documented == external, f"overlays/{overlay}: documented but unused Secrets {sorted(documented - external)}"
    for name, _ in external:
        # Per-service Secrets may be documented once for all, as `$svc-db` / `<svc>-db`.
        spellings = {name} | {name.replace(svc, generic, 1) for svc in SERVICES if name.startswith(f"{svc}-")
                              for generic in ("$svc", "<svc>")}
        assert any(s in operations for s in spellings), f"docs/operations.md does not say how to provide {name}"


# ----------------------------------------------------------------------------- values


def _rendered_env(objs, w: dict[str, Any], c: dict[str, Any]) -> dict[str, str]:
    """The environment a pod would get, with placeholders for what the cluster fills in."""
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1"}
    for name, (kind, value) in effective_env(objs, c).items():
        if kind == "value":
            env[name] = value
        elif kind == "secretKeyRef" and name == "DATABASE_URL":
            env[name] = "postgresql+psycopg://lodestar@db.invalid:5432/lodestar"
        else:
            env[name] = f"placeholder-{name.lower()}"
    return env


def test_every_rendered_environment_passes_the_services_start_up_validation(objs):
    for w in workloads(objs):
        (c,) = pod_spec(w)["containers"]
        command = c.get("command", [])
        if command[:2] != ["python", "-m"] or not command[2].startswith("services."):
            continue  # the collector
        svc = command[2].removeprefix("services.")
        # ServiceDefinition.settings_from_env runs the service's validate_settings: what `serve`, `migrate` and
        # `rotate-keys` do first, exiting 2 on a bad value.
        settings = definition(svc).settings_from_env(_rendered_env(objs, w, c))
        assert settings.service_name == svc, wid(w)


def test_base_configmaps_state_the_code_defaults():
    from services.campaign import app as campaign_app
    from services.campaign import dispatch, fairness_gate, holdout, learning_loop, responses, triggers_app
    from services.gateway import forwarder
    from services.risk import config as risk_config
    from services.risk import dsr, fraud, rules

    risk = {k: v for k, v in base_configmap("risk").items() if v}
    for parse in (risk_config.quiet_hours_from, risk_config.contact_policy_from, fraud.policy_from,
                  dsr.settings_from):
        assert parse(risk) == parse({}), f"risk-config: {parse.__name__} differs from the default"
    assert rules.parse_student_rules(risk[rules.STUDENT_RULES_SETTING]) == rules.parse_student_rules(None)

    campaign = base_configmap("campaign")
    assert dispatch.settings_from({k: v for k, v in campaign.items() if v}) == dispatch.settings_from({})
    numbers = {
        campaign_app.SCHEDULER_INTERVAL: campaign_app.DEFAULT_SCHEDULER_INTERVAL_SECONDS,
        campaign_app.LAUNCH_INTERVAL: campaign_app.DEFAULT_LAUNCH_INTERVAL_SECONDS,
        campaign_app.PARTITION_SIZE: campaign_app.DEFAULT_PARTITION_SIZE,
        campaign_app.LAUNCH_CONCURRENCY: campaign_app.DEFAULT_LAUNCH_CONCURRENCY,
        triggers_app.TRIGGER_POLL: triggers_app.DEFAULT_TRIGGER_POLL_SECONDS,
        holdout.SETTING: holdout.DEFAULT_SHARE,
        fairness_gate.THRESHOLD_SETTING: fairness_gate.DEFAULT_THRESHOLD,
        responses.WINDOW_SETTING: responses.DEFAULT_WINDOW_DAYS,
        learning_loop.INTERVAL_SETTING: learning_loop.DEFAULT_INTERVAL_SECONDS,
        dispatch.PROVIDER_TIMEOUT: 5.0,
    }
    for name, default in numbers.items():
        assert float(campaign[name]) == pytest.approx(float(default)), f"campaign-config {name}"
    assert campaign[responses.CURRENCY_SETTING] == responses.DEFAULT_CURRENCY
    assert campaign[learning_loop.AUTO_PROMOTE_SETTING] == "false"
    # Endpoints are placeholders in the base: empty (not configured) until an overlay sets the real ones.
    for name in (dispatch.PROVIDER_URL, *dispatch.PROVIDER_URLS.values(), dispatch.SMTP_HOST, dispatch.SMTP_PORT):
        assert campaign[name] == "", f"campaign-config {name}: the base must not point at a real endpoint"

    gateway = base_configmap("gateway")
    assert float(gateway[forwarder.INTERVAL_SETTING]) == forwarder.DEFAULT_INTERVAL_SECONDS
    assert base_configmap("profile")["PROFILE_PII_REQUIRE_KEYS"] == "true"


# ----------------------------------------------------------------------------- profile PII keys


def _assert_pii_keys_mounted(objs, w: dict[str, Any]) -> None:
    (c,) = pod_spec(w)["containers"]
    env = effective_env(objs, c)
    assert env.get("PROFILE_PII_KEYS") == ("value", PII_KEYS_FILE), f"{wid(w)}: PROFILE_PII_KEYS"
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"] == PII_KEYS_DIR]
    assert len(mounts) == 1 and mounts[0].get("readOnly") is True, f"{wid(w)}: {PII_KEYS_DIR} read-only mount"
    volume = next(v for v in pod_spec(w)["volumes"] if v["name"] == mounts[0]["name"])
    assert volume["secret"]["secretName"] == "profile-pii-keys", wid(w)
    assert volume["secret"].get("optional") is not True, f"{wid(w)}: the keys must not be optional"
    mode = volume["secret"].get("defaultMode", 0o644)
    assert mode & 0o007 == 0, f"{wid(w)}: the key file is world-readable ({mode:o})"
    assert secret_file(w, c, PII_KEYS_FILE) == ("profile-pii-keys", "keys"), wid(w)


def test_profile_reads_its_pii_keys_from_the_mounted_secret(objs):
    _assert_pii_keys_mounted(objs, get(objs, "Deployment", "profile"))


def test_profile_rotate_keys_job_runs_on_demand_like_the_migration(objs):
    rotate, migrate = job(objs, ROTATE_JOB), job(objs, "profile-migrate")
    (c,), (m,) = pod_spec(rotate)["containers"], pod_spec(migrate)["containers"]
    _, server = service_deployment(objs, "profile")
    assert c["command"] == ["python", "-m", "services.profile"] and c["args"] == ["rotate-keys"]
    assert rotate["spec"].get("suspend") is True, "the rotation Job must not run when the overlay is applied"
    labels = rotate["metadata"]["labels"]
    assert labels[LABEL_NAME] == "profile" and labels[LABEL_COMPONENT] not in ("migration", "server")
    assert APPLY_AFTER not in labels
    assert c["image"] == server["image"]
    assert pod_spec(rotate)["serviceAccountName"] == pod_spec(migrate)["serviceAccountName"] == "profile"
    assert pod_spec(rotate)["securityContext"] == pod_spec(migrate)["securityContext"]
    assert c["securityContext"] == m["securityContext"]
    assert pod_spec(rotate)["restartPolicy"] in ("Never", "OnFailure")
    assert isinstance(rotate["spec"].get("backoffLimit"), int)
    assert isinstance(rotate["spec"].get("ttlSecondsAfterFinished"), int)
    rotate_env, server_env = effective_env(objs, c), effective_env(objs, server)
    assert rotate_env["DATABASE_URL"] == server_env["DATABASE_URL"] == ("secretKeyRef", ("profile-db", "url"))
    assert c.get("envFrom") == m.get("envFrom") == server.get("envFrom")
    _assert_pii_keys_mounted(objs, rotate)


def test_only_the_migrations_run_when_an_overlay_is_applied(objs):
    on_demand = {name for names in ON_DEMAND_JOBS.values() for name in names}
    for j in of_kind(objs, "Job"):
        name = j["metadata"]["name"]
        if name in on_demand:
            assert j["spec"].get("suspend") is True, f"Job/{name} must be suspended"
        else:
            assert j["metadata"]["labels"][LABEL_COMPONENT] == "migration", f"Job/{name}: unexpected Job"
            assert not j["spec"].get("suspend"), f"Job/{name}: a migration Job must run"
    assert {j["metadata"]["name"] for j in of_kind(objs, "Job")} >= on_demand


def test_operations_runbooks_cover_the_keys():
    text = (Path(REPO) / "docs" / "operations.md").read_text(encoding="utf-8")
    for needle in ("Rotate the PII master keys", ROTATE_JOB, '"suspend":false', "RISK_DSR_HASH_KEY",
                   "risk-dsr-hash-key", "risk-fraud-hash-key", "profile-pii-keys"):
        assert needle in text, f"docs/operations.md does not mention {needle!r}"
