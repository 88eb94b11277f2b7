"""`lodestar tags define|list|delete|set|run|status` against a real profile service."""

import asyncio
import io
import json

import grpc
import pytest

from lodestar_cli.main import run
from services.profile.app import DEFINITION
from tests.integration.test_tag_service import Stubs, _load


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def profile(start, monkeypatch):
    svc = await start(DEFINITION)
    monkeypatch.setenv("PROFILE_SERVICE_ADDR", svc.address)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        await _load(Stubs(svc, channel))
    return svc


async def test_define_list_run_status_set_delete(profile):
    code, out, _ = await cli("tags", "define", "big", "--tag", "spend_band", "--value", "high",
                             "--condition", "sum(txn.amount,90d) > 5000", "--json")
    assert code == 0
    assert json.loads(out) | {"create_time": None} == {
        "name": "tagDefinitions/big", "definition_id": "big", "tag": "spend_band", "value": "high",
        "condition": "sum(txn.amount, 90d) > 5000", "description": "", "create_time": None}
    code, out, _ = await cli("tags", "define", "bad", "--tag", "x", "--value", "y", "--condition", "income >",
                             "--json")
    error = json.loads(out)["error"]
    assert (code, error["code"], error["reason"]) == (1, "INVALID_ARGUMENT", "CONDITION_SYNTAX_ERROR")
    code, out, _ = await cli("tags", "list", "--json")
    assert [d["definition_id"] for d in json.loads(out)["definitions"]] == ["big"]
    code, out, _ = await cli("tags", "list")
    assert code == 0 and "spend_band" in out and "DEFINITION" in out

    code, out, _ = await cli("tags", "run", "--chunk-size", "2", "--json")
    assert (code, json.loads(out)["error"]["reason"]) == (1, "OUT_OF_RANGE")
    await profile.runtime.components["tags"].start_job("j1", None, 2)  # small chunks: only through the service
    code, out, err = await cli("tags", "run", "--job-id", "j1", "--json")
    data = json.loads(out)
    assert code == 0 and err == ""
    assert (data["state"], data["processed_customers"], data["total_customers"], data["chunks_done"]) == (
        "succeeded", 7, 7, 4)
    code, out, _ = await cli("tags", "status", "j1")
    assert code == 0 and out.startswith("tagJobs/j1: succeeded, 7/7 customers in 4 chunks")
    code, out, _ = await cli("tags", "status", "nope", "--json")
    assert (code, json.loads(out)["error"]["reason"]) == (1, "TAG_JOB_NOT_FOUND")
    code, out, _ = await cli("segments", "preview", 'tag.spend_band = "high"', "--json")
    assert json.loads(out)["sample_customer_ids"] == ["c-03", "c-04"]

    code, out, _ = await cli("tags", "set", "c-01", "--tag", "churn_risk=high", "--source", "campaign", "--json")
    assert (code, json.loads(out)) == (0, {"customers": 1, "tags": 1})
    code, out, _ = await cli("tags", "get", "c-01", "--json")  # events.py's command still lives in the group
    assert code == 0 and {t["name"] for t in json.loads(out)["tags"]} >= {"value_tier", "age_band"}
    code, out, _ = await cli("tags", "delete", "big", "--json")
    assert (code, json.loads(out)) == (0, {"deleted": "tagDefinitions/big"})
    code, out, _ = await cli("segments", "preview", 'tag.spend_band = "high"', "--json")
    assert json.loads(out)["count"] == 0
