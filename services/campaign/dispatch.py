"""The dispatcher: outbox -> channel adapters, each message delivered once (docs/delivery.md).

Owns its transactions; imports no grpc. Every replica runs `Dispatcher.step()` in a loop; the work is shared
through the database, never a coordinator:

1. enqueue: outbox rows in state PENDING (written by batch launches, or by triggered campaigns: the dispatcher
   never assumes a launch exists) become `campaign_deliveries` rows (QUEUED, due now) and the outbox row moves
   to QUEUED, in one transaction (ON CONFLICT DO NOTHING on the delivery key; SKIP LOCKED on PostgreSQL).
2. claim: due deliveries (QUEUED, or SENDING whose lease expired: its claimant died) are claimed by a conditional
   UPDATE ... RETURNING that sets the claimant and a lease (on PostgreSQL after SELECT ... FOR UPDATE SKIP
   LOCKED, so replicas never wait on each other; on SQLite the conditional UPDATE alone, writers being serial).
3. per delivery, unless it is `in_flight` (a send may already have happened, see below): the campaign (a
   cancelled one dead-letters, a paused one defers), the offer, the customer's contact point from profile,
   the message rendered (arm template + the offer's disclosures), then risk's Screen at send time (consent,
   do-not-contact, cool-off, quiet hours: HOLD defers to the next allowed time, DENY dead-letters; a HOLD for
   FREQUENCY_CAP alone is left to step 4, since Screen would count this delivery's own reservation).
4. risk ReserveContact under the reservation key (the delivery key, plus a generation once a reservation was
   released or expired); refused by a cap -> deferred.
5. `in_flight = true, attempts += 1` is COMMITTED, conditional on still holding the claim (one transaction for
   every delivery of the claimed batch that got this far).
6. the adapter sends with the delivery key as the provider's idempotency key (rate-limited per channel).
7. ACCEPTED -> ConfirmContact, then SENT (with the provider's message id); REJECTED -> ReleaseContact, DEAD with
   the reason; RETRYABLE -> QUEUED again after exponential backoff with full jitter, or DEAD once `max_attempts`
   sends were made. The batch's outcomes (deferrals and dead letters decided in step 3 included) are committed in
   one transaction, each conditional on the claim.

Exactly once. The provider sees a delivery key only after step 5 committed `in_flight`. A crash (SIGKILL) at
any point leaves the row SENDING with a lease that expires, and some replica claims it again:
- before step 5 committed: nothing was sent (the provider is called only after that commit), so redoing the
  whole decision is safe;
- after step 5 (before, during or after the send, before step 7's commit): `in_flight` is true, so the next
  claimant does not re-decide (no screen, no template dead-letter short of missing data): it reserves again
  (same reservation while it lives), sends again under the same idempotency key, and the provider answers with
  its first response without sending a second message (HTTP providers and the simulator deduplicate by the
  Idempotency-Key header, the call list by its key column, SMTP carries the same Message-ID). Confirm is
  idempotent per reservation key, so the contact counts once towards the caps.
- two claimants at once (a lease that ran out while the first was still sending): both send under the same key;
  the provider deduplicates; only the claim holder's final UPDATE matches (`claimed_by = me`), the other's is
  discarded.
So a message is never lost (a row leaves the queue only by a committed SENT or DEAD) and never reaches the
customer twice, provided the provider honours the idempotency key for at least the longest retry horizon. The
delivery key is stable ("{launch_id}:{customer_id}", "trigger:..."), never regenerated.

Rate limits: a token bucket per channel per replica (CAMPAIGN_DISPATCH_RATES); the platform-wide rate is the sum
over replicas. Quiet hours: risk decides (HOLD QUIET_HOURS); the dispatcher defers to the next local end of the
quiet window (CAMPAIGN_DISPATCH_QUIET_END in the customer's time zone, default 08:00 as risk's), and risk is
asked again then. Caps: ReserveContact refused -> deferred by CAMPAIGN_DISPATCH_CAP_DEFER_SECONDS.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import socket
import time as _time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from opentelemetry import trace
from opentelemetry.trace import TracerProvider
from sqlalchemy import and_, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lodestar.common.v1 import common_pb2
from services.campaign.channels.base import ChannelAdapter, OutboundMessage, SendResult, SendStatus
from services.campaign.channels.templates import TemplateError, render
from services.campaign.clients import CustomerContact, ReservationResult
from services.campaign.db import CampaignUnitOfWork, DeliveryRow, LaunchRow, OutboxRow
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import CANCELLED, PAUSED, Campaign, Offer
from services.platform.config import ConfigError
from services.platform.db import utcnow
from services.platform.errors import DomainError, FailedPrecondition, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CHANNEL, ATTR_CUSTOMER_TOKEN, ATTR_FAILURE_REASON, ServiceMetrics

log = logging.getLogger("lodestar.campaign.dispatch")

# Delivery states (campaign_deliveries.state) and the outbox row's mirror of them.
QUEUED, SENDING, SENT, DEAD = "QUEUED", "SENDING", "SENT", "DEAD"
OUTBOX_PENDING = "PENDING"

CHANNEL_NAMES: dict[int, str] = {
    common_pb2.CHANNEL_SMS: "sms", common_pb2.CHANNEL_EMAIL: "email", common_pb2.CHANNEL_APP_PUSH: "app_push",
    common_pb2.CHANNEL_WECHAT: "wechat", common_pb2.CHANNEL_PHONE: "phone",
}
DEFAULT_TEMPLATE = "{{ offer_title }}"

# --- settings -------------------------------------------------------------------------------------------------

POLL = "CAMPAIGN_DISPATCH_POLL_SECONDS"
ENABLED = "CAMPAIGN_DISPATCH_ENABLED"
BATCH = "CAMPAIGN_DISPATCH_BATCH_SIZE"
CONCURRENCY = "CAMPAIGN_DISPATCH_CONCURRENCY"
LEASE = "CAMPAIGN_DISPATCH_LEASE_SECONDS"
MAX_ATTEMPTS = "CAMPAIGN_DISPATCH_MAX_ATTEMPTS"
BACKOFF = "CAMPAIGN_DISPATCH_BACKOFF_SECONDS"
BACKOFF_MAX = "CAMPAIGN_DISPATCH_BACKOFF_MAX_SECONDS"
RATES = "CAMPAIGN_DISPATCH_RATES"
QUIET_END = "CAMPAIGN_DISPATCH_QUIET_END"
CAP_DEFER = "CAMPAIGN_DISPATCH_CAP_DEFER_SECONDS"
MAX_DEFER_HOURS = "CAMPAIGN_DISPATCH_MAX_DEFER_HOURS"
PROVIDER_URL = "CAMPAIGN_PROVIDER_URL"
PROVIDER_URLS = {"sms": "CAMPAIGN_PROVIDER_URL_SMS", "app_push": "CAMPAIGN_PROVIDER_URL_APP_PUSH",
                 "wechat": "CAMPAIGN_PROVIDER_URL_WECHAT"}
PROVIDER_TIMEOUT = "CAMPAIGN_PROVIDER_TIMEOUT_SECONDS"
SMTP_HOST = "CAMPAIGN_SMTP_HOST"
SMTP_PORT = "CAMPAIGN_SMTP_PORT"
SMTP_SENDER = "CAMPAIGN_SMTP_SENDER"
CALL_LIST_DIR = "CAMPAIGN_CALL_LIST_DIR"
SETTINGS = (POLL, ENABLED, BATCH, CONCURRENCY, LEASE, MAX_ATTEMPTS, BACKOFF, BACKOFF_MAX, RATES, QUIET_END,
            CAP_DEFER, MAX_DEFER_HOURS, PROVIDER_URL, *PROVIDER_URLS.values(), PROVIDER_TIMEOUT, SMTP_HOST,
            SMTP_PORT, SMTP_SENDER, CALL_LIST_DIR)


@dataclass(frozen=True)
class DispatchSettings:
    poll_seconds: float = 1.0
    enabled: bool = True
    batch_size: int = 32
    concurrency: int = 8
    lease_seconds: float = 60.0
    max_attempts: int = 6
    backoff_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    rates: dict[str, float] = field(default_factory=dict)  # channel name -> messages per second (per replica)
    quiet_end: time = time(8, 0)
    cap_defer_seconds: float = 3600.0
    recheck_seconds: float = 900.0  # time zone unknown, campaign paused, channel not configured
    max_defer: timedelta = timedelta(hours=168)


def _number(extra: Mapping[str, str], name: str, low: float, high: float, default: float, *,
            whole: bool = False) -> float:
    raw = extra.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high or (whole and value != int(value)):
        kind = "a whole number" if whole else "a number"
        raise ConfigError(f"{name} must be {kind} from {low:g} to {high:g}, got {raw!r}")
    return value


def parse_rates(raw: str) -> dict[str, float]:
    """"sms:50,email:20" -> {"sms": 50.0, "email": 20.0} (messages per second per replica)."""
    rates: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in raw.split(","))):
        name, _, value = part.partition(":")
        name = name.strip().lower()
        if name not in CHANNEL_NAMES.values():
            raise ConfigError(f"{RATES}: unknown channel {name!r} (one of {', '.join(CHANNEL_NAMES.values())})")
        try:
            rate = float(value)
        except ValueError:
            rate = -1.0
        if not 0 < rate <= 100_000:
            raise ConfigError(f"{RATES}: the rate of {name} must be a number of messages per second above 0")
        rates[name] = rate
    return rates


def settings_from(extra: Mapping[str, str]) -> DispatchSettings:
    """The dispatcher's settings; ConfigError names the first malformed variable."""
    enabled = extra.get(ENABLED, "true").strip().lower()
    if enabled not in ("true", "false", "1", "0"):
        raise ConfigError(f"{ENABLED} must be true or false, got {extra.get(ENABLED)!r}")
    quiet = extra.get(QUIET_END, "08:00").strip()
    match = re.fullmatch(r"([01]\d|2[0-3]):([0-5]\d)", quiet)
    if not match:
        raise ConfigError(f"{QUIET_END} must be a local clock time HH:MM, got {quiet!r}")
    return DispatchSettings(
        poll_seconds=_number(extra, POLL, 0.05, 3600, 1.0),
        enabled=enabled in ("true", "1"),
        batch_size=int(_number(extra, BATCH, 1, 1000, 32, whole=True)),
        concurrency=int(_number(extra, CONCURRENCY, 1, 256, 8, whole=True)),
        lease_seconds=_number(extra, LEASE, 1, 3600, 60.0),
        max_attempts=int(_number(extra, MAX_ATTEMPTS, 1, 100, 6, whole=True)),
        backoff_seconds=_number(extra, BACKOFF, 0.01, 3600, 2.0),
        backoff_max_seconds=_number(extra, BACKOFF_MAX, 0.01, 86400, 300.0),
        rates=parse_rates(extra.get(RATES, "")),
        quiet_end=time(int(match.group(1)), int(match.group(2))),
        cap_defer_seconds=_number(extra, CAP_DEFER, 1, 7 * 86400, 3600.0),
        max_defer=timedelta(hours=_number(extra, MAX_DEFER_HOURS, 1, 24 * 90, 168.0)),
    )


