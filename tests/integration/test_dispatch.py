"""The dispatcher on a real campaign database (SQLite, or PostgreSQL with TEST_DATABASE_URL) against the bundled
provider simulator: sends, retries with backoff, dead letters, deferrals (quiet hours, caps, paused campaigns), a
crash after the send, lease take-over, two replicas, triggered rows without a launch; and DeliveryService's RPCs
(status callbacks, dead letters, requeue, stats) over a real gRPC channel."""

import asyncio
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from sqlalchemy import select

from lodestar.campaign.v1 import delivery_service_pb2 as pb
from lodestar.campaign.v1 import delivery_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2 as c
from services.campaign.app import DEFINITION
from services.campaign.channels.base import SendResult, SendStatus, key_digest
from services.campaign.channels.http_provider import HttpProviderAdapter
from services.campaign.channels.simulator import Faults, ProviderSimulator
from services.campaign.clients import CustomerContact, ReservationResult
from services.campaign.db import CampaignUnitOfWork, DeliveryRow, LaunchRow, OutboxRow
from services.campaign.dispatch import (
    DEAD,
    QUEUED,
    SENDING,
    SENT,
    Dispatcher,
    DispatchSettings,
    SendVerdict,
    reservation_key,
)
from services.campaign.domain import APPROVED, CANCELLED, PAUSED, Arm, Campaign, CustomerSnapshot, Disclosure, Offer
from services.platform.errors import NotFound
from services.platform.masking import customer_token
from services.platform.telemetry import (
    ATTR_CUSTOMER_TOKEN,
    ATTR_FAILURE_REASON,
    METRIC_DELIVERY_FAILURES,
    METRIC_OUTBOX_DEPTH,
    ServiceMetrics,
)
from tests.helpers import expect_error

OFFER = Offer("card", "Gold Card", c.PRODUCT_TYPE_CREDIT_CARD, c.PRODUCT_RISK_LEVEL_R2, 60.0, 1.0,
              disclosures=[Disclosure("APR", "APR 15.9%.")])
LAUNCH = "a" * 32


