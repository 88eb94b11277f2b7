"""`lodestar aml scan | alerts | cases | case | rules` against a real risk service."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from lodestar_cli.main import run
from services.risk.app import DEFINITION

HEADER = "transaction_id,customer_id,occurred_at,amount,currency,direction,country,counterparty,channel\n"


async def cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def risk(start: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    svc = await start(DEFINITION)
    monkeypatch.setenv("RISK_SERVICE_ADDR", svc.address)
    return svc


async def test_scan_alerts_cases_and_case_update(risk: Any, tmp_path: Path) -> None:
    day = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0, tzinfo=None)
    rows = [f"t-{k},cust-1,{(day + timedelta(hours=4 * k)).isoformat()},49000.00,CNY,in,CN,,branch" for k in range(3)]
    rows += [f"t-9,cust-2,{day.isoformat()}Z,100,CNY,sideways,CN,,", "t-10,cust-2,,5,CNY,in,,,"]
    path = tmp_path / "tx.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n")
    code, out, _ = await cli("aml", "scan", str(path), "--json", "--batch-size", "2")
    result = json.loads(out)
    assert code == 1  # two rows could not be read
    assert {k: result[k] for k in ("accepted", "duplicates", "batches", "alerts", "cases_opened", "failed")} == {
        "accepted": 3, "duplicates": 0, "batches": 2, "alerts": 1, "cases_opened": 1, "failed": 2}
    assert result["errors"] == [{"row": 5, "reason": "direction must be in or out"},
                                {"row": 6, "reason": "occurred_at is required"}]

    code, out, _ = await cli("aml", "alerts", "--json", "--rule", "structuring")
    [alert] = json.loads(out)["alerts"]
    assert (code, alert["customer_id"], alert["rule"], alert["reasons"], alert["transaction_ids"]) == (
        0, "cust-1", "STRUCTURING", ["STRUCTURING_BELOW_THRESHOLD"], ["t-0", "t-1", "t-2"])

    code, out, _ = await cli("aml", "cases", "--json", "--state", "open")
    [case] = json.loads(out)["cases"]
    assert (case["name"], case["state"], case["alert_count"]) == (alert["case"], "OPEN", 1)
    case_id = case["name"].split("/")[1]
    code, out, _ = await cli("aml", "case", case_id, "--state", "investigating", "--actor", "inv-1", "--json")
    assert (code, json.loads(out)["state"], json.loads(out)["actor"]) == (0, "INVESTIGATING", "inv-1")
    code, out, _ = await cli("aml", "case", case_id, "--state", "open", "--actor", "inv-1", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "INVALID_CASE_TRANSITION"
    code, out, _ = await cli("aml", "cases")
    assert code == 0 and "INVESTIGATING" in out and case["name"] in out


async def test_rules_show_and_set(risk: Any, tmp_path: Path) -> None:
    code, out, _ = await cli("aml", "rules", "--json")
    rules = json.loads(out)
    assert code == 0 and rules["version"] == "default" and rules["structuring"]["window"] == "259200s"
    rules["structuring"]["reporting_threshold"] = 10000
    for key in ("version", "actor", "update_time"):
        rules.pop(key, None)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    code, out, _ = await cli("aml", "rules", "--set", str(path), "--actor", "mlro-1", "--json")
    assert code == 0 and json.loads(out)["version"] == "1"
    assert json.loads(out)["structuring"]["reporting_threshold"] == 10000
    rules["structuring"]["window"] = "0s"
    path.write_text(json.dumps(rules))
    code, out, _ = await cli("aml", "rules", "--set", str(path), "--actor", "mlro-1", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "INVALID_WINDOW"