def check_endpoint_settings(extra: Mapping[str, str]) -> None:
    """Provider URLs are http(s) URLs, the SMTP port a port number, the SMTP host set when the port is."""
    from urllib.parse import urlsplit

    for name in (PROVIDER_URL, *PROVIDER_URLS.values()):
        raw = extra.get(name)
        if raw:
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(f"{name} must be an http(s) URL such as http://127.0.0.1:8099, got {raw!r}")
    _number(extra, SMTP_PORT, 1, 65535, 25, whole=True)
    _number(extra, PROVIDER_TIMEOUT, 0.1, 120, 5.0)
    if extra.get(SMTP_PORT) and not extra.get(SMTP_HOST):
        raise ConfigError(f"{SMTP_PORT} is set but {SMTP_HOST} is not")


def adapters_from(extra: Mapping[str, str]) -> dict[str, ChannelAdapter]:
    """One adapter per configured channel (a channel without one defers its messages: CHANNEL_NOT_CONFIGURED).
    The HTTP adapters make one request per send: the dispatcher owns the retries."""
    from services.campaign.channels.call_list import CallListAdapter
    from services.campaign.channels.email import SmtpEmailAdapter
    from services.campaign.channels.http_provider import HttpProviderAdapter

    check_endpoint_settings(extra)
    timeout = _number(extra, PROVIDER_TIMEOUT, 0.1, 120, 5.0)
    adapters: dict[str, ChannelAdapter] = {}
    for channel, name in PROVIDER_URLS.items():
        url = extra.get(name) or extra.get(PROVIDER_URL)
        if url:
            adapters[channel] = HttpProviderAdapter(url, channel, timeout=timeout, max_attempts=1)
    if extra.get(SMTP_HOST):
        adapters["email"] = SmtpEmailAdapter(
            extra[SMTP_HOST], int(_number(extra, SMTP_PORT, 1, 65535, 25, whole=True)),
            sender=extra.get(SMTP_SENDER) or "offers@lodestar.local", timeout=timeout)
    if extra.get(CALL_LIST_DIR):
        from pathlib import Path

        directory = Path(extra[CALL_LIST_DIR])
        directory.mkdir(parents=True, exist_ok=True)
        adapters["phone"] = CallListAdapter(directory / "call_list.csv")
    return adapters


