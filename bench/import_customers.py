"""Bulk customer import, end to end: CSV -> `lodestar import customers` -> ImportCustomers -> SQLite.

N synthetic customers x 20 attributes (N = 100,000 at --scale small, 1,000,000 at full) are written to a CSV; the
profile service runs as its own process on a fresh SQLite database; the CLI command imports the file with a schema
(timed from the command's start to its end: reading, converting, streaming, validating, encrypting, upserting).
Two files (--pii both, the default): "no PII", 20 plain attributes; "2 PII", 18 of them plus a national id and a
mobile number flagged PII, so encrypted at rest (a data key per customer, AES-GCM per value; docs/pii.md). The
same-run baseline is a raw sqlite3 `executemany` of the same rows in their stored form (for "2 PII": the
ciphertexts in customers.pii, and one wrapped data key per customer in customer_keys) into a fresh database with
the same tables. Then, when ../shared/data/bank_marketing/bank-full.csv is present, it is imported as it is (`;`,
quoted values, no id column, the inferred registry): 45,211 imported and 0 failed are asserted.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sqlite3
import subprocess  # nosec B404 - starts the service under test
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.report import append_section, command_line, markdown_table, median, ratio, scale_parser

ROOT = Path(__file__).resolve().parent.parent
BANK_FULL = ROOT.parent / "shared" / "data" / "bank_marketing" / "bank-full.csv"
SIZES = {"small": 100_000, "full": 1_000_000}
ENUMS = {
    "segment": ["mass", "affluent", "private", "student"],
    "channel_pref": ["sms", "email", "app_push", "phone"],
    "risk_tolerance": ["conservative", "steady", "balanced", "aggressive"],
    "city_tier": ["tier1", "tier2", "tier3", "county", "rural"],
}
INTS = ["age", "tenure_months", "products_held", "txn_count_90d", "logins_30d", "credit_score"]
DECIMALS = ["balance", "income", "spend_90d", "loan_outstanding", "card_limit"]
BOOLS = ["has_mortgage", "has_credit_card", "is_vip"]
DATES = ["opened_on", "last_contact"]
# The "2 PII" file: these two integer columns make way for two PII strings, so that both files have 20 attributes.
PII = ["mobile", "national_id"]
REPLACED_BY_PII = ["logins_30d", "txn_count_90d"]
DEV_KEYS = "bench1:" + base64.b64encode(b"lodestar-bench-import-master-key").decode()  # 32 bytes: AES-256


def ints(pii: bool) -> list[str]:
    return [n for n in INTS if not (pii and n in REPLACED_BY_PII)]


def schema(pii: bool = False) -> dict[str, Any]:
    columns: list[dict[str, Any]] = [{"column": "customer_id", "name": "customer_id", "core": True}]
    columns += [{"column": n, "name": n, "type": "integer", "pii": False} for n in ints(pii)]
    if pii:
        columns += [{"column": n, "name": n, "type": "string", "pii": True} for n in PII]
    columns += [{"column": n, "name": n, "type": "decimal", "pii": False} for n in DECIMALS]
    columns += [{"column": n, "name": n, "type": "boolean", "pii": False} for n in BOOLS]
    columns += [{"column": n, "name": n, "type": "date", "pii": False} for n in DATES]
    columns += [{"column": n, "name": n, "type": "enum", "pii": False, "allowed_values": v} for n, v in ENUMS.items()]
    return {"version": 1, "id_column": "customer_id", "columns": columns}


def write_csv(path: Path, n: int, pii: bool = False) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(7)
    data: dict[str, Any] = {"customer_id": [f"c{i:08d}" for i in range(n)]}
    for name in ints(pii):
        data[name] = rng.integers(0, 900, n)
    if pii:
        data["mobile"] = [f"+86138{d:08d}" for d in rng.integers(0, 10**8, n)]
        data["national_id"] = [f"1101011990{d:08d}" for d in rng.integers(0, 10**8, n)]
    for name in DECIMALS:
        data[name] = np.round(rng.random(n) * 100000, 2)
    for name in BOOLS:
        data[name] = np.where(rng.random(n) < 0.5, "true", "false")
    base = date(2000, 1, 1)
    day_strings = [(base + timedelta(days=d)).isoformat() for d in range(9000)]
    for name in DATES:
        data[name] = [day_strings[d] for d in rng.integers(0, 9000, n)]
    for name, values in ENUMS.items():
        data[name] = [values[k] for k in rng.integers(0, len(values), n)]
    pd.DataFrame(data).to_csv(path, index=False)


def _token(rng: Any, plaintext_bytes: int) -> str:
    """A stand-in of the stored ciphertext token of a value: same shape and length (id, nonce, ciphertext, tag)."""
    return rng.bytes(4).hex() + "." + base64.b64encode(rng.bytes(12 + plaintext_bytes + 16)).decode()


def stored_rows(path: Path, pii: bool = False) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The CSV's rows in the exact stored form of the customers table (attributes as JSON text; with PII, the
    encrypted values as JSON text of tokens of the real length) and of customer_keys (one wrapped key each)."""
    import numpy as np
    import pandas as pd

    kinds = {**{n: "int" for n in ints(pii)}, **{n: "decimal" for n in DECIMALS}, **{n: "bool" for n in BOOLS},
             **{n: "date" for n in DATES}, **{n: "string" for n in ENUMS}}
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    names = sorted(kinds)
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    out, keys = [], []
    columns = [frame[n].tolist() for n in names]
    secrets = [frame[n].tolist() for n in PII] if pii else []
    rng = np.random.default_rng(11)
    for i, cid in enumerate(frame["customer_id"].tolist()):
        attributes = {}
        for name, cells in zip(names, columns, strict=True):
            kind, cell = kinds[name], cells[i]
            value: Any = int(cell) if kind == "int" else (cell == "true" if kind == "bool" else cell)
            attributes[name] = {"t": kind, "v": value}
        row: tuple[Any, ...] = (cid, "", "", "", None, "", "", json.dumps(attributes), 1, now, now)
        if pii:
            encrypted = {name: _token(rng, len(json.dumps({"t": "string", "v": cells[i]})))
                         for name, cells in zip(PII, secrets, strict=True)}
            row += (json.dumps(encrypted),)
            keys.append((cid, rng.bytes(4).hex(), "bench1", rng.bytes(12 + 32 + 16), now, now))
        out.append(row)
    return out, keys


