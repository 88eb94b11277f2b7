"""Fuzzing every RPC of every service: hypothesis builds random and adversarial requests for each method found by
walking the generated descriptors of lodestar.<svc>.v1, and sends them to the four services running in-process
on port 0 (their dependency addresses pointed at each other, a small demo bank loaded).

For every request it asserts: the status is never UNKNOWN or INTERNAL (nor DEADLINE_EXCEEDED or UNAVAILABLE:
no dependency is broken here), and when it is INVALID_ARGUMENT the called service's tables hold exactly the rows
they held before. After each RPC's examples every service must still answer its health check with SERVING.
Client-streaming RPCs get a stream of 0-3 messages; server-streaming ones are read for at most 5 responses.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/fuzz/test_rpc_fuzz.py          # CI: derandomized
    LODESTAR_FUZZ_EXAMPLES=200 LODESTAR_FUZZ_RANDOM=1 .venv/bin/python -m pytest tests/fuzz   # `make fuzz`

Strings are drawn from adversarial pools (empty, huge but bounded, unicode, control characters, SQL and
condition-language injection, path traversal, format strings) mixed with values that exist in the seeded
databases (so that some requests get past "not found" into the deeper code); numbers from their type's
boundaries, negatives and (for doubles) NaN and the infinities; enums from their declared values plus unknown
ones; repeated and map fields from 0-3 elements; well-known types (Timestamp, Duration, FieldMask, Struct,
wrappers) with out-of-range and junk values.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc
import pytest
from google.protobuf import descriptor as d
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from lodestar_cli.demo import DemoInfo, demo_offers, load_demo
from services.platform.server import RunningService

SERVICES = ("profile", "campaign", "risk", "gateway")

MAX_DEPTH = 4
HUGE = 20_000  # characters: huge for a field, still far under the 4 MiB gRPC message limit

ADVERSARIAL_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\x00",
    "\x00\x01\x02\x7f",
    "\t\n\r\x0b\x0c",
    "\u202e\u200b\ufeff",
    "\ud7ff\ue000\U0010ffff",
    "Zhang Xiaoming 张晓明 👩‍👩‍👧‍👦",
    "'; DROP TABLE customers; --",
    "\" OR \"1\"=\"1",
    "1; DELETE FROM offers WHERE 1=1",
    "age > 1 or 1=1",
    "age > 18 and (",
    "not not not not",
    "(((((((((((((((((((((((((((((((((((((((((x",
    "attributes.income > 1e309",
    "tag = 'x' or customer_id like '%'",
    "count(events, 99999999 days) > -1",
    "%s%s%s%n",
    "{0.__class__}",
    "${jndi:ldap://x/a}",
    "../../../../etc/passwd",
    "customers/",
    "customers/../../x",
    "customers/%00",
    "offers//",
    "partners/*",
    "-1",
    "0",
    "9" * 40,
    "NaN",
    "-inf",
    "1e309",
    "true",
    "null",
    "2024-02-30",
    "1900-01-01",
    "9999-12-31T23:59:59Z",
    "x" * 257,
    "a" * HUGE,
    "é" * 4096,
)

INT32 = (0, 1, -1, 2**31 - 1, -(2**31), 1000, -1000)
INT64 = (*INT32, 2**63 - 1, -(2**63), 10**12)
UINT32 = (0, 1, 2**32 - 1)
UINT64 = (0, 1, 2**64 - 1)

_INT_RANGES = {
    d.FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1, INT32),
    d.FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1, INT32),
    d.FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1, INT32),
    d.FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1, INT64),
    d.FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1, INT64),
    d.FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1, INT64),
    d.FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1, UINT32),
    d.FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1, UINT32),
    d.FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1, UINT64),
    d.FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1, UINT64),
}


@dataclass(frozen=True)
class Rpc:
    service: str  # "profile", "campaign", "risk", "gateway": the process that serves it
    full_service: str  # "lodestar.profile.v1.ProfileService"
    name: str  # "GetCustomer"
    input: d.Descriptor
    output: d.Descriptor
    client_streaming: bool
    server_streaming: bool

    @property
    def path(self) -> str:
        return f"/{self.full_service}/{self.name}"

    @property
    def id(self) -> str:
        return f"{self.full_service.rsplit('.', 1)[-1]}.{self.name}"


def _import_generated() -> None:
    import lodestar

    # gen/ holds namespace packages (no __init__.py), which pkgutil does not walk: glob the files instead.
    for root in lodestar.__path__:
        for path in sorted(Path(root).glob("*/v*/*_pb2.py")):
            importlib.import_module(".".join(("lodestar", *path.relative_to(root).with_suffix("").parts)))


def all_rpcs() -> list[Rpc]:
    """Every RPC of every service in lodestar.<svc>.v1, in a stable order."""
    _import_generated()
    import sys

    found: dict[str, Rpc] = {}
    for name, module in list(sys.modules.items()):
        if not (name.startswith("lodestar.") and name.endswith("_pb2")) or module is None:
            continue
        file_descriptor = getattr(module, "DESCRIPTOR", None)
        if file_descriptor is None:
            continue
        package = file_descriptor.package  # lodestar.<svc>.v1
        parts = package.split(".")
        if len(parts) != 3 or parts[1] not in SERVICES:
            continue
        for service in file_descriptor.services_by_name.values():
            for method in service.methods:
                rpc = Rpc(parts[1], service.full_name, method.name, method.input_type, method.output_type,
                          method.client_streaming, method.server_streaming)
                found[rpc.path] = rpc
    return [found[k] for k in sorted(found)]


def message_class(descriptor: d.Descriptor) -> type[Message]:
    return message_factory.GetMessageClass(descriptor)


def _strings(known: Sequence[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ADVERSARIAL_STRINGS),
        st.sampled_from(tuple(known) or ("",)),
        st.text(max_size=40),
        st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=8),
        st.from_regex(r"[a-z]{1,12}/[A-Za-z0-9_\-]{0,16}", fullmatch=True),
    )


def _scalar(field: d.FieldDescriptor, known: Sequence[str]) -> st.SearchStrategy[Any]:
    t = field.type
    if t == d.FieldDescriptor.TYPE_STRING:
        return _strings(known)
    if t == d.FieldDescriptor.TYPE_BYTES:
        return st.one_of(st.binary(max_size=64), st.just(b"\x00" * 4096), st.sampled_from(
            [s.encode("utf-8", "surrogatepass") for s in ADVERSARIAL_STRINGS[:12]]))
    if t == d.FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t in (d.FieldDescriptor.TYPE_DOUBLE, d.FieldDescriptor.TYPE_FLOAT):
        width: Literal[32, 64] = 32 if t == d.FieldDescriptor.TYPE_FLOAT else 64
        return st.one_of(st.sampled_from([0.0, -0.0, -1.0, 1e308, -1e308, float("nan"), float("inf"),
                                          float("-inf"), 5e-324]),
                         st.floats(width=width, allow_nan=True, allow_infinity=True))
    if t == d.FieldDescriptor.TYPE_ENUM:
        enum_type: Any = field.enum_type
        values = [v.number for v in enum_type.values]
        return st.one_of(st.sampled_from(values), st.sampled_from([-1, 99, 2**31 - 1, -(2**31)]))
    low, high, special = _INT_RANGES[t]
    return st.one_of(st.sampled_from(special), st.integers(low, high), st.integers(-5, 100).filter(
        lambda n: low <= n <= high))


def _well_known(descriptor: d.Descriptor, known: Sequence[str]) -> st.SearchStrategy[Message] | None:
    from google.protobuf import duration_pb2, field_mask_pb2, struct_pb2, timestamp_pb2

    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return st.builds(timestamp_pb2.Timestamp,
                         seconds=st.one_of(st.sampled_from([0, -1, 253402300799, 253402300800, -62135596800,
                                                            -62135596801, 2**62, 1_700_000_000]),
                                           st.integers(-62135596800, 253402300799)),
                         nanos=st.one_of(st.just(0), st.sampled_from([-1, 999_999_999, 10**9, 2**31 - 1])))
    if name == "google.protobuf.Duration":
        return st.builds(duration_pb2.Duration,
                         seconds=st.sampled_from([0, 1, -1, 86400, 315576000000, 315576000001, 2**62]),
                         nanos=st.sampled_from([0, 1, -1, 10**9]))
    if name == "google.protobuf.FieldMask":
        path = st.one_of(_strings(known), st.sampled_from(["*", "etag", "name", "attributes", "attributes.x",
                                                           "a.b.c.d", "full_name", "email", "state"]))
        return st.builds(field_mask_pb2.FieldMask, paths=st.lists(path, max_size=4))
    if name in ("google.protobuf.Struct", "google.protobuf.Value", "google.protobuf.ListValue"):
        def struct(data: dict[str, Any]) -> Message:
            s = struct_pb2.Struct()
            s.update(data)
            if name == "google.protobuf.Struct":
                return s
            if name == "google.protobuf.Value":
                v = struct_pb2.Value()
                v.struct_value.CopyFrom(s)
                return v
            lv = struct_pb2.ListValue()
            lv.extend(list(data.values()))
            return lv

        leaf = st.one_of(st.none(), st.booleans(), st.floats(allow_nan=False), _strings(known))
        return st.dictionaries(_strings(known), leaf, max_size=3).map(struct)
    if name.startswith("google.protobuf.") and name.endswith("Value"):  # wrappers
        cls = message_class(descriptor)
        return st.builds(lambda v: cls(value=v), _scalar(descriptor.fields_by_name["value"], known))
    if name.startswith("google."):
        return st.just(message_class(descriptor)())
    return None


@st.composite
def messages(draw: st.DrawFn, descriptor: d.Descriptor, known: Sequence[str], depth: int = 0) -> Message:
    """A message of `descriptor`, each field present or not, drawn from the pools above."""
    special = _well_known(descriptor, known)
    if special is not None:
        return draw(special)
    cls = message_class(descriptor)
    msg = cls()
    for field in descriptor.fields:
        if not draw(st.booleans()):
            continue
        message_type: Any = field.message_type
        is_message = field.type == d.FieldDescriptor.TYPE_MESSAGE
        if is_message and depth >= MAX_DEPTH:
            continue
        container: Any = getattr(msg, field.name) if field.is_repeated else None
        if is_message and message_type.GetOptions().map_entry:
            key_field = message_type.fields_by_name["key"]
            value_field = message_type.fields_by_name["value"]
            entries = draw(st.integers(0, 3))
            for _ in range(entries):
                key = draw(_scalar(key_field, known))
                if value_field.type == d.FieldDescriptor.TYPE_MESSAGE:
                    container[key].CopyFrom(draw(messages(value_field.message_type, known, depth + 1)))
                else:
                    container[key] = draw(_scalar(value_field, known))
            continue
        if container is not None:
            count = draw(st.integers(0, 3))
            for _ in range(count):
                if is_message:
                    container.add().CopyFrom(draw(messages(message_type, known, depth + 1)))
                else:
                    container.append(draw(_scalar(field, known)))
            continue
        if is_message:
            getattr(msg, field.name).CopyFrom(draw(messages(message_type, known, depth + 1)))
        else:
            setattr(msg, field.name, draw(_scalar(field, known)))
    return msg


# ---------------------------------------------------------------------------------------------------------------
# The test
# ---------------------------------------------------------------------------------------------------------------

EXAMPLES = int(os.environ.get("LODESTAR_FUZZ_EXAMPLES", "15"))
RANDOM = os.environ.get("LODESTAR_FUZZ_RANDOM", "") not in ("", "0", "false")
CALL_TIMEOUT = 10.0
STREAM_READ_LIMIT = 5
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.DEADLINE_EXCEEDED,
             grpc.StatusCode.UNAVAILABLE}
ADMIN_TOKEN = "fuzz-admin-token-0123456789abcdef"  # nosec B105 - a test value
RPCS = all_rpcs()


# Tables whose rows every authenticated call may change, rejected or not, by design: the gateway's rate limiter
# counts each call against the partner's quota before validating it (a partner cannot probe for free).
BOOKKEEPING_TABLES = frozenset({"partner_quotas"})

# Servicer classes, to tell an RPC whose handler is not written yet (the generated base raises
# NotImplementedError, which the platform maps to INTERNAL) from a crash in a written one.
HANDLERS = {
    "lodestar.campaign.v1.CampaignService": "services.campaign.handlers:CampaignHandlers",
    "lodestar.gateway.v1.PartnerService": "services.gateway.handlers:PartnerHandlers",
    "lodestar.gateway.v1.GatewayAdminService": "services.gateway.handlers:AdminHandlers",
    "lodestar.profile.v1.ProfileService": "services.profile.handlers:ProfileHandlers",
    "lodestar.profile.v1.EventService": "services.profile.event_handlers:EventHandlers",
    "lodestar.profile.v1.SegmentService": "services.profile.segment_handlers:SegmentHandlers",
    "lodestar.risk.v1.RiskService": "services.risk.handlers:RiskHandlers",
    "lodestar.risk.v1.AmlService": "services.risk.aml_handlers:AmlHandlers",
    "lodestar.risk.v1.DataSubjectRequestService": "services.risk.dsr:DataSubjectRequestHandlers",
    "lodestar.profile.v1.TagService": "services.profile.tag_handlers:TagHandlers",
    "lodestar.campaign.v1.DeliveryService": "services.campaign.delivery_handlers:DeliveryHandlers",
    "lodestar.campaign.v1.ResponseService": "services.campaign.response_handlers:ResponseHandlers",
    "lodestar.campaign.v1.TriggerService": "services.campaign.trigger_handlers:TriggerHandlers",
    "lodestar.campaign.v1.CampaignReportService": "services.campaign.report_handlers:ReportHandlers",
    "lodestar.campaign.v1.RecommendationService": "services.campaign.personalisation_handlers:RecommendationHandlers",
    "lodestar.campaign.v1.PricingService": "services.campaign.personalisation_handlers:PricingHandlers",
}


def is_implemented(rpc: Rpc) -> bool:
    module_name, _, class_name = HANDLERS[rpc.full_service].partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return any(rpc.name in vars(klass) for klass in cls.__mro__ if not klass.__name__.endswith("Servicer")
               and klass is not object)


def has_invalid_timestamp(message: Message) -> bool:
    """True when any Timestamp inside `message` is outside 0001-01-01..9999-12-31 or has nanos out of range."""
    from google.protobuf import timestamp_pb2

    if isinstance(message, timestamp_pb2.Timestamp):
        return not (-62135596800 <= message.seconds <= 253402300799 and 0 <= message.nanos <= 999_999_999)
    for field, value in message.ListFields():
        if field.type != d.FieldDescriptor.TYPE_MESSAGE:
            continue
        message_type: Any = field.message_type
        if message_type.GetOptions().map_entry:
            values = list(value.values()) if message_type.fields_by_name["value"].type == \
                d.FieldDescriptor.TYPE_MESSAGE else []
        else:
            values = list(value) if field.is_repeated else [value]
        if any(has_invalid_timestamp(v) for v in values):
            return True
    return False


def _redacted(request: Message) -> str:
    """A short text form of a request for failure messages (fuzz values only: no real personal data)."""
    text = str(request)
    return text if len(text) < 2000 else text[:2000] + f"... ({len(text)} chars)"


def _table_counts_sql(names: list[str]) -> Any:
    from sqlalchemy import func, literal, select, table, union_all

    return union_all(*(select(literal(n).label("t"), func.count().label("n")).select_from(table(n)) for n in names))


async def _row_counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import inspect

    async with engine.connect() as conn:
        names = sorted(n for n in await conn.run_sync(lambda c: inspect(c).get_table_names()) if n != "alembic_version")
        rows = (await conn.execute(_table_counts_sql(names))).all()
    return {t: n for t, n in rows}


class Harness:
    """Calls RPCs synchronously from hypothesis' thread; row counts run on the servers' event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, running: dict[str, RunningService], api_key: str) -> None:
        self.loop = loop
        self.running = running
        self.api_key = api_key
        self.channels = {svc: grpc.insecure_channel(r.address) for svc, r in running.items()}

    def close(self) -> None:
        for channel in self.channels.values():
            channel.close()

    def counts(self, service: str) -> dict[str, int]:
        engine = self.running[service].runtime.database.engine
        return asyncio.run_coroutine_threadsafe(_row_counts(engine), self.loop).result(30)

    def call(self, rpc: Rpc, requests: list[Message], metadata: tuple[tuple[str, str], ...]) -> grpc.StatusCode:
        channel = self.channels[rpc.service]
        out_cls = message_class(rpc.output)
        kwargs: dict[str, Any] = {"request_serializer": lambda m: m.SerializeToString(),
                                  "response_deserializer": out_cls.FromString}
        try:
            if rpc.client_streaming and rpc.server_streaming:
                call = channel.stream_stream(rpc.path, **kwargs)(iter(requests), metadata=metadata,
                                                                  timeout=CALL_TIMEOUT)
                for i, _ in enumerate(call):
                    if i + 1 >= STREAM_READ_LIMIT:
                        call.cancel()
                        break
            elif rpc.client_streaming:
                channel.stream_unary(rpc.path, **kwargs)(iter(requests), metadata=metadata, timeout=CALL_TIMEOUT)
            elif rpc.server_streaming:
                call = channel.unary_stream(rpc.path, **kwargs)(requests[0], metadata=metadata, timeout=CALL_TIMEOUT)
                for i, _ in enumerate(call):
                    if i + 1 >= STREAM_READ_LIMIT:
                        call.cancel()
                        break
            else:
                channel.unary_unary(rpc.path, **kwargs)(requests[0], metadata=metadata, timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
            if code == grpc.StatusCode.CANCELLED:  # our own cancel after STREAM_READ_LIMIT responses
                return grpc.StatusCode.OK
            if code in FORBIDDEN:
                raise AssertionError(f"{rpc.id} answered {code.name}: {error.details()!r}") from None
            return code
        return grpc.StatusCode.OK

    def health(self) -> dict[str, str]:
        out = {}
        for svc, channel in self.channels.items():
            try:
                response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
                out[svc] = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
            except grpc.RpcError as error:
                out[svc] = error.code().name if isinstance(error, grpc.Call) else "ERROR"
        return out


def _metadata_strategy(rpc: Rpc, api_key: str) -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    if rpc.service != "gateway":
        return st.just(())
    good = (("x-admin-token", ADMIN_TOKEN), ("x-api-key", api_key))
    return st.sampled_from([
        good, good, good, (), (("x-admin-token", "wrong"),), (("x-api-key", "lsk_" + "0" * 40),),
        (("x-api-key", "'; DROP TABLE partners; --"),), (("x-admin-token", ADMIN_TOKEN + " "),),
    ])


def fuzz_rpc(harness: Harness, rpc: Rpc, known: Sequence[str]) -> int:
    """Runs hypothesis on one RPC; returns the number of examples tried. Raises on the first violation."""
    count = 0
    request_strategy = messages(rpc.input, known)
    stream = st.lists(request_strategy, min_size=0 if rpc.client_streaming else 1,
                      max_size=3 if rpc.client_streaming else 1)

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=not RANDOM, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate, Phase.shrink])
    @given(requests=stream, metadata=_metadata_strategy(rpc, harness.api_key))
    def run(requests: list[Message], metadata: tuple[tuple[str, str], ...]) -> None:
        nonlocal count
        count += 1
        before = harness.counts(rpc.service)
        try:
            code = harness.call(rpc, requests, metadata)
        except AssertionError as error:
            raise AssertionError(f"{error}\nrequest(s): {[_redacted(r) for r in requests]}") from None
        # A client stream commits message by message (each with its own request id): only a stream of one
        # message must leave nothing behind when it is rejected.
        if code == grpc.StatusCode.INVALID_ARGUMENT and len(requests) <= 1:
            after = harness.counts(rpc.service)
            changed = {t: (before[t], after.get(t)) for t in before
                       if before[t] != after.get(t) and t not in BOOKKEEPING_TABLES}
            assert not changed, (f"{rpc.id}: INVALID_ARGUMENT but rows changed {changed}\n"
                                 f"request(s): {[_redacted(r) for r in requests]}")

    run()
    return count