class Clock:
    def __init__(self):
        self.now = datetime(2026, 3, 2, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += timedelta(seconds=seconds)


class Contacts:
    def __init__(self, zone="Asia/Shanghai"):
        self.zone = zone
        self.missing = set()
        self.calls = 0

    async def contact(self, customer_id):
        self.calls += 1
        if customer_id in self.missing:
            raise NotFound("customer", f"customers/{customer_id}")
        return CustomerContact(CustomerSnapshot(customer_id, None, "CN-31", self.zone, {}),
                               f"Li {customer_id}", f"{customer_id}@example.com", f"+86139{customer_id[-5:]:0>8}")


class Policy:
    """Risk's screen and reservations in memory: reservations per key, confirmations counted."""

    def __init__(self):
        self.verdicts = {}  # customer -> SendVerdict
        self.refuse = set()  # customers whose reservation a cap refuses
        self.reservations = {}  # key -> state
        self.confirms = []
        self.screens = 0

    async def screen(self, contact, offer, channel, at):
        self.screens += 1
        return self.verdicts.get(contact.snapshot.customer_id, SendVerdict("ALLOW"))

    async def reserve(self, key, customer_id, channel, at):
        if customer_id in self.refuse:
            return ReservationResult(False, "", ("sms:1/day",))
        state = self.reservations.setdefault(key, "RESERVED")
        return ReservationResult(True, state)

    async def confirm(self, key):
        self.confirms.append(key)
        self.reservations[key] = "CONFIRMED"

    async def release(self, key):
        if self.reservations.get(key) == "RESERVED":
            self.reservations[key] = "RELEASED"


class Kill(BaseException):
    """Stands for SIGKILL: escapes every `except Exception`."""


class KillAfterSend:
    """Sends through `inner`, then dies before the dispatcher can record the outcome (once)."""

    def __init__(self, inner):
        self.inner = inner
        self.channel = inner.channel
        self.armed = True

    async def send(self, message, key):
        result = await self.inner.send(message, key)
        if self.armed:
            self.armed = False
            raise Kill()
        return result


class Counting:
    """A provider that does NOT deduplicate: counts every send per key (so a double send would show)."""

    channel = "sms"

    def __init__(self, delay=0.0):
        self.sends = {}
        self.delay = delay

    async def send(self, message, key):
        await asyncio.sleep(self.delay)
        self.sends[key] = self.sends.get(key, 0) + 1
        return SendResult(SendStatus.ACCEPTED, provider_message_id=f"m-{key}")


@pytest.fixture
async def svc(start):
    return await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                       CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600")


@pytest.fixture
async def sim():
    simulator = ProviderSimulator(Faults(hang_seconds=2), seed=1)
    await simulator.start()
    yield simulator
    await simulator.stop()


async def seed(svc, n, *, channel=c.CHANNEL_SMS, state=APPROVED, content="Hi {{ first_name }}: {{ offer_title }}",
               launch=LAUNCH, campaign_id="spring"):
    now = datetime.now(UTC)
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        if await uow.offers.get(OFFER.offer_id) is None:
            await uow.offers.add(OFFER)
        if launch and await uow.campaigns.get(campaign_id) is None:
            await uow.campaigns.add(Campaign(campaign_id=campaign_id, state=state, segment="segments/all",
                                             offer_ids=[OFFER.offer_id], channels=[channel],
                                             arms=[Arm("a", 1.0, content)], created_by="maker", start_time=now))
            uow.session.add(LaunchRow(launch_id=launch, campaign_id=campaign_id, state="DONE", actor="ops",
                                      as_of=now, contact_time=now, fields=[], counts={}, report={}))
        for i in range(n):
            customer = f"c{i:05d}"
            uow.session.add(OutboxRow(delivery_key=f"{launch}:{customer}" if launch else f"trigger:t1:{customer}",
                                      launch_id=launch, customer_id=customer, offer_id=OFFER.offer_id,
                                      channel=channel, arm_id="a", expected_value=1.0, probability=0.1,
                                      state="PENDING"))
        await uow.commit()


def dispatcher(svc, adapters, *, contacts=None, policy=None, clock=None, worker="w1", metrics=None, **settings):
    base = {"batch_size": 8, "max_attempts": 3, "backoff_seconds": 1.0, "backoff_max_seconds": 10.0,
            "lease_seconds": 30.0}
    base.update(settings)
    return Dispatcher(lambda: CampaignUnitOfWork(svc.runtime.database), contacts or Contacts(), policy or Policy(),
                      adapters, settings=DispatchSettings(**base), worker_id=worker, clock=clock or Clock(),
                      metrics=metrics, seed=7)


def sms_adapter(sim):
    return {"sms": HttpProviderAdapter(sim.url, "sms", max_attempts=1, timeout=2)}


async def deliveries(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return {r.delivery_key: r for r in await session.scalars(select(DeliveryRow))}


async def outbox_states(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return {r.delivery_key: r.state for r in await session.scalars(select(OutboxRow))}


async def test_every_outbox_row_is_sent_once_rendered_with_its_disclosures(svc, sim):
    await seed(svc, 5)
    policy = Policy()
    d = dispatcher(svc, sms_adapter(sim), policy=policy)
    assert await d.run_until_idle() == 5
    rows = await deliveries(svc)
    assert {r.state for r in rows.values()} == {SENT}
    assert all(r.attempts == 1 and r.in_flight and r.provider_message_id.startswith("sim-") for r in rows.values())
    assert set(await outbox_states(svc)) == set(rows) and set((await outbox_states(svc)).values()) == {SENT}
    assert sorted(m["idempotency_key"] for m in sim.received) == sorted(key_digest(k, 40) for k in rows)
    first = next(m for m in sim.received if m["idempotency_key"] == key_digest(f"{LAUNCH}:c00000", 40))
    assert first["payload"]["text"] == "Hi Li: Gold Card\n\nAPR 15.9%."
    assert first["payload"]["to"] == "+8613900000000"
    assert sorted(policy.confirms) == sorted(rows)  # one confirmed reservation per delivery key
    assert policy.screens == 5


async def test_transient_failures_retry_with_backoff_then_send(svc, sim):
    await seed(svc, 1)
    sim.faults.fail_next = 2
    clock = Clock()
    d = dispatcher(svc, sms_adapter(sim), clock=clock)
    assert await d.run_until_idle() == 1
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.attempts, row.last_reason) == (QUEUED, 1, "HTTP_503")
    assert clock.now < row.next_attempt_time <= clock.now + timedelta(seconds=1)  # full jitter, base 1 s
    assert await d.run_until_idle() == 0  # not due yet
    clock.advance(1)
    await d.run_until_idle()
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.attempts) == (QUEUED, 2)
    assert row.next_attempt_time <= clock.now + timedelta(seconds=2)  # base * 2^(2-1)
    clock.advance(2)
    await d.run_until_idle()
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.attempts, row.provider_message_id) == (SENT, 3, "sim-000001")
    assert len(sim.received) == 1


