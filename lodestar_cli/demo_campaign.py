"""The demo campaign: `demo-welcome` run end to end on the demo bank, through the public RPCs only.

After the demo bank is loaded (lodestar_cli/demo.py), `run_demo_campaign` takes one campaign from design to report:

1. a dynamic segment `demo-welcome-audience`: every demo customer with a region (the whole demo base, so that its
   composition by age band, gender and region tier is the base's and the fairness gate of approval passes);
2. the campaign `demo-welcome`: the 12-month fixed-term deposit (R1, the lowest risk level) by SMS, a 20% control
   group, two A/B arms of 40% each with different wording, a budget; created and submitted by `demo-marketer`,
   approved by `demo-approver` (maker-checker; risk's content rules and the fairness gate must pass);
3. launched (actor `demo-marketer`); the launch is followed until DONE and the dispatcher until nothing is due any
   more. Messages deferred by quiet hours (in the customer's local time) or contact caps stay deferred: they are
   counted and explained, not waited for;
4. **simulated** provider receipts (DeliveryService.RecordDeliveryStatus: DELIVERED, or FAILED for a few) for the
   messages the provider accepted, and **simulated** customer responses through ResponseService.RecordResponses:
   opened, clicked, converted with revenue, each decided by a hash of the customer id, so two runs simulate the
   same customers. Contacted customers of the arms open, click and convert far more often than the rest (control
   and uncontacted customers convert at a low "organic" rate), so the report shows an uplift against control.
   These are not real customer behaviour, and the output says so;
5. then `lodestar report demo-welcome --html var/demo-report.html` shows the funnel, uplift and charts.

Idempotent: every mutating call carries a request id derived from its data, ALREADY_EXISTS counts as done, the
campaign's lifecycle is resumed from the state it is in, the launch is the campaign's single launch, delivery
receipts are idempotent per status, and responses are stored once per (campaign, customer, outcome) — a second run
records nothing new (its events come back DUPLICATE). Nothing printed carries personal data: customer ids only in
counts, never names, phone numbers or e-mail addresses.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO
from zoneinfo import ZoneInfo

import grpc
from google.protobuf.message import Message

from lodestar.campaign.v1 import campaign_pb2, campaign_service_pb2, campaign_service_pb2_grpc, launch_pb2
from lodestar.campaign.v1 import delivery_service_pb2 as dpb
from lodestar.campaign.v1 import delivery_service_pb2_grpc as dpbg
from lodestar.campaign.v1 import response_service_pb2 as rpb
from lodestar.campaign.v1 import response_service_pb2_grpc as rpbg
from lodestar.common.v1 import common_pb2
from lodestar.profile.v1 import segment_service_pb2, segment_service_pb2_grpc
from lodestar_cli import demo
from services.platform.timestamps import to_timestamp

CAMPAIGN_ID = "demo-welcome"
CAMPAIGN_NAME = f"campaigns/{CAMPAIGN_ID}"
SEGMENT_ID = "demo-welcome-audience"
SEGMENT_CONDITION = "region is not null"
OFFER_ID = "deposit-12m-fixed"
CHANNEL = common_pb2.CHANNEL_SMS
MAKER = "demo-marketer"
CHECKER = "demo-approver"
CONTROL_SHARE = 0.2
ARMS = (
    ("a", 0.4, "Hello {{ first_name }}, our 12-month fixed-term deposit is open: put your savings to work."),
    ("b", 0.4, "{{ first_name }}, plan the year ahead: a 12-month fixed-term deposit with a fixed rate."),
)
BUDGET = 500.0
REPORT_FILE = "var/demo-report.html"
REPORT_COMMAND = f"lodestar report {CAMPAIGN_ID} --html {REPORT_FILE}"
SIMULATED_SOURCE = "simulated"

# The simulation (per contacted and delivered customer of an arm: P(open), P(click | open), P(convert | click)).
ARM_BEHAVIOUR: dict[str, tuple[float, float, float]] = {"a": (0.7, 0.6, 0.55), "b": (0.7, 0.7, 0.65)}
ORGANIC_CONVERSION = 0.04  # control, uncontacted and undelivered customers: converting without the message
RECEIPT_FAILURE = 0.03  # the provider reports FAILED for this share of accepted messages
REVENUE_RANGE = (60.0, 240.0)  # revenue of one conversion, uniform by hash, in the campaign currency

Progress = Callable[[str, int, int], None]


class DemoCampaignError(RuntimeError):
    """The demo campaign could not go on; the message says at which step and why (a reason code when there is
    one)."""


@dataclass
class DemoCampaignResult:
    campaign_id: str = CAMPAIGN_ID
    campaign_state: str = ""
    launch_id: str = ""
    launch_state: str = ""
    audience: int = 0
    control: int = 0
    left_out: dict[str, int] = field(default_factory=dict)  # launch: customers not contacted, by reason
    outbox: int = 0
    sent: int = 0
    dead: int = 0
    waiting: int = 0
    deferred: int = 0
    deferred_by_cause: dict[str, int] = field(default_factory=dict)
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    receipts: dict[str, int] = field(default_factory=dict)  # simulated DELIVERED / FAILED callbacks by outcome
    responses_sent: int = 0
    responses_recorded: int = 0
    responses_by_disposition: dict[str, int] = field(default_factory=dict)
    recorded_by_outcome: dict[str, int] = field(default_factory=dict)
    simulated: bool = True
    timed_out: list[str] = field(default_factory=list)
    report_command: str = REPORT_COMMAND

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        deferred = ""
        if self.deferred:
            causes = ", ".join(f"{cause}: {n}" for cause, n in sorted(self.deferred_by_cause.items()))
            deferred = (f"; {self.deferred} deferred ({causes}): the dispatcher sends them later, and "
                        f"`lodestar demo load` run again then simulates their responses")
        dead = ""
        if self.dead:
            dead = "; dead letters " + ", ".join(f"{r}: {n}" for r, n in sorted(self.dead_by_reason.items()))
        outcomes = ", ".join(f"{o.lower()} {n}" for o, n in sorted(self.recorded_by_outcome.items())) or "none new"
        ignored = {d: n for d, n in self.responses_by_disposition.items() if d != "RECORDED"}
        lines = [
            f"demo campaign {self.campaign_id} ({self.campaign_state.lower()}): launch {self.launch_state.lower()}, "
            f"audience {self.audience}, control {self.control}, {self.outbox} SMS in the outbox",
            *([("  not contacted (risk screening, allocation): " + ", ".join(
                f"{reason} {n}" for reason, n in sorted(self.left_out.items())))] if self.left_out else []),
            f"  dispatched: {self.sent} accepted by the provider simulator{deferred}{dead}"
            + (f"; {self.waiting - self.deferred} still due" if self.waiting > self.deferred else ""),
            f"  SIMULATED provider receipts: delivered {self.receipts.get('delivered', 0)}, failed "
            f"{self.receipts.get('failed', 0)} ({self.receipts.get('new', 0)} new)",
            f"  SIMULATED customer responses (not real behaviour): {self.responses_sent} events, "
            f"{self.responses_recorded} recorded ({outcomes})"
            + ("; " + ", ".join(f"{d.lower()} {n}" for d, n in sorted(ignored.items())) if ignored else ""),
        ]
        if self.timed_out:
            lines.append("  stopped waiting for: " + ", ".join(self.timed_out) + " (run `lodestar demo load` again "
                         "later to finish)")
        lines.append(f"  the report: {self.report_command}")
        return "\n".join(lines)


# -- the simulation ----------------------------------------------------------------------------------------


def uniform(customer_id: str, salt: str) -> float:
    """A number in [0, 1) from sha256 of the campaign, the customer id and a salt: the same on every run."""
    digest = hashlib.sha256(f"{CAMPAIGN_ID}:{customer_id}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class SimulatedResponse:
    customer_id: str
    outcome: str  # OPENED, CLICKED, CONVERTED
    minutes_after_contact: int
    revenue: float = 0.0


def simulate_customer(customer_id: str, arm_id: str | None, delivered: bool) -> list[SimulatedResponse]:
    """What one customer does: arm_id is the arm of their delivered message (None: control, uncontacted or not
    delivered). Contacted customers open, click and convert by ARM_BEHAVIOUR; the others may convert organically."""
    revenue = round(REVENUE_RANGE[0] + (REVENUE_RANGE[1] - REVENUE_RANGE[0]) * uniform(customer_id, "revenue"), 2)
    minutes = 5 + int(55 * uniform(customer_id, "delay"))
    if arm_id is None or not delivered or arm_id not in ARM_BEHAVIOUR:
        if uniform(customer_id, "organic") < ORGANIC_CONVERSION:
            return [SimulatedResponse(customer_id, "CONVERTED", minutes + 60, revenue)]
        return []
    p_open, p_click, p_convert = ARM_BEHAVIOUR[arm_id]
    out: list[SimulatedResponse] = []
    if uniform(customer_id, "open") < p_open:
        out.append(SimulatedResponse(customer_id, "OPENED", minutes))
        if uniform(customer_id, "click") < p_click:
            out.append(SimulatedResponse(customer_id, "CLICKED", minutes + 2))
            if uniform(customer_id, "convert") < p_convert:
                out.append(SimulatedResponse(customer_id, "CONVERTED", minutes + 30, revenue))
    return out


def receipt_fails(customer_id: str) -> bool:
    return uniform(customer_id, "receipt") < RECEIPT_FAILURE


# -- helpers -----------------------------------------------------------------------------------------------


def _code(error: grpc.RpcError) -> grpc.StatusCode | None:
    return error.code() if isinstance(error, grpc.Call) else None


def _describe(error: grpc.RpcError) -> str:
    from lodestar_cli.main import error_info  # late: main imports this module

    info = error_info(error)
    return f"{info['code']}{' ' + info['reason'] if info['reason'] else ''}: {info['message']}"


def _request_id(kind: str, message: Message) -> str:
    return demo.request_id(f"campaign-{kind}", CAMPAIGN_ID, message)


def _state_name(value: int) -> str:
    return str(campaign_pb2.CampaignState.Name(value)).removeprefix("CAMPAIGN_STATE_")  # type: ignore[arg-type]


def _launch_state(value: int) -> str:
    return str(launch_pb2.LaunchState.Name(value)).removeprefix("LAUNCH_STATE_")  # type: ignore[arg-type]


def _quiet_window() -> tuple[str, str]:
    return (os.environ.get("RISK_QUIET_HOURS_START", "").strip() or "21:00",
            os.environ.get("RISK_QUIET_HOURS_END", "").strip() or "08:00")


def _in_quiet_hours(time_zone: str, now: datetime) -> bool:
    start, end = _quiet_window()
    if start == end:
        return False
    try:
        local = now.astimezone(ZoneInfo(time_zone)).strftime("%H:%M")
    except (KeyError, ValueError):
        return False
    return start <= local < end if start < end else local >= start or local < end


def deferral_cause(customer: demo.DemoCustomer | None, now: datetime) -> str:
    """Why a message of the demo bank is most likely deferred: the dispatcher defers on risk's quiet hours (in the
    customer's local time: their time zone, else their region's), on an unknown time zone and on contact caps."""
    if customer is None:
        return "other holds"
    time_zone = customer.time_zone or next((r.time_zone for r in demo.REGIONS if r.code == customer.region), "")
    if not time_zone:
        return "time zone unknown"
    if _in_quiet_hours(time_zone, now):
        return "quiet hours in the customer's local time"
    return "contact caps or other holds"


def contact_start(now: datetime) -> datetime:
    """The campaign's start (its launch's contact time): now. A launch selects customers risk holds only for quiet
    hours (the choice is about when, not whether), and the dispatcher defers their messages to their morning; the
    demo reports how many were deferred and why."""
    return now - timedelta(minutes=1)


# -- the run -----------------------------------------------------------------------------------------------


class _Run:
    def __init__(self, addresses: Mapping[str, str], timeout: float, progress: Progress | None,
                 stop: threading.Event | None) -> None:
        self.addresses = addresses
        self.timeout = timeout
        self.progress = progress
        self.stop = stop or threading.Event()
        self.result = DemoCampaignResult()

    def step(self, stage: str, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, done, total)

    def sleep(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise DemoCampaignError("stopped")

    # 1. the audience
    def segment(self, channel: grpc.Channel) -> None:
        stub = segment_service_pb2_grpc.SegmentServiceStub(channel)
        request = segment_service_pb2.CreateSegmentRequest(segment=segment_service_pb2.Segment(
            segment_id=SEGMENT_ID, display_name="Demo welcome audience",
            description="Every customer of the demo bank (its composition is the base's)",
            kind=segment_service_pb2.SEGMENT_KIND_DYNAMIC, condition_text=SEGMENT_CONDITION))
        request.request_id = _request_id("segment", request)
        try:
            stub.CreateSegment(request, timeout=self.timeout)
        except grpc.RpcError as error:
            if _code(error) != grpc.StatusCode.ALREADY_EXISTS:
                raise DemoCampaignError(f"creating segments/{SEGMENT_ID}: {_describe(error)}") from error
        self.step("segment", 1, 1)

    # 2. the campaign through its lifecycle
    def campaign_message(self) -> campaign_pb2.Campaign:
        now = datetime.now(UTC).replace(microsecond=0)
        start = contact_start(now)
        campaign = campaign_pb2.Campaign(
            campaign_id=CAMPAIGN_ID, display_name="Welcome to the 12-month deposit (demo)",
            description="The demo campaign of `make run`: SMS, 20% control, two wordings (A/B).",
            segment=f"segments/{SEGMENT_ID}", offer_ids=[OFFER_ID], channels=[CHANNEL], budget=BUDGET,
            control_share=CONTROL_SHARE,
            arms=[campaign_pb2.Arm(arm_id=a, share=s, content=c) for a, s, c in ARMS])
        campaign.start_time.FromDatetime(start)
        campaign.end_time.FromDatetime(start + timedelta(days=30))
        return campaign

    def lifecycle(self, stub: campaign_service_pb2_grpc.CampaignServiceStub) -> campaign_pb2.Campaign:
        def get() -> campaign_pb2.Campaign | None:
            try:
                return stub.GetCampaign(campaign_service_pb2.GetCampaignRequest(name=CAMPAIGN_NAME),
                                        timeout=self.timeout).campaign
            except grpc.RpcError as error:
                if _code(error) == grpc.StatusCode.NOT_FOUND:
                    return None
                raise DemoCampaignError(f"reading {CAMPAIGN_NAME}: {_describe(error)}") from error

        campaign = get()
        if campaign is None:
            request = campaign_service_pb2.CreateCampaignRequest(campaign=self.campaign_message(), actor=MAKER)
            request.request_id = _request_id("create", request)
            try:
                campaign = stub.CreateCampaign(request, timeout=self.timeout).campaign
            except grpc.RpcError as error:
                if _code(error) != grpc.StatusCode.ALREADY_EXISTS:
                    raise DemoCampaignError(f"creating {CAMPAIGN_NAME}: {_describe(error)}") from error
                campaign = get()
                assert campaign is not None
        moves: dict[int, tuple[str, str, Any]] = {
            campaign_pb2.CAMPAIGN_STATE_DRAFT: ("submit", MAKER, stub.SubmitCampaign),
            campaign_pb2.CAMPAIGN_STATE_SUBMITTED: ("approve", CHECKER, stub.ApproveCampaign),
        }
        requests = {"submit": campaign_service_pb2.SubmitCampaignRequest,
                    "approve": campaign_service_pb2.ApproveCampaignRequest}
        while campaign.state in moves:
            verb, actor, rpc = moves[campaign.state]
            move = requests[verb](name=CAMPAIGN_NAME, actor=actor, request_id=f"demo:{verb}:{CAMPAIGN_ID}")
            try:
                campaign = rpc(move, timeout=self.timeout).campaign
            except grpc.RpcError as error:
                raise DemoCampaignError(f"{verb} {CAMPAIGN_NAME} as {actor}: {_describe(error)}") from error
            self.step("lifecycle", 1 if verb == "submit" else 2, 3)
        if campaign.state == campaign_pb2.CAMPAIGN_STATE_CANCELLED:
            raise DemoCampaignError(f"{CAMPAIGN_NAME} is CANCELLED: nothing to run")
        return campaign

    def launch(self, stub: campaign_service_pb2_grpc.CampaignServiceStub, wait_seconds: float) -> launch_pb2.Launch:
        request = campaign_service_pb2.LaunchCampaignRequest(name=CAMPAIGN_NAME, actor=MAKER,
                                                             request_id=f"demo:launch:{CAMPAIGN_ID}")
        try:
            launch = stub.LaunchCampaign(request, timeout=self.timeout).launch
        except grpc.RpcError as error:
            if _code(error) != grpc.StatusCode.FAILED_PRECONDITION:
                raise DemoCampaignError(f"launching {CAMPAIGN_NAME}: {_describe(error)}") from error
            # Already running, paused or completed: its launch exists (or it never had one).
            try:
                launch = stub.GetLaunch(campaign_service_pb2.GetLaunchRequest(name=CAMPAIGN_NAME),
                                        timeout=self.timeout).launch
            except grpc.RpcError as missing:
                raise DemoCampaignError(f"launching {CAMPAIGN_NAME}: {_describe(error)}") from missing
        self.step("lifecycle", 3, 3)
        finished = (launch_pb2.LAUNCH_STATE_DONE, launch_pb2.LAUNCH_STATE_CANCELLED)
        deadline = time.monotonic() + wait_seconds
        while launch.state not in finished:
            if time.monotonic() > deadline:
                self.result.timed_out.append("the launch")
                break
            self.sleep(0.3)
            launch = stub.GetLaunch(campaign_service_pb2.GetLaunchRequest(name=launch.name),
                                    timeout=self.timeout).launch
            self.step("launch", launch.progress.partitions_done, max(launch.progress.partitions_total, 1))
        return launch

    def dispatch(self, delivery: dpbg.DeliveryServiceStub, launch: launch_pb2.Launch,
                 wait_seconds: float) -> dpb.GetDeliveryStatsResponse:
        """Until nothing is due: every message sent, dead or deferred to a later time."""
        request = dpb.GetDeliveryStatsRequest(launch=f"launches/{launch.launch_id}")
        deadline = time.monotonic() + wait_seconds
        while True:
            stats = delivery.GetDeliveryStats(request, timeout=self.timeout)
            c = stats.counts
            due = c.pending + c.queued + c.sending - c.deferred
            self.step("dispatch", c.sent + c.dead + c.deferred, max(c.total, 1))
            if due <= 0:
                return stats
            if time.monotonic() > deadline:
                self.result.timed_out.append(f"{due} messages still due")
                return stats
            self.sleep(0.3)

    def outbox(self, stub: campaign_service_pb2_grpc.CampaignServiceStub,
               launch: launch_pb2.Launch) -> list[launch_pb2.OutboxMessage]:
        messages: list[launch_pb2.OutboxMessage] = []
        token = ""  # nosec B105 - a page token, not a password
        while True:
            page = stub.ListOutbox(campaign_service_pb2.ListOutboxRequest(
                launch=f"launches/{launch.launch_id}", page_size=1000, page_token=token), timeout=self.timeout)
            messages.extend(page.messages)
            token = page.next_page_token
            if not token:
                return messages

    def receipts(self, delivery: dpbg.DeliveryServiceStub, sent: list[launch_pb2.OutboxMessage]) -> set[str]:
        """Simulated provider callbacks for the accepted messages; returns the customers reported DELIVERED."""
        delivered: set[str] = set()
        outcomes: Counter[str] = Counter()
        now = to_timestamp(datetime.now(UTC))
        for index, message in enumerate(sent, start=1):
            failed = receipt_fails(message.customer_id)
            request = dpb.RecordDeliveryStatusRequest(
                delivery_key=message.delivery_key, event_time=now,
                status=dpb.DELIVERY_STATUS_FAILED if failed else dpb.DELIVERY_STATUS_DELIVERED,
                reason="SIMULATED_UNREACHABLE" if failed else "")
            try:
                answer = delivery.RecordDeliveryStatus(request, timeout=self.timeout)
                outcomes[str(dpb.CallbackOutcome.Name(answer.outcome)).removeprefix("CALLBACK_OUTCOME_")] += 1
                status = answer.delivery.status
            except grpc.RpcError as error:
                raise DemoCampaignError(f"recording a simulated receipt: {_describe(error)}") from error
            if status == dpb.DELIVERY_STATUS_DELIVERED or (not failed and answer.delivery.open_time.seconds):
                delivered.add(message.customer_id)
            self.step("receipts", index, len(sent))
        statuses = Counter("failed" if receipt_fails(m.customer_id) else "delivered" for m in sent)
        self.result.receipts = {**statuses, "new": outcomes.get("APPLIED", 0)}
        return delivered

    def responses(self, launch: launch_pb2.Launch, start: datetime, sent: list[launch_pb2.OutboxMessage],
                  delivered: set[str]) -> None:
        with grpc.insecure_channel(self.addresses["campaign"]) as channel:
            stub = rpbg.ResponseServiceStub(channel)
            arms = stub.GetArmOutcomes(rpb.GetArmOutcomesRequest(campaign=CAMPAIGN_NAME), timeout=self.timeout)
            currency = arms.currency_code
            contact = max(launch.as_of.ToDatetime(tzinfo=UTC), start)  # the launch's contact time
            by_customer = {m.customer_id: m for m in sent}
            outcomes = {"OPENED": rpb.RESPONSE_OUTCOME_OPENED, "CLICKED": rpb.RESPONSE_OUTCOME_CLICKED,
                        "CONVERTED": rpb.RESPONSE_OUTCOME_CONVERTED}
            events: list[rpb.ResponseEvent] = []
            for customer in demo.demo_customers():
                cid = customer.customer_id
                message = by_customer.get(cid)
                for response in simulate_customer(cid, message.arm_id if message else None, cid in delivered):
                    event = rpb.ResponseEvent(
                        outcome=outcomes[response.outcome],  # type: ignore[arg-type]
                        response_time=to_timestamp(contact + timedelta(minutes=response.minutes_after_contact)),
                        revenue=response.revenue, currency_code=currency if response.revenue else "",
                        offer_id=OFFER_ID, event_id=f"{SIMULATED_SOURCE}:{CAMPAIGN_ID}:{cid}:{response.outcome}")
                    if message is not None:  # attributed through the delivered message
                        event.delivery_key = message.delivery_key
                    else:  # control, or an arm member not contacted: attributed through the launch's membership
                        event.campaign, event.customer_id = CAMPAIGN_NAME, cid
                    events.append(event)
            # A fresh request id per run: a run again gets its events back DUPLICATE (the uniqueness key of
            # campaign_responses), which says "nothing new", where a replayed id would repeat the first answer.
            request_id = f"demo:responses:{CAMPAIGN_ID}:{uuid.uuid4().hex}"

            def stream() -> Iterator[rpb.RecordResponsesRequest]:
                for start in range(0, len(events), 500):
                    yield rpb.RecordResponsesRequest(request_id=request_id,
                                                     events=events[start:start + 500])
                    self.step("responses", min(start + 500, len(events)), len(events))

            try:
                answer = stub.RecordResponses(stream(), timeout=max(self.timeout, 30.0)) if events else None
            except grpc.RpcError as error:
                raise DemoCampaignError(f"recording simulated responses: {_describe(error)}") from error
        self.result.responses_sent = len(events)
        if answer is not None:
            self.result.responses_recorded = int(answer.recorded)
            self.result.responses_by_disposition = {
                str(rpb.ResponseDisposition.Name(c.disposition)).removeprefix("RESPONSE_DISPOSITION_"): int(c.count)
                for c in answer.counts}
            rejected = {r.index for r in answer.rejections}
            recorded = Counter(str(rpb.ResponseOutcome.Name(e.outcome)).removeprefix("RESPONSE_OUTCOME_")
                               for i, e in enumerate(events) if i not in rejected)
            self.result.recorded_by_outcome = dict(recorded) if answer.recorded else {}

    def run(self, wait_seconds: float) -> DemoCampaignResult:
        result = self.result
        with grpc.insecure_channel(self.addresses["profile"]) as channel:
            self.segment(channel)
        with grpc.insecure_channel(self.addresses["campaign"]) as channel:
            stub = campaign_service_pb2_grpc.CampaignServiceStub(channel)
            delivery = dpbg.DeliveryServiceStub(channel)
            deadline = time.monotonic() + wait_seconds
            campaign = self.lifecycle(stub)
            launch = self.launch(stub, wait_seconds)
            result.launch_id, result.launch_state = launch.launch_id, _launch_state(launch.state)
            result.audience = launch.progress.audience_size
            result.control = launch.progress.control_customers
            result.left_out = dict(launch.report.customers_cut_by)
            if launch.state != launch_pb2.LAUNCH_STATE_DONE:
                result.campaign_state = _state_name(campaign.state)
                return result
            stats = self.dispatch(delivery, launch, max(5.0, deadline - time.monotonic()))
            c = stats.counts
            result.outbox, result.sent, result.dead = int(c.total), int(c.sent), int(c.dead)
            result.waiting, result.deferred = int(c.pending + c.queued + c.sending), int(c.deferred)
            result.dead_by_reason = dict(stats.dead_by_reason)
            messages = self.outbox(stub, launch)
            sent = [m for m in messages if m.state == launch_pb2.OUTBOX_STATE_SENT]
            if result.deferred:
                customers = {c.customer_id: c for c in demo.demo_customers()}
                now = datetime.now(UTC)
                done = (launch_pb2.OUTBOX_STATE_SENT, launch_pb2.OUTBOX_STATE_FAILED)
                waiting = [m for m in messages if m.state not in done]
                result.deferred_by_cause = dict(Counter(deferral_cause(customers.get(m.customer_id), now)
                                                        for m in waiting))
            delivered = self.receipts(delivery, sent)
            self.responses(launch, campaign.start_time.ToDatetime(tzinfo=UTC), sent, delivered)
            result.campaign_state = _state_name(stub.GetCampaign(
                campaign_service_pb2.GetCampaignRequest(name=CAMPAIGN_NAME), timeout=self.timeout).campaign.state)
        return result


def run_demo_campaign(addresses: Mapping[str, str], admin_token: str | None = None, timeout: float = 10.0,
                      progress: Progress | None = None, *, wait_seconds: float = 120.0,
                      stop: threading.Event | None = None) -> DemoCampaignResult:
    """Runs (or resumes) the demo campaign `demo-welcome` on the loaded demo bank; safe to run again.

    `admin_token` is accepted for symmetry with demo.load_demo (the campaign needs no gateway call). Waits at most
    `wait_seconds` for the launch and the dispatcher (what is left is named in `timed_out`); `stop` ends the
    waiting early (DemoCampaignError "stopped"). Raises DemoCampaignError when a step is refused."""
    del admin_token
    try:
        return _Run(addresses, timeout, progress, stop).run(wait_seconds)
    except grpc.RpcError as error:
        raise DemoCampaignError(f"demo campaign: {_describe(error)}") from error


def campaign_exists(addresses: Mapping[str, str], timeout: float = 5.0) -> bool:
    """True when the demo campaign was created before (so `lodestar up` resumes it on a non-empty database)."""
    with grpc.insecure_channel(addresses["campaign"]) as channel:
        try:
            campaign_service_pb2_grpc.CampaignServiceStub(channel).GetCampaign(
                campaign_service_pb2.GetCampaignRequest(name=CAMPAIGN_NAME), timeout=timeout)
        except grpc.RpcError:
            return False
    return True


# -- progress for the CLI ----------------------------------------------------------------------------------

STAGE_LABELS = {"segment": "audience", "lifecycle": "approval and launch", "launch": "launch", "dispatch": "dispatch",
                "receipts": "receipts (simulated)", "responses": "responses (simulated)"}


def bar_progress(err: TextIO = sys.stderr) -> tuple[Progress, Callable[[], None]]:
    """A tqdm bar per stage on `err` (the caller decides whether to show any): (progress, close)."""
    from tqdm import tqdm

    bars: dict[str, Any] = {}

    def show(stage: str, done: int, total: int) -> None:
        for other, bar in list(bars.items()):
            if other != stage:
                bar.close()
                del bars[other]
        bar = bars.get(stage)
        if bar is None:
            bar = bars[stage] = tqdm(total=total, desc=f"demo campaign: {STAGE_LABELS.get(stage, stage)}",
                                     file=err, leave=False, unit="step")
        bar.total = total
        bar.n = done
        bar.refresh()

    def close() -> None:
        for bar in bars.values():
            bar.close()
        bars.clear()

    return show, close


def line_progress(err: TextIO = sys.stderr) -> Progress:
    """One line per stage finished (for a run in the background, under `lodestar up`'s banner)."""
    seen: set[str] = set()
    lock = threading.Lock()

    def show(stage: str, done: int, total: int) -> None:
        with lock:
            if done >= total and stage not in seen and stage in ("lifecycle", "launch", "dispatch", "responses"):
                seen.add(stage)
                err.write(f"demo campaign: {STAGE_LABELS[stage]} done\n")
                err.flush()

    return show
