"""The batch tag job (services/profile/tag_job.py) over a fresh SQLite profile database.

    python -m bench.tag_job [--scale small|full]      # 20,000 or 200,000 customers, 5 events each

N customers and 5 transactions each (within the last 300 days) are bulk-inserted straight into a fresh database
(sqlite3 executemany), two rule tag definitions are stored, then the job runs through the service layer
(TagsService.start_job + run_job, chunks of 1,000: per chunk features computed, the feature store, built-in tags
and rule tags replaced, the cursor moved, one commit) and is timed end to end. Same-run baseline: the pure
computation of the same features and built-in tags for every customer (events read with sqlite3, one pandas
batch, no writes, no chunking) — the floor the job's database work sits on.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.report import append_section, command_line, markdown_table, scale_parser
from services.platform import migrations
from services.platform.db import Database
from services.profile.app import DEFINITION
from services.profile.db import TagDefinitionRow
from services.profile.events_db import EVENT_COLUMNS
from services.profile.features import CustomerFacts, compute_batch, records_frame
from services.profile.tag_job import TagsService, TagsUnitOfWork
from services.profile.tags import compute_tags

SCALES = {"small": 20_000, "full": 200_000}
EVENTS_PER_CUSTOMER = 5
CHUNK = 1000
CUSTOMER_COLUMNS = ("customer_id, full_name, email, phone, birth_date, region, time_zone, attributes, version, "
                    "create_time, update_time")
EVENT_INSERT = ("INSERT INTO events (event_id, customer_id, kind, occurred_at, recorded_at, amount, currency, "
                "direction, merchant_category, channel, action, target, due_date, days_late, product, campaign_id, "
                "offer_id, response_kind) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _populate(path: Path, n: int, now: datetime) -> None:
    rng = random.Random(7)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    stamp = "2026-01-01 00:00:00.000000"
    for start in range(0, n, 10_000):
        ids = range(start, min(n, start + 10_000))
        conn.executemany(
            f"INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # nosec B608 - fixed column names
            [(f"c{i:08d}", "", "", "", f"{rng.randint(1950, 2005)}-06-15", rng.choice(("CN-31", "CN-11", "CN-44")),
              "Asia/Shanghai", json.dumps({"income": {"t": "decimal", "v": f"{rng.uniform(1000, 60000):.2f}"}}),
              1, stamp, stamp) for i in ids])
        events = []
        for i in ids:
            for j in range(EVENTS_PER_CUSTOMER):
                when = (now - timedelta(days=rng.randint(1, 300), minutes=rng.randint(0, 1440))).strftime(
                    "%Y-%m-%d %H:%M:%S.%f")
                events.append((f"e{i}-{j}", f"c{i:08d}", "transaction", when, when, rng.randint(1, 5000), "CNY",
                               "debit", rng.choice(("travel", "groceries", "dining")), rng.choice(("pos", "online")),
                               "", "", None, None, "", "", "", ""))
        conn.executemany(EVENT_INSERT, events)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()


def _baseline(path: Path, now: datetime) -> float:
    """Features and built-in tags of everyone in one in-memory batch: no writes, no chunks."""
    started = time.perf_counter()
    conn = sqlite3.connect(path)
    columns = ", ".join(EVENT_COLUMNS)
    raw = conn.execute(f"SELECT {columns} FROM events").fetchall()  # nosec B608 - fixed names
    customers = conn.execute("SELECT customer_id, time_zone, region, birth_date, attributes FROM customers").fetchall()
    conn.close()
    records = [(r[0], r[1], datetime.fromisoformat(r[2]).replace(tzinfo=UTC),
                datetime.fromisoformat(r[3]).replace(tzinfo=UTC), *r[4:]) for r in raw]
    facts = {c: CustomerFacts(c, tz, region, datetime.fromisoformat(b).date() if b else None,
                              {k: v["v"] for k, v in json.loads(a).items()}) for c, tz, region, b, a in customers}
    first: dict[str, datetime] = {}
    for record in records:
        if record[0] not in first or record[2] < first[record[0]]:
            first[record[0]] = record[2]
    features = compute_batch(records_frame(records), facts, first, now)
    for customer_id, feature_set in features.items():
        compute_tags(feature_set, facts[customer_id], now)
    return time.perf_counter() - started


async def _job(url: str, now: datetime) -> tuple[float, int, str]:
    database = Database.from_url(url)
    try:
        service = TagsService(lambda: TagsUnitOfWork(database), clock=lambda: now)
        async with TagsUnitOfWork(database) as uow:
            uow.session.add_all([
                TagDefinitionRow(definition_id="a-high", tag="spend_band", value="high",
                                 condition_text="feature.monetary_365d > 15000", description="", create_time=now),
                TagDefinitionRow(definition_id="b-low", tag="spend_band", value="low",
                                 condition_text='feature.monetary_365d > 0 and region = "CN-31"', description="",
                                 create_time=now),
            ])
            await uow.commit()
        await service.start_job("bench", now, CHUNK)
        started = time.perf_counter()
        job = await service.run_job("bench")
        return time.perf_counter() - started, job.processed_customers, job.state
    finally:
        await database.dispose()


def main(argv: list[str] | None = None) -> int:
    args = scale_parser("the batch tag job").parse_args(argv)
    n = SCALES[args.scale]
    now = datetime.now(UTC).replace(microsecond=0)
    with tempfile.TemporaryDirectory(prefix="bench-tag-job-") as tmp:
        path = Path(tmp) / "profile.db"
        url = f"sqlite+aiosqlite:///{path}"
        migrations.upgrade(url, DEFINITION.migrations)
        _populate(path, n, now)
        print(f"inserted {n:,} customers and {n * EVENTS_PER_CUSTOMER:,} events", file=sys.stderr)
        baseline_s = _baseline(path, now)
        job_s, processed, state = asyncio.run(_job(url, now))
    if state != "succeeded" or processed != n:
        print(f"the job ended {state} after {processed} of {n} customers", file=sys.stderr)
        return 1
    rate, baseline_rate = n / job_s, n / baseline_s
    rows = [("tag job (features + store, built-in tags, 2 rule definitions), chunks of 1,000",
             f"{rate:,.0f} customers/s ({job_s:.1f} s)",
             f"in-memory features + tags {baseline_rate:,.0f} customers/s ({baseline_s:.1f} s)",
             f"{rate / baseline_rate:.2f} of the baseline rate")]
    lines = [f"{n:,} customers x {EVENTS_PER_CUSTOMER} transactions, SQLite, service layer (no gRPC: RunTagJob only "
             "starts it).", "", *markdown_table(("measure", "job", "same-run baseline", "ratio"), rows), "",
             f"- at this rate 1,000,000 customers take about {1_000_000 / rate / 60:.0f} minutes"]
    print("\n".join(lines))
    append_section(f"Tag job ({args.scale})", command_line(argv, "bench.tag_job"), lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
