"""Fault scenarios with a verdict: the four services as processes under decision load, then something breaks.

    python -m bench.faults [--scenario kill|latency|postgres|disk-full|burst|all] [--scale small|full]

Each scenario prints PASS or FAIL with what held and what did not, and appends a dated section to
docs/reliability.md (BENCH_RELIABILITY_PATH overrides the target). Exit code 1 when any scenario fails.

- kill: GetOffers through the gateway at a fixed rate while profile creates customers (5/s, each with a
  request id); SIGKILL each service in turn, restart it on the same port and database. Must hold: only OK,
  UNAVAILABLE or DEADLINE_EXCEEDED; every call OK again within RECOVERY_SECONDS of the restart; every
  acknowledged customer, every offer and consent still there.
- latency: a TCP proxy in front of risk (campaign's RISK_SERVICE_ADDR points at it) delays every chunk by more
  than the caller's deadline, then the delay goes. Must hold: no UNKNOWN/INTERNAL at the edge during the delay,
  OK again within RECOVERY_SECONDS once it is gone.
- postgres: the stack on a throwaway PostgreSQL (scripts/pg-throwaway.sh, one database per service), which is
  stopped for 10 s under load. Must hold: only OK/UNAVAILABLE/DEADLINE_EXCEEDED, every service's readiness
  NOT_SERVING during the outage, SERVING and OK again without a restart of any service.
- disk-full: the SQLite databases on a small tmpfs (root only), filled to the last byte. Must hold: writes
  UNAVAILABLE, reads OK, no row of a refused write afterwards, writes OK again once space is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess  # nosec B404 - starts our own services, pg_ctl and mount
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import grpc

from bench.report import command_line, machine_description, scale_parser

ROOT = Path(__file__).resolve().parent.parent
RELIABILITY_PATH = ROOT / "docs" / "reliability.md"
SERVICES = ("profile", "risk", "campaign", "gateway")
ALLOWED = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
RECOVERY_SECONDS = 10.0
EDGE_TIMEOUT = 2.0
RELIABILITY_HEADER = """# Reliability