async def test_retries_exhausted_and_permanent_failures_are_dead_letters_with_reasons(svc, sim, start):
    await seed(svc, 3)
    reader = InMemoryMetricReader()
    metrics = ServiceMetrics(MeterProvider(metric_readers=[reader]))
    contacts = Contacts()
    contacts.missing.add("c00001")
    policy = Policy()
    policy.verdicts["c00002"] = SendVerdict("DENY", ("NO_CONSENT", "DO_NOT_CONTACT"))
    sim.faults.fail_next = 100
    clock = Clock()
    d = dispatcher(svc, sms_adapter(sim), clock=clock, contacts=contacts, policy=policy, metrics=metrics,
                   max_attempts=2)
    await d.run_until_idle()
    clock.advance(5)
    await d.run_until_idle()
    rows = await deliveries(svc)
    assert {k.split(":")[1]: (r.state, r.last_reason, r.attempts) for k, r in rows.items()} == {
        "c00000": (DEAD, "HTTP_503", 2), "c00001": (DEAD, "CUSTOMER_NOT_FOUND", 0),
        "c00002": (DEAD, "RISK_NO_CONSENT", 0)}
    # The exhausted one's reservation was given back; nothing was sent for the others.
    assert policy.reservations == {f"{LAUNCH}:c00000": "RELEASED"}
    failures = {}
    for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics:
        if metric.name == METRIC_DELIVERY_FAILURES:
            for point in metric.data.data_points:
                failures[point.attributes["lodestar.delivery.failure_reason"]] = point.value
    assert failures == {"HTTP_503": 2, "CUSTOMER_NOT_FOUND": 1, "RISK_NO_CONSENT": 1}

    # Over gRPC: the dead letters, paged, oldest first; requeue one; stats.
    async with grpc.aio.insecure_channel(svc.address) as channel:
        stub = pbg.DeliveryServiceStub(channel)
        first = await stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=2))
        assert len(first.deliveries) == 2 and first.next_page_token
        second = await stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=2, page_token=first.next_page_token))
        assert len(second.deliveries) == 1 and not second.next_page_token
        assert {x.delivery_key for x in [*first.deliveries, *second.deliveries]} == set(rows)
        await expect_error(stub.ListDeadLetters(pb.ListDeadLettersRequest(page_size=2, launch=f"launches/{LAUNCH}",
                                                                          page_token=first.next_page_token)),
                           grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_QUERY_MISMATCH")
        stats = await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(launch=f"launches/{LAUNCH}"))
        assert (stats.counts.total, stats.counts.dead, stats.counts.sent, stats.counts.attempts) == (3, 3, 0, 2)
        assert dict(stats.dead_by_reason) == {"HTTP_503": 1, "CUSTOMER_NOT_FOUND": 1, "RISK_NO_CONSENT": 1}
        assert [ch.channel for ch in stats.channels] == [c.CHANNEL_SMS]

        sim.faults.fail_next = 0
        key = f"{LAUNCH}:c00000"
        requeued = await stub.RequeueDeadLetter(pb.RequeueDeadLetterRequest(delivery_key=key, actor="ops-1",
                                                                           request_id="rq-1"))
        assert (requeued.delivery.state, requeued.delivery.attempts) == (pb.DELIVERY_STATE_QUEUED, 0)
        again = await stub.RequeueDeadLetter(pb.RequeueDeadLetterRequest(delivery_key=key, actor="ops-1",
                                                                        request_id="rq-1"))
        assert again.delivery.state == pb.DELIVERY_STATE_QUEUED  # replayed, not refused
        await expect_error(stub.RequeueDeadLetter(pb.RequeueDeadLetterRequest(delivery_key=key, actor="ops-1")),
                           grpc.StatusCode.FAILED_PRECONDITION, "DELIVERY_NOT_DEAD")
        await expect_error(stub.RequeueDeadLetter(pb.RequeueDeadLetterRequest(delivery_key="nope", actor="ops-1")),
                           grpc.StatusCode.NOT_FOUND, "DELIVERY_NOT_FOUND")
        await expect_error(stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(launch="launches/" + "b" * 32)),
                           grpc.StatusCode.NOT_FOUND, "LAUNCH_NOT_FOUND")
    policy.reservations.clear()
    clock.now = datetime.now(UTC) + timedelta(minutes=1)  # requeued "now" by the service's own clock
    await d.run_until_idle()
    assert (await deliveries(svc))[key].state == SENT
    assert [m["idempotency_key"] for m in sim.received] == [key_digest(key, 40)]


