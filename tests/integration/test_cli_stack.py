"""The local stack end to end: the four services as processes on free ports, the demo bank loaded through the
public RPCs, and the `lodestar` CLI (in a subprocess) talking to them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lodestar_cli.demo import DEMO_CUSTOMER_ID, is_empty, load_demo
from lodestar_cli.stack import START_ORDER, Stack

pytestmark = pytest.mark.e2e

ALL_FREE_PORTS = {service: 0 for service in START_ORDER}


def cli(stack: Stack, *args: str, api_key: str = "") -> tuple[int, dict, str]:
    env = {**os.environ, **{f"{s.upper()}_SERVICE_ADDR": a for s, a in stack.addresses.items()}}
    env.pop("LODESTAR_API_KEY", None)
    if api_key:
        env["LODESTAR_API_KEY"] = api_key
    done = subprocess.run(
        [sys.executable, "-m", "lodestar_cli", *args], env=env, capture_output=True, text=True, timeout=60
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got {done.stdout!r} (stderr {done.stderr!r})"
    return done.returncode, json.loads(lines[0]), done.stderr


@pytest.fixture
def stack(tmp_path: Path):
    with Stack(tmp_path / "var", ALL_FREE_PORTS) as running:
        running.wait_serving(timeout=60)
        yield running


def test_stack_serves_the_demo_bank_to_the_cli(stack: Stack, tmp_path: Path) -> None:
    assert set(stack.addresses) == set(START_ORDER)
    assert len({a for a in stack.addresses.values()}) == 4
    assert stack.health() == {s: "SERVING" for s in START_ORDER}
    assert is_empty(stack.addresses["profile"])

    info = load_demo(stack.addresses, stack.admin_token)
    assert info.customers == 200 and info.offers >= 5
    assert info.customer_ref and info.customer_ref != DEMO_CUSTOMER_ID
    assert info.api_key
    assert not is_empty(stack.addresses["profile"])

    # Loading again duplicates nothing and still hands out a working key for the same pseudonym.
    again = load_demo(stack.addresses, stack.admin_token)
    assert again.customer_ref == info.customer_ref
    assert again.api_key != info.api_key

    code, body, _ = cli(stack, "partner", "offers", info.customer_ref, "--json", api_key=again.api_key)
    assert code == 0, body
    assert len(body["offers"]) >= 1, body
    offer_ids = {offer["offer_id"] for offer in body["offers"]}
    assert offer_ids <= {"card-everyday-rewards", "loan-flexi-personal", "instalment-checkout-12m",
                         "deposit-12m-fixed", "wealth-balanced-fund", "bond-savings-3y", "wealth-growth-equity"}
    # demo-0001 is C4: the R5 product is never offered to them.
    assert "wealth-growth-equity" not in offer_ids

    code, body, _ = cli(stack, "customers", "get", DEMO_CUSTOMER_ID, "--json")
    assert code == 0, body
    customer = body["customer"]
    assert customer["customer_id"] == DEMO_CUSTOMER_ID
    assert customer["attributes"]["risk_tolerance"] == {"string_value": "C4"}
    assert customer["attributes"]["in_collections"] == {"bool_value": False}
    assert "***" in customer["email"], "personal data is masked unless --show-pii"

    code, body, _ = cli(stack, "customers", "get", "", "--json")
    assert code == 1
    assert body["error"]["code"] == "INVALID_ARGUMENT"
    assert body["error"]["reason"] == "INVALID_NAME"

    code, body, _ = cli(stack, "customers", "get", "demo-9999", "--json")
    assert code == 1
    assert body["error"]["code"] == "NOT_FOUND"
    assert body["error"]["reason"] == "CUSTOMER_NOT_FOUND"

    code, body, _ = cli(stack, "partner", "offers", info.customer_ref, "--json", api_key="not-a-key")
    assert code == 1
    assert body["error"]["code"] == "UNAUTHENTICATED"

    code, body, _ = cli(stack, "health", "--json")
    assert code == 0 and body["ok"] is True

    codes = stack.stop()
    assert codes == {s: 0 for s in reversed(START_ORDER)}, "every service stops cleanly on SIGTERM"
    for service in START_ORDER:
        assert stack.log_path(service).stat().st_size > 0
    # Spans are flushed on shutdown: the partner call left a trace in the gateway's file.
    assert stack.trace_path("gateway").exists() and stack.trace_path("gateway").stat().st_size > 0


def test_a_service_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "var", ALL_FREE_PORTS, extra_env={"LOG_LEVEL": "LOUD"})
    with pytest.raises(Exception) as failure:
        stack.start(timeout=30)
    message = str(failure.value)
    assert "profile exited early" in message
    assert "LOG_LEVEL" in message, "the tail of the service's log explains why"
    assert stack.running() == {}