How Lodestar behaves under hostile input and faults: what was tried, how to run it again, and what held.
Scenario sections below the summary are appended by `python -m bench.faults` (newest last).
"""


@dataclass(frozen=True)
class Scale:
    rate: float
    seconds_per_kill: float
    customers: int


# Small is 10/s: on a 2-core machine shared with other work, 50/s of GetOffers already queues past the edge
# deadline before any fault (every scenario first checks the load was served before the fault).
SCALES = {"small": Scale(rate=10, seconds_per_kill=12, customers=30),
          "full": Scale(rate=50, seconds_per_kill=20, customers=200)}


@dataclass
class Verdict:
    scenario: str
    passed: bool
    held: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)

    def check(self, ok: bool, what: str) -> None:
        (self.held if ok else self.failed).append(what)
        self.passed = self.passed and ok

    def lines(self) -> list[str]:
        out = [f"**{'PASS' if self.passed else 'FAIL'}** — {self.scenario}", ""]
        out += [f"- held: {h}" for h in self.held]
        out += [f"- FAILED: {f}" for f in self.failed]
        out += [f"- {f}" for f in self.figures]
        return out


# -- load ------------------------------------------------------------------------------------------------------


@dataclass
class Timeline:
    """(send time relative to the start, status code name) of every request."""

    events: list[tuple[float, str]] = field(default_factory=list)

    def codes(self, start: float = float("-inf"), end: float = float("inf")) -> Counter[str]:
        return Counter(c for t, c in self.events if start <= t < end)

    def last_error_after(self, moment: float) -> float | None:
        errors = [t for t, c in self.events if t >= moment and c != "OK"]
        return max(errors) if errors else None


def _code(error: grpc.RpcError) -> str:
    return error.code().name if isinstance(error, grpc.Call) else "UNKNOWN"


async def offers_load(gateway: str, api_key: str, ref: str, rate: float, seconds: float, t0: float,
                      timeline: Timeline) -> None:
    from lodestar.gateway.v1 import partner_service_pb2, partner_service_pb2_grpc

    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(gateway) as channel:
        stub = partner_service_pb2_grpc.PartnerServiceStub(channel)
        request = partner_service_pb2.GetOffersRequest(customer_ref=ref)

        async def one(sent: float) -> None:
            try:
                await stub.GetOffers(request, metadata=(("x-api-key", api_key),), timeout=EDGE_TIMEOUT)
                timeline.events.append((sent, "OK"))
            except grpc.aio.AioRpcError as error:
                timeline.events.append((sent, error.code().name))

        tasks = []
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(loop.time() - t0)))
        await asyncio.gather(*tasks)


async def customer_writes(profile: str, rate: float, seconds: float, t0: float, acknowledged: list[str],
                          timeline: Timeline) -> None:
    """CreateCustomer at `rate`, each with a request id; the ids of acknowledged creates go to `acknowledged`."""
    from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc

    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(profile) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        for i in range(int(rate * seconds)):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            customer_id = f"fault-{uuid.uuid4().hex[:12]}"
            request = profile_service_pb2.CreateCustomerRequest(
                customer=customer_pb2.Customer(customer_id=customer_id, region="CN-31", time_zone="Asia/Shanghai",
                                               birth_date="1980-01-01"),
                request_id=f"req-{customer_id}")
            sent = loop.time() - t0
            try:
                await stub.CreateCustomer(request, timeout=EDGE_TIMEOUT)
                acknowledged.append(customer_id)
                timeline.events.append((sent, "OK"))
            except grpc.aio.AioRpcError as error:
                timeline.events.append((sent, error.code().name))


# -- what must survive -----------------------------------------------------------------------------------------


def snapshot(addresses: dict[str, str], customer_ids: list[str]) -> dict[str, int]:
    """Counts of customers, offers and consent records (for the demo customers) as the public RPCs see them."""
    from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc
    from lodestar.profile.v1 import profile_service_pb2, profile_service_pb2_grpc
    from lodestar.risk.v1 import risk_service_pb2, risk_service_pb2_grpc

    out = {"customers": 0, "offers": 0, "consents": 0}
    with grpc.insecure_channel(addresses["profile"]) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        token = ""
        while True:
            page = stub.ListCustomers(profile_service_pb2.ListCustomersRequest(page_size=500, page_token=token),
                                      timeout=10)
            out["customers"] += len(page.customers)
            token = page.next_page_token
            if not token:
                break
    with grpc.insecure_channel(addresses["campaign"]) as channel:
        stub2 = campaign_service_pb2_grpc.CampaignServiceStub(channel)
        out["offers"] = len(stub2.ListOffers(campaign_service_pb2.ListOffersRequest(page_size=500), timeout=10).offers)
    with grpc.insecure_channel(addresses["risk"]) as channel:
        stub3 = risk_service_pb2_grpc.RiskServiceStub(channel)
        for customer_id in customer_ids:
            history = stub3.ListConsentHistory(risk_service_pb2.ListConsentHistoryRequest(
                customer_id=customer_id, page_size=500), timeout=10)
            out["consents"] += len(history.consents)
    return out


def missing_customers(profile: str, ids: list[str]) -> list[str]:
    from lodestar.profile.v1 import profile_service_pb2, profile_service_pb2_grpc

    missing = []
    with grpc.insecure_channel(profile) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        for customer_id in ids:
            try:
                stub.GetCustomer(profile_service_pb2.GetCustomerRequest(name=f"customers/{customer_id}"), timeout=10)
            except grpc.RpcError as error:
                if _code(error) == "NOT_FOUND":
                    missing.append(customer_id)
                else:
                    raise
    return missing


# -- the stack -------------------------------------------------------------------------------------------------


class FaultStack:
    """lodestar_cli.stack.Stack with per-service database URLs and a restart on the same port."""

    def __init__(self, data_dir: Path, database_urls: dict[str, str] | None = None,
                 extra_env: dict[str, str] | None = None, db_dir: Path | None = None) -> None:
        from lodestar_cli.stack import Stack

        urls = dict(database_urls or {})
        if db_dir is not None:
            urls.update({s: f"sqlite+aiosqlite:///{db_dir / (s + '.db')}" for s in SERVICES})

        class _Stack(Stack):
            def environment(self, service: str) -> dict[str, str]:
                env = super().environment(service)
                if service in urls:
                    env["DATABASE_URL"] = urls[service]
                return env

        env = {"LOG_LEVEL": "WARNING", "CAMPAIGN_SCHEDULER_INTERVAL_SECONDS": "3600", **(extra_env or {})}
        self.stack = _Stack(data_dir, ports=dict.fromkeys(SERVICES, 0), extra_env=env)

    def __enter__(self) -> FaultStack:
        self.stack.start()
        self.stack.wait_serving()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stack.stop()

    @property
    def addresses(self) -> dict[str, str]:
        return self.stack.addresses

    def kill(self, service: str) -> None:
        process = self.stack._processes[service]
        process.popen.send_signal(signal.SIGKILL)
        process.popen.wait(10)
        process.log_handle.close()

    def restart(self, service: str) -> None:
        """Relaunches `service` on the port it had, with the same database."""
        port = int(self.addresses[service].rsplit(":", 1)[1])
        self.stack.ports[service] = port
        self.stack._launch(service)
        self.stack._wait_port(service, time.monotonic() + 30)

    def load_demo(self, count: int) -> tuple[str, str, str]:
        from bench.decision_latency import _raise_quota
        from lodestar_cli.demo import load_demo

        info = load_demo(self.addresses, self.stack.admin_token, count=count)
        _raise_quota(self.addresses["gateway"], self.stack.admin_token, info.partner_id)
        return info.api_key, info.customer_ref, info.customer_id


def healthy_before(verdict: Verdict, timeline: Timeline, fault_at: float) -> None:
    """The load must have been served before the fault, else the scenario proves nothing."""
    codes = timeline.codes(0, fault_at)
    verdict.check(codes.get("OK", 0) > 0 and set(codes) == {"OK"},
                  f"the load was served before the fault: {dict(sorted(codes.items()))}")


def ok_at_end(verdict: Verdict, timeline: Timeline, seconds: float) -> None:
    codes = timeline.codes(seconds - 2.0)
    verdict.check(codes.get("OK", 0) > 0 and set(codes) == {"OK"},
                  f"the last 2 s of load all OK: {dict(sorted(codes.items()))}")


def demo_ids(count: int) -> list[str]:
    return [f"demo-{i:04d}" for i in range(1, min(count, 10) + 1)]


# -- scenarios -------------------------------------------------------------------------------------------------


def scenario_kill(scale: Scale) -> list[Verdict]:
    verdicts = []
    with tempfile.TemporaryDirectory(prefix="lodestar-faults-") as tmp, FaultStack(Path(tmp) / "stack") as stack:
        api_key, ref, _ = stack.load_demo(scale.customers)
        before = snapshot(stack.addresses, demo_ids(scale.customers))
        for victim in SERVICES:
            verdict, before = _kill_one(stack, scale, victim, api_key, ref, before)
            print_verdict(verdict)
            verdicts.append(verdict)
    return verdicts


def _kill_one(stack: FaultStack, scale: Scale, victim: str, api_key: str, ref: str,
              before: dict[str, int]) -> tuple[Verdict, dict[str, int]]:
    verdict = Verdict(f"SIGKILL {victim} during {scale.rate:g} GetOffers/s (+5 CreateCustomer/s), restart "
                      "on the same port and database", True)
    offers, writes = Timeline(), Timeline()
    acknowledged: list[str] = []
    kill_at, restart_at = scale.seconds_per_kill * 0.25, scale.seconds_per_kill * 0.25 + 2.0
    restarted = {"at": 0.0}

    async def run() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.1

        async def fault() -> None:
            await asyncio.sleep(t0 + kill_at - loop.time())
            await asyncio.to_thread(stack.kill, victim)
            await asyncio.sleep(t0 + restart_at - loop.time())
            restarted["at"] = loop.time() - t0
            await asyncio.to_thread(stack.restart, victim)

        await asyncio.gather(
            offers_load(stack.addresses["gateway"], api_key, ref, scale.rate, scale.seconds_per_kill, t0, offers),
            customer_writes(stack.addresses["profile"], 5, scale.seconds_per_kill, t0, acknowledged, writes),
            fault())

    asyncio.run(run())
    stack.stack.wait_serving(30)
    healthy_before(verdict, offers, kill_at)
    ok_at_end(verdict, offers, scale.seconds_per_kill)
    all_codes = offers.codes() + writes.codes()
    verdict.check(set(all_codes) <= ALLOWED, f"status codes seen: {dict(sorted(all_codes.items()))}")
    last_error = max(filter(None, [offers.last_error_after(0), writes.last_error_after(0)]), default=None)
    recovery = (last_error - restarted["at"]) if last_error is not None else 0.0
    if last_error is not None and last_error > scale.seconds_per_kill - 2.0:
        recovery = float("inf")  # still failing at the end: no recovery at all
    verdict.check(recovery <= RECOVERY_SECONDS,
                  f"every call OK again {max(recovery, 0):.1f} s after the restart (limit {RECOVERY_SECONDS:g} s)")
    lost = missing_customers(stack.addresses["profile"], acknowledged)
    verdict.check(not lost, f"{len(acknowledged) - len(lost)}/{len(acknowledged)} acknowledged "
                            f"CreateCustomer still there{f' (lost: {lost[:5]})' if lost else ''}")
    after = snapshot(stack.addresses, demo_ids(scale.customers))
    expected = {**before, "customers": before["customers"] + len(acknowledged)}
    verdict.check(after == expected, f"customers/offers/consents before+acknowledged {expected}, after {after}")
    verdict.figures.append(f"GetOffers: {dict(sorted(offers.codes().items()))}; CreateCustomer: "
                           f"{dict(sorted(writes.codes().items()))}")
    return verdict, after


class DelayProxy:
    """A TCP proxy on its own thread and event loop; every chunk is held `delay` seconds before forwarding."""

    def __init__(self) -> None:
        self.delay = 0.0
        self.upstream: tuple[str, int] | None = None
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(10)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError, RuntimeError):
            self.loop.run_until_complete(serve())

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                if self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.upstream is None:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)


def scenario_latency(scale: Scale) -> list[Verdict]:
    delay = EDGE_TIMEOUT + 1.0
    verdict = Verdict(f"{delay:g} s added to every chunk between campaign and risk (edge deadline "
                      f"{EDGE_TIMEOUT:g} s), then removed", True)
    proxy = DelayProxy()
    seconds = scale.seconds_per_kill * 1.5
    try:
        with tempfile.TemporaryDirectory(prefix="lodestar-faults-") as tmp, FaultStack(
                Path(tmp) / "stack", extra_env={"RISK_SERVICE_ADDR": f"127.0.0.1:{proxy.port}"}) as stack:
            host, port = stack.addresses["risk"].rsplit(":", 1)
            proxy.upstream = (host, int(port))
            api_key, ref, _ = stack.load_demo(scale.customers)
            timeline = Timeline()
            slow_from, slow_to = seconds / 3, 2 * seconds / 3

            async def run() -> None:
                loop = asyncio.get_running_loop()
                t0 = loop.time() + 0.1

                async def fault() -> None:
                    await asyncio.sleep(t0 + slow_from - loop.time())
                    proxy.delay = delay
                    await asyncio.sleep(t0 + slow_to - loop.time())
                    proxy.delay = 0.0

                await asyncio.gather(offers_load(stack.addresses["gateway"], api_key, ref, scale.rate / 2, seconds,
                                                 t0, timeline), fault())

            asyncio.run(run())
            healthy_before(verdict, timeline, slow_from)
            ok_at_end(verdict, timeline, seconds)
            during = timeline.codes(slow_from, slow_to)
            codes = timeline.codes()
            verdict.check(set(codes) <= ALLOWED, f"status codes seen: {dict(sorted(codes.items()))}")
            verdict.check(bool(set(during) - {"OK"}) or not during,
                          f"the delay was felt at the edge (during it: {dict(sorted(during.items()))})")
            last_error = timeline.last_error_after(0)
            recovery = (last_error - slow_to) if last_error is not None else 0.0
            if last_error is not None and last_error > seconds - 2.0:
                recovery = float("inf")
            verdict.check(recovery <= RECOVERY_SECONDS,
                          f"every call OK again {max(recovery, 0):.1f} s after the delay went (limit "
                          f"{RECOVERY_SECONDS:g} s)")
    finally:
        proxy.close()
    print_verdict(verdict)
    return [verdict]


PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@contextlib.contextmanager
def throwaway_postgres() -> Iterator[tuple[str, Path, int]]:
    out = subprocess.run([str(ROOT / "scripts" / "pg-throwaway.sh"), "start"], check=True,  # nosec B603
                         capture_output=True, text=True).stdout
    env = dict(line.removeprefix("export ").split("=", 1) for line in out.splitlines() if line.startswith("export"))
    directory, url = Path(env["PG_THROWAWAY_DIR"]), env["TEST_DATABASE_URL"]
    try:
        yield url, directory, int(url.rsplit(":", 1)[1].split("/", 1)[0])
    finally:
        subprocess.run([str(ROOT / "scripts" / "pg-throwaway.sh"), "stop", str(directory)],  # nosec B603
                       check=False, capture_output=True)


def pg_ctl(directory: Path, port: int, action: str) -> None:
    args = [str(PG_BIN / "pg_ctl"), "-D", str(directory / "data"), "-l", str(directory / "server.log"), "-w",
            "-t", "60"]
    if action == "start":
        args += ["-o", f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
                       "-c max_connections=400", "start"]
    else:
        args += ["-m", "fast", "stop"]
    subprocess.run(_as_postgres(args), check=True, capture_output=True)  # nosec B603


def scenario_postgres(scale: Scale) -> list[Verdict]:
    outage = 10.0
    verdict = Verdict(f"PostgreSQL stopped for {outage:g} s under {scale.rate / 2:g} GetOffers/s", True)
    if not (PG_BIN / "pg_ctl").exists():
        verdict.check(False, f"PostgreSQL not installed ({PG_BIN}): scenario not run")
        print_verdict(verdict)
        return [verdict]
    import psycopg

    with throwaway_postgres() as (url, directory, port):
        base = url.rsplit("/", 1)[0]
        with psycopg.connect(base.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
            for service in SERVICES:
                conn.execute(f'CREATE DATABASE "faults_{service}"')
        urls = {s: f"{base}/faults_{s}" for s in SERVICES}
        with tempfile.TemporaryDirectory(prefix="lodestar-faults-") as tmp, FaultStack(
                Path(tmp) / "stack", database_urls=urls) as stack:
            api_key, ref, _ = stack.load_demo(scale.customers)
            before = snapshot(stack.addresses, demo_ids(scale.customers))
            timeline = Timeline()
            health_seen: dict[str, set[str]] = {s: set() for s in SERVICES}
            stop_at, seconds = 3.0, 3.0 + outage + RECOVERY_SECONDS + 2
            marks = {"start": 0.0}

            async def run() -> None:
                from lodestar_cli.stack import check_health

                loop = asyncio.get_running_loop()
                t0 = loop.time() + 0.1

                async def fault() -> None:
                    await asyncio.sleep(t0 + stop_at - loop.time())
                    await asyncio.to_thread(pg_ctl, directory, port, "stop")
                    end = loop.time() + outage
                    while loop.time() < end:
                        for service in SERVICES:
                            health_seen[service].add(await asyncio.to_thread(
                                check_health, stack.addresses[service], 1.0))
                        await asyncio.sleep(0.5)
                    await asyncio.to_thread(pg_ctl, directory, port, "start")
                    marks["start"] = loop.time() - t0

                await asyncio.gather(offers_load(stack.addresses["gateway"], api_key, ref, scale.rate / 2, seconds,
                                                 t0, timeline), fault())

            asyncio.run(run())
            healthy_before(verdict, timeline, stop_at)
            ok_at_end(verdict, timeline, seconds)
            codes = timeline.codes()
            verdict.check(set(codes) <= ALLOWED, f"status codes seen: {dict(sorted(codes.items()))}")
            verdict.check(all("NOT_SERVING" in seen for seen in health_seen.values()),
                          f"readiness during the outage: { {s: sorted(v) for s, v in health_seen.items()} }")
            try:
                stack.stack.wait_serving(RECOVERY_SECONDS + 10)
                serving = True
            except Exception:
                serving = False
            verdict.check(serving, "every service SERVING again without a restart")
            last_error = timeline.last_error_after(0)
            recovery = (last_error - marks["start"]) if last_error is not None else 0.0
            if last_error is not None and last_error > seconds - 2.0:
                recovery = float("inf")
            verdict.check(recovery <= RECOVERY_SECONDS,
                          f"every call OK again {max(recovery, 0):.1f} s after PostgreSQL came back (limit "
                          f"{RECOVERY_SECONDS:g} s)")
            after = snapshot(stack.addresses, demo_ids(scale.customers))
            verdict.check(after == before, f"customers/offers/consents before {before}, after {after}")
    print_verdict(verdict)
    return [verdict]


def scenario_disk_full(scale: Scale) -> list[Verdict]:
    verdict = Verdict("the SQLite directory's file system full (tmpfs, 64 MiB, filled to the last byte)", True)
    if os.geteuid() != 0 or not shutil.which("mount"):
        verdict.check(False, "needs root to mount a tmpfs: scenario not run")
        print_verdict(verdict)
        return [verdict]
    from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc
    from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc

    with tempfile.TemporaryDirectory(prefix="lodestar-faults-") as tmp:
        mount_point = Path(tmp) / "db"
        mount_point.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],  # nosec B603 B607
                       check=True)
        try:
            with FaultStack(Path(tmp) / "stack", db_dir=mount_point) as stack:
                api_key, ref, _ = stack.load_demo(scale.customers)
                filler = mount_point / "filler"
                _fill(filler)
                refused: list[str] = []
                write_codes: Counter[str] = Counter()
                read_codes: Counter[str] = Counter()
                offers_codes: Counter[str] = Counter()
                with grpc.insecure_channel(stack.addresses["profile"]) as p_channel, \
                        grpc.insecure_channel(stack.addresses["campaign"]) as c_channel:
                    profile = profile_service_pb2_grpc.ProfileServiceStub(p_channel)
                    campaign = campaign_service_pb2_grpc.CampaignServiceStub(c_channel)

                    def create(customer_id: str) -> str:
                        customer = customer_pb2.Customer(customer_id=customer_id, region="CN-31",
                                                         time_zone="Asia/Shanghai", birth_date="1980-01-01")
                        try:
                            profile.CreateCustomer(profile_service_pb2.CreateCustomerRequest(
                                customer=customer, request_id=f"req-{customer_id}"), timeout=10)
                            return "OK"
                        except grpc.RpcError as error:
                            return _code(error)

                    def reads() -> list[str]:
                        # GetOffers is not among them: it writes (the decision record, the partner's quota
                        # bucket), so on a full disk it must fail like any write — UNAVAILABLE, checked below.
                        out = []
                        for call in (lambda: profile.GetCustomer(profile_service_pb2.GetCustomerRequest(
                                name="customers/demo-0001"), timeout=10),
                                lambda: campaign.ListOffers(campaign_service_pb2.ListOffersRequest(), timeout=10)):
                            try:
                                call()
                                out.append("OK")
                            except grpc.RpcError as error:
                                out.append(_code(error))
                        return out

                    for _ in range(5):
                        customer_id = f"full-{uuid.uuid4().hex[:10]}"
                        code = create(customer_id)
                        write_codes[code] += 1
                        if code != "OK":
                            refused.append(customer_id)
                        read_codes.update(reads())
                        try:
                            _get_offers(stack.addresses["gateway"], api_key, ref)
                            offers_codes["OK"] += 1
                        except grpc.RpcError as error:
                            offers_codes[_code(error)] += 1
                    verdict.check(set(offers_codes) <= {"OK", "UNAVAILABLE"},
                                  f"GetOffers (it writes a decision record) on a full disk: {dict(offers_codes)}")
                    verdict.check(set(write_codes) == {"UNAVAILABLE"},
                                  f"writes on a full disk: {dict(write_codes)} (expected only UNAVAILABLE)")
                    verdict.check(set(read_codes) == {"OK"}, f"reads on a full disk: {dict(read_codes)}")
                    filler.unlink()
                    after_code = create(f"free-{uuid.uuid4().hex[:10]}")
                    verdict.check(after_code == "OK", f"a write once space is freed: {after_code}")
                    present = [c for c in refused if c not in missing_customers(stack.addresses["profile"], refused)]
                    verdict.check(not present, f"no refused write left a row ({len(refused)} checked"
                                               f"{f'; present: {present}' if present else ''})")
                    health = stack.stack.health()
                    verdict.check(set(health.values()) == {"SERVING"}, f"health afterwards: {health}")
        finally:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)  # nosec B603 B607
    print_verdict(verdict)
    return [verdict]


def _fill(path: Path) -> None:
    """Writes zeros into `path` until the file system has no byte left (unbuffered: nothing fails on close)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) > 0:
                    pass
    finally:
        os.close(fd)