@pytest.fixture
async def platform(start: Any, tmp_path: Any) -> AsyncIterator[tuple[dict[str, RunningService], DemoInfo]]:
    from services.campaign.app import DEFINITION as CAMPAIGN
    from services.gateway.app import DEFINITION as GATEWAY
    from services.profile.app import DEFINITION as PROFILE
    from services.risk.app import DEFINITION as RISK

    closed = "127.0.0.1:9"  # risk declares campaign/gateway for later features; it does not call them yet
    profile = await start(PROFILE)
    risk = await start(RISK, PROFILE_SERVICE_ADDR=profile.address, CAMPAIGN_SERVICE_ADDR=closed,
                       GATEWAY_SERVICE_ADDR=closed)
    campaign = await start(CAMPAIGN, PROFILE_SERVICE_ADDR=profile.address, RISK_SERVICE_ADDR=risk.address,
                           CAMPAIGN_SCHEDULER_INTERVAL_SECONDS="3600")
    gateway = await start(GATEWAY, CAMPAIGN_SERVICE_ADDR=campaign.address, GATEWAY_ADMIN_TOKEN=ADMIN_TOKEN)
    running = {"profile": profile, "risk": risk, "campaign": campaign, "gateway": gateway}
    info = await asyncio.to_thread(load_demo, {s: r.address for s, r in running.items()}, ADMIN_TOKEN, count=5)
    yield running, info