async def test_quiet_hours_caps_and_a_paused_campaign_defer_without_counting_a_failure(svc, sim):
    await seed(svc, 3)
    policy = Policy()
    policy.verdicts["c00000"] = SendVerdict("HOLD", ("QUIET_HOURS",))
    policy.refuse.add("c00001")
    clock = Clock()
    d = dispatcher(svc, sms_adapter(sim), clock=clock, policy=policy, cap_defer_seconds=600)
    await d.run_until_idle()
    rows = {k.split(":")[1]: r for k, r in (await deliveries(svc)).items()}
    quiet, capped, sent = rows["c00000"], rows["c00001"], rows["c00002"]
    # 04:00 UTC is 12:00 in Shanghai; the next 08:00 there is 00:00 UTC the next day.
    assert (quiet.state, quiet.last_reason, quiet.deferrals, quiet.attempts) == (QUEUED, "QUIET_HOURS", 1, 0)
    assert quiet.next_attempt_time == datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    assert (capped.state, capped.last_reason, capped.deferrals) == (QUEUED, "FREQUENCY_CAP", 1)
    assert capped.next_attempt_time == clock.now + timedelta(seconds=600)
    assert sent.state == SENT
    assert len(sim.received) == 1

    async with grpc.aio.insecure_channel(svc.address) as channel:
        stats = await pbg.DeliveryServiceStub(channel).GetDeliveryStats(
            pb.GetDeliveryStatsRequest(launch=f"launches/{LAUNCH}"))
    assert (stats.counts.queued, stats.counts.deferred, stats.counts.sent, stats.counts.dead) == (2, 2, 1, 0)

    policy.verdicts.clear()
    policy.refuse.clear()
    clock.now = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    await d.run_until_idle()
    assert {r.state for r in (await deliveries(svc)).values()} == {SENT}
    assert len(sim.received) == 3


async def test_a_screen_hold_for_caps_alone_is_left_to_the_reservation(svc, sim):
    # After a crash between ReserveContact and the send, Screen counts the delivery's own reservation and says
    # HOLD FREQUENCY_CAP; ReserveContact returns that same reservation, so the message goes out.
    await seed(svc, 2)
    policy = Policy()
    policy.verdicts["c00000"] = SendVerdict("HOLD", ("FREQUENCY_CAP",))
    policy.verdicts["c00001"] = SendVerdict("HOLD", ("FREQUENCY_CAP", "TIMEZONE_UNKNOWN"))
    d = dispatcher(svc, sms_adapter(sim), policy=policy)
    await d.run_until_idle()
    rows = {k.split(":")[1]: r for k, r in (await deliveries(svc)).items()}
    assert rows["c00000"].state == SENT
    assert (rows["c00001"].state, rows["c00001"].last_reason) == (QUEUED, "TIMEZONE_UNKNOWN")