def _get_offers(gateway: str, api_key: str, ref: str) -> None:
    from lodestar.gateway.v1 import partner_service_pb2, partner_service_pb2_grpc

    with grpc.insecure_channel(gateway) as channel:
        partner_service_pb2_grpc.PartnerServiceStub(channel).GetOffers(
            partner_service_pb2.GetOffersRequest(customer_ref=ref), metadata=(("x-api-key", api_key),), timeout=10)


def scenario_burst(scale: Scale) -> list[Verdict]:
    """An overload burst of GetOffers whose callers give up at the edge deadline: once it is over, the platform
    must answer normally again (a request cancelled in the middle of a database transaction once left the
    gateway's SQLite write lock held, and every later call timed out)."""
    verdict = Verdict("a burst of 400 GetOffers at 64 in parallel (edge deadline "
                      f"{EDGE_TIMEOUT:g} s), then normal calls", True)
    try:
        with tempfile.TemporaryDirectory(prefix="lodestar-faults-") as tmp, FaultStack(Path(tmp) / "stack") as stack:
            api_key, ref, _ = stack.load_demo(scale.customers)
            from concurrent.futures import ThreadPoolExecutor

            from lodestar.gateway.v1 import partner_service_pb2, partner_service_pb2_grpc

            channel = grpc.insecure_channel(stack.addresses["gateway"])
            stub = partner_service_pb2_grpc.PartnerServiceStub(channel)

            def call(_: int = 0) -> str:
                try:
                    stub.GetOffers(partner_service_pb2.GetOffersRequest(customer_ref=ref),
                                   metadata=(("x-api-key", api_key),), timeout=EDGE_TIMEOUT)
                    return "OK"
                except grpc.RpcError as error:
                    return _code(error)

            before = Counter(call() for _ in range(5))
            with ThreadPoolExecutor(64) as pool:
                during = Counter(pool.map(call, range(400)))
            recovered_after = None
            started = time.monotonic()
            while time.monotonic() - started < 15:
                if all(call() == "OK" for _ in range(3)):
                    recovered_after = time.monotonic() - started
                    break
                time.sleep(0.5)
            channel.close()
            verdict.check(set(before) == {"OK"}, f"calls before the burst: {dict(before)}")
            verdict.check(set(during) <= {"OK", "DEADLINE_EXCEEDED", "UNAVAILABLE", "RESOURCE_EXHAUSTED"},
                          f"codes during the burst (never UNKNOWN or INTERNAL): {dict(during)}")
            verdict.check(recovered_after is not None and recovered_after <= 5.0,
                          f"every call OK again {recovered_after:.1f} s after the burst (limit 5 s)"
                          if recovered_after is not None else "every call OK again within 15 s: no")
    except Exception as error:  # the scenario itself broke: a FAIL with the reason, never a crash
        verdict.check(False, f"the scenario itself failed: {type(error).__name__}: {error}")
    return [verdict]


