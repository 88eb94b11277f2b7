"""Load on the decision path: GetOffers through the gateway, campaign Decide directly, and a bare gRPC echo.

    python -m bench.decision_latency [--scale small|full]

Starts the four services as processes (lodestar_cli.stack.Stack, free ports, a temporary directory, SQLite),
loads a small demo bank (lodestar_cli.demo.load_demo), raises the demo partner's quota so the gateway's rate
limit does not shape the load, and starts bench/echo.py's bare grpc.aio echo server as a process: the same-run
baseline. Then, with an asyncio load generator over gRPC in this process:

1. fixed rate (open loop): 100 requests/s for 10 s (small) or 60 s (full) against each target, after a short
   warm-up; latency is measured from each request's *scheduled* send time (no coordinated omission);
   p50/p99 and the error rate (any status but OK) are reported;
2. peak sustainable rate (closed loop): a few concurrency levels, each for a few seconds; the peak is the
   highest throughput of OK responses at an error rate under 1 %.

Prints the gateway's added cost (GetOffers minus Decide) and each target's ratio to the echo, the resident
memory (RSS) of each service at start and at end, and appends all of it to docs/benchmarks.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess  # nosec B404 - starts our own echo server
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.echo import echo_stub
from bench.report import append_section, command_line, markdown_table, percentile, ratio, scale_parser

RPC_TIMEOUT_SECONDS = 5.0
SERVICES = ("gateway", "campaign", "profile", "risk")


@dataclass(frozen=True)
class Scale:
    rate: int
    fixed_seconds: float
    warmup_seconds: float
    closed_seconds: float
    concurrency: tuple[int, ...]
    customers: int


SCALES = {
    "small": Scale(rate=100, fixed_seconds=10, warmup_seconds=2, closed_seconds=4, concurrency=(1, 8, 32),
                   customers=50),
    "full": Scale(rate=100, fixed_seconds=60, warmup_seconds=5, closed_seconds=20, concurrency=(1, 8, 32, 128),
                  customers=200),
}


@dataclass
class Run:
    target: str
    mode: str  # "rate 100/s" or "closed c=8"
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)

    @property
    def requests(self) -> int:
        return sum(self.codes.values())

    @property
    def errors(self) -> int:
        return self.requests - self.codes.get("OK", 0)

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else float("nan")

    @property
    def throughput(self) -> float:
        return self.codes.get("OK", 0) / self.seconds if self.seconds else float("nan")

    def p(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def error_summary(self) -> str:
        return ", ".join(f"{code} {n}" for code, n in sorted(self.codes.items()) if code != "OK") or "-"


Call = Callable[[], Awaitable[object]]


async def _timed(call: Call, started: float, run: Run) -> None:
    loop = asyncio.get_running_loop()
    try:
        await call()
    except grpc.aio.AioRpcError as error:
        run.codes[error.code().name] += 1
        return
    run.codes["OK"] += 1
    run.latencies_ms.append((loop.time() - started) * 1000)


async def fixed_rate(target: str, call: Call, rate: float, seconds: float) -> Run:
    """Open loop: request i is sent at start + i/rate whatever the previous ones are doing."""
    loop = asyncio.get_running_loop()
    run = Run(target, f"rate {rate:g}/s")
    count = int(rate * seconds)
    start = loop.time() + 0.05
    tasks = []
    for i in range(count):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_timed(call, scheduled, run)))
    await asyncio.gather(*tasks)
    run.seconds = loop.time() - start
    return run


async def closed_loop(target: str, call: Call, concurrency: int, seconds: float) -> Run:
    """`concurrency` workers, each sending its next request as soon as the previous one is answered."""
    loop = asyncio.get_running_loop()
    run = Run(target, f"closed c={concurrency}")
    start = loop.time()
    end = start + seconds

    async def worker() -> None:
        while loop.time() < end:
            await _timed(call, loop.time(), run)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    run.seconds = loop.time() - start
    return run


def rss_mib(pid: int | None) -> float:
    if pid is None:
        return float("nan")
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def _wait_port_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return int(path.read_text())
        if process.poll() is not None:
            raise RuntimeError(f"echo server exited with {process.returncode}")
        time.sleep(0.05)
    raise RuntimeError("echo server did not report its port")


async def _measure(addresses: dict[str, str], echo_address: str, api_key: str, customer_ref: str,
                   customer_id: str, partner_id: str, scale: Scale) -> tuple[list[Run], list[Run]]:
    from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, offer_pb2
    from lodestar.common.v1 import common_pb2
    from lodestar.gateway.v1 import partner_service_pb2, partner_service_pb2_grpc

    async with (
        grpc.aio.insecure_channel(addresses["gateway"]) as gateway_channel,
        grpc.aio.insecure_channel(addresses["campaign"]) as campaign_channel,
        grpc.aio.insecure_channel(echo_address) as echo_channel,
    ):
        partner = partner_service_pb2_grpc.PartnerServiceStub(gateway_channel)
        campaign = campaign_service_pb2_grpc.CampaignServiceStub(campaign_channel)
        echo = echo_stub(echo_channel)
        offers_request = partner_service_pb2.GetOffersRequest(customer_ref=customer_ref)
        # What the gateway itself sends to campaign for that request.
        decide_request = campaign_service_pb2.DecideRequest(
            customer_id=customer_id,
            context=offer_pb2.DecisionContext(channel=common_pb2.CHANNEL_PARTNER, partner_id=partner_id))
        echo_payload = offers_request.SerializeToString()
        metadata = (("x-api-key", api_key),)
        targets: dict[str, Call] = {
            "GetOffers (gateway)": lambda: partner.GetOffers(offers_request, metadata=metadata,
                                                             timeout=RPC_TIMEOUT_SECONDS),
            "Decide (campaign)": lambda: campaign.Decide(decide_request, timeout=RPC_TIMEOUT_SECONDS),
            "echo (bare gRPC)": lambda: echo(echo_payload, timeout=RPC_TIMEOUT_SECONDS),
        }
        fixed: list[Run] = []
        closed: list[Run] = []
        for name, call in targets.items():
            await call()  # fails fast (and loudly) if the target does not answer at all
            print(f"  {name}: warm-up {scale.warmup_seconds:g} s, then {scale.rate}/s for {scale.fixed_seconds:g} s",
                  flush=True)
            await fixed_rate(name, call, scale.rate, scale.warmup_seconds)
            fixed.append(await fixed_rate(name, call, scale.rate, scale.fixed_seconds))
        for name, call in targets.items():
            for concurrency in scale.concurrency:
                print(f"  {name}: closed loop, concurrency {concurrency}, {scale.closed_seconds:g} s", flush=True)
                closed.append(await closed_loop(name, call, concurrency, scale.closed_seconds))
        return fixed, closed


def _raise_quota(gateway: str, admin_token: str, partner_id: str) -> str:
    """Lifts the demo partner's rate limit out of the way; returns a note when that is not possible."""
    from lodestar.gateway.v1 import gateway_admin_service_pb2 as admin_pb2
    from lodestar.gateway.v1 import gateway_admin_service_pb2_grpc as admin_grpc

    with grpc.insecure_channel(gateway) as channel:
        stub = admin_grpc.GatewayAdminServiceStub(channel)
        try:
            stub.SetPartnerQuota(admin_pb2.SetPartnerQuotaRequest(
                partner=f"partners/{partner_id}",
                quota=admin_pb2.Quota(rate_per_second=10_000, burst=100_000, daily_quota=1_000_000_000)),
                metadata=(("x-admin-token", admin_token),), timeout=10)
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "error"
            return f"the partner quota could not be raised ({code}): GetOffers may be limited by the default quota"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = scale_parser("decision-path latency: gateway GetOffers vs campaign Decide vs bare gRPC echo")
    args = parser.parse_args(argv)
    scale = SCALES[args.scale]

    from lodestar_cli.demo import DEMO_CUSTOMER_ID, load_demo
    from lodestar_cli.stack import Stack

    with tempfile.TemporaryDirectory(prefix="lodestar-bench-") as tmp:
        root = Path(tmp)
        echo_port_file = root / "echo.port"
        echo = subprocess.Popen(  # nosec B603 - our own module, fixed arguments
            [sys.executable, "-m", "bench.echo", "--port-file", str(echo_port_file)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack = Stack(root / "stack", ports=dict.fromkeys(SERVICES, 0), extra_env={"LOG_LEVEL": "WARNING"})
        try:
            echo_address = f"127.0.0.1:{_wait_port_file(echo_port_file, echo)}"
            print("starting the four services ...", flush=True)
            stack.start()
            stack.wait_serving()
            print(f"loading a demo bank of {scale.customers} customers ...", flush=True)
            info = load_demo(stack.addresses, stack.admin_token, count=scale.customers)
            note = _raise_quota(stack.addresses["gateway"], stack.admin_token, info.partner_id)
            pids = {s: p.popen.pid for s, p in stack._processes.items()}
            pids["echo"] = echo.pid
            rss_start = {s: rss_mib(pid) for s, pid in pids.items()}
            fixed, closed = asyncio.run(_measure(stack.addresses, echo_address, info.api_key, info.customer_ref,
                                                 DEMO_CUSTOMER_ID, info.partner_id, scale))
            rss_end = {s: rss_mib(pid) for s, pid in pids.items()}
        finally:
            stack.stop()
            echo.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                echo.wait(5)
            if echo.poll() is None:
                echo.kill()

    lines = _report(scale, fixed, closed, rss_start, rss_end, note)
    print("\n".join(lines))
    append_section(f"Decision-path latency ({args.scale})",
                   command_line(argv, "bench.decision_latency"), lines)
    failed = [run.target for run in fixed if not run.requests or run.error_rate > 0.01]
    if failed:
        print(f"error rate above 1 % at {scale.rate}/s: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _report(scale: Scale, fixed: list[Run], closed: list[Run], rss_start: dict[str, float],
            rss_end: dict[str, float], note: str) -> list[str]:
    echo = next(run for run in fixed if run.target.startswith("echo"))
    by_target = {run.target: run for run in fixed}
    lines = [
        f"Open loop at {scale.rate} requests/s for {scale.fixed_seconds:g} s per target (after "
        f"{scale.warmup_seconds:g} s of warm-up); latency in ms from each request's scheduled send time; "
        f"ratio = p50 / the echo's p50 (same run). Load generator, services and echo share this machine "
        f"({os.cpu_count()} cores); each service is one process on SQLite.",
        "",
    ]
    lines += markdown_table(
        ["target", "load", "requests", "p50 ms", "p99 ms", "error rate", "errors", "p50 / echo", "p99 / echo"],
        [[r.target, r.mode, r.requests, r.p(50), r.p(99), f"{r.error_rate:.2%}", r.error_summary(),
          ratio(r.p(50), echo.p(50)), ratio(r.p(99), echo.p(99))] for r in fixed])
    gateway, decide = by_target.get("GetOffers (gateway)"), by_target.get("Decide (campaign)")
    if gateway and decide:
        lines += ["", f"- gateway's added cost (GetOffers - Decide): p50 {gateway.p(50) - decide.p(50):+.2f} ms, "
                      f"p99 {gateway.p(99) - decide.p(99):+.2f} ms"]
    if note:
        lines += [f"- note: {note}"]
    lines += ["", f"Closed loop, {scale.closed_seconds:g} s per concurrency level; peak = the highest throughput of "
                  "OK responses at an error rate under 1 %.", ""]
    lines += markdown_table(
        ["target", "load", "throughput /s", "p50 ms", "p99 ms", "error rate"],
        [[r.target, r.mode, r.throughput, r.p(50), r.p(99), f"{r.error_rate:.2%}"] for r in closed])
    lines += [""]
    echo_peak = _peak(closed, "echo (bare gRPC)")
    for target in by_target:
        peak = _peak(closed, target)
        if peak is not None:
            lines.append(f"- peak sustainable rate, {target}: {peak.throughput:,.0f}/s ({peak.mode}); "
                         f"ratio to echo {ratio(peak.throughput, echo_peak.throughput if echo_peak else 0):.3f}")
    lines += ["", "Resident memory (MiB) of each process at the start and the end of the load:", ""]
    lines += markdown_table(["process", "RSS start", "RSS end", "growth"],
                            [[s, start, rss_end.get(s, float("nan")), rss_end.get(s, float("nan")) - start]
                             for s, start in rss_start.items()])
    return lines


def _peak(closed: list[Run], target: str) -> Run | None:
    ok = [r for r in closed if r.target == target and r.requests and r.error_rate < 0.01]
    return max(ok, key=lambda r: r.throughput) if ok else None


if __name__ == "__main__":
    sys.exit(main())
