"""Feature computation: the batch executor (pandas) against the real-time executor run customer by customer.

Synthetic events (transactions, repayments, app activity, campaign responses over 400 days, three time zones)
for N customers, already in memory as the flat records the database loaders return; the database reads are
not measured here. Figures: batch customers/s, real-time customers/s (the same-run baseline: what computing a
campaign's features one GetFeatures at a time would cost in CPU) and their ratio; real-time median latency per
customer. Both executors must agree (checked on a sample before timing).
"""

from __future__ import annotations

import math
import random
import time
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from bench.report import append_section, command_line, markdown_table, median, ratio, scale_parser
from services.profile.events_db import EVENT_COLUMNS
from services.profile.features import CustomerFacts, compute_batch, compute_one, records_frame

SCALES = {"small": (2_000, 40), "full": (20_000, 60)}  # customers, events per customer
AS_OF = datetime(2026, 6, 30, 12, tzinfo=UTC)


def synthetic(customers: int, per_customer: int, seed: int = 1) -> tuple[list[tuple[Any, ...]], dict[str, Any]]:
    rng = random.Random(seed)
    records: list[tuple[Any, ...]] = []
    facts = {}
    for c in range(customers):
        cid = f"c-{c:07d}"
        facts[cid] = CustomerFacts(cid, time_zone=rng.choice(("Asia/Shanghai", "Europe/Lisbon", "")),
                                   attributes={"products_held": "deposit"})
        for _ in range(per_customer):
            occurred = AS_OF - timedelta(seconds=rng.randrange(0, 400 * 86400))
            row = dict.fromkeys(EVENT_COLUMNS, "")
            row.update(customer_id=cid, occurred_at=occurred, recorded_at=occurred + timedelta(minutes=5),
                       amount=None, days_late=None)
            roll = rng.random()
            if roll < 0.7:
                row.update(kind="transaction", amount=Decimal(rng.randrange(100, 500_000)) / 100,
                           direction="debit" if rng.random() < 0.85 else "credit",
                           merchant_category=rng.choice(("groceries", "travel", "dining", "fuel", "securities")),
                           channel=rng.choice(("pos", "online", "atm")))
            elif roll < 0.8:
                row.update(kind="repayment", amount=Decimal(500), days_late=rng.choice((0, 0, 0, 5, 40)),
                           product=rng.choice(("consumer_loan", "credit_card")))
            elif roll < 0.95:
                row.update(kind="digital_activity", action=rng.choice(("view", "click", "login")), channel="app")
            else:
                row.update(kind="campaign_response", response_kind=rng.choice(("opened", "clicked")))
            records.append(tuple(row[c] for c in EVENT_COLUMNS))
    return records, facts


def main(argv: list[str] | None = None) -> int:
    args = scale_parser(__doc__.splitlines()[0]).parse_args(argv)
    customers, per_customer = SCALES[args.scale]
    records, facts = synthetic(customers, per_customer)
    by_customer: dict[str, list[tuple[Any, ...]]] = defaultdict(list)
    for record in records:
        by_customer[record[0]].append(record)
    first = {c: min(r[2] for r in rows) for c, rows in by_customer.items()}

    # Agreement on a sample before timing.
    sample = list(facts)[:50]
    check = compute_batch(records_frame([r for c in sample for r in by_customer[c]]),
                          {c: facts[c] for c in sample}, first, AS_OF)
    for c in sample:
        one = compute_one(by_customer[c], facts[c], first[c], AS_OF)
        assert set(one.values) == set(check[c].values)
        assert all(math.isclose(v, check[c].values[k], abs_tol=1e-6) for k, v in one.values.items())

    batch_times, real_times, latencies = [], [], []
    for _ in range(3):
        start = time.perf_counter()
        compute_batch(records_frame(records), facts, first, AS_OF)
        batch_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for c, rows in by_customer.items():
            t0 = time.perf_counter()
            compute_one(rows, facts[c], first[c], AS_OF)
            latencies.append(time.perf_counter() - t0)
        real_times.append(time.perf_counter() - start)
    batch_rate = customers / median(batch_times)
    real_rate = customers / median(real_times)
    rows = [
        ("batch (pandas, records_frame + compute_batch)", f"{median(batch_times):.2f}", f"{batch_rate:,.0f}"),
        ("real time, one customer at a time (baseline)", f"{median(real_times):.2f}", f"{real_rate:,.0f}"),
    ]
    lines = [
        f"{customers:,} customers x {per_customer} events ({len(records):,} events), median of 3 runs; "
        f"both executors agree on a 50-customer sample.",
        "",
        *markdown_table(("executor", "seconds", "customers/s"), rows),
        "",
        f"- batch / real-time throughput ratio: {ratio(batch_rate, real_rate):.2f}",
        f"- real-time median latency per customer ({per_customer} events): {median(latencies) * 1e3:.2f} ms",
    ]
    print("\n".join(lines))
    append_section("Feature computation: batch vs real-time executor", command_line(argv, "bench.features"),
                   lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
