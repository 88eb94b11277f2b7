"""`lodestar responses record FILE` and `lodestar responses arms CAMPAIGN` against a real campaign server: row
numbers in rejections, idempotent re-recording of the same file, --json output and errors."""

import asyncio
import io
import json
from datetime import UTC, datetime, timedelta

import pytest

from lodestar_cli.main import run
from services.campaign.app import DEFINITION
from services.campaign.db import ArmAssignmentRow, CampaignUnitOfWork
from services.campaign.domain import RUNNING, Arm, Campaign
from tests.integration.test_campaign_launch import DEPOSIT

T0 = datetime(2026, 3, 1, 9, tzinfo=UTC)


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
async def campaign(start, monkeypatch):
    svc = await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                      CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                      CAMPAIGN_LEARNING_INTERVAL_SECONDS="3600")
    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", svc.address)
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        await uow.offers.add(DEPOSIT)
        await uow.campaigns.add(Campaign(
            campaign_id="always", state=RUNNING, segment="segments/all", offer_ids=["dep"], channels=[1],
            arm_selection="THOMPSON_SAMPLING", arms=[Arm("a", 0.5, "A"), Arm("b", 0.5, "B")], created_by="maker",
            start_time=T0))
        uow.session.add(ArmAssignmentRow(campaign_id="always", customer_id="c1", arm_id="a", offer_id="dep",
                                         channel=1, probability=0.5, decision_id="d1", assign_time=T0))
        await uow.commit()
    return svc


async def test_record_a_file_then_read_the_arms(campaign, tmp_path):
    later = (T0 + timedelta(hours=2)).isoformat()
    path = tmp_path / "responses.csv"
    path.write_text("campaign,customer_id,outcome,response_time,revenue,currency_code\n"
                    f"always,c1,converted,{later},99.5,CNY\n"
                    f"campaigns/always,c1,opened,{later},,\n"
                    f"always,c2,clicked,{later},,\n"
                    "always,c1,clicked,yesterday,,\n"
                    f"always,c1,converted,{later},99.5,CNY\n"
                    f"always,c1,applied,{later},3,CNY\n")
    code, out, _ = await cli("responses", "record", str(path), "--json")
    assert code == 0
    first = json.loads(out)
    assert (first["rows"], first["recorded"]) == (6, 2)
    assert first["counts"] == {"DUPLICATE": 1, "INVALID": 2, "NOT_ATTRIBUTED": 1, "RECORDED": 2}
    assert first["rejections"] == [
        {"row": 3, "disposition": "NOT_ATTRIBUTED", "reason": "NO_ASSIGNMENT"},
        {"row": 4, "disposition": "INVALID", "reason": "INVALID_RESPONSE_TIME"},
        {"row": 5, "disposition": "DUPLICATE", "reason": "ALREADY_RECORDED"},
        {"row": 6, "disposition": "INVALID", "reason": "REVENUE_WITHOUT_CONVERSION"},
    ]
    code, out, _ = await cli("responses", "record", str(path), "--json")
    assert code == 0 and json.loads(out) == first  # the same file again: the same answer, nothing new

    code, out, _ = await cli("responses", "arms", "always", "--json")
    arms = {a["arm_id"]: a for a in json.loads(out)["arms"]}
    assert code == 0 and list(arms) == ["a", "b"]
    assert (arms["a"]["assigned"], arms["a"]["converted"], arms["a"]["opened"], arms["a"]["revenue"]) == (
        "1", "1", "1", 99.5)
    code, out, _ = await cli("responses", "arms", "always")
    assert code == 0 and "P(BEST)" in out and "REVENUE (CNY)" in out


async def test_errors_are_rendered(campaign, tmp_path):
    code, out, _ = await cli("responses", "arms", "nope", "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "CAMPAIGN_NOT_FOUND"
    code, out, _ = await cli("responses", "record", str(tmp_path / "missing.csv"), "--json")
    assert code == 1 and json.loads(out)["error"]["reason"] == "FILE_NOT_FOUND"