# --- collaborators --------------------------------------------------------------------------------------------


class ContactSource(Protocol):
    async def contact(self, customer_id: str) -> CustomerContact:
        """Raises NotFound when profile does not know the customer."""
        ...


@dataclass(frozen=True)
class SendVerdict:
    verdict: str  # ALLOW, HOLD, DENY
    reasons: tuple[str, ...] = ()


class ContactPolicy(Protocol):
    async def screen(self, contact: CustomerContact, offer: Offer, channel: int, at: datetime) -> SendVerdict: ...

    async def reserve(self, key: str, customer_id: str, channel: int, at: datetime) -> ReservationResult: ...

    async def confirm(self, key: str) -> None: ...

    async def release(self, key: str) -> None: ...


class TokenBucket:
    """`rate` tokens per second, bursts of up to `burst`; `acquire()` waits for a token."""

    def __init__(self, rate: float, burst: float | None = None, *,
                 clock: Callable[[], float] = _time.monotonic) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate)
        self.tokens = self.burst
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def wait_time(self) -> float:
        """Seconds until a token is available (0 when one is), without taking it."""
        self._refill()
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / self.rate

    def try_acquire(self) -> bool:
        self._refill()
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False

    async def acquire(self) -> None:
        async with self._lock:
            while not self.try_acquire():  # noqa: ASYNC110 - a timed wait for the next token, nothing to signal
                await asyncio.sleep(self.wait_time())


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Delay after the `attempt`-th failed send (from 1): full jitter, uniform(0, min(cap, base * 2^(attempt-1)))."""
    return rng.uniform(0, min(cap, base * 2 ** (attempt - 1)))


def next_quiet_end(now: datetime, zone_name: str, quiet_end: time) -> datetime | None:
    """The next instant after `now` at which the customer's local clock shows `quiet_end`; None if the zone is
    unknown."""
    if not zone_name:
        return None
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), quiet_end, tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), quiet_end, tzinfo=zone)
    return candidate.astimezone(now.tzinfo)


_RESERVATION_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,119}$")


def reservation_key(delivery_key: str, generation: int) -> str:
    """Risk's delivery key for this delivery's contact reservation: the delivery key itself (digested when it
    does not fit risk's form), with "/r{n}" once an earlier reservation was released or expired."""
    base = delivery_key if _RESERVATION_KEY.match(delivery_key) else \
        "dk/" + hashlib.sha256(delivery_key.encode()).hexdigest()[:40]
    return base if generation == 0 else f"{base}/r{generation}"


def recipient_for(channel: str, contact: CustomerContact) -> str:
    """The contact point of a channel: e-mail address, phone number (SMS and call lists), the app's push address
    (attribute push_token, else the customer id: the app backend routes by it), the WeChat openid (attribute
    wechat_openid)."""
    attributes = contact.snapshot.attributes
    if channel == "email":
        return contact.email
    if channel in ("sms", "phone"):
        return contact.phone
    if channel == "app_push":
        return str(attributes.get("push_token") or contact.snapshot.customer_id)
    if channel == "wechat":
        return str(attributes.get("wechat_openid") or "")
    return ""


def template_values(contact: CustomerContact, offer: Offer, campaign: Campaign | None) -> dict[str, object]:
    values: dict[str, object] = {f"attr.{k}": v for k, v in contact.snapshot.attributes.items()}
    values.update(contact.snapshot.attributes)
    values.update({
        "full_name": contact.full_name, "first_name": (contact.full_name.split() or [""])[0],
        "region": contact.snapshot.region, "offer_title": offer.title, "offer_id": offer.offer_id,
        "campaign_name": (campaign.display_name or campaign.campaign_id) if campaign else "",
    })
    return values


# --- the dispatcher -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    delivery_key: str
    outbox_id: int
    channel: int
    in_flight: bool
    attempts: int
    deferrals: int
    generation: int
    create_time: datetime


@dataclass
class Context:
    outbox: OutboxRow | None
    campaign: Campaign | None
    offer: Offer | None


def _trigger_campaign(delivery_key: str) -> str:
    """The campaign of a triggered contact: its delivery key is "trigger:{campaign_id}:{event_id}" (triggers.py;
    ids hold no ':'), and its launch_id a per-campaign pseudo id with no launch row."""
    parts = delivery_key.split(":")
    return parts[1] if len(parts) >= 3 and parts[0] == "trigger" else ""


@dataclass(frozen=True)
class Ready:
    """A delivery decided and reserved, to be marked in flight and sent."""

    item: Claimed
    channel: str
    adapter: ChannelAdapter
    message: OutboundMessage
    delivery_key: str
    generation: int
    customer_id: str


@dataclass(frozen=True)
class Settlement:
    """What to record for a delivery: the column values (empty: nothing to write), the outcome reported, and the
    failure reason counted in the delivery-failures metric (None: not a failure)."""

    item: Claimed
    outcome: str
    failure: str | None
    values: dict[str, Any]


class Dispatcher:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], contacts: ContactSource,
                 policy: ContactPolicy, adapters: Mapping[str, ChannelAdapter], *,
                 settings: DispatchSettings | None = None, worker_id: str | None = None,
                 clock: Callable[[], datetime] = utcnow, metrics: ServiceMetrics | None = None,
                 seed: int | None = None, tracer_provider: TracerProvider | None = None) -> None:
        self.uow_factory = uow_factory
        self.tracer = trace.get_tracer("lodestar.campaign.dispatch", tracer_provider=tracer_provider)
        self.contacts = contacts
        self.policy = policy
        self.adapters = dict(adapters)
        self.settings = settings or DispatchSettings()
        self.worker_id = worker_id or f"{socket.gethostname()}:{uuid.uuid4().hex[:8]}"
        self.clock = clock
        self.metrics = metrics
        self.rng = random.Random(seed)  # noqa: S311  # nosec B311 - backoff jitter, not security
        self.buckets = {name: TokenBucket(rate) for name, rate in self.settings.rates.items()}
        self.lease = timedelta(seconds=self.settings.lease_seconds)
        # A batch must be sent well within its lease: with a slow channel, claim fewer at a time.
        slowest = min(self.settings.rates.values(), default=None)
        self.claim_size = self.settings.batch_size if slowest is None else \
            max(1, min(self.settings.batch_size, int(slowest * self.settings.lease_seconds / 2)))
        # Only channels with an adapter are taken from the outbox; the others' rows stay PENDING there.
        self.channel_ids = sorted(c for c, name in CHANNEL_NAMES.items() if name in self.adapters)

    # --- the loop ---------------------------------------------------------------------------------------------

    async def step(self) -> int:
        """Enqueue new outbox rows, claim a batch of due deliveries and process them; returns how many were
        claimed (0: nothing was due)."""
        await self.enqueue()
        claimed = await self.claim()
        if not claimed:
            return 0
        await self.process_batch(claimed)
        return len(claimed)

    async def run_until_idle(self, max_steps: int = 10_000) -> int:
        total = 0
        for _ in range(max_steps):
            n = await self.step()
            if n == 0:
                break
            total += n
        return total

    async def enqueue(self, limit: int = 500) -> int:
        if not self.channel_ids:
            return 0
        now = self.clock()
        async with self.uow_factory() as uow:
            query = (select(OutboxRow.id, OutboxRow.delivery_key, OutboxRow.launch_id, OutboxRow.channel)
                     .where(OutboxRow.state == OUTBOX_PENDING, OutboxRow.channel.in_(self.channel_ids))
                     .order_by(OutboxRow.id).limit(limit))
            dialect = uow.session.bind.dialect.name
            if dialect == "postgresql":
                query = query.with_for_update(skip_locked=True)
            rows = (await uow.session.execute(query)).all()
            if not rows:
                return 0
            insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
            await uow.session.execute(insert(DeliveryRow).values([{
                "delivery_key": r.delivery_key, "outbox_id": r.id, "launch_id": r.launch_id or "",
                "channel": r.channel, "state": QUEUED, "next_attempt_time": now, "in_flight": False,
                "attempts": 0, "deferrals": 0, "reservation_generation": 0, "last_reason": "",
                "provider_message_id": "", "delivery_status": "", "ignored_callbacks": 0, "create_time": now,
                "update_time": now} for r in rows]).on_conflict_do_nothing())
            await uow.session.execute(
                update(OutboxRow).where(OutboxRow.id.in_([r.id for r in rows]), OutboxRow.state == OUTBOX_PENDING)
                .values(state=QUEUED).execution_options(synchronize_session=False))
            await uow.commit()
        return len(rows)

    def _due(self, now: datetime) -> Any:
        return and_(DeliveryRow.state.in_((QUEUED, SENDING)), DeliveryRow.next_attempt_time <= now,
                    or_(DeliveryRow.lease_until.is_(None), DeliveryRow.lease_until < now))

    async def claim(self) -> list[Claimed]:
        now = self.clock()
        due = self._due(now)
        async with self.uow_factory() as uow:
            query = (select(DeliveryRow.delivery_key).where(due).order_by(DeliveryRow.next_attempt_time)
                     .limit(self.claim_size))
            if uow.session.bind.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            keys = list(await uow.session.scalars(query))
            if not keys:
                return []
            result = await uow.session.execute(
                update(DeliveryRow).where(DeliveryRow.delivery_key.in_(keys), due)
                .values(state=SENDING, claimed_by=self.worker_id, lease_until=now + self.lease, update_time=now)
                .returning(DeliveryRow.delivery_key, DeliveryRow.outbox_id, DeliveryRow.channel,
                           DeliveryRow.in_flight, DeliveryRow.attempts, DeliveryRow.deferrals,
                           DeliveryRow.reservation_generation, DeliveryRow.create_time)
                .execution_options(synchronize_session=False))
            claimed = [Claimed(*row) for row in result.all()]
            await uow.commit()
        return claimed

    # --- a claimed batch --------------------------------------------------------------------------------------
    #
    # Three phases, so that a batch costs two write transactions instead of two per message: decide each
    # delivery (reads, profile, risk; nothing written), mark the ready ones in flight (one commit), send them,
    # then record every outcome (one commit). The order per delivery is unchanged: the provider is called only
    # after its in-flight mark is committed; every state change is conditional on still holding the claim.

    async def process(self, item: Claimed) -> str:
        """One claimed delivery (a batch of one); see process_batch."""
        return (await self.process_batch([item]))[0]

    async def process_batch(self, items: Sequence[Claimed]) -> list[str]:
        """Drives each claimed delivery to its next state; returns what happened to each, in order: SENT,
        DEAD:<reason>, RETRY:<reason>, DEFERRED:<reason>, LOST_CLAIM or ERROR:<reason>. One span per delivery:
        the profile and risk calls and the database work made for it are its children."""
        spans = [self.tracer.start_span("campaign.dispatch", attributes={
            ATTR_CHANNEL: CHANNEL_NAMES.get(i.channel, str(i.channel)), "lodestar.delivery.in_flight": i.in_flight})
            for i in items]
        try:
            contexts = await self._contexts(items)
            gate = asyncio.Semaphore(self.settings.concurrency)

            async def decide(index: int) -> Settlement | Ready:
                with trace.use_span(spans[index], end_on_exit=False):
                    async with gate:
                        return await self._decide_guarded(items[index], contexts.get(items[index].outbox_id))

            decided = await asyncio.gather(*(decide(i) for i in range(len(items))))
            ready = [d for d in decided if isinstance(d, Ready)]
            lost = await self._mark_in_flight(ready) if ready else set()

            async def send(index: int) -> Settlement:
                d = decided[index]
                if not isinstance(d, Ready):
                    return d
                if d.item.delivery_key in lost:
                    return Settlement(d.item, "LOST_CLAIM", None, {})
                with trace.use_span(spans[index], end_on_exit=False):
                    async with gate:
                        return await self._send(d)

            settlements = await asyncio.gather(*(send(i) for i in range(len(items))))
            outcomes = await self._record(settlements)
        except BaseException:
            for span in spans:
                span.end()
            raise
        for span, outcome in zip(spans, outcomes, strict=True):
            kind, _, reason = outcome.partition(":")
            span.set_attribute("lodestar.delivery.outcome", kind)
            if reason:
                span.set_attribute(ATTR_FAILURE_REASON, reason)
            span.end()
        return outcomes

    async def _decide_guarded(self, item: Claimed, ctx: Context | None) -> Settlement | Ready:
        try:
            return await self._decide(item, ctx or Context(None, None, None))
        except DomainError as error:  # profile or risk unavailable, a deadline: back off, not an attempt
            return self._retry_later(item, error.reason or "DEPENDENCY_FAILED")
        except Exception:
            log.exception("delivery failed unexpectedly; retrying later")
            return self._retry_later(item, "INTERNAL")

    async def _decide(self, item: Claimed, ctx: Context) -> Settlement | Ready:
        now = self.clock()
        channel = CHANNEL_NAMES.get(item.channel, "")
        if ctx.outbox is None:
            return self._dead(item, "OUTBOX_ROW_MISSING")
        if not item.in_flight:
            if ctx.campaign is not None and ctx.campaign.state == CANCELLED:
                return self._dead(item, "CAMPAIGN_CANCELLED")
            if ctx.campaign is not None and ctx.campaign.state == PAUSED:
                return self._defer(item, "CAMPAIGN_PAUSED", now + timedelta(seconds=self.settings.recheck_seconds))
        if ctx.offer is None:
            return self._dead(item, "OFFER_NOT_FOUND")
        if not channel:
            return self._dead(item, "CHANNEL_NOT_OUTBOUND")
        adapter = self.adapters.get(channel)
        if adapter is None:
            return self._defer(item, "CHANNEL_NOT_CONFIGURED", now + timedelta(seconds=self.settings.recheck_seconds))
        customer_id = ctx.outbox.customer_id
        trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
        try:
            contact = await self.contacts.contact(customer_id)
        except NotFound:
            return self._dead(item, "CUSTOMER_NOT_FOUND")
        recipient = recipient_for(channel, contact)
        if not recipient.strip():
            return self._dead(item, "RECIPIENT_MISSING")
        try:
            message = self._render(channel, recipient, ctx, contact)
        except TemplateError as error:
            return self._dead(item, error.reason)
        if not item.in_flight:
            verdict = await self.policy.screen(contact, ctx.offer, item.channel, now)
            if verdict.verdict == "DENY":
                return self._dead(item, "RISK_" + (verdict.reasons[0] if verdict.reasons else "DENIED"))
            # Caps are ReserveContact's to decide: it knows this delivery's own reservation (left by a crashed
            # attempt), which Screen would count against it. A HOLD for caps alone goes on to the reservation.
            held_for = tuple(r for r in verdict.reasons if r != "FREQUENCY_CAP")
            if verdict.verdict != "ALLOW" and (held_for or not verdict.reasons):
                reason = held_for[0] if held_for else "HOLD"
                if "QUIET_HOURS" in verdict.reasons:
                    at = next_quiet_end(now, contact.snapshot.time_zone, self.settings.quiet_end)
                    return self._defer(item, "QUIET_HOURS",
                                       at or now + timedelta(seconds=self.settings.recheck_seconds))
                return self._defer(item, reason, now + timedelta(seconds=self.settings.recheck_seconds))
        generation = item.generation
        for _ in range(5):
            reservation = await self.policy.reserve(reservation_key(ctx.outbox.delivery_key, generation),
                                                    customer_id, item.channel, now)
            if not reservation.granted:
                return self._defer(item, "FREQUENCY_CAP", now + timedelta(seconds=self.settings.cap_defer_seconds))
            if reservation.state in ("RESERVED", "CONFIRMED"):
                break
            generation += 1  # released or expired: a fresh reservation under the next generation
        else:
            return self._retry_later(item, "RESERVATION_UNAVAILABLE")
        return Ready(item, channel, adapter, message, ctx.outbox.delivery_key, generation, customer_id)

    async def _send(self, ready: Ready) -> Settlement:
        item, channel = ready.item, ready.channel
        key = reservation_key(ready.delivery_key, ready.generation)
        bucket = self.buckets.get(channel)
        if bucket is not None:
            await bucket.acquire()
        result: SendResult = await ready.adapter.send(ready.message, ready.delivery_key)
        attempts = item.attempts + 1
        if result.status is SendStatus.ACCEPTED:
            try:
                await self.policy.confirm(key)
            except DomainError as error:  # sent all the same: the message is out; the cap count may lag
                log.warning("contact confirmation failed after a send: %s", error.reason,
                            extra={"customer": customer_token(ready.customer_id)})
            now = self.clock()
            return Settlement(item, SENT, None, {"state": SENT, "attempts": attempts, "last_reason": "",
                                                 "sent_time": now,
                                                 "provider_message_id": result.provider_message_id})
        failure = result.reason or result.status.value
        if result.status is SendStatus.REJECTED or attempts >= self.settings.max_attempts:
            await self._release(key)
            return Settlement(item, f"DEAD:{failure}", failure, {"state": DEAD, "attempts": attempts,
                                                                 "last_reason": failure, "dead_time": self.clock()})
        delay = backoff_delay(attempts, self.settings.backoff_seconds, self.settings.backoff_max_seconds, self.rng)
        return Settlement(item, f"RETRY:{failure}", failure, {
            "state": QUEUED, "attempts": attempts, "last_reason": failure,
            "next_attempt_time": self.clock() + timedelta(seconds=delay)})

    async def _release(self, key: str) -> None:
        try:
            await self.policy.release(key)
        except DomainError as error:  # an unreleased reservation expires on its own (RISK_RESERVATION_TTL)
            log.warning("contact reservation release failed: %s", error.reason)

    def _render(self, channel: str, recipient: str, ctx: Context, contact: CustomerContact) -> OutboundMessage:
        assert ctx.outbox is not None and ctx.offer is not None
        arm = next((a for a in ctx.campaign.arms if a.arm_id == ctx.outbox.arm_id), None) if ctx.campaign else None
        template = arm.content if arm is not None and arm.content.strip() else DEFAULT_TEMPLATE
        rendered = render(template, template_values(contact, ctx.offer, ctx.campaign), ctx.offer.disclosures)
        return OutboundMessage(
            channel=channel, recipient=recipient, customer_ref=ctx.outbox.customer_id, body=rendered.body,
            subject=ctx.offer.title, template_id=f"offer-{ctx.offer.offer_id}",
            fields={**rendered.fields, "offer_title": ctx.offer.title},
            campaign_id=ctx.campaign.campaign_id if ctx.campaign else "", arm_id=ctx.outbox.arm_id,
            offer_id=ctx.offer.offer_id)

    async def _contexts(self, items: Sequence[Claimed]) -> dict[int, Context]:
        """Outbox rows, campaigns (through their launch; a triggered row may name its campaign itself) and offers
        of a batch, in one read transaction."""
        out: dict[int, Context] = {}
        async with self.uow_factory() as uow:
            rows = list(await uow.session.scalars(
                select(OutboxRow).where(OutboxRow.id.in_([i.outbox_id for i in items]))))
            for row in rows:
                uow.session.expunge(row)
            launch_ids = {r.launch_id for r in rows if r.launch_id}
            campaign_of: dict[str, str] = {}
            if launch_ids:
                campaign_of = {launch_id: campaign_id for launch_id, campaign_id in (await uow.session.execute(
                    select(LaunchRow.launch_id, LaunchRow.campaign_id).where(LaunchRow.launch_id.in_(launch_ids)))
                ).all()}
            campaigns: dict[str, Campaign | None] = {}
            offers: dict[str, Offer | None] = {}
            for row in rows:
                campaign_id = campaign_of.get(row.launch_id, "") or _trigger_campaign(row.delivery_key)
                if campaign_id and campaign_id not in campaigns:
                    campaigns[campaign_id] = await uow.campaigns.get(campaign_id)
                if row.offer_id not in offers:
                    offers[row.offer_id] = await uow.offers.get(row.offer_id)
                out[row.id] = Context(row, campaigns.get(campaign_id) if campaign_id else None, offers[row.offer_id])
        return out

    # --- state changes (each conditional on still holding the claim) -----------------------------------------

    def _mine(self, item: Claimed) -> Any:
        return and_(DeliveryRow.delivery_key == item.delivery_key, DeliveryRow.state == SENDING,
                    DeliveryRow.claimed_by == self.worker_id)

    async def _mark_in_flight(self, ready: Sequence[Ready]) -> set[str]:
        """Commits in_flight (and the attempt) for every delivery about to be sent; returns the keys whose claim
        was lost meanwhile (those are not sent by this replica)."""
        lost: set[str] = set()
        now = self.clock()
        async with self.uow_factory() as uow:
            for r in ready:
                result = await uow.session.execute(
                    update(DeliveryRow).where(self._mine(r.item))
                    .values(in_flight=True, attempts=r.item.attempts + 1, reservation_generation=r.generation,
                            lease_until=now + self.lease, update_time=now)
                    .execution_options(synchronize_session=False))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    lost.add(r.item.delivery_key)
            await uow.commit()
        return lost

    async def _record(self, settlements: Sequence[Settlement]) -> list[str]:
        """Every outcome of the batch in one transaction; a delivery whose claim was lost keeps the other
        replica's state (LOST_CLAIM)."""
        outcomes = [s.outcome for s in settlements]
        now = self.clock()
        async with self.uow_factory() as uow:
            for index, s in enumerate(settlements):
                if not s.values:
                    continue
                values = {"claimed_by": None, "lease_until": None, "update_time": now, **s.values}
                result = await uow.session.execute(update(DeliveryRow).where(self._mine(s.item)).values(**values)
                                                   .execution_options(synchronize_session=False))
                if result.rowcount != 1:  # type: ignore[attr-defined]
                    outcomes[index] = "LOST_CLAIM"
                    continue
                if values["state"] in (SENT, DEAD):
                    await uow.session.execute(update(OutboxRow).where(OutboxRow.id == s.item.outbox_id)
                                              .values(state=values["state"]).execution_options(synchronize_session=False))
            await uow.commit()
        for s, outcome in zip(settlements, outcomes, strict=True):
            if outcome == "LOST_CLAIM":
                log.info("delivery claim lost to another replica; it finishes the job")
            elif s.failure and self.metrics is not None:
                self.metrics.record_delivery_failure(CHANNEL_NAMES.get(s.item.channel, str(s.item.channel)), s.failure)
        return outcomes

    def _dead(self, item: Claimed, reason: str) -> Settlement:
        return Settlement(item, f"DEAD:{reason}", reason, {"state": DEAD, "last_reason": reason,
                                                           "dead_time": self.clock()})

    def _defer(self, item: Claimed, reason: str, until: datetime) -> Settlement:
        """Not a failure: the message waits for the next allowed time (no attempt is counted). A message that has
        waited longer than max_defer since it was queued is dead-lettered DEFERRAL_EXPIRED (unless in flight)."""
        if not item.in_flight and self.clock() - item.create_time > self.settings.max_defer:
            return self._dead(item, "DEFERRAL_EXPIRED")
        return Settlement(item, f"DEFERRED:{reason}", None, {"state": QUEUED, "last_reason": reason,
                                                             "deferrals": item.deferrals + 1,
                                                             "next_attempt_time": until})

    def _retry_later(self, item: Claimed, reason: str) -> Settlement:
        delay = backoff_delay(max(item.attempts, 1), self.settings.backoff_seconds, self.settings.backoff_max_seconds,
                              self.rng)
        return Settlement(item, f"ERROR:{reason}", None, {
            "state": QUEUED, "last_reason": reason,
            "next_attempt_time": self.clock() + timedelta(seconds=max(delay, 0.5))})

    # --- metrics ----------------------------------------------------------------------------------------------

    async def outbox_depth(self) -> dict[str, int]:
        """Messages waiting per channel name: outbox rows not yet taken plus queued and sending deliveries."""
        depth = dict.fromkeys(CHANNEL_NAMES.values(), 0)
        async with self.uow_factory() as uow:
            for channel, n in (await uow.session.execute(
                    select(OutboxRow.channel, func.count()).where(OutboxRow.state == OUTBOX_PENDING)
                    .group_by(OutboxRow.channel))).all():
                name = CHANNEL_NAMES.get(channel, str(channel))
                depth[name] = depth.get(name, 0) + int(n)
            for channel, n in (await uow.session.execute(
                    select(DeliveryRow.channel, func.count()).where(DeliveryRow.state.in_((QUEUED, SENDING)))
                    .group_by(DeliveryRow.channel))).all():
                name = CHANNEL_NAMES.get(channel, str(channel))
                depth[name] = depth.get(name, 0) + int(n)
        return depth

    async def report_depth(self) -> dict[str, int]:
        depth = await self.outbox_depth()
        if self.metrics is not None:
            for name, n in depth.items():
                self.metrics.set_outbox_depth(n, name)
        return depth


