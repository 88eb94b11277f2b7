"""ScreenBatch throughput: customer-offer screenings per second through the RPC.

The risk service runs as its own process (SQLite under a temporary directory, traces off); this process streams
messages of MESSAGE_SIZE customers x OFFERS offers over one ScreenBatch call and counts verdicts per second,
end to end (encode, network, validation, set-based state loading, rules, decision rows, audit entry, decode).
A third of the customers have SMS marketing consent and a few are on the do-not-contact list, so state is
really loaded. The same-run baseline calls the pure rules (services.risk.rules.screen) in a Python loop with
the state already in memory: the floor of what any implementation must spend per screening in Python.
Target: >= 50,000 screenings/s on a 2-core machine.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess  # nosec B404 - starts the risk service under test
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import grpc

from bench.report import append_section, command_line, markdown_table, median, ratio, scale_parser
from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import risk_service_pb2_grpc, screening_pb2
from services.risk import rules
from services.risk.domain import (
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    ContactState,
    CustomerFacts,
    OfferSubject,
    ProductType,
    ScreeningRequest,
)

OFFERS = [
    ("deposit-1", common_pb2.PRODUCT_TYPE_DEPOSIT, ProductType.DEPOSIT, 1),
    ("card-1", common_pb2.PRODUCT_TYPE_CREDIT_CARD, ProductType.CREDIT_CARD, 2),
    ("loan-1", common_pb2.PRODUCT_TYPE_CONSUMER_LOAN, ProductType.CONSUMER_LOAN, 3),
    ("bond-1", common_pb2.PRODUCT_TYPE_SAVINGS_BOND, ProductType.SAVINGS_BOND, 2),
    ("wealth-1", common_pb2.PRODUCT_TYPE_WEALTH, ProductType.WEALTH, 4),
]
MESSAGE_SIZE = 2000
SCALES = {"small": 20_000, "full": 200_000}
REPEATS = 3


def _customers(n: int, seed: int = 7) -> list[tuple[str, str, int, bool, bool]]:
    rng = random.Random(seed)  # nosec B311 - synthetic data
    out = []
    for i in range(n):
        birth = date(1940, 1, 1) + timedelta(days=rng.randrange(0, 70 * 365))
        out.append((f"c{i:07d}", birth.isoformat(), rng.randint(1, 5), rng.random() < 0.05, rng.random() < 0.03))
    return out


def _contact_time() -> datetime:
    day = datetime.now(UTC).date() + timedelta(days=2)
    return datetime(day.year, day.month, day.day, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai


def _messages(customers: list[tuple[str, str, int, bool, bool]], at: datetime) -> list[bytes]:
    offers = [screening_pb2.OfferSubject(offer_id=o, product_type=p, risk_level=r)  # type: ignore[arg-type]
              for o, p, _, r in OFFERS]
    out = []
    for start in range(0, len(customers), MESSAGE_SIZE):
        message = screening_pb2.ScreenBatchRequest(batch_id=f"b{start}", offers=offers)
        for cid, birth, tolerance, collections, vulnerable in customers[start:start + MESSAGE_SIZE]:
            item = message.items.add(customer_id=cid, channel=common_pb2.CHANNEL_SMS)
            item.facts.birth_date = birth
            item.facts.time_zone = "Asia/Shanghai"
            item.facts.risk_tolerance = tolerance  # type: ignore[assignment]
            item.facts.in_collections = collections
            item.facts.vulnerable = vulnerable
            item.contact_time.FromDatetime(at)
        out.append(message.SerializeToString())
    return out


def _seed(db: Path, customers: list[tuple[str, str, int, bool, bool]]) -> None:
    now = datetime.now(UTC) - timedelta(days=60)
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO consent_records (customer_id, channel, purpose, action, source, actor, record_time) "
            "VALUES (?, 'SMS', 'MARKETING', 'GRANT', 'bench', 'bench', ?)",
            [(c[0], now.isoformat(sep=" ")) for c in customers[::3]],
        )
        conn.executemany(
            "INSERT INTO do_not_contact_entries (customer_id, action, source, actor, reason, record_time) "
            "VALUES (?, 'ADD', 'bench', 'bench', '', ?)",
            [(c[0], now.isoformat(sep=" ")) for c in customers[::50]],
        )


def _start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port_file = tmp / "port"
    env = {**os.environ, "GRPC_PORT": "0", "PORT_FILE": str(port_file), "LOG_LEVEL": "WARNING",
           "DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'risk.db'}", "OTEL_TRACES_EXPORTER": "none",
           "AUTO_MIGRATE": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "services.risk"], env=env,  # nosec B603
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (port_file.exists() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the risk service did not start")
        time.sleep(0.1)
    return proc, f"127.0.0.1:{port_file.read_text().strip()}"


def _through_rpc(address: str, messages: list[bytes]) -> tuple[float, int]:
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = risk_service_pb2_grpc.RiskServiceStub(channel)
    requests = [screening_pb2.ScreenBatchRequest.FromString(m) for m in messages]
    started = time.perf_counter()
    verdicts = 0
    for response in stub.ScreenBatch(iter(requests), timeout=600):
        verdicts += sum(len(r.verdicts) for r in response.results)
    elapsed = time.perf_counter() - started
    channel.close()
    return elapsed, verdicts


def _baseline(customers: list[tuple[str, str, int, bool, bool]], at: datetime) -> tuple[float, int]:
    offers = tuple(OfferSubject(o, t, r) for o, _, t, r in OFFERS)
    states = {}
    for i, c in enumerate(customers):
        state = ContactState(do_not_contact=i % 50 == 0)
        if i % 3 == 0:
            key = (Channel.SMS, ConsentPurpose.MARKETING)
            state.consents[key] = ConsentRecord(c[0], Channel.SMS, ConsentPurpose.MARKETING, ConsentAction.GRANT,
                                                "bench", record_time=at - timedelta(days=60))
        states[c[0]] = state
    policy = rules.NO_POLICY
    started = time.perf_counter()
    verdicts = 0
    for cid, birth, tolerance, collections, vulnerable in customers:
        facts = CustomerFacts(date.fromisoformat(birth), "Asia/Shanghai", "", tolerance, collections, vulnerable)
        state = states[cid]
        result = rules.screen(ScreeningRequest(cid, Channel.SMS, at, facts, offers), state.consents,
                              state=state, policy=policy)
        verdicts += len(result.verdicts)
    return time.perf_counter() - started, verdicts


def main(argv: list[str] | None = None) -> int:
    args = scale_parser("ScreenBatch throughput vs the pure rules in a loop").parse_args(argv)
    n = SCALES[args.scale]
    customers = _customers(n)
    at = _contact_time()
    rpc_rates, base_rates = [], []
    with tempfile.TemporaryDirectory(prefix="bench-screen-") as tmp_name:
        tmp = Path(tmp_name)
        proc, address = _start_server(tmp)
        try:
            _seed(tmp / "risk.db", customers)
            for repeat in range(REPEATS):
                messages = _messages(customers, at + timedelta(minutes=repeat))
                elapsed, verdicts = _through_rpc(address, messages)
                assert verdicts == n * len(OFFERS), verdicts
                rpc_rates.append(verdicts / elapsed)
                b_elapsed, b_verdicts = _baseline(customers, at)
                base_rates.append(b_verdicts / b_elapsed)
                print(f"run {repeat + 1}: rpc {rpc_rates[-1]:,.0f}/s, rules loop {base_rates[-1]:,.0f}/s",
                      file=sys.stderr)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rpc, base = median(rpc_rates), median(base_rates)
    lines = [
        f"{n:,} customers x {len(OFFERS)} offers = {n * len(OFFERS):,} screenings per run, messages of "
        f"{MESSAGE_SIZE:,} customers over one bidirectional stream, SQLite, {REPEATS} runs (medians).",
        "",
        *markdown_table(
            ["path", "screenings/s (median)"],
            [["ScreenBatch RPC end to end (decision rows + audit entry written)", f"{rpc:,.0f}"],
             ["baseline: pure rules in a Python loop, state preloaded", f"{base:,.0f}"]],
        ),
        "",
        f"ratio RPC / baseline: {ratio(rpc, base):.2f}; target >= 50,000/s: {'met' if rpc >= 50_000 else 'NOT met'}",
    ]
    print("\n".join(lines))
    append_section("ScreenBatch throughput (risk)", command_line(argv, "bench.screen_batch"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
