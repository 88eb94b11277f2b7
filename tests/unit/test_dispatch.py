"""The dispatcher's pure parts: settings, the token bucket, backoff, quiet-hour deferral, reservation keys,
recipients, and the status-callback rules."""

import asyncio
import random
from datetime import UTC, datetime, time, timedelta

import pytest

from services.campaign.clients import CustomerContact
from services.campaign.db import DeliveryRow
from services.campaign.dispatch import (
    APPLIED,
    CONFLICT,
    DUPLICATE,
    STALE,
    DeliveryService,
    TokenBucket,
    adapters_from,
    backoff_delay,
    next_quiet_end,
    parse_rates,
    recipient_for,
    reservation_key,
    settings_from,
)
from services.campaign.domain import CustomerSnapshot
from services.platform.config import ConfigError


def test_settings_defaults_and_values():
    s = settings_from({})
    assert (s.enabled, s.batch_size, s.max_attempts, s.quiet_end, s.rates) == (True, 32, 6, time(8), {})
    s = settings_from({"CAMPAIGN_DISPATCH_RATES": "sms:50, email:2.5", "CAMPAIGN_DISPATCH_QUIET_END": "09:30",
                       "CAMPAIGN_DISPATCH_MAX_ATTEMPTS": "3", "CAMPAIGN_DISPATCH_ENABLED": "false"})
    assert (s.rates, s.quiet_end, s.max_attempts, s.enabled) == ({"sms": 50.0, "email": 2.5}, time(9, 30), 3, False)


@pytest.mark.parametrize(("name", "value", "words"), [
    ("CAMPAIGN_DISPATCH_RATES", "fax:5", "unknown channel 'fax'"),
    ("CAMPAIGN_DISPATCH_RATES", "sms:0", "above 0"),
    ("CAMPAIGN_DISPATCH_QUIET_END", "8am", "HH:MM"),
    ("CAMPAIGN_DISPATCH_MAX_ATTEMPTS", "2.5", "whole number"),
    ("CAMPAIGN_DISPATCH_BATCH_SIZE", "0", "from 1 to 1000"),
    ("CAMPAIGN_DISPATCH_ENABLED", "maybe", "true or false"),
    ("CAMPAIGN_PROVIDER_URL", "ftp://x", "http(s) URL"),
    ("CAMPAIGN_PROVIDER_URL_SMS", "localhost:8099", "http(s) URL"),
    ("CAMPAIGN_SMTP_PORT", "70000", "CAMPAIGN_SMTP_PORT"),
])
def test_malformed_settings_name_the_variable(name, value, words):
    with pytest.raises(ConfigError) as error:
        settings_from({name: value})
        adapters_from({name: value})
    assert name in str(error.value)
    assert words in str(error.value)


def test_adapters_per_configured_channel(tmp_path):
    adapters = adapters_from({"CAMPAIGN_PROVIDER_URL": "http://127.0.0.1:8099",
                              "CAMPAIGN_PROVIDER_URL_WECHAT": "http://127.0.0.1:9000",
                              "CAMPAIGN_SMTP_HOST": "127.0.0.1", "CAMPAIGN_SMTP_PORT": "8025",
                              "CAMPAIGN_CALL_LIST_DIR": str(tmp_path / "calls")})
    assert sorted(adapters) == ["app_push", "email", "phone", "sms", "wechat"]
    assert adapters["wechat"]._port == 9000 and adapters["sms"]._port == 8099
    assert adapters["sms"].max_attempts == 1  # the dispatcher owns the retries
    assert adapters_from({}) == {}
    with pytest.raises(ConfigError, match="CAMPAIGN_SMTP_HOST"):
        adapters_from({"CAMPAIGN_SMTP_PORT": "25"})


def test_parse_rates_empty():
    assert parse_rates("") == {}


def test_token_bucket_paces_to_its_rate():
    now = [0.0]
    bucket = TokenBucket(2.0, clock=lambda: now[0])
    assert [bucket.try_acquire() for _ in range(3)] == [True, True, False]
    assert bucket.wait_time() == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.try_acquire() and not bucket.try_acquire()
    now[0] = 100.0
    assert bucket.tokens <= 2 and [bucket.try_acquire() for _ in range(3)] == [True, True, False]  # burst capped