# --- the production collaborators ------------------------------------------------------------------------------


class ProfileContacts:
    def __init__(self, profile: Any) -> None:
        self.profile = profile

    async def contact(self, customer_id: str) -> CustomerContact:
        from services.campaign.clients import get_contact

        return await get_contact(self.profile, customer_id)


class RiskContactPolicy:
    """Risk's Screen at send time and its contact reservations."""

    def __init__(self, risk: Any) -> None:
        self.risk = risk

    async def screen(self, contact: CustomerContact, offer: Offer, channel: int, at: datetime) -> SendVerdict:
        result = await self.risk.screen(contact.snapshot, [offer], channel, at)
        verdict = result.verdicts.get(offer.offer_id)
        if verdict is None:
            return SendVerdict("HOLD", ("NO_VERDICT",))
        return SendVerdict(verdict.verdict, tuple(verdict.reasons))

    async def reserve(self, key: str, customer_id: str, channel: int, at: datetime) -> ReservationResult:
        from services.campaign.clients import reserve_contact

        return await reserve_contact(self.risk, key, customer_id, channel, at)

    async def confirm(self, key: str) -> None:
        from services.campaign.clients import confirm_contact

        await confirm_contact(self.risk, key)

    async def release(self, key: str) -> None:
        from services.campaign.clients import release_contact

        await release_contact(self.risk, key)