def _known_values(info: DemoInfo) -> list[str]:
    offers = [o.offer_id for o in demo_offers()]
    return [
        info.customer_id, f"customers/{info.customer_id}", "demo-0002", info.customer_ref, info.partner_id,
        f"partners/{info.partner_id}", *offers, *(f"offers/{o}" for o in offers), "sms", "email", "app_push",
        "marketing", "C3", "risk_tolerance", "income", "CN-31", "Asia/Shanghai", "age >= 18", "tier = 'gold'",
    ]


@pytest.mark.parametrize("service", SERVICES)
async def test_every_rpc_survives_adversarial_requests(
    platform: tuple[dict[str, RunningService], DemoInfo], service: str
) -> None:
    running, info = platform
    rpcs = [r for r in RPCS if r.service == service]
    assert rpcs, f"no RPCs found for {service}: the descriptor walk is broken"
    harness = Harness(asyncio.get_running_loop(), running, info.api_key)
    known = _known_values(info)
    failures: list[str] = []
    tried: dict[str, int] = {}
    try:
        for rpc in rpcs:
            try:
                tried[rpc.id] = await asyncio.to_thread(fuzz_rpc, harness, rpc, known)
            except AssertionError as error:
                failures.append(f"{rpc.id}: {error}")
            health = await asyncio.to_thread(harness.health)
            assert set(health.values()) == {"SERVING"}, f"after {rpc.id}: health {health}"
    finally:
        harness.close()
    assert not failures, "\n\n".join(failures)
    assert all(n >= 1 for n in tried.values()), tried