async def test_paused_and_cancelled_campaigns(svc, sim):
    await seed(svc, 1, state=PAUSED)
    await seed(svc, 1, state=CANCELLED, launch="b" * 32, campaign_id="autumn")
    clock = Clock()
    d = dispatcher(svc, sms_adapter(sim), clock=clock)
    await d.run_until_idle()
    rows = await deliveries(svc)
    assert (rows[f"{LAUNCH}:c00000"].state, rows[f"{LAUNCH}:c00000"].last_reason) == (QUEUED, "CAMPAIGN_PAUSED")
    assert (rows["b" * 32 + ":c00000"].state, rows["b" * 32 + ":c00000"].last_reason) == (DEAD, "CAMPAIGN_CANCELLED")
    assert sim.received == []


async def test_a_crash_after_the_send_resends_under_the_same_key_and_the_provider_keeps_one(svc, sim):
    await seed(svc, 1)
    policy = Policy()
    clock = Clock()
    killer = KillAfterSend(sms_adapter(sim)["sms"])
    first = dispatcher(svc, {"sms": killer}, policy=policy, clock=clock, worker="dies")
    with pytest.raises(Kill):
        await first.run_until_idle()
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.in_flight, row.claimed_by) == (SENDING, True, "dies")
    assert len(sim.received) == 1 and policy.screens == 1

    restarted = dispatcher(svc, sms_adapter(sim), policy=policy, clock=clock, worker="restarted")
    assert await restarted.run_until_idle() == 0  # the dead worker's lease still runs
    clock.advance(31)
    assert await restarted.run_until_idle() == 1
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.attempts, row.provider_message_id) == (SENT, 2, "sim-000001")
    assert len(sim.received) == 1 and sim.stats.duplicates == 1  # resent, deduplicated by the provider
    assert policy.screens == 1  # in flight: completed, not re-decided
    assert policy.confirms == [f"{LAUNCH}:c00000"]


async def test_a_crash_before_the_send_redoes_the_decision_and_sends_once(svc, sim):
    await seed(svc, 1)
    clock = Clock()
    d = dispatcher(svc, sms_adapter(sim), clock=clock, worker="dies")
    await d.enqueue()
    claimed = await d.claim()  # claimed, then the process dies before anything else
    assert [x.delivery_key for x in claimed] == [f"{LAUNCH}:c00000"]
    clock.advance(31)
    other = dispatcher(svc, sms_adapter(sim), clock=clock, worker="other")
    assert await other.run_until_idle() == 1
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.attempts, row.claimed_by) == (SENT, 1, None)
    assert len(sim.received) == 1 and sim.stats.duplicates == 0


async def test_a_worker_whose_lease_ran_out_loses_the_claim_and_its_result_is_discarded(svc):
    await seed(svc, 1)
    clock = Clock()
    provider = Counting()
    slow = dispatcher(svc, {"sms": provider}, clock=clock, worker="slow")
    await slow.enqueue()
    claimed = await slow.claim()
    clock.advance(31)  # slow's lease runs out before it gets to send
    fast = dispatcher(svc, {"sms": provider}, clock=clock, worker="fast")
    assert await fast.run_until_idle() == 1
    assert await slow.process(claimed[0]) == "LOST_CLAIM"
    row = (await deliveries(svc))[f"{LAUNCH}:c00000"]
    assert (row.state, row.attempts) == (SENT, 1)
    assert provider.sends == {f"{LAUNCH}:c00000": 1}


