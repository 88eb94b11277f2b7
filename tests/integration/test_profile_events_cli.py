"""`lodestar events import`, `features get`, `tags get` against a real profile service."""

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from lodestar_cli.main import run
from services.profile.app import DEFINITION

HEADER = "event_id,customer_id,kind,occurred_at,amount,currency,merchant_category,channel,direction,action,days_late,"
CSV = HEADER + """product,campaign_id,response
e-1,c-1,transaction,{d10}+08:00,120.50,CNY,groceries,pos,debit,,,,,
e-2,c-1,transaction,{d9},80,CNY,travel,online,,,,,,
e-3,c-1,digital_activity,{d9}Z,,,,app,,login,,,,
e-4,c-1,repayment,{d8}Z,300,,,,,,5,consumer_loan,,
e-5,c-2,campaign_response,{d8}Z,,,,,,,,,cmp-1,clicked
e-6,c-1,transaction,not-a-time,1,CNY,groceries,pos,,,,,,
e-7,c-1,transaction,{d8}Z,-5,CNY,groceries,pos,,,,,,
e-8,c-1,teleport,{d8}Z,,,,,,,,,,
"""


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def profile(start, monkeypatch):
    svc = await start(DEFINITION)
    monkeypatch.setenv("PROFILE_SERVICE_ADDR", svc.address)
    return svc


async def test_import_reports_counts_and_bad_rows_then_features_and_tags(profile, tmp_path):
    path = tmp_path / "events.csv"
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    path.write_text(CSV.format(**{f"d{n}": (now - timedelta(days=n)).isoformat() for n in (8, 9, 10)}))
    code, out, _ = await cli("events", "import", str(path), "--json", "--batch-size", "3")
    result = json.loads(out)
    assert code == 1  # some rows failed
    assert (result["imported"], result["duplicates"], result["failed"]) == (5, 0, 3)
    assert [(e["row"], e["field"]) for e in result["errors"]] == [
        (7, ""), (8, "transaction.amount"), (9, "")]
    code, out, _ = await cli("events", "import", str(path), "--json")
    assert json.loads(out)["duplicates"] == 5 and json.loads(out)["imported"] == 0

    as_of = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    code, out, _ = await cli("features", "get", "c-1", "--as-of", as_of.isoformat(), "--json")
    data = json.loads(out)
    assert code == 0 and data["as_of"] == as_of.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert data["features"]["monetary_90d"] == 200.5
    assert data["features"]["repayment_max_days_late_365d"] == 5
    assert data["products_held"] == ["consumer_loan"]
    # Point in time: as of a moment before the import nothing was known of c-1.
    code, out, _ = await cli("features", "get", "c-1", "--as-of", (now - timedelta(days=1)).isoformat(), "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "CUSTOMER_NOT_FOUND"

    code, out, _ = await cli("features", "get", "nobody", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "CUSTOMER_NOT_FOUND"

    code, out, _ = await cli("tags", "get", "c-1", "--json")
    assert code == 0 and json.loads(out)["tags"] == []
    code, out, _ = await cli("tags", "get", "c-1", "--compute", "--json")
    tags = {t["name"]: t["value"] for t in json.loads(out)["tags"]}
    assert (tags["value_tier"], tags["lifecycle_stage"], tags["region_tier"]) == ("low", "new", "unknown")
    assert len(tags) == 7
    code, out, _ = await cli("tags", "get", "c-1")
    assert code == 0 and "lifecycle_stage" in out and "COMPUTED AT" in out
