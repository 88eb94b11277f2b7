"""Segment preview and audience export through the real profile service (gRPC, SQLite).

    python -m bench.segments [--scale small|full]      # 100,000 or 1,000,000 customers

N customers with 8 attributes are bulk-inserted straight into a fresh profile database (sqlite3 executemany),
then, through a running profile service on a free port:
- PreviewSegment `region = "CN-31"` (an indexed condition: customers.region has an index), median of 7, against
  the same COUNT in raw SQL (sqlite3, same file) measured in the same run;
- PreviewSegment `feature.monetary_90d > 50000` (the feature store, services/profile/feature_store.py: one
  materialised row per customer and feature), median of 7, against the same count in raw SQL (a join on the
  store's primary key) measured in the same run;
- ExportAudience of a dynamic segment holding every customer with 10 values each (region, time_zone and 8
  attributes), batches of 10,000, in customers/s, against a raw `SELECT ... ORDER BY customer_id` of the same
  columns (fetchmany, JSON parsed) in the same run. Target: >= 100,000 customers/s.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.report import append_section, command_line, markdown_table, scale_parser
from lodestar.profile.v1 import segment_service_pb2 as pb
from lodestar.profile.v1 import segment_service_pb2_grpc as pbg
from services.platform import migrations
from services.platform.server import start_service
from services.profile.app import DEFINITION

SCALES = {"small": 100_000, "full": 1_000_000}
REGIONS = [f"CN-{n}" for n in range(11, 66)][:30]
ATTRIBUTES = [("income", "decimal"), ("balance", "decimal"), ("score", "integer"), ("tenure_months", "integer"),
              ("segment_code", "string"), ("channel", "string"), ("products", "integer"), ("risk_level", "string")]
FIELDS = ["region", "time_zone", *(name for name, _ in ATTRIBUTES)]
PREVIEW_RUNS = 7
CUSTOMER_COLUMNS = ("customer_id, full_name, email, phone, birth_date, region, time_zone, attributes, version, "
                    "create_time, update_time")
FEATURE_CONDITION = "feature.monetary_90d > 50000"


def _populate(path: Path, n: int) -> float:
    rng = random.Random(42)
    now = "2026-01-01 00:00:00.000000"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=OFF")
    conn.executemany(
        "INSERT INTO attribute_definitions (name, type, pii, allowed_values, min_value, max_value, description, "
        "create_time, update_time) VALUES (?, ?, 0, '[]', '', '', '', ?, ?)",
        [(name, kind, now, now) for name, kind in ATTRIBUTES])
    started = time.perf_counter()
    batch: list[tuple[object, ...]] = []
    for i in range(n):
        attributes = {
            "balance": {"t": "decimal", "v": f"{rng.uniform(0, 200000):.2f}"},
            "channel": {"t": "string", "v": rng.choice(("app", "web", "branch"))},
            "income": {"t": "decimal", "v": f"{rng.uniform(1000, 60000):.2f}"},
            "products": {"t": "int", "v": rng.randint(0, 6)},
            "risk_level": {"t": "string", "v": rng.choice(("R1", "R2", "R3", "R4"))},
            "score": {"t": "int", "v": rng.randint(0, 100)},
            "segment_code": {"t": "string", "v": f"S{rng.randint(1, 20)}"},
            "tenure_months": {"t": "int", "v": rng.randint(0, 240)},
        }
        batch.append((f"c{i:08d}", "", "", "", None, rng.choice(REGIONS), "Asia/Shanghai",
                      json.dumps(attributes, separators=(",", ":")), 1, now, now))
        if len(batch) == 50_000:
            _insert(conn, batch, rng, now)
            batch = []
    _insert(conn, batch, rng, now)
    conn.commit()
    conn.execute("ANALYZE")
    conn.close()
    return time.perf_counter() - started


def _insert(conn: sqlite3.Connection, batch: list[tuple[object, ...]], rng: random.Random, now: str) -> None:
    conn.executemany(f"INSERT INTO customers ({CUSTOMER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # nosec B608 - fixed column names
                     batch)
    # the feature store: one materialised feature per customer (what the tag job writes)
    conn.executemany("INSERT INTO customer_features (customer_id, name, value, as_of) VALUES (?, ?, ?, ?)",
                     [(row[0], "monetary_90d", round(rng.expovariate(1 / 20000), 2), now) for row in batch])


def _raw_count(path: Path, sql: str, params: tuple[object, ...]) -> tuple[float, int]:
    conn = sqlite3.connect(path)
    times, count = [], 0
    for _ in range(PREVIEW_RUNS):
        started = time.perf_counter()
        count = conn.execute(sql, params).fetchone()[0]
        times.append(time.perf_counter() - started)
    conn.close()
    return statistics.median(times), count


RAW_REGION = ("SELECT count(*) FROM customers WHERE region = ?", ("CN-31",))
RAW_FEATURE = ("SELECT count(*) FROM customers c JOIN customer_features f ON f.customer_id = c.customer_id "
               "AND f.name = ? WHERE f.value > ?", ("monetary_90d", 50000))


def _raw_select(path: Path) -> tuple[float, int]:
    conn = sqlite3.connect(path)
    started = time.perf_counter()
    cursor = conn.execute("SELECT customer_id, region, time_zone, attributes FROM customers ORDER BY customer_id")
    rows = 0
    while chunk := cursor.fetchmany(10_000):
        for row in chunk:
            json.loads(row[3])
        rows += len(chunk)
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed, rows


async def _preview(stub: pbg.SegmentServiceStub, condition: str) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(PREVIEW_RUNS):
        started = time.perf_counter()
        response = await stub.PreviewSegment(pb.PreviewSegmentRequest(condition_text=condition))
        times.append(time.perf_counter() - started)
        count = response.count
    return statistics.median(times), count


async def _through_service(url: str) -> tuple[float, int, float, int, float, int]:
    from opentelemetry.sdk.trace import TracerProvider

    settings = DEFINITION.settings_from_env({"DATABASE_URL": url, "GRPC_PORT": "0", "LISTEN_HOST": "127.0.0.1",
                                             "LOG_LEVEL": "WARNING"})
    service = await start_service(DEFINITION, settings, TracerProvider())
    try:
        options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        async with grpc.aio.insecure_channel(service.address, options=options) as channel:
            stub = pbg.SegmentServiceStub(channel)
            preview_s, count = await _preview(stub, 'region = "CN-31"')
            feature_s, feature_count = await _preview(stub, FEATURE_CONDITION)
            await stub.CreateSegment(pb.CreateSegmentRequest(segment=pb.Segment(
                segment_id="everyone", kind=pb.SEGMENT_KIND_DYNAMIC, condition_text="region is not null")))
            started = time.perf_counter()
            exported = 0
            async for batch in stub.ExportAudience(pb.ExportAudienceRequest(
                    segment="segments/everyone", fields=FIELDS, batch_size=10_000)):
                exported += len(batch.customer_ids)
            export_seconds = time.perf_counter() - started
    finally:
        await service.stop(drain_seconds=0, grace_seconds=1)
    return preview_s, count, export_seconds, exported, feature_s, feature_count


def main(argv: list[str] | None = None) -> int:
    args = scale_parser("segment preview and audience export").parse_args(argv)
    n = SCALES[args.scale]
    with tempfile.TemporaryDirectory(prefix="bench-segments-") as tmp:
        path = Path(tmp) / "profile.db"
        url = f"sqlite+aiosqlite:///{path}"
        migrations.upgrade(url, DEFINITION.migrations)
        insert_seconds = _populate(path, n)
        print(f"inserted {n:,} customers in {insert_seconds:.1f}s", file=sys.stderr)
        raw_count_s, raw_count = _raw_count(path, *RAW_REGION)
        raw_feature_s, raw_feature = _raw_count(path, *RAW_FEATURE)
        raw_select_s, raw_rows = _raw_select(path)
        preview_s, count, export_s, exported, feature_s, feature_count = asyncio.run(_through_service(url))
    if count != raw_count or exported != raw_rows or exported != n or feature_count != raw_feature:
        print(f"mismatch: preview {count} vs {raw_count}, export {exported} vs {raw_rows}, feature preview "
              f"{feature_count} vs {raw_feature}", file=sys.stderr)
        return 1
    export_rate, raw_rate = exported / export_s, raw_rows / raw_select_s
    rows = [
        ("PreviewSegment region = \"CN-31\" (median)", f"{preview_s * 1000:.1f} ms",
         f"raw COUNT {raw_count_s * 1000:.1f} ms", f"{preview_s / raw_count_s:.1f}x the raw time"),
        (f"PreviewSegment {FEATURE_CONDITION} (median)", f"{feature_s * 1000:.1f} ms",
         f"raw COUNT (join) {raw_feature_s * 1000:.1f} ms", f"{feature_s / raw_feature_s:.1f}x the raw time"),
        ("ExportAudience, 10 values, batches of 10,000", f"{export_rate:,.0f} customers/s",
         f"raw SELECT {raw_rate:,.0f} rows/s", f"{export_rate / raw_rate:.2f} of the raw rate"),
    ]
    lines = [f"{n:,} customers ({count:,} in CN-31, {feature_count:,} with monetary_90d > 50,000), SQLite, "
             "through gRPC on localhost.", "",
             *markdown_table(("measure", "service", "same-run baseline", "ratio"), rows),
             "", f"- export target >= 100,000 customers/s: {'met' if export_rate >= 100_000 else 'NOT met'}",
             f"- preview target for an indexed condition, well under a second: "
             f"{'met' if preview_s < 0.5 else 'NOT met'} ({preview_s * 1000:.0f} ms)"]
    print("\n".join(lines))
    append_section(f"Segments: preview and audience export ({args.scale})", command_line(argv, "bench.segments"),
                   lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