async def test_two_replicas_share_the_outbox_and_send_each_key_once(svc):
    await seed(svc, 40)
    provider = Counting(delay=0.001)
    clock = Clock()
    a = dispatcher(svc, {"sms": provider}, clock=clock, worker="a", batch_size=4)
    b = dispatcher(svc, {"sms": provider}, clock=clock, worker="b", batch_size=4)
    done = await asyncio.gather(a.run_until_idle(), b.run_until_idle())
    assert sum(done) == 40
    assert len(provider.sends) == 40 and set(provider.sends.values()) == {1}
    assert {r.state for r in (await deliveries(svc)).values()} == {SENT}


async def test_triggered_rows_find_their_campaign_through_the_delivery_key(svc, sim):
    await seed(svc, 0)  # campaign "spring" (arm "a": "Hi {{ first_name }}: ...") with its launch
    await seed(svc, 0, state=CANCELLED, launch="b" * 32, campaign_id="autumn")
    async with CampaignUnitOfWork(svc.runtime.database) as uow:
        for key in ("trigger:spring:ev-1", "trigger:autumn:ev-2"):
            uow.session.add(OutboxRow(delivery_key=key, launch_id="t" + "0" * 31, customer_id="c00042",
                                      offer_id=OFFER.offer_id, channel=c.CHANNEL_SMS, arm_id="a", expected_value=1.0,
                                      probability=0.1, state="PENDING"))
        await uow.commit()
    d = dispatcher(svc, sms_adapter(sim))
    assert await d.run_until_idle() == 2
    rows = await deliveries(svc)
    assert rows["trigger:spring:ev-1"].state == SENT
    assert (rows["trigger:autumn:ev-2"].state, rows["trigger:autumn:ev-2"].last_reason) == (DEAD, "CAMPAIGN_CANCELLED")
    assert [m["payload"]["text"] for m in sim.received] == ["Hi Li: Gold Card\n\nAPR 15.9%."]
    async with grpc.aio.insecure_channel(svc.address) as channel:  # stats under the triggers' pseudo launch id
        stats = await pbg.DeliveryServiceStub(channel).GetDeliveryStats(
            pb.GetDeliveryStatsRequest(launch="launches/t" + "0" * 31))
    assert (stats.counts.total, stats.counts.sent, stats.counts.dead) == (2, 1, 1)


async def test_triggered_rows_without_a_launch_use_the_default_template(svc, sim):
    await seed(svc, 1, launch="")
    d = dispatcher(svc, sms_adapter(sim))
    assert await d.run_until_idle() == 1
    row = (await deliveries(svc))["trigger:t1:c00000"]
    assert (row.state, row.launch_id) == (SENT, "")
    assert sim.received[0]["payload"]["text"] == "Gold Card\n\nAPR 15.9%."


async def test_template_field_missing_and_unconfigured_channels(svc, sim):
    await seed(svc, 1, content="Dear {{ nickname }}")
    await seed(svc, 1, channel=c.CHANNEL_EMAIL, launch="b" * 32, campaign_id="autumn")
    d = dispatcher(svc, sms_adapter(sim))
    await d.run_until_idle()
    rows = await deliveries(svc)
    assert (rows[f"{LAUNCH}:c00000"].state, rows[f"{LAUNCH}:c00000"].last_reason) == (DEAD,
                                                                                      "TEMPLATE_FIELD_MISSING")
    # No e-mail adapter: the e-mail row is not taken from the outbox at all.
    assert "b" * 32 + ":c00000" not in rows
    assert (await outbox_states(svc))["b" * 32 + ":c00000"] == "PENDING"
    assert await d.outbox_depth() == {"sms": 0, "email": 1, "app_push": 0, "wechat": 0, "phone": 0}