async def test_token_bucket_acquire_waits():
    bucket = TokenBucket(200.0, burst=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(3):
        await bucket.acquire()
    assert bucket.tokens < 1
    assert loop.time() >= start  # it returned; pacing itself is measured, not asserted


def test_backoff_is_full_jitter_under_an_exponential_cap():
    rng = random.Random(1)
    for attempt, cap in ((1, 2.0), (2, 4.0), (3, 8.0), (10, 60.0)):
        delays = [backoff_delay(attempt, 2.0, 60.0, rng) for _ in range(200)]
        assert all(0 <= d <= cap for d in delays)
        assert max(delays) > cap * 0.8  # spread over the whole interval, not a fixed step
    assert backoff_delay(3, 2.0, 60.0, random.Random(5)) == backoff_delay(3, 2.0, 60.0, random.Random(5))


def test_next_quiet_end_in_the_customers_zone():
    # 22:30 in Shanghai (14:30 UTC): the next 08:00 there is 00:00 UTC the next day.
    assert next_quiet_end(datetime(2026, 3, 2, 14, 30, tzinfo=UTC), "Asia/Shanghai", time(8)) == \
        datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    # 06:00 in Shanghai: 08:00 the same local day.
    assert next_quiet_end(datetime(2026, 3, 1, 22, 0, tzinfo=UTC), "Asia/Shanghai", time(8)) == \
        datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    # Across a DST change: New York springs forward on 2026-03-08; 08:00 EDT is 12:00 UTC.
    assert next_quiet_end(datetime(2026, 3, 8, 5, 0, tzinfo=UTC), "America/New_York", time(8)) == \
        datetime(2026, 3, 8, 12, 0, tzinfo=UTC)
    assert next_quiet_end(datetime(2026, 3, 2, tzinfo=UTC), "", time(8)) is None
    assert next_quiet_end(datetime(2026, 3, 2, tzinfo=UTC), "Mars/Olympus", time(8)) is None


def test_reservation_keys_fit_risk_and_change_per_generation():
    assert reservation_key("abc:c1", 0) == "abc:c1"
    assert reservation_key("abc:c1", 2) == "abc:c1/r2"
    odd = reservation_key("trigger:x y", 0)
    assert odd.startswith("dk/") and " " not in odd and len(odd) == 43
    long = reservation_key("k" * 150, 1)
    assert long.startswith("dk/") and long.endswith("/r1") and len(long) <= 128


def test_recipients_per_channel():
    contact = CustomerContact(CustomerSnapshot("c1", None, "CN-31", "Asia/Shanghai", {"wechat_openid": "o-1"}),
                              "Li Wei", "li@example.com", "+8613900000001")
    assert [recipient_for(ch, contact) for ch in ("email", "sms", "phone", "app_push", "wechat", "fax")] == [
        "li@example.com", "+8613900000001", "+8613900000001", "c1", "o-1", ""]


def _sent(at):
    return DeliveryRow(delivery_key="k", state="SENT", sent_time=at, delivery_status="", opened_time=None,
                       clicked_time=None, ignored_callbacks=0)


def test_callback_rules():
    t0 = datetime(2026, 3, 2, tzinfo=UTC)
    row = _sent(t0)
    apply = DeliveryService._apply
    assert apply(row, "DELIVERED", t0 - timedelta(minutes=5)) == STALE
    assert apply(row, "DELIVERED", t0 - timedelta(seconds=30)) == APPLIED  # within the clock skew allowance
    assert apply(row, "DELIVERED", t0 + timedelta(minutes=1)) == DUPLICATE
    assert apply(row, "FAILED", t0 + timedelta(minutes=1)) == CONFLICT
    assert apply(row, "CLICKED", t0 + timedelta(minutes=2)) == APPLIED
    assert apply(row, "CLICKED", t0 + timedelta(minutes=3)) == DUPLICATE
    assert row.clicked_time == t0 + timedelta(minutes=2) and row.opened_time is None
    failed = _sent(t0)
    assert apply(failed, "FAILED", t0 + timedelta(minutes=1)) == APPLIED
    assert apply(failed, "OPENED", t0 + timedelta(minutes=2)) == CONFLICT
    assert failed.opened_time is None and failed.delivery_status == "FAILED"


def test_a_slow_channel_claims_fewer_at_a_time_than_its_lease_can_send():
    from services.campaign.dispatch import Dispatcher, DispatchSettings

    def size(**settings):
        return Dispatcher(lambda: None, None, None, {}, settings=DispatchSettings(**settings)).claim_size

    assert size(batch_size=32) == 32
    assert size(batch_size=32, rates={"sms": 0.5, "email": 100.0}, lease_seconds=60) == 15
    assert size(batch_size=32, rates={"sms": 0.01}, lease_seconds=60) == 1