def raw_executemany(db: Path, rows: list[tuple[Any, ...]], keys: list[tuple[Any, ...]]) -> float:
    """Seconds for one executemany of `rows` into a fresh customers table and, with PII, one of `keys` into
    customer_keys (same DDL as migrations, same PRAGMAs)."""
    from services.platform.migrations import upgrade

    upgrade(f"sqlite:///{db}", ROOT / "services" / "profile" / "migrations")
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    pii = ", pii" if keys else ""
    started = time.perf_counter()
    conn.executemany(
        "INSERT INTO customers (customer_id, full_name, email, phone, birth_date, region, time_zone, attributes,"
        f" version, create_time, update_time{pii}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?{', ?' if keys else ''})",
        rows)
    if keys:
        conn.executemany("INSERT INTO customer_keys (customer_id, key_id, master_key_id, wrapped_key, create_time,"
                         " update_time) VALUES (?, ?, ?, ?, ?, ?)", keys)
    conn.commit()
    elapsed = time.perf_counter() - started
    conn.close()
    return elapsed


class Service:
    """The profile service as its own process on a fresh SQLite database."""

    def __init__(self, work: Path, name: str) -> None:
        port_file = work / f"{name}.port"
        env = {**os.environ, "GRPC_PORT": "0", "PORT_FILE": str(port_file), "LOG_LEVEL": "WARNING",
               "DATABASE_URL": f"sqlite+aiosqlite:///{work / (name + '.db')}", "OTEL_TRACES_EXPORTER": "none",
               "DRAIN_SECONDS": "0", "PROFILE_PII_KEYS": DEV_KEYS}
        self.process = subprocess.Popen(  # nosec B603 - our own module, no shell
            [sys.executable, "-m", "services.profile"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=(work / f"{name}.log").open("w"))
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the profile service did not start: see {work / (name + '.log')}")
            time.sleep(0.1)
        self.address = f"127.0.0.1:{port_file.read_text().strip()}"
        from lodestar_cli.stack import check_health

        while check_health(self.address, timeout=2.0) != "SERVING":
            if time.monotonic() > deadline:
                raise RuntimeError("the profile service never became SERVING")
            time.sleep(0.1)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def cli_import(address: str, argv: list[str]) -> tuple[dict[str, Any], float]:
    from lodestar_cli.main import run

    os.environ["PROFILE_SERVICE_ADDR"] = address
    out, err = io.StringIO(), io.StringIO()
    started = time.perf_counter()
    code = run(["import", "customers", *argv, "--json", "--timeout", "60"], out, err)
    elapsed = time.perf_counter() - started
    result = json.loads(out.getvalue())
    if code != 0:
        raise RuntimeError(f"import failed: {result}")
    return result, elapsed


def measure(work: Path, n: int, pii: bool, repeats: int, batch_size: int) -> dict[str, Any]:
    """One file: the import end to end (median of `repeats` fresh services) and the raw executemany baseline."""
    label = "pii" if pii else "plain"
    csv_path = work / f"customers-{label}.csv"
    schema_path = work / f"schema-{label}.json"
    write_csv(csv_path, n, pii)
    schema_path.write_text(json.dumps(schema(pii)))
    import_seconds, raw_seconds = [], []
    for r in range(repeats):
        service = Service(work, f"import-{label}-{r}")
        try:
            result, elapsed = cli_import(service.address, [str(csv_path), "--schema", str(schema_path),
                                                           "--batch-size", str(batch_size)])
        finally:
            service.stop()
        if (result["imported"], result["failed"]) != (n, 0):
            raise RuntimeError(f"expected {n} imported, 0 failed; got {result}")
        import_seconds.append(elapsed)
    rows, keys = stored_rows(csv_path, pii)
    for r in range(repeats):
        raw_seconds.append(raw_executemany(work / f"raw-{label}-{r}.db", rows, keys))
    del rows, keys
    csv_path.unlink()
    return {"import_s": median(import_seconds), "raw_s": median(raw_seconds),
            "import_rate": n / median(import_seconds), "raw_rate": n / median(raw_seconds)}


def main(argv: list[str] | None = None) -> int:
    parser = scale_parser(__doc__.splitlines()[0] if __doc__ else "import benchmark")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each measurement (default 3 small, 1 full)")
    parser.add_argument("--batch-size", type=int, default=10_000)
    parser.add_argument("--pii", choices=["both", "with", "without"], default="both",
                        help="which file: 2 of the 20 attributes PII (encrypted), none, or both (default)")
    args = parser.parse_args(argv)
    n = SIZES[args.scale]
    repeats = args.repeats or (3 if args.scale == "small" else 1)
    work = Path(tempfile.mkdtemp(prefix="lodestar-bench-import-"))
    lines: list[str] = []
    try:
        variants = {"both": [False, True], "with": [True], "without": [False]}[args.pii]
        table = []
        for pii in variants:
            figures = measure(work, n, pii, repeats, args.batch_size)
            name = "2 PII (encrypted)" if pii else "no PII"
            rate, raw_rate = figures["import_rate"], figures["raw_rate"]
            print(f"[{name}] import end to end: {n:,} rows x 20 attributes in {figures['import_s']:.2f} s "
                  f"(median of {repeats}) = {rate:,.0f} rows/s")
            print(f"[{name}] raw executemany:   {figures['raw_s']:.2f} s = {raw_rate:,.0f} rows/s")
            print(f"[{name}] ratio import/raw:  {ratio(rate, raw_rate):.3f}  (targets: >= 50,000 rows/s, >= 0.5)")
            table += [(f"import CSV -> CLI -> ImportCustomers -> SQLite, {name}", n, figures["import_s"], rate),
                      (f"raw sqlite3 executemany of the same stored rows, {name}", n, figures["raw_s"], raw_rate)]
            lines.append(f"- {name}: ratio import/raw {ratio(rate, raw_rate):.3f} (target >= 0.5); {rate:,.0f} rows/s "
                         f"(target >= 50,000 at full scale: {'met' if rate >= 50_000 else 'NOT met'}"
                         f"{'' if args.scale == 'full' else ', this is small scale'})")
        lines[:0] = [*markdown_table(("measurement", "rows", "median s", "rows/s"), table), ""]
        if BANK_FULL.exists():
            service = Service(work, "bank")
            try:
                result, elapsed = cli_import(service.address, [str(BANK_FULL), "--sep", ";"])
            finally:
                service.stop()
            ok = (result["imported"], result["failed"]) == (45_211, 0)
            verdict = "OK" if ok else "MISMATCH: expected 45,211 imported, 0 failed"
            print(f"bank-full.csv: {result['imported']:,} imported, {result['failed']:,} failed in {elapsed:.2f} s"
                  f" -> {verdict}")
            if not ok:
                print("!" * 72 + f"\n!!! bank-full.csv did not import cleanly: {result}\n" + "!" * 72)
            lines.append(f"- bank-full.csv as it is (`;`, quoted, no id column, inferred registry): "
                         f"{result['imported']:,} imported, {result['failed']:,} failed in {elapsed:.2f} s ({verdict})")
        else:
            print(f"bank-full.csv not found at {BANK_FULL}: that part is skipped")
            lines.append("- bank-full.csv: skipped (data set absent)")
        append_section(f"Bulk customer import ({args.scale})", command_line(argv, "bench.import_customers"), lines)
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
