"""`lodestar segments ...` and `lodestar clusters run` against a real profile service."""

import asyncio
import csv
import io
import json

import grpc
import pytest

from lodestar_cli.main import run
from services.profile.app import DEFINITION
from tests.integration.test_profile_segments import PEOPLE, Stubs, _load


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


async def test_preview_create_list_snapshot_export(profile, tmp_path):
    code, out, _ = await cli("segments", "preview", 'region = "CN-31" and income >= 8000', "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["count"], data["sample_customer_ids"]) == (3, ["c-01", "c-04", "c-06"])

    code, out, _ = await cli("segments", "preview", 'region = "CN-31"')
    assert code == 0 and out.startswith("5 customers match")

    code, out, _ = await cli("segments", "preview", "age between 25 35", "--json")
    error = json.loads(out)["error"]
    assert (code, error["code"], error["reason"]) == (1, "INVALID_ARGUMENT", "CONDITION_SYNTAX_ERROR")

    code, out, _ = await cli("segments", "create", "gold", "--condition", 'tier = "gold"', "--kind", "static",
                             "--json")
    assert code == 0 and json.loads(out)["member_count"] == 3
    code, out, _ = await cli("segments", "list", "--json")
    assert [s["segment_id"] for s in json.loads(out)["segments"]] == ["gold"]
    code, out, _ = await cli("segments", "snapshot", "gold", "--json")
    assert code == 0 and json.loads(out)["kind"] == "static"
    code, out, _ = await cli("segments", "get", "gold", "--json")
    assert json.loads(out)["condition"] == 'attr.tier = "gold"'

    target = tmp_path / "gold.csv"
    code, out, _ = await cli("segments", "export", "gold", "--fields", "region,income", "--out", str(target),
                             "--batch-size", "2", "--json")
    assert code == 0 and json.loads(out)["exported"] == 3 and json.loads(out)["batches"] == 2
    rows = list(csv.reader(target.open()))
    gold = {p[0]: p for p in PEOPLE if p[4] == "gold"}
    assert rows[0] == ["customer_id", "region", "income"]
    assert [r[0] for r in rows[1:]] == sorted(gold)
    assert rows[1] == ["c-01", "CN-31", "12000.5"]

    code, out, _ = await cli("segments", "delete", "gold", "--json")
    assert code == 0
    code, out, _ = await cli("segments", "get", "gold", "--json")
    assert json.loads(out)["error"]["reason"] == "SEGMENT_NOT_FOUND"


async def test_clusters_run(profile):
    code, out, _ = await cli("clusters", "run", "--fields", "income,region", "--k", "2", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["k"] == 2 and sum(c["size"] for c in data["clusters"]) == len(PEOPLE)
    assert all(len(c["traits"]) == 2 for c in data["clusters"])  # two fields: at most two traits