async def test_outbox_depth_gauge(svc, sim):
    await seed(svc, 3)
    reader = InMemoryMetricReader()
    metrics = ServiceMetrics(MeterProvider(metric_readers=[reader]))
    d = dispatcher(svc, sms_adapter(sim), metrics=metrics)
    assert (await d.report_depth())["sms"] == 3
    gauge = {}
    for metric in reader.get_metrics_data().resource_metrics[0].scope_metrics[0].metrics:
        if metric.name == METRIC_OUTBOX_DEPTH:
            gauge = {p.attributes["lodestar.channel"]: p.value for p in metric.data.data_points}
    assert gauge["sms"] == 3 and gauge["email"] == 0
    await d.run_until_idle()
    assert (await d.report_depth())["sms"] == 0


async def test_released_reservations_are_replaced_by_the_next_generation(svc, sim):
    await seed(svc, 1)
    policy = Policy()
    key = f"{LAUNCH}:c00000"
    policy.reservations[key] = "EXPIRED"
    d = dispatcher(svc, sms_adapter(sim), policy=policy)
    await d.run_until_idle()
    row = (await deliveries(svc))[key]
    assert (row.state, row.reservation_generation) == (SENT, 1)
    assert policy.confirms == [reservation_key(key, 1)] == [f"{key}/r1"]


async def test_status_callbacks_are_applied_once_and_bad_ones_are_explicit(svc, sim):
    await seed(svc, 2)
    contacts = Contacts()
    contacts.missing.add("c00001")
    d = dispatcher(svc, sms_adapter(sim), contacts=contacts)
    await d.run_until_idle()
    key = f"{LAUNCH}:c00000"
    sent_time = (await deliveries(svc))[key].sent_time
    later = sent_time + timedelta(minutes=5)

    def request(status, at, **kw):
        r = pb.RecordDeliveryStatusRequest(status=status, **kw)
        r.event_time.FromDatetime(at)
        if "delivery_key" not in kw and "provider_message_id" not in kw:
            r.delivery_key = key
        return r

    async with grpc.aio.insecure_channel(svc.address) as channel:
        stub = pbg.DeliveryServiceStub(channel)
        got = await stub.RecordDeliveryStatus(request(pb.DELIVERY_STATUS_OPENED, later))
        assert got.outcome == pb.CALLBACK_OUTCOME_APPLIED
        assert got.delivery.status == pb.DELIVERY_STATUS_DELIVERED  # an open proves delivery
        outcomes = [(await stub.RecordDeliveryStatus(r)).outcome for r in (
            request(pb.DELIVERY_STATUS_DELIVERED, later),  # already delivered (by the open)
            request(pb.DELIVERY_STATUS_OPENED, later + timedelta(minutes=1)),  # duplicate open
            request(pb.DELIVERY_STATUS_CLICKED, sent_time - timedelta(hours=1)),  # before the send
            request(pb.DELIVERY_STATUS_FAILED, later),  # contradicts DELIVERED
            request(pb.DELIVERY_STATUS_CLICKED, later, provider_message_id="sim-000001"),
        )]
        assert outcomes == [pb.CALLBACK_OUTCOME_DUPLICATE, pb.CALLBACK_OUTCOME_DUPLICATE,
                            pb.CALLBACK_OUTCOME_STALE, pb.CALLBACK_OUTCOME_CONFLICT, pb.CALLBACK_OUTCOME_APPLIED]
        await expect_error(stub.RecordDeliveryStatus(request(pb.DELIVERY_STATUS_DELIVERED, later,
                                                             delivery_key="nope:x")),
                           grpc.StatusCode.NOT_FOUND, "DELIVERY_NOT_FOUND")
        await expect_error(stub.RecordDeliveryStatus(request(pb.DELIVERY_STATUS_DELIVERED, later,
                                                             delivery_key=f"{LAUNCH}:c00001")),
                           grpc.StatusCode.FAILED_PRECONDITION, "DELIVERY_NOT_SENT")
        await expect_error(stub.RecordDeliveryStatus(pb.RecordDeliveryStatusRequest(
            delivery_key=key, status=pb.DELIVERY_STATUS_DELIVERED)), grpc.StatusCode.INVALID_ARGUMENT,
            "REQUIRED_FIELD_MISSING")
        await expect_error(stub.RecordDeliveryStatus(request(pb.DELIVERY_STATUS_DELIVERED, later,
                                                             delivery_key=key, provider_message_id="sim-1")),
                           grpc.StatusCode.INVALID_ARGUMENT, "DELIVERY_REFERENCE_REQUIRED")
        stats = await stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(launch=f"launches/{LAUNCH}"))
    counts = stats.counts
    assert (counts.total, counts.sent, counts.dead, counts.delivered, counts.failed, counts.opened,
            counts.clicked, counts.ignored_callbacks) == (2, 1, 1, 1, 0, 1, 1, 4)


