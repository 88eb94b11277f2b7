"""Exactly once across SIGKILL: the four services as processes plus the stack's provider simulator. A campaign
is launched through the public RPCs (customers and consents in profile and risk, a segment, an offer,
maker-checker approval) and its outbox of a few hundred SMS is dispatched while the campaign process is SIGKILLed
at random moments and restarted on the same port and database, several times. When the outbox is drained, the
provider must have accepted every delivery key exactly once, none missing and no customer twice; the database
must show every delivery SENT and the stats RPC must agree."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from lodestar.campaign.v1 import campaign_pb2, launch_pb2, offer_pb2
from lodestar.campaign.v1 import campaign_service_pb2 as cpb
from lodestar.campaign.v1 import campaign_service_pb2_grpc as cpbg
from lodestar.campaign.v1 import delivery_service_pb2 as dpb
from lodestar.campaign.v1 import delivery_service_pb2_grpc as dpbg
from lodestar.common.v1 import common_pb2 as c
from lodestar.profile.v1 import customer_pb2, segment_service_pb2, segment_service_pb2_grpc
from lodestar.profile.v1 import profile_service_pb2 as ppb
from lodestar.profile.v1 import profile_service_pb2_grpc as ppbg
from lodestar.risk.v1 import risk_service_pb2 as rpb
from lodestar.risk.v1 import risk_service_pb2_grpc as rpbg
from lodestar.risk.v1 import screening_pb2 as spb
from lodestar_cli.stack import Stack
from services.campaign.channels.base import key_digest

pytestmark = pytest.mark.e2e

CUSTOMERS = 300
KILLS = 3
SEED = int(os.environ.get("LODESTAR_KILL_SEED", "0")) or random.SystemRandom().randrange(1, 10**6)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def phone(i: int) -> str:
    return f"+86139{i:08d}"


@pytest.fixture
def stack(tmp_path):
    env = {"DRAIN_SECONDS": "0", "SHUTDOWN_GRACE_SECONDS": "1", "LOG_LEVEL": "WARNING",
           "CAMPAIGN_SCHEDULER_INTERVAL_SECONDS": "3600", "CAMPAIGN_LAUNCH_POLL_SECONDS": "0.1",
           "CAMPAIGN_LAUNCH_PARTITION_SIZE": "100",
           "CAMPAIGN_DISPATCH_POLL_SECONDS": "0.1", "CAMPAIGN_DISPATCH_LEASE_SECONDS": "2",
           "CAMPAIGN_DISPATCH_BATCH_SIZE": "16", "CAMPAIGN_DISPATCH_RATES": "sms:40",
           "CAMPAIGN_DISPATCH_BACKOFF_SECONDS": "0.2",
           # Quiet hours off: the test must not depend on the time of day it runs at.
           "RISK_QUIET_HOURS_START": "00:00", "RISK_QUIET_HOURS_END": "00:00"}
    s = Stack(tmp_path, ports=dict.fromkeys(("gateway", "profile", "campaign", "risk"), 0), extra_env=env)
    try:
        s.start()
        s.wait_serving(timeout=90)
        yield s
    finally:
        s.stop()


def in_parallel(futures: list) -> None:
    for future in futures:
        future.result()


def seed(stack: Stack) -> None:
    a = stack.addresses
    with grpc.insecure_channel(a["profile"]) as ch:
        stub = ppbg.ProfileServiceStub(ch)
        in_parallel([stub.CreateCustomer.future(ppb.CreateCustomerRequest(customer=customer_pb2.Customer(
            customer_id=f"k-{i:04d}", full_name=f"Kim {i}", phone=phone(i), region="CN-31",
            time_zone="Asia/Shanghai", birth_date="1980-01-01")), timeout=30) for i in range(CUSTOMERS)])
        segment_service_pb2_grpc.SegmentServiceStub(ch).CreateSegment(segment_service_pb2.CreateSegmentRequest(
            segment=segment_service_pb2.Segment(segment_id="kill-test", kind=segment_service_pb2.SEGMENT_KIND_DYNAMIC,
                                                condition_text='region = "CN-31"')), timeout=10)
    with grpc.insecure_channel(a["risk"]) as ch:
        stub = rpbg.RiskServiceStub(ch)
        in_parallel([stub.RecordConsent.future(rpb.RecordConsentRequest(consent=spb.ConsentRecord(
            customer_id=f"k-{i:04d}", channel=c.CHANNEL_SMS, purpose=spb.CONSENT_PURPOSE_MARKETING,
            action=spb.CONSENT_ACTION_GRANT, source="e2e", actor="test")), timeout=30) for i in range(CUSTOMERS)])
    with grpc.insecure_channel(a["campaign"]) as ch:
        stub = cpbg.CampaignServiceStub(ch)
        stub.CreateOffer(cpb.CreateOfferRequest(offer=offer_pb2.Offer(
            offer_id="kill-deposit", title="Time deposit", product_type=c.PRODUCT_TYPE_DEPOSIT,
            risk_level=c.PRODUCT_RISK_LEVEL_R1, conversion_value=500.0, contact_cost=0.1,
            disclosures=[c.Disclosure(kind="deposit_insurance",
                                      text="Covered by deposit insurance up to the legal limit.")])), timeout=10)
        end = datetime.now(UTC) + timedelta(days=30)
        campaign = campaign_pb2.Campaign(
            campaign_id="kill", display_name="Kill test", segment="segments/kill-test", offer_ids=["kill-deposit"],
            channels=[c.CHANNEL_SMS], control_share=0.0,
            arms=[campaign_pb2.Arm(arm_id="a", share=1.0, content="Hello {{ first_name }}, a deposit for you.")])
        campaign.start_time.FromDatetime(datetime.now(UTC) + timedelta(seconds=2))
        campaign.end_time.FromDatetime(end)
        stub.CreateCampaign(cpb.CreateCampaignRequest(campaign=campaign, actor="maker-1"), timeout=10)
        stub.SubmitCampaign(cpb.SubmitCampaignRequest(name="campaigns/kill", actor="maker-1"), timeout=10)
        stub.ApproveCampaign(cpb.ApproveCampaignRequest(name="campaigns/kill", actor="checker-2"), timeout=10)
        stub.LaunchCampaign(cpb.LaunchCampaignRequest(name="campaigns/kill", actor="ops-1"), timeout=10)


def launch_state(stack: Stack) -> launch_pb2.Launch | None:
    try:
        with grpc.insecure_channel(stack.addresses["campaign"]) as ch:
            return cpbg.CampaignServiceStub(ch).GetLaunch(cpb.GetLaunchRequest(name="campaigns/kill"),
                                                          timeout=2).launch
    except grpc.RpcError:
        return None


def provider(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=5) as response:  # nosec B310 - local simulator
        return json.loads(response.read())


def kill_and_restart(stack: Stack) -> None:
    process = stack._processes["campaign"]
    process.popen.send_signal(signal.SIGKILL)
    process.popen.wait(10)
    process.log_handle.close()
    stack.ports["campaign"] = int(stack.addresses["campaign"].rsplit(":", 1)[1])
    stack._launch("campaign")
    stack._wait_port("campaign", time.monotonic() + 30)


def database_rows(stack: Stack, query: str, service: str = "campaign") -> list[tuple]:
    with sqlite3.connect(stack.database_path(service), timeout=10) as db:
        return db.execute(query).fetchall()


def test_sigkill_during_dispatch_neither_duplicates_nor_loses_a_message(stack):
    # The stack's own provider simulator (lodestar_cli.stack starts it and points campaign at it).
    simulator = stack.sink_addresses["provider"]
    rng = random.Random(SEED)
    seed(stack)
    deadline = time.monotonic() + 60
    launch = None
    while time.monotonic() < deadline:
        launch = launch_state(stack)
        if launch is not None and launch.state == launch_pb2.LAUNCH_STATE_DONE:
            break
        time.sleep(0.1)
    assert launch is not None and launch.state == launch_pb2.LAUNCH_STATE_DONE, launch
    expected = dict(database_rows(stack, "SELECT delivery_key, customer_id FROM campaign_outbox"))
    assert len(expected) >= CUSTOMERS * 2 // 3, f"only {len(expected)} outbox rows"

    killed_mid_dispatch = 0
    for _ in range(KILLS):
        # A random moment, then the next accepted send: the kill lands among a batch's sends, before its outcome is
        # committed (the window where a crash could duplicate), as well as anywhere else by chance.
        time.sleep(rng.uniform(0.2, 1.2))
        before = len(provider(simulator, "/v1/received")["messages"])
        wait_until = time.monotonic() + 5
        while len(provider(simulator, "/v1/received")["messages"]) == before and time.monotonic() < wait_until:
            time.sleep(0.01)
        received = len(provider(simulator, "/v1/received")["messages"])
        if 0 < received < len(expected):
            killed_mid_dispatch += 1
        kill_and_restart(stack)

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = dict(database_rows(stack, "SELECT state, count(*) FROM campaign_deliveries GROUP BY state"))
        if states.get("SENT", 0) + states.get("DEAD", 0) == len(expected):
            break
        time.sleep(0.2)
    states = dict(database_rows(stack, "SELECT state, count(*) FROM campaign_deliveries GROUP BY state"))
    assert states == {"SENT": len(expected)}, (states, f"seed {SEED}")

    messages = provider(simulator, "/v1/received")["messages"]
    keys = [m["idempotency_key"] for m in messages]
    assert sorted(keys) == sorted(key_digest(k, 40) for k in expected), f"seed {SEED}"  # each once, none missing
    recipients = [m["payload"]["to"] for m in messages]
    assert sorted(recipients) == sorted(phone(int(cid.split("-")[1])) for cid in expected.values())
    # Risk counted each contact once towards the caps: one confirmed reservation per customer.
    confirmed = database_rows(stack, "SELECT customer_id, count(*) FROM contact_reservations WHERE state = "
                                     "'CONFIRMED' GROUP BY customer_id", "risk")
    assert dict(confirmed) == dict.fromkeys(expected.values(), 1)
    assert killed_mid_dispatch >= 1, f"no kill landed mid-dispatch (seed {SEED}); the test proved nothing"

    with grpc.insecure_channel(stack.addresses["campaign"]) as ch:
        stats = dpbg.DeliveryServiceStub(ch).GetDeliveryStats(
            dpb.GetDeliveryStatsRequest(launch=f"launches/{launch.launch_id}"), timeout=10)
    assert (stats.counts.total, stats.counts.sent, stats.counts.dead) == (len(expected), len(expected), 0)
    stats_doc = provider(simulator, "/v1/stats")
    print(f"seed {SEED}: {len(expected)} messages, {killed_mid_dispatch} kills mid-dispatch, "
          f"{stats_doc['duplicates']} re-sends deduplicated by the provider, {stats.counts.attempts} attempts")