def test_descriptor_walk_finds_every_service() -> None:
    """The walk must see each service's RPCs (a broken import would silently fuzz nothing)."""
    by_service = {s: [r.name for r in RPCS if r.service == s] for s in SERVICES}
    assert "GetCustomer" in by_service["profile"]
    assert "Decide" in by_service["campaign"]
    assert "Screen" in by_service["risk"]
    assert {"GetOffers", "CreatePartner"} <= set(by_service["gateway"])
    assert any(r.client_streaming for r in RPCS) and any(r.server_streaming for r in RPCS)


# The exact inputs of crashes this fuzzer found (out-of-range Timestamps reached ToDatetime() and surfaced as
# INTERNAL); every handler now converts through services.platform.timestamps: INVALID_ARGUMENT on the field.
def _found_crashes() -> list[tuple[str, str, Any, str]]:
    from google.protobuf import timestamp_pb2

    from lodestar.campaign.v1 import campaign_service_pb2 as cpb
    from lodestar.campaign.v1 import offer_pb2
    from lodestar.profile.v1 import event_service_pb2 as epb
    from lodestar.profile.v1 import segment_service_pb2 as spb

    after_9999 = timestamp_pb2.Timestamp(seconds=253402300800)
    negative_nanos = timestamp_pb2.Timestamp(nanos=-1)
    return [
        ("profile", "EventService.GetFeatures", epb.GetFeaturesRequest(customer_id="demo-0001", as_of=after_9999),
         "as_of"),
        ("profile", "EventService.ComputeTags", epb.ComputeTagsRequest(customer_ids=["demo-0001"],
                                                                        as_of=negative_nanos), "as_of"),
        ("profile", "SegmentService.PreviewSegment", spb.PreviewSegmentRequest(condition_text="region = \"CN-31\"",
                                                                               as_of=negative_nanos), "as_of"),
        ("campaign", "CampaignService.CreateOffer", cpb.CreateOfferRequest(offer=offer_pb2.Offer(
            offer_id="o-1", title="T", product_type=1, risk_level=1, valid_until=after_9999)), "offer.valid_until"),
        ("campaign", "CampaignService.Decide", cpb.DecideRequest(
            customer_id="demo-0001", context=offer_pb2.DecisionContext(decision_time=negative_nanos)),
         "context.decision_time"),
    ]


FOUND_CRASHES = _found_crashes()


@pytest.mark.parametrize(("service", "rpc_id", "request_", "field"), FOUND_CRASHES, ids=[c[1] for c in FOUND_CRASHES])
async def test_out_of_range_timestamps_are_invalid_argument(start: Any, service: str, rpc_id: str,
                                                            request_: Message, field: str) -> None:
    import importlib

    from tests.helpers import details_of

    definition = importlib.import_module(f"services.{service}.app").DEFINITION
    svc = await start(definition, PROFILE_SERVICE_ADDR="127.0.0.1:1", RISK_SERVICE_ADDR="127.0.0.1:1")
    rpc = next(r for r in RPCS if r.id == rpc_id)
    async with grpc.aio.insecure_channel(svc.address) as channel:
        call = channel.unary_unary(rpc.path, request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=message_class(rpc.output).FromString)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request_, timeout=CALL_TIMEOUT)
    got = details_of(caught.value)
    assert (got.code, got.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_TIMESTAMP"), got
    assert got.field_violations[0][0] == field