def channel_names(channels: Sequence[int]) -> list[str]:
    return [CHANNEL_NAMES.get(c, str(c)) for c in channels]


# --- the DeliveryService use cases (delivery_handlers.py) ------------------------------------------------------

DELIVERED, FAILED, OPENED, CLICKED = "DELIVERED", "FAILED", "OPENED", "CLICKED"
APPLIED, DUPLICATE, STALE, CONFLICT = "APPLIED", "DUPLICATE", "STALE", "CONFLICT"
# A provider's clock may run a little behind ours: a callback up to this much before the send still counts.
CALLBACK_CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True)
class DeliveryView:
    delivery_key: str
    launch_id: str
    channel: int
    state: str  # PENDING (outbox only), QUEUED, SENDING, SENT, DEAD
    attempts: int = 0
    deferrals: int = 0
    last_reason: str = ""
    next_attempt_time: datetime | None = None
    provider_message_id: str = ""
    sent_time: datetime | None = None
    dead_time: datetime | None = None
    status: str = ""
    opened_time: datetime | None = None
    clicked_time: datetime | None = None
    ignored_callbacks: int = 0


def _view(row: DeliveryRow) -> DeliveryView:
    return DeliveryView(row.delivery_key, row.launch_id, row.channel, row.state, row.attempts, row.deferrals,
                        row.last_reason, row.next_attempt_time, row.provider_message_id, row.sent_time,
                        row.dead_time, row.delivery_status, row.opened_time, row.clicked_time,
                        row.ignored_callbacks)


