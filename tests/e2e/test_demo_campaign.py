"""`make run`'s demo end to end: the four services as processes with the stack's provider simulator, then
`lodestar demo load` (in a subprocess), which loads the demo bank and runs the demo campaign `demo-welcome` —
segment, maker-checker approval (content and fairness gates), launch, dispatch, simulated receipts and responses —
and `lodestar report demo-welcome` on the result. Running `demo load` again must duplicate nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest

from lodestar.campaign.v1 import campaign_pb2, launch_pb2
from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import response_service_pb2 as rpb
from lodestar.campaign.v1 import response_service_pb2_grpc as rpbg
from lodestar_cli import demo_campaign
from lodestar_cli.demo import demo_customers
from lodestar_cli.stack import START_ORDER, Stack
from services.campaign.channels.base import key_digest

pytestmark = pytest.mark.e2e

FAST = {"DRAIN_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "1", "LOG_LEVEL": "WARNING",
        "CAMPAIGN_LAUNCH_POLL_SECONDS": "0.1", "CAMPAIGN_DISPATCH_POLL_SECONDS": "0.1",
        "CAMPAIGN_GLOBAL_HOLDOUT_SHARE": "0",
        # Quiet hours off: what is sent must not depend on the time of day the test runs at.
        "RISK_QUIET_HOURS_START": "00:00", "RISK_QUIET_HOURS_END": "00:00"}


@pytest.fixture
def stack(tmp_path: Path):
    with Stack(tmp_path / "var", dict.fromkeys(START_ORDER, 0), extra_env=FAST) as running:
        running.wait_serving(timeout=90)
        yield running


def cli(stack: Stack, cwd: Path, *args: str) -> tuple[int, dict]:
    env = {**os.environ, **{f"{s.upper()}_SERVICE_ADDR": a for s, a in stack.addresses.items()},
           "GATEWAY_ADMIN_TOKEN": stack.admin_token, "RISK_QUIET_HOURS_START": "00:00",
           "RISK_QUIET_HOURS_END": "00:00"}
    done = subprocess.run([sys.executable, "-m", "lodestar_cli", *args, "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=120)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, f"--json must print exactly one line, got {done.stdout!r} (stderr {done.stderr!r})"
    return done.returncode, json.loads(lines[0])


def received(stack: Stack) -> list[dict]:
    with urllib.request.urlopen(stack.sink_addresses["provider"] + "/v1/received", timeout=5) as answer:  # nosec B310
        return list(json.loads(answer.read())["messages"])


def outbox(stack: Stack, launch_id: str) -> list[launch_pb2.OutboxMessage]:
    with grpc.insecure_channel(stack.addresses["campaign"]) as ch:
        page = cpbg.CampaignServiceStub(ch).ListOutbox(cpb.ListOutboxRequest(
            launch=f"launches/{launch_id}", page_size=1000), timeout=10)
    assert not page.next_page_token
    return list(page.messages)


def test_demo_runs_a_campaign_from_launch_to_report_and_again_without_duplicates(stack: Stack,
                                                                                 tmp_path: Path) -> None:
    code, body = cli(stack, tmp_path, "demo", "load")
    assert code == 0, body
    run = body["demo_campaign"]
    assert run["campaign_id"] == "demo-welcome" and run["simulated"] is True
    assert run["launch_state"] == "DONE", run
    assert run["timed_out"] == [] and run["waiting"] == 0 and run["deferred"] == 0, run
    assert run["report_command"] == "lodestar report demo-welcome --html var/demo-report.html"

    with grpc.insecure_channel(stack.addresses["campaign"]) as ch:
        stub = cpbg.CampaignServiceStub(ch)
        campaign = stub.GetCampaign(cpb.GetCampaignRequest(name="campaigns/demo-welcome"), timeout=10).campaign
        launch = stub.GetLaunch(cpb.GetLaunchRequest(name="campaigns/demo-welcome"), timeout=10).launch
        arms = rpbg.ResponseServiceStub(ch).GetArmOutcomes(
            rpb.GetArmOutcomesRequest(campaign="campaigns/demo-welcome"), timeout=10)
    # Maker-checker: created by the marketer, approved by someone else, launched (RUNNING until its end time).
    assert (campaign.created_by, campaign.approved_by) == ("demo-marketer", "demo-approver")
    assert campaign.state == campaign_pb2.CAMPAIGN_STATE_RUNNING
    assert campaign.control_share == pytest.approx(0.2) and [a.arm_id for a in campaign.arms] == ["a", "b"]
    assert launch.state == launch_pb2.LAUNCH_STATE_DONE and launch.launch_id == run["launch_id"]
    assert launch.progress.audience_size == 200 == run["audience"]
    assert launch.progress.control_customers == run["control"] > 0

    # The provider simulator received exactly the messages the dispatcher sent: one per SENT outbox row, under its
    # delivery key, to that customer's phone; every one of an arm (control customers are never in the outbox).
    messages = outbox(stack, launch.launch_id)
    sent = [m for m in messages if m.state == launch_pb2.OUTBOX_STATE_SENT]
    assert len(messages) == run["outbox"] and len(sent) == run["sent"] == len(messages) > 50
    assert {m.arm_id for m in messages} == {"a", "b"}
    phones = {c.customer_id: c.phone for c in demo_customers()}
    provider = received(stack)
    assert sorted(m["idempotency_key"] for m in provider) == sorted(key_digest(m.delivery_key, 40) for m in sent)
    assert sorted(m["payload"]["to"] for m in provider) == sorted(phones[m.customer_id] for m in sent)
    by_arm = {a.arm_id: a for a in arms.arms}
    assert by_arm["control"].assigned == launch.progress.control_customers
    assert by_arm["control"].contacted == 0
    assert by_arm["a"].contacted + by_arm["b"].contacted == len(sent)

    # RecordResponses recorded every simulated event (none rejected), and GetArmOutcomes counts exactly those.
    delivered = {m.customer_id for m in sent if not demo_campaign.receipt_fails(m.customer_id)}
    arm_of = {m.customer_id: m.arm_id for m in sent}
    expected = [r for c in demo_customers()
                for r in demo_campaign.simulate_customer(c.customer_id, arm_of.get(c.customer_id),
                                                         c.customer_id in delivered)]
    assert run["receipts"] == {"delivered": len(delivered), "failed": len(sent) - len(delivered), "new": len(sent)}
    assert run["responses_sent"] == len(expected)
    assert run["responses_by_disposition"] == {"RECORDED": len(expected)}
    assert run["responses_recorded"] == len(expected)
    recorded = sum(a.opened + a.clicked + a.applied + a.converted for a in arms.arms)
    assert recorded == len(expected)
    outcomes = {o: sum(1 for r in expected if r.outcome == o) for o in ("OPENED", "CLICKED", "CONVERTED")}
    assert run["recorded_by_outcome"] == outcomes
    assert by_arm["control"].opened == 0 and by_arm["control"].clicked == 0

    # The report: per-arm funnel and an uplift of the treated arms against control, with its interval.
    (tmp_path / "out").mkdir()
    code, report = cli(stack, tmp_path, "report", "demo-welcome", "--html", "out/report.html")
    assert code == 0, report
    evaluation = report["evaluation"]
    rows = {a["arm_id"]: a for a in evaluation["arms"]}
    assert set(rows) == {"a", "b", "control"} and rows["control"]["is_control"]
    for arm_id in ("a", "b"):
        assert rows[arm_id]["sent"] == sum(1 for m in sent if m.arm_id == arm_id)
        assert rows[arm_id]["delivered"] == sum(1 for m in sent if m.arm_id == arm_id and m.customer_id in delivered)
        assert rows[arm_id]["converted"] == by_arm[arm_id].converted
    assert rows["control"]["sent"] == 0
    comparisons = {c["arm_id"]: c["conversion"] for c in evaluation["comparisons"]}
    assert set(comparisons) == {"a", "b"}
    for conversion in comparisons.values():
        assert conversion["ci_low"] < conversion["difference"] < conversion["ci_high"]
        assert conversion["difference"] > 0  # the simulation converts contacted customers more often
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html and 'id="chart-funnel"' in html and 'id="chart-forest"' in html

    # Again: nothing is created, sent or recorded twice.
    code, again = cli(stack, tmp_path, "demo", "load")
    assert code == 0, again
    second = again["demo_campaign"]
    assert second["launch_id"] == run["launch_id"] and second["outbox"] == run["outbox"]
    assert second["responses_recorded"] == 0
    assert second["responses_by_disposition"] == {"DUPLICATE": len(expected)}
    assert second["receipts"]["new"] == 0
    assert len(received(stack)) == len(provider)
    assert len(outbox(stack, launch.launch_id)) == len(messages)


@pytest.mark.parametrize("hour", range(24))
def test_the_demo_contacts_now_and_explains_deferrals(hour: int) -> None:
    now = datetime(2026, 11, 25, hour, 30, tzinfo=UTC)
    assert demo_campaign.contact_start(now) == now - timedelta(minutes=1)
    # Now in quiet hours somewhere: the dispatcher defers those customers, and the demo says why.
    lisbon = next(c for c in demo_customers() if c.region == "PT-11" and c.time_zone)
    expected = "quiet hours in the customer's local time" if not 8 <= hour < 21 else "contact caps or other holds"
    assert demo_campaign.deferral_cause(lisbon, now) == expected
