"""Contract tests: the protos lint clean (buf STANDARD) and follow the API conventions the services rely on."""

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor

ROOT = Path(__file__).resolve().parents[2]
BUF = Path(sys.executable).parent / "buf"

# Mutating RPCs that need no request_id, and why.
NO_REQUEST_ID = {
    # Minting a key is not replayable by design: a retry must give a new key, never re-show an old secret.
    "lodestar.gateway.v1.GatewayAdminService.CreateApiKey",
    # Naturally idempotent: the same partner and customer always get the same pseudonym.
    "lodestar.gateway.v1.GatewayAdminService.IssuePseudonym",
    # Like CreateApiKey: a replay would have to show the stored secret again.
    "lodestar.gateway.v1.GatewayAdminService.RotateApiKey",
    # Naturally idempotent: revoking twice leaves the same state and keeps the first revocation time.
    "lodestar.gateway.v1.GatewayAdminService.RevokeApiKey",
    # A stream keyed by (import_id, batch_number): import_id is the stream's idempotency key, committed batches
    # are skipped and their outcome replayed on a resumed import.
    "lodestar.profile.v1.ProfileService.ImportCustomers",
}
MUTATING_PREFIXES = ("Create", "Update", "Delete", "Record", "Upsert", "Submit", "Report", "Add", "Remove",
                     "Import", "Ingest", "Rotate", "Revoke", "Reserve", "Confirm", "Release", "Approve",
                     "Submit", "Cancel", "Pause", "Resume", "Launch", "Schedule")


def all_services() -> list[descriptor.ServiceDescriptor]:
    import lodestar  # a namespace package (generated code has no __init__.py): walk the files

    services = []
    for root in lodestar.__path__:
        for path in sorted(Path(root).rglob("*_pb2.py")):
            name = ".".join(("lodestar", *path.relative_to(root).with_suffix("").parts))
            services += list(importlib.import_module(name).DESCRIPTOR.services_by_name.values())
    return services


def test_buf_lint_is_clean():
    buf = str(BUF) if BUF.exists() else shutil.which("buf")
    if buf is None:
        pytest.fail("buf not installed: `make setup` installs buf-bin into .venv")
    done = subprocess.run([buf, "lint", "protos"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_service_is_versioned_and_suffixed():
    services = all_services()
    assert {s.full_name.split(".")[1] for s in services} >= {"profile", "campaign", "risk", "gateway"}
    for service in services:
        package = service.file.package
        assert package.startswith("lodestar.") and package.split(".")[-1] == "v1", service.full_name
        assert service.name.endswith("Service"), service.full_name


def test_mutating_rpcs_take_a_request_id():
    missing = []
    for service in all_services():
        for method in service.methods:
            full = f"{service.full_name}.{method.name}"
            if method.name.startswith(MUTATING_PREFIXES) and full not in NO_REQUEST_ID:
                if "request_id" not in method.input_type.fields_by_name:
                    missing.append(full)
    assert missing == [], f"mutating RPCs without request_id (AIP-155): {missing}"


def test_list_rpcs_paginate():
    for service in all_services():
        for method in service.methods:
            if method.name.startswith("List"):
                assert {"page_size", "page_token"} <= set(method.input_type.fields_by_name), method.full_name
                assert "next_page_token" in method.output_type.fields_by_name, method.full_name


def test_each_rpc_has_its_own_request_and_response():
    seen: dict[str, str] = {}
    for service in all_services():
        for method in service.methods:
            for message in (method.input_type, method.output_type):
                if message.full_name.startswith("google."):
                    continue
                assert message.full_name not in seen, f"{message.full_name} used by {seen[message.full_name]} " \
                                                       f"and {method.full_name}"
                seen[message.full_name] = method.full_name
