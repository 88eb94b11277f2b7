"""Channel building blocks without a network: templates, payloads, backoff, Message-IDs, call lists."""

import csv
import hashlib
import random

import pytest

from services.campaign.channels.base import OutboundMessage, SendStatus
from services.campaign.channels.call_list import CallListAdapter
from services.campaign.channels.email import SmtpEmailAdapter, message_id_for
from services.campaign.channels.http_provider import HttpProviderAdapter, payload_for
from services.campaign.channels.templates import TemplateError, placeholders, render
from services.campaign.domain import Disclosure

DISCLOSURES = [Disclosure("APR", "APR 15.9% representative."), Disclosure("FEES", "Annual fee 200 CNY.")]


def msg(**kw):
    base = dict(channel="sms", recipient="+8613800000000", customer_ref="cust-1", body="hello",
                campaign_id="campaigns/c1", arm_id="a")
    return OutboundMessage(**{**base, **kw})


def test_render_fills_fields_and_appends_every_disclosure_in_order():
    r = render("Dear {{ first_name }}, your limit is {{limit}} CNY.", {"first_name": "Wei", "limit": 50000},
               DISCLOSURES, subject_template="An offer for {{first_name}}")
    assert r.subject == "An offer for Wei"
    assert r.body == "Dear Wei, your limit is 50000 CNY.\n\nAPR 15.9% representative.\nAnnual fee 200 CNY."
    assert r.fields == {"first_name": "Wei", "limit": "50000"}


def test_render_missing_or_empty_field_is_an_error_naming_every_field_never_a_blank():
    with pytest.raises(TemplateError) as err:
        render("Hi {{first_name}}, {{limit}} for {{ city }}", {"first_name": "", "city": "Chengdu"}, DISCLOSURES,
               subject_template="{{title}}")
    assert err.value.reason == "TEMPLATE_FIELD_MISSING"
    assert err.value.fields == ["title", "first_name", "limit"]
    assert "Chengdu" not in str(err.value)


def test_placeholders_in_order_of_first_use():
    assert placeholders("{{b}} {{a}} {{ b }}") == ["b", "a"]


def test_provider_payload_per_channel():
    assert payload_for(msg()) == {"to": "+8613800000000", "campaign": "campaigns/c1", "arm": "a", "text": "hello"}
    push = payload_for(msg(channel="app_push", recipient="tok", subject="Title"))
    assert (push["title"], push["body"]) == ("Title", "hello")
    wechat = payload_for(msg(channel="wechat", recipient="openid", template_id="T1", fields={"limit": "5"}))
    assert wechat["template_id"] == "T1" and wechat["data"] == {"limit": {"value": "5"}}
    with pytest.raises(ValueError):
        payload_for(msg(channel="fax"))


def test_backoff_is_full_jitter_under_an_exponential_cap_and_seeded():
    adapter = HttpProviderAdapter("http://127.0.0.1:1", "sms", base_delay=0.5, max_delay=3.0, seed=42)
    rng = random.Random(42)
    expected = [rng.uniform(0, min(3.0, 0.5 * 2 ** (a - 1))) for a in range(1, 6)]
    assert [adapter.backoff(a) for a in range(1, 6)] == expected
    assert all(0 <= d <= 3.0 for d in expected)


def test_adapter_rejects_a_message_for_another_channel():
    adapter = HttpProviderAdapter("http://127.0.0.1:1", "sms")
    with pytest.raises(ValueError):
        HttpProviderAdapter("ftp://x", "sms")

    import asyncio
    result = asyncio.run(adapter.send(msg(channel="wechat"), "k"))
    assert (result.status, result.reason, result.attempts) == (SendStatus.REJECTED, "CHANNEL_MISMATCH", 0)


def test_email_message_id_is_derived_from_the_idempotency_key():
    adapter = SmtpEmailAdapter("127.0.0.1", 1, sender="offers@bank.example", domain="bank.example")
    one = adapter.build(msg(channel="email", recipient="wei@example.com", subject="S"), "campaigns/c1/cust-1/1")
    two = adapter.build(msg(channel="email", recipient="wei@example.com", subject="S"), "campaigns/c1/cust-1/1")
    other = adapter.build(msg(channel="email", recipient="wei@example.com", subject="S"), "campaigns/c1/cust-1/2")
    digest = hashlib.sha256(b"campaigns/c1/cust-1/1").hexdigest()[:32]
    assert one["Message-ID"] == two["Message-ID"] == f"<{digest}@bank.example>" == \
        message_id_for("campaigns/c1/cust-1/1", "bank.example")
    assert other["Message-ID"] != one["Message-ID"]
    assert "cust-1" not in one["Message-ID"]


async def test_call_list_writes_one_row_per_key_even_across_restarts(tmp_path):
    path = tmp_path / "calls.csv"
    adapter = CallListAdapter(path)
    m = msg(channel="phone", body="Call about the card.\n\nAPR 15.9%.", offer_id="offers/card")
    first = await adapter.send(m, "k1")
    again = await adapter.send(m, "k1")
    assert first.status is SendStatus.ACCEPTED and again.provider_message_id == first.provider_message_id
    restarted = CallListAdapter(path)
    await restarted.send(m, "k1")
    await restarted.send(msg(channel="phone", recipient="+8613900000000", customer_ref="cust-2"), "k2")
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["customer_ref"] for r in rows] == ["cust-1", "cust-2"]
    assert rows[0]["script"] == "Call about the card.\n\nAPR 15.9%."
    assert rows[0]["offer_id"] == "offers/card"
    assert rows[0]["idempotency_key"] == hashlib.sha256(b"k1").hexdigest()[:32]
    missing = await restarted.send(msg(channel="phone", recipient=" "), "k3")
    assert (missing.status, missing.reason) == (SendStatus.REJECTED, "RECIPIENT_MISSING")
