# ruff: noqa: F811 - pytest fixtures imported from test_gateway_service are redefined as parameters
"""`lodestar partners ...` against an in-process gateway: every admin command, in text and --json."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import pytest

from lodestar_cli.main import run
from services.gateway import auth
from services.gateway.app import DEFINITION
from tests.integration.test_gateway_service import ADMIN_TOKEN, CUSTOMER, fake_campaign  # noqa: F401 - fixture


@pytest.fixture
async def address(start: Any, fake_campaign: Any, monkeypatch: pytest.MonkeyPatch) -> str:
    running = await start(DEFINITION, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN, CAMPAIGN_SERVICE_ADDR=fake_campaign[1])
    monkeypatch.setenv("GATEWAY_SERVICE_ADDR", running.address)
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    return str(running.address)


async def cli(*argv: str) -> tuple[int, Any]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, [*argv, "--json"], out, err)
    return code, json.loads(out.getvalue())


async def test_partner_admin_commands(address: str) -> None:
    code, body = await cli("partners", "create", "acme", "--display-name", "Acme Shop")
    assert code == 0 and body["partner"]["name"] == "partners/acme"
    code, body = await cli("partners", "list")
    assert [p["partner_id"] for p in body["partners"]] == ["acme"]
    code, body = await cli("partners", "scopes", "set", "acme", "offers:read", "leads:write")
    assert body["policy"]["scopes"] == ["leads:write", "offers:read"]
    code, body = await cli("partners", "offers", "set", "acme", "*")
    assert body["policy"]["offer_ids"] == ["*"]
    code, body = await cli("partners", "quota", "set", "acme", "--rate", "5", "--burst", "10", "--daily", "500")
    assert body["policy"]["quota"] == {"rate_per_second": 5.0, "burst": 10, "daily_quota": "500"}
    code, body = await cli("partners", "key", "create", "acme")
    first = body["key_id"]
    assert auth.parse_api_key(body["api_key"]).key_id == first
    code, body = await cli("partners", "key", "rotate", "acme", first, "--overlap-seconds", "60")
    second = body["key_id"]
    assert body["previous_key"]["state"] == "API_KEY_STATE_EXPIRING"
    code, body = await cli("partners", "key", "revoke", "acme", second)
    assert body["api_key"]["state"] == "API_KEY_STATE_REVOKED"
    code, body = await cli("partners", "key", "list", "acme")
    assert [(k["key_id"], k["state"]) for k in body["api_keys"]] == [
        (first, "API_KEY_STATE_EXPIRING"), (second, "API_KEY_STATE_REVOKED")]
    assert "api_key" not in json.dumps(body["api_keys"])
    code, body = await cli("partners", "pseudonym", "acme", CUSTOMER)
    assert code == 0 and body["customer_ref"].startswith("p_")
    code, body = await cli("partners", "policy", "acme")
    assert body["policy"]["partner"] == "partners/acme"


async def test_errors_render_as_json(address: str) -> None:
    code, body = await cli("partners", "scopes", "set", "nobody", "offers:read")
    assert code == 1 and body["error"]["code"] == "NOT_FOUND" and body["error"]["reason"] == "PARTNER_NOT_FOUND"
    await cli("partners", "create", "acme", "--display-name", "Acme")
    code, body = await cli("partners", "scopes", "set", "acme", "root")
    assert code == 1 and body["error"]["reason"] == "UNKNOWN_SCOPE"