SCENARIOS: dict[str, Callable[[Scale], list[Verdict]]] = {
    "kill": scenario_kill, "latency": scenario_latency, "postgres": scenario_postgres,
    "disk-full": scenario_disk_full, "burst": scenario_burst,
}


# -- report ----------------------------------------------------------------------------------------------------


def print_verdict(verdict: Verdict) -> None:
    print("\n".join(verdict.lines()), flush=True)


def reliability_path() -> Path:
    override = os.environ.get("BENCH_RELIABILITY_PATH")
    return Path(override) if override else RELIABILITY_PATH


def append_reliability(title: str, command: str, verdicts: list[Verdict]) -> None:
    path = reliability_path()
    if not path.exists():
        path.write_text(RELIABILITY_HEADER, encoding="utf-8")
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["", f"### {title} — {date}", "", f"- command: `{command}`", f"- machine: {machine_description()}", ""]
    for verdict in verdicts:
        lines += [*verdict.lines(), ""]
    with path.open("a", encoding="utf-8") as handle:
        handle.write("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = scale_parser("fault scenarios with pass/fail verdicts")
    parser.add_argument("--scenario", choices=[*SCENARIOS, "all"], default="all")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    verdicts: list[Verdict] = []
    for name in names:
        print(f"== scenario {name} ({args.scale})", flush=True)
        try:
            found = SCENARIOS[name](scale)
        except Exception as error:
            found = [Verdict(name, False, failed=[f"the scenario itself failed: {type(error).__name__}: {error}"])]
            print_verdict(found[0])
        verdicts += found
        append_reliability(f"Fault scenario `{name}` ({args.scale})", command_line(argv, "bench.faults"), found)
    passed = sum(v.passed for v in verdicts)
    print(f"{passed}/{len(verdicts)} verdicts PASS")
    return 0 if passed == len(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