COUNT_FIELDS = ("total", "pending", "queued", "sending", "sent", "dead", "deferred", "delivered", "failed",
                "opened", "clicked", "ignored_callbacks", "attempts")


@dataclass
class DeliveryStats:
    launch_id: str
    counts: dict[str, int]
    by_channel: dict[int, dict[str, int]]
    dead_by_reason: dict[str, int]


class DeliveryService:
    """Status callbacks, the dead-letter queue and per-launch statistics. Owns its transactions."""

    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], *, clock: Callable[[], datetime] = utcnow,
                 metrics: ServiceMetrics | None = None) -> None:
        self.uow_factory = uow_factory
        self.clock = clock
        self.metrics = metrics

    async def record_status(self, *, delivery_key: str = "", provider_message_id: str = "", status: str,
                            event_time: datetime, reason: str = "") -> tuple[str, DeliveryView]:
        """Applies one callback, or ignores it and counts it on the delivery (DUPLICATE, STALE, CONFLICT)."""
        async with self.uow_factory() as uow:
            query = select(DeliveryRow)
            query = (query.where(DeliveryRow.delivery_key == delivery_key) if delivery_key
                     else query.where(DeliveryRow.provider_message_id == provider_message_id))
            if uow.session.bind.dialect.name == "postgresql":
                query = query.with_for_update()
            row = (await uow.session.scalars(query.limit(1))).first()
            if row is None:
                raise NotFound("delivery", delivery_key or provider_message_id, reason="DELIVERY_NOT_FOUND")
            if row.state != SENT or row.sent_time is None:
                raise FailedPrecondition("DELIVERY_NOT_SENT", f"the delivery is {row.state}, not SENT: no status "
                                         "can be reported for it yet", metadata={"state": row.state})
            outcome = self._apply(row, status, event_time)
            if outcome != APPLIED:
                row.ignored_callbacks += 1
            row.update_time = self.clock()
            await uow.commit()
            view = _view(row)
        if self.metrics is not None:
            self.metrics.counter("lodestar.campaign.delivery.callbacks", "{callback}",
                                 "Delivery status callbacks, by status and outcome").add(
                1, {"lodestar.delivery.status": status, "lodestar.delivery.callback_outcome": outcome})
        if status == FAILED and outcome == APPLIED and self.metrics is not None:
            self.metrics.record_delivery_failure(CHANNEL_NAMES.get(row.channel, str(row.channel)),
                                                 reason or "PROVIDER_REPORTED_FAILURE")
        return outcome, view

    @staticmethod
    def _apply(row: DeliveryRow, status: str, at: datetime) -> str:
        assert row.sent_time is not None
        if at < row.sent_time - CALLBACK_CLOCK_SKEW:
            return STALE
        if status in (DELIVERED, FAILED):
            if row.delivery_status == status:
                return DUPLICATE
            if row.delivery_status:
                return CONFLICT
            row.delivery_status, row.delivery_status_time = status, at
            return APPLIED
        column = "opened_time" if status == OPENED else "clicked_time"
        if getattr(row, column) is not None:
            return DUPLICATE
        if row.delivery_status == FAILED:
            return CONFLICT
        setattr(row, column, at)
        if not row.delivery_status:  # an open or a click proves delivery
            row.delivery_status, row.delivery_status_time = DELIVERED, at
        return APPLIED

    async def list_dead_letters(self, *, launch_id: str | None, channel: int | None,
                                after: tuple[datetime, str] | None, page_size: int
                                ) -> tuple[list[DeliveryView], tuple[datetime, str] | None]:
        async with self.uow_factory() as uow:
            query = select(DeliveryRow).where(DeliveryRow.state == DEAD)
            if launch_id is not None:
                query = query.where(DeliveryRow.launch_id == launch_id)
            if channel is not None:
                query = query.where(DeliveryRow.channel == channel)
            if after is not None:
                query = query.where(or_(DeliveryRow.dead_time > after[0],
                                        and_(DeliveryRow.dead_time == after[0], DeliveryRow.delivery_key > after[1])))
            rows = list(await uow.session.scalars(
                query.order_by(DeliveryRow.dead_time, DeliveryRow.delivery_key).limit(page_size + 1)))
            views = [_view(r) for r in rows[:page_size]]
        last = views[-1] if len(rows) > page_size and views else None
        return views, ((last.dead_time, last.delivery_key) if last is not None and last.dead_time else None)

    async def requeue(self, delivery_key: str, actor: str, key: IdempotencyKey | None) -> DeliveryView:
        """DEAD -> QUEUED, due now, attempts reset, same delivery key (so the provider still deduplicates)."""
        async def operation(uow: CampaignUnitOfWork) -> str:
            now = self.clock()
            row = await uow.session.get(DeliveryRow, delivery_key,
                                        with_for_update=uow.session.bind.dialect.name == "postgresql")
            if row is None:
                raise NotFound("delivery", delivery_key, reason="DELIVERY_NOT_FOUND")
            if row.state != DEAD:
                raise FailedPrecondition("DELIVERY_NOT_DEAD", f"only a dead letter can be requeued; this delivery "
                                         f"is {row.state}", metadata={"state": row.state})
            row.state, row.next_attempt_time, row.attempts, row.dead_time = QUEUED, now, 0, None
            row.last_reason, row.claimed_by, row.lease_until, row.update_time = "REQUEUED", None, None, now
            await uow.session.execute(update(OutboxRow).where(OutboxRow.id == row.outbox_id).values(state=QUEUED)
                                      .execution_options(synchronize_session=False))
            return delivery_key

        await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, Codec(encode=str.encode, decode=bytes.decode),
                             operation)
        log.info("dead letter requeued by %s", actor)
        return await self.get(delivery_key)

    async def get(self, delivery_key: str) -> DeliveryView:
        async with self.uow_factory() as uow:
            row = await uow.session.get(DeliveryRow, delivery_key)
            if row is not None:
                return _view(row)
            outbox = await uow.session.scalar(select(OutboxRow).where(OutboxRow.delivery_key == delivery_key))
            if outbox is None:
                raise NotFound("delivery", delivery_key, reason="DELIVERY_NOT_FOUND")
            return DeliveryView(outbox.delivery_key, outbox.launch_id, outbox.channel, "PENDING")

    async def stats(self, launch_id: str) -> DeliveryStats:
        def total(cond: Any) -> Any:
            return func.sum(case((cond, 1), else_=0))

        async with self.uow_factory() as uow:
            # A triggered campaign's contacts share a pseudo launch id with no launch row (triggers.py).
            if await uow.session.get(LaunchRow, launch_id) is None and await uow.session.scalar(
                    select(OutboxRow.id).where(OutboxRow.launch_id == launch_id).limit(1)) is None:
                raise NotFound("launch", f"launches/{launch_id}", reason="LAUNCH_NOT_FOUND")
            by_channel: dict[int, dict[str, int]] = {}

            def bucket(channel: int) -> dict[str, int]:
                return by_channel.setdefault(channel, dict.fromkeys(COUNT_FIELDS, 0))

            for channel, n in (await uow.session.execute(
                    select(OutboxRow.channel, func.count()).where(OutboxRow.launch_id == launch_id,
                                                                  OutboxRow.state == OUTBOX_PENDING)
                    .group_by(OutboxRow.channel))).all():
                b = bucket(channel)
                b["pending"] += int(n)
                b["total"] += int(n)
            d = DeliveryRow
            for row in (await uow.session.execute(
                    select(d.channel, func.count(), total(d.state == QUEUED), total(d.state == SENDING),
                           total(d.state == SENT), total(d.state == DEAD), total(and_(d.state == QUEUED,
                                                                                     d.deferrals > 0)),
                           total(d.delivery_status == DELIVERED), total(d.delivery_status == FAILED),
                           total(d.opened_time.is_not(None)), total(d.clicked_time.is_not(None)),
                           func.sum(d.ignored_callbacks), func.sum(d.attempts))
                    .where(d.launch_id == launch_id).group_by(d.channel))).all():
                b = bucket(row[0])
                for name, value in zip(("total", "queued", "sending", "sent", "dead", "deferred", "delivered",
                                        "failed", "opened", "clicked", "ignored_callbacks", "attempts"),
                                       row[1:], strict=True):
                    b[name] += int(value or 0)
            dead = {str(reason): int(n) for reason, n in (await uow.session.execute(
                select(d.last_reason, func.count()).where(d.launch_id == launch_id, d.state == DEAD)
                .group_by(d.last_reason))).all()}
        counts = dict.fromkeys(COUNT_FIELDS, 0)
        for b in by_channel.values():
            for name, value in b.items():
                counts[name] += value
        return DeliveryStats(launch_id, counts, by_channel, dead)
