"""Adapters against the bundled provider simulator and the local SMTP sink, on free ports."""

import asyncio
import json
import os
import subprocess
import sys
import urllib.request

import pytest

from services.campaign.channels.base import OutboundMessage, SendStatus
from services.campaign.channels.email import SmtpEmailAdapter
from services.campaign.channels.http_provider import HttpProviderAdapter
from services.campaign.channels.simulator import Faults, ProviderSimulator
from services.campaign.channels.smtp_sink import SmtpSink


def sms(recipient="+8613800000000", **kw):
    return OutboundMessage(channel="sms", recipient=recipient, customer_ref="cust-1", body="Card offer. APR 15.9%.",
                           campaign_id="campaigns/c1", arm_id="a", **kw)


@pytest.fixture
async def sim():
    simulator = ProviderSimulator(Faults(hang_seconds=5), seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


def adapter_for(sim, channel="sms", **kw):
    async def no_sleep(_):
        return None

    return HttpProviderAdapter(sim.url, channel, seed=3, sleep=kw.pop("sleep", no_sleep), **kw)


async def test_same_key_sent_twice_is_received_once(sim):
    adapter = adapter_for(sim)
    first = await adapter.send(sms(), "campaigns/c1/cust-1/0")
    second = await adapter.send(sms(), "campaigns/c1/cust-1/0")
    assert first.status is SendStatus.ACCEPTED
    assert second.status is SendStatus.ACCEPTED
    assert second.provider_message_id == first.provider_message_id == "sim-000001"
    assert len(sim.received) == 1
    assert sim.received[0]["payload"]["to"] == "+8613800000000"
    assert sim.stats.duplicates == 1
    # The key on the wire is a digest: the platform key (which can carry a customer id) does not leave.
    assert "cust-1" not in sim.received[0]["idempotency_key"]
    third = await adapter.send(sms(), "campaigns/c1/cust-1/1")
    assert third.provider_message_id == "sim-000002"


async def test_5xx_is_retried_with_backoff_and_then_succeeds(sim):
    sim.faults.fail_next = 2
    slept = []

    async def record(delay):
        slept.append(delay)

    adapter = adapter_for(sim, sleep=record, base_delay=0.1, max_delay=1.0)
    result = await adapter.send(sms(), "k-retry")
    assert (result.status, result.attempts) == (SendStatus.ACCEPTED, 3)
    assert sim.stats.injected_failures == 2
    assert list(sim.stats.attempts_by_key.values()) == [3]
    assert len(sim.received) == 1
    assert len(slept) == 2 and 0 <= slept[0] <= 0.1 and 0 <= slept[1] <= 0.2


async def test_5xx_until_attempts_run_out_is_a_retryable_failure(sim):
    sim.faults.fail_next = 10
    result = await adapter_for(sim, max_attempts=3).send(sms(), "k-down")
    assert (result.status, result.reason, result.attempts) == (SendStatus.RETRYABLE, "HTTP_503", 3)
    assert sim.received == []


async def test_4xx_is_not_retried(sim):
    adapter = adapter_for(sim)
    result = await adapter.send(sms(recipient=""), "k-bad")
    assert (result.status, result.reason, result.attempts) == (SendStatus.REJECTED, "HTTP_400", 1)
    assert result.detail == "RECIPIENT_MISSING"
    assert sim.stats.attempts_by_key == {next(iter(sim.stats.attempts_by_key)): 1}
    assert adapter.delays == []
    assert sim.received == []


async def test_latency_beyond_the_client_timeout_is_a_retryable_timeout(sim):
    sim.faults.latency_ms = 800
    result = await adapter_for(sim, timeout=0.2, max_attempts=2).send(sms(), "k-slow")
    assert (result.status, result.reason, result.attempts) == (SendStatus.RETRYABLE, "TIMEOUT", 2)
    # The slow first attempt may still land at the provider; a later retry with the same key is then a replay.
    sim.faults.latency_ms = 0
    await asyncio.sleep(0.7)
    late = await adapter_for(sim).send(sms(), "k-slow")
    assert late.status is SendStatus.ACCEPTED
    assert len(sim.received) == 1


async def test_injected_timeout_then_success(sim):
    sim.faults.timeout_rate = 1.0
    adapter = adapter_for(sim, timeout=0.2, max_attempts=1)
    result = await adapter.send(sms(), "k-hang")
    assert (result.status, result.reason) == (SendStatus.RETRYABLE, "TIMEOUT")
    sim.faults.timeout_rate = 0.0
    assert (await adapter.send(sms(), "k-hang")).status is SendStatus.ACCEPTED
    assert sim.stats.injected_timeouts == 1 and len(sim.received) == 1


async def test_wechat_template_message_reaches_the_simulator(sim):
    adapter = adapter_for(sim, channel="wechat")
    m = OutboundMessage(channel="wechat", recipient="openid-1", customer_ref="cust-1", body="APR 15.9%.",
                        template_id="OFFER_V1", fields={"product": "Card"})
    assert (await adapter.send(m, "k-wx")).accepted
    got = sim.received[0]
    assert got["channel"] == "wechat"
    assert got["payload"]["data"] == {"product": {"value": "Card"}}


async def test_connection_refused_is_retryable():
    probe = ProviderSimulator()
    port = await probe.start()
    await probe.stop()
    adapter = HttpProviderAdapter(f"http://127.0.0.1:{port}", "sms", max_attempts=2, sleep=lambda _: asyncio.sleep(0))
    result = await adapter.send(sms(), "k")
    assert (result.status, result.reason, result.attempts) == (SendStatus.RETRYABLE, "CONNECTION_FAILED", 2)


async def test_email_is_received_by_the_smtp_sink_and_a_duplicate_is_detectable():
    with SmtpSink(reject_domains=("blocked.example",)) as sink:
        adapter = SmtpEmailAdapter(sink.host, sink.port, sender="offers@bank.example", domain="bank.example",
                                   timeout=5)
        m = OutboundMessage(channel="email", recipient="wei@example.com", customer_ref="cust-1",
                            subject="Your card offer", body="Hello Wei\n\nAPR 15.9% representative.")
        first = await adapter.send(m, "campaigns/c1/cust-1/0")
        assert first.status is SendStatus.ACCEPTED
        assert len(sink.messages) == 1
        got = sink.messages[0]
        assert got.rcpt_tos == ("wei@example.com",)
        assert got.subject == "Your card offer"
        assert got.message_id == first.provider_message_id
        assert "APR 15.9% representative." in got.body
        assert sink.duplicates() == []
        again = await adapter.send(m, "campaigns/c1/cust-1/0")
        assert again.provider_message_id == first.provider_message_id
        assert sink.duplicates() == [first.provider_message_id]
        refused = await adapter.send(OutboundMessage(channel="email", recipient="x@blocked.example",
                                                     customer_ref="cust-2", subject="s", body="b"), "k2")
        assert (refused.status, refused.reason) == (SendStatus.REJECTED, "SMTP_550")
        assert len(sink.messages) == 2
    down = await adapter.send(m, "k3")
    assert (down.status, down.reason) == (SendStatus.RETRYABLE, "CONNECTION_FAILED")


def test_simulator_runs_as_a_module_with_its_http_api():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "services.campaign.channels.simulator", "--port", "0"],
                            stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = json.loads(proc.stdout.readline())["simulator"]
        req = urllib.request.Request(f"{url}/v1/control", data=b'{"latency_ms": 1}', method="POST")
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert json.loads(resp.read())["latency_ms"] == 1.0
        result = asyncio.run(HttpProviderAdapter(url, "sms").send(sms(), "k-proc"))
        assert result.accepted
        with urllib.request.urlopen(f"{url}/v1/received", timeout=5) as resp:
            assert [m["payload"]["text"] for m in json.loads(resp.read())["messages"]] == ["Card offer. APR 15.9%."]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
