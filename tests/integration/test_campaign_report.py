"""GetCampaignReport and `lodestar report`: the report assembled from a real launch (fakes for profile's export and
risk's ScreenBatch), responses inserted as rows, exact counts per arm, the total effect of marketing against the
global holdout, fairness per group, and the HTML and JSON outputs."""

import asyncio
import io
import json
from collections import Counter
from datetime import UTC, datetime

import grpc
import pytest
from sqlalchemy import select

from lodestar.campaign.v1 import campaign_report_pb2, campaign_report_pb2_grpc
from services.campaign.app import DEFINITION
from services.campaign.batch_decisions import unpack
from services.campaign.db import BatchDecisionRow, OutboxRow, ResponseRow
from services.campaign.evaluation import proportion_uplift, qini_curve
from services.campaign.holdout import GlobalHoldout
from tests.helpers import expect_error, stored_partitions
from tests.integration.test_campaign_launch import FakeAudience, FakeRisk, add_campaign, members, service

HELD = {"c00041", "c00043", "c00092", "c00181"}  # the 2% global holdout among c00000..c00199


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                       CAMPAIGN_TRIGGER_POLL_SECONDS="3600", CAMPAIGN_GLOBAL_HOLDOUT_SHARE="0.02")


class FakeMembers:
    """Profile's view of the audience: age band by the customer number's parity."""

    async def members(self, segment, as_of=None):
        ids = sorted(members(200))
        return ids, {"age_band": ["18-24" if int(c[1:]) % 2 else "65+" for c in ids]}


async def rows(svc, model, *where):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model).where(*where)))


async def launched(svc):
    await add_campaign(svc, control=0.2, arms=(("a", 0.4), ("b", 0.4)))
    launches = service(svc, FakeAudience(members(200)), FakeRisk(), size=50)
    launches.holdout = GlobalHoldout(0.02)
    launch = await launches.launch("spring", "ops-1", None)
    await launches.run_until_idle()
    groups = {}
    for result in await stored_partitions(svc.runtime.database):
        groups.update({str(c): int(g) for c, g in zip(result.member_ids, result.groups, strict=True)})
    return launch.launch_id, groups


async def respond(svc, customer, arm, outcome, revenue=0.0):
    now = datetime.now(UTC)
    async with svc.runtime.database.sessionmaker() as session:
        session.add(ResponseRow(campaign_id="spring", arm_id=arm, customer_id=customer, offer_id="dep",
                                outcome=outcome, response_time=now, response_day=now.date().isoformat(),
                                contact_time=now, revenue=revenue, currency_code="CNY"))
        await session.commit()