async def test_one_span_per_delivery_with_its_calls_as_children_and_no_personal_data(svc, sim, span_exporter):
    await seed(svc, 2)
    tracer = svc.runtime.tracer_provider.get_tracer("test")

    class TracedContacts(Contacts):
        async def contact(self, customer_id):  # as the real profile client does: a client span, current parent
            with tracer.start_as_current_span("lodestar.profile.v1.ProfileService/GetCustomer"):
                return await super().contact(customer_id)

    contacts = TracedContacts()
    contacts.missing.add("c00001")
    span_exporter.clear()
    d = Dispatcher(lambda: CampaignUnitOfWork(svc.runtime.database), contacts, Policy(), sms_adapter(sim),
                   settings=DispatchSettings(), worker_id="w1", clock=Clock(),
                   tracer_provider=svc.runtime.tracer_provider)
    await d.run_until_idle()
    spans = span_exporter.get_finished_spans()
    dispatch_spans = {s.attributes[ATTR_CUSTOMER_TOKEN]: s for s in spans if s.name == "campaign.dispatch"}
    sent, dead = dispatch_spans[customer_token("c00000")], dispatch_spans[customer_token("c00001")]
    assert (sent.attributes["lodestar.channel"], sent.attributes["lodestar.delivery.outcome"]) == ("sms", "SENT")
    assert (dead.attributes["lodestar.delivery.outcome"], dead.attributes[ATTR_FAILURE_REASON]) == (
        "DEAD", "CUSTOMER_NOT_FOUND")
    for span in (sent, dead):  # each delivery's profile call is its own child
        children = [s.name for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]
        assert children == ["lodestar.profile.v1.ProfileService/GetCustomer"]
    text = repr([dict(s.attributes or {}) for s in spans])
    assert "c00000" not in text and "+86139" not in text and "example.com" not in text


async def test_the_service_wires_the_dispatcher_from_its_settings(start, sim):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from services.platform.config import ConfigError

    with pytest.raises(ConfigError, match="CAMPAIGN_DISPATCH_RATES"):
        DEFINITION.settings_from_env({"CAMPAIGN_DISPATCH_RATES": "fax:1"})
    with pytest.raises(ConfigError, match="CAMPAIGN_PROVIDER_URL_SMS"):
        DEFINITION.settings_from_env({"CAMPAIGN_PROVIDER_URL_SMS": "127.0.0.1:8099"})
    svc = await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                      CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600",
                      CAMPAIGN_PROVIDER_URL=sim.url, CAMPAIGN_DISPATCH_RATES="sms:5")
    dispatcher = svc.runtime.components["dispatcher"]
    assert sorted(dispatcher.adapters) == ["app_push", "sms", "wechat"]
    assert dispatcher.buckets["sms"].rate == 5.0
    async with grpc.aio.insecure_channel(svc.address) as channel:
        for _ in range(100):
            status = (await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="lodestar.campaign.v1.DeliveryService"))).status
            if status == health_pb2.HealthCheckResponse.SERVING:
                break
            await asyncio.sleep(0.05)
        assert status == health_pb2.HealthCheckResponse.SERVING
    quiet = await start(DEFINITION, RISK_SERVICE_ADDR="127.0.0.1:1", PROFILE_SERVICE_ADDR="127.0.0.1:1",
                        CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600", CAMPAIGN_LAUNCH_POLL_SECONDS="3600")
    assert "dispatcher" not in quiet.runtime.components  # no channel configured: no dispatcher loop