async def test_the_report_counts_every_group_and_the_total_effect(svc):
    _, groups = await launched(svc)
    names = {-2: "global_holdout", -1: "control", 0: "a", 1: "b"}
    assigned = Counter(names[g] for g in groups.values())
    assert assigned["global_holdout"] == 4 and {c for c, g in groups.items() if g == -2} == HELD
    outbox = await rows(svc, OutboxRow)
    sent = Counter(o.arm_id for o in outbox)
    a_customers = sorted(o.customer_id for o in outbox if o.arm_id == "a")
    control = sorted(c for c, g in groups.items() if g == -1)
    for customer in a_customers[:10]:
        await respond(svc, customer, "a", "CONVERTED", 100.0)
    for customer in a_customers[:6]:
        await respond(svc, customer, "a", "OPENED")
    for customer in a_customers[:2]:
        await respond(svc, customer, "a", "CLICKED")
    for customer in control[:3]:
        await respond(svc, customer, "control", "CONVERTED", 50.0)
    await respond(svc, "c00041", "global_holdout", "CONVERTED", 20.0)
    svc.runtime.components["reports"].composition = FakeMembers()

    stub = campaign_report_pb2_grpc.CampaignReportServiceStub(grpc.aio.insecure_channel(svc.address))
    response = await stub.GetCampaignReport(campaign_report_pb2.GetCampaignReportRequest(
        campaign="campaigns/spring", include_html=True))
    data = json.loads(response.report_json)
    arms = {a["arm_id"]: a for a in data["evaluation"]["arms"]}
    assert {k: (v["assigned"], v["sent"], v["opened"], v["clicked"], v["converted"], v["revenue"])
            for k, v in arms.items()} == {
        "a": (assigned["a"], sent["a"], 6, 2, 10, 1000.0), "b": (assigned["b"], sent["b"], 0, 0, 0, 0.0),
        "control": (assigned["control"], 0, 0, 0, 3, 150.0)}
    assert arms["a"]["delivered"] == sent["a"]  # no delivery status yet: counted as delivered, and said so
    assert any("no delivery status" in w for w in data["evaluation"]["warnings"])
    assert arms["a"]["cost"] == pytest.approx(sent["a"] * 1.0)  # the deposit's contact cost
    comparison = {c["arm_id"]: c for c in data["evaluation"]["comparisons"]}["a"]["conversion"]
    expected = proportion_uplift(10, assigned["a"], 3, assigned["control"])
    assert comparison["difference"] == pytest.approx(expected.difference)
    assert comparison["p_value"] == pytest.approx(expected.p_value)
    # The total effect: everyone the campaign assigned (196) against the 4 held out.
    total = data["total_effect"]
    marketed = assigned["a"] + assigned["b"] + assigned["control"]
    effect = proportion_uplift(13, marketed, 1, 4)
    assert (total["marketed"], total["marketed_converted"], total["holdout"], total["holdout_converted"]) == (
        marketed, 13, 4, 1)
    assert total["difference"] == pytest.approx(effect.difference) and total["p_value"] == pytest.approx(
        effect.p_value)
    # Deciles over the contacted customers; the daily trend; fairness per age band (holdout members left out).
    assert len(data["deciles"]) == 10 and sum(d["responders"] for d in data["deciles"]) == 10
    assert sum(p["sent"] for p in data["daily"]) == len(outbox)
    assert sum(p["converted"] for p in data["daily"] if p["arm_id"] == "a") == 10
    (age,) = data["fairness"]
    by_group = {g["group"]: g for g in age["groups"]}
    odd = {c for c in groups if int(c[1:]) % 2 and c not in HELD}
    contacted = {o.customer_id for o in outbox}
    assert (by_group["18-24"]["eligible"], by_group["18-24"]["targeted"]) == (len(odd), len(contacted & odd))
    assert by_group["65+"]["eligible"] == 196 - len(odd)
    # Qini over treated and control members, scored by their best offer's probability in the decision records.
    scores, treated, outcomes = [], [], []
    converted = set(a_customers[:10]) | set(control[:3])
    for record in await rows(svc, BatchDecisionRow, BatchDecisionRow.number > 0):
        doc = unpack(record.records)
        for customer, group, probabilities in zip(doc["ids"], doc["groups"], doc["probability"], strict=True):
            if group != -2:
                scores.append(max(probabilities))
                treated.append(int(group >= 0))
                outcomes.append(int(customer in converted))
    assert len(scores) == 196
    assert data["qini"]["coefficient"] == pytest.approx(qini_curve(scores, treated, outcomes).coefficient)
    assert len(data["qini"]["points"]) == 11 and 'id="chart-qini"' in response.html
    # The HTML report: one document with its charts and the total effect.
    html = response.html
    assert html.startswith("<!DOCTYPE html>") and 'id="chart-funnel"' in html and 'id="total-effect"' in html
    assert "<script" not in html and "<link" not in html and 'src="http' not in html


async def test_a_campaign_without_a_launch_reports_zeros_and_unknown_is_not_found(svc):
    await add_campaign(svc, control=0.2, arms=(("a", 0.8),))
    stub = campaign_report_pb2_grpc.CampaignReportServiceStub(grpc.aio.insecure_channel(svc.address))
    data = json.loads((await stub.GetCampaignReport(campaign_report_pb2.GetCampaignReportRequest(
        campaign="campaigns/spring"))).report_json)
    assert [(a["arm_id"], a["assigned"]) for a in data["evaluation"]["arms"]] == [("a", 0), ("control", 0)]
    assert data["total_effect"] is None and data["evaluation"]["comparisons"] == []
    await expect_error(stub.GetCampaignReport(campaign_report_pb2.GetCampaignReportRequest(
        campaign="campaigns/nope")), grpc.StatusCode.NOT_FOUND, "CAMPAIGN_NOT_FOUND")
    await expect_error(stub.GetCampaignReport(campaign_report_pb2.GetCampaignReportRequest(campaign="spring")),
                       grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME")


async def test_the_cli_writes_the_html_report_and_prints_json(svc, tmp_path, monkeypatch):
    from lodestar_cli.main import run

    await launched(svc)
    monkeypatch.setenv("CAMPAIGN_SERVICE_ADDR", svc.address)
    target = tmp_path / "spring.html"

    async def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        code = await asyncio.to_thread(run, list(argv), out, err)
        return code, out.getvalue()

    code, printed = await cli("report", "spring", "--html", str(target), "--json")
    data = json.loads(printed)
    assert code == 0 and data["html_file"] == str(target) and data["campaign_id"] == "spring"
    assert target.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    code, text = await cli("report", "spring")
    assert code == 0 and "ASSIGNED" in text and "total effect of marketing" in text
    code, printed = await cli("report", "nope", "--json")
    assert code == 1 and json.loads(printed)["error"]["reason"] == "CAMPAIGN_NOT_FOUND"
