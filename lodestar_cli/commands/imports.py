"""`lodestar import customers FILE`: bulk import of a CSV or Parquet file into the profile service.

The file is read in chunks (pandas for CSV: any separator, quoted values; pyarrow for Parquet), each chunk is one
batch of ImportCustomers' client stream. The attribute registry comes from --schema (a YAML/JSON file, as
--infer-schema writes it) or is inferred from the file and registered before the rows are sent. Without
--id-column, ids are `r<file hash>-<row number>`: the same file always gives the same ids. The import id is
derived from the file's content hash, the schema and the batch size, so re-running the same command after an
interruption resumes: the batches the service already committed (GetImport) are sent empty and only replayed.
docs/profile-import.md has the details.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import yaml

from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc
from lodestar_cli.commands import group
from lodestar_cli.main import CliError, Context
from services.profile.domain import AttributeSpec
from services.profile.registry import ColumnMapping, coerce_column, coerce_text, infer_schema, parse_schema

DEFAULT_BATCH_SIZE = 10_000
MAX_BATCH_SIZE = 10_000
DEFAULT_SAMPLE_ROWS = 100_000
_VALUE_FIELD = {"string": "string_value", "int": "int_value", "decimal": "decimal_value", "bool": "bool_value",
                "date": "date_value"}
_PROTO_TYPE = {
    "string": customer_pb2.ATTRIBUTE_TYPE_STRING, "integer": customer_pb2.ATTRIBUTE_TYPE_INTEGER,
    "decimal": customer_pb2.ATTRIBUTE_TYPE_DECIMAL, "boolean": customer_pb2.ATTRIBUTE_TYPE_BOOLEAN,
    "date": customer_pb2.ATTRIBUTE_TYPE_DATE, "enum": customer_pb2.ATTRIBUTE_TYPE_ENUM,
}


# -- reading files ------------------------------------------------------------------------------------------------


def is_parquet(path: Path) -> bool:
    if path.suffix.lower() in (".parquet", ".pq"):
        return True
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def count_rows(path: Path, parquet: bool) -> int:
    """Data rows (exact for Parquet; newlines minus the header for CSV, enough for a progress bar)."""
    if parquet:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    lines, last = 0, b"\n"
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    return max(lines - 1 + (last != b"\n"), 0)


def read_chunks(path: Path, parquet: bool, sep: str, size: int) -> Iterator[dict[str, list[str]]]:
    """The file as chunks of `size` rows: column -> cells as text ("" when missing), in file order."""
    if parquet:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            chunk: dict[str, list[str]] = {}
            for name, column in zip(batch.schema.names, batch.columns, strict=True):
                if pa.types.is_boolean(column.type):
                    cells = ["" if v is None else ("true" if v else "false") for v in column.to_pylist()]
                else:
                    cells = ["" if v is None else v for v in column.cast(pa.string()).to_pylist()]
                chunk[name] = cells
            yield chunk
        return
    import pandas as pd

    reader = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, chunksize=size, quotechar='"',
                         skipinitialspace=False, engine="c")
    for frame in reader:
        yield {str(name): frame[name].tolist() for name in frame.columns}


# -- the fast path: pyarrow tables of text columns, converted a column at a time -----------------------------------


def read_tables(path: Path, parquet: bool, sep: str, size: int) -> Iterator[Any]:
    """The file as pyarrow Tables of exactly `size` rows (the last one shorter), every column as text ("" when
    missing), in file order: what read_chunks gives, without Python lists. CSV goes through pyarrow's multi-threaded
    reader; a file it cannot take (a multi-character separator, a duplicated header, a malformed row) falls back to
    read_chunks' pandas reader, so that both give the same cells or the same error."""
    import pyarrow as pa

    if parquet:
        import pyarrow.parquet as pq

        batches: Iterator[Any] = (_text_batch(b) for b in pq.ParquetFile(path).iter_batches(batch_size=size))
        yield from _exact_tables(batches, size)
        return
    try:
        reader = _open_csv(path, sep)
    except (pa.ArrowInvalid, ValueError):
        reader = None
    if reader is None:
        for chunk in read_chunks(path, parquet, sep, size):
            yield pa.table({name: pa.array(cells, pa.string()) for name, cells in chunk.items()})
        return
    yield from _exact_tables(iter(reader), size)


def _open_csv(path: Path, sep: str) -> Any:
    import pyarrow.csv as pa_csv

    if len(sep) != 1:
        return None
    parse = pa_csv.ParseOptions(delimiter=sep, quote_char='"', double_quote=True, newlines_in_values=True)
    header = pa_csv.open_csv(path, parse_options=parse, read_options=pa_csv.ReadOptions(block_size=1 << 16))
    names = header.schema.names
    header.close()
    if len(set(names)) != len(names) or any(not n for n in names):
        return None  # pandas renames duplicated headers ("a.1"): leave such files to it
    import pyarrow as pa

    convert = pa_csv.ConvertOptions(column_types={n: pa.string() for n in names}, strings_can_be_null=False,
                                    quoted_strings_can_be_null=False)
    return pa_csv.open_csv(path, parse_options=parse, convert_options=convert,
                           read_options=pa_csv.ReadOptions(block_size=8 << 20, use_threads=True))


def _text_batch(batch: Any) -> Any:
    """A Parquet record batch with every column as text, as read_chunks gives it (None -> "")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arrays = [pc.fill_null(column.cast(pa.string()), "") for column in batch.columns]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _exact_tables(batches: Iterator[Any], size: int) -> Iterator[Any]:
    import pyarrow as pa

    pending: list[Any] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= size:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, size)
            rest = table.slice(size)
            pending, count = rest.to_batches(), rest.num_rows
    if count:
        yield pa.Table.from_batches(pending)


_INT_RE2 = r"^-?[0-9]+$"  # pyarrow's cast takes no '+': such cells go the exact way
_DECIMAL_RE2 = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_DATE_RE2 = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
_TRUE_CELLS = ["true", "yes", "y", "t", "1"]
_FALSE_CELLS = ["false", "no", "n", "f", "0"]


def coerce_arrow(kind: str, cells: Any) -> tuple[str, list[Any], list[int], dict[int, Any]] | None:
    """A text column (pyarrow) as coerce_column converts it, with pyarrow compute, when every filled cell parses
    as the type the plain way (ASCII digits, int64, ...); None otherwise (the caller then uses coerce_column)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    empty = pc.equal(cells, "")
    any_empty = pc.any(empty).as_py()
    missing = np.flatnonzero(empty.to_numpy(zero_copy_only=False)).tolist() if any_empty else []
    if kind in ("string", "enum"):
        return "string", cells.to_pylist(), missing, {}
    if kind == "integer":
        ok = pc.or_(pc.match_substring_regex(cells, _INT_RE2), empty)
        if not pc.all(ok).as_py() or (pc.max(pc.utf8_length(cells)).as_py() or 0) > 19:
            return None
        try:
            numbers = pc.cast(pc.if_else(empty, "0", cells) if any_empty else cells, pa.int64())
        except pa.ArrowInvalid:
            return None  # out of int64: the exact way rejects it with its row
        return "int", numbers.to_numpy(zero_copy_only=False).tolist(), missing, {}
    if kind == "decimal":
        if not pc.all(pc.or_(pc.match_substring_regex(cells, _DECIMAL_RE2), empty)).as_py():
            return None
        return "decimal", (pc.if_else(empty, "0", cells) if any_empty else cells).to_pylist(), missing, {}
    if kind == "date":
        if not pc.all(pc.or_(pc.match_substring_regex(cells, _DATE_RE2), empty)).as_py():
            return None
        return "date", cells.to_pylist(), missing, {}
    if kind == "boolean":
        lowered = pc.utf8_lower(cells)
        true = pc.is_in(lowered, value_set=pa.array(_TRUE_CELLS))
        known = pc.or_(pc.or_(true, pc.is_in(lowered, value_set=pa.array(_FALSE_CELLS))), empty)
        if not pc.all(known).as_py():
            return None
        return "bool", true.to_numpy(zero_copy_only=False).tolist(), missing, {}
    return None


def build_columns_arrow(table: Any, first_row: int, id_column: str | None, id_prefix: str,
                        mappings: Sequence[ColumnMapping],
                        batch: customer_pb2.ImportColumns | None = None) -> customer_pb2.ImportColumns:
    """build_columns from a pyarrow Table of text columns: the same message, column by column in pyarrow."""
    n = table.num_rows
    batch = customer_pb2.ImportColumns() if batch is None else batch
    batch.row_numbers.extend(range(first_row, first_row + n))
    batch.customer_ids.extend(table.column(id_column).to_pylist() if id_column
                              else [f"{id_prefix}-{first_row + i}" for i in range(n)])
    for m in mappings:
        if m.core and m.name != "customer_id":
            batch.core_columns.add(name=m.name).string_values.values.extend(table.column(m.column).to_pylist())
    for m in sorted((m for m in mappings if m.spec is not None), key=lambda m: m.name):
        assert m.spec is not None
        cells = table.column(m.column)
        converted = coerce_arrow(m.spec.type, cells)
        kind, values, missing, exceptions = converted if converted is not None else coerce_column(
            m.spec.type, cells.to_pylist())
        column = batch.attributes.add(name=m.name, missing=missing)
        getattr(column, _CELLS_FIELD[kind]).values.extend(values)
        for index, attribute in exceptions.items():
            cell = column.exceptions.add(index=index)
            setattr(cell.value, _VALUE_FIELD[attribute.kind], attribute.value)
    return batch


def sample_columns(path: Path, parquet: bool, sep: str, rows: int) -> dict[str, list[str | None]]:
    sample: dict[str, list[str | None]] = {}
    taken = 0
    for chunk in read_chunks(path, parquet, sep, min(rows, 50_000)):
        for name, cells in chunk.items():
            sample.setdefault(name, []).extend(cells)
        taken += len(next(iter(chunk.values()), []))
        if taken >= rows:
            break
    return {name: cells[:rows] for name, cells in sample.items()}


# -- schema --------------------------------------------------------------------------------------------------------


def load_schema(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        document = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise CliError("INVALID_ARGUMENT", "SCHEMA_UNREADABLE", f"cannot read the schema {path}: {error}") from None
    return dict(document) if isinstance(document, dict) else {}


def write_schema(path: Path, document: dict[str, Any]) -> None:
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    else:
        header = ("# Lodestar import schema, inferred from a sample: review the types, PII flags and allowed values,\n"
                  "# add min/max where they apply, then pass it back with --schema.\n")
        path.write_text(header + yaml.safe_dump(document, sort_keys=False, allow_unicode=True), encoding="utf-8")


def spec_to_proto(spec: AttributeSpec) -> customer_pb2.AttributeDefinition:
    return customer_pb2.AttributeDefinition(
        name=spec.name, type=_PROTO_TYPE[spec.type], pii=spec.pii,  # type: ignore[arg-type]
        allowed_values=list(spec.allowed_values), min=spec.min, max=spec.max, description=spec.description,
    )


# -- rows -> requests ----------------------------------------------------------------------------------------------


def build_rows(chunk: dict[str, list[str]], first_row: int, id_column: str | None, id_prefix: str,
               mappings: Sequence[ColumnMapping]) -> list[customer_pb2.ImportRow]:
    """One chunk as ImportRows. A cell that does not parse as its type is sent as a string: the service rejects
    it with its row number and column, like any other bad value."""
    n = len(next(iter(chunk.values()), []))
    if id_column:
        ids = chunk[id_column]
    else:
        ids = [f"{id_prefix}-{first_row + i}" for i in range(n)]
    core = [(m.name, chunk[m.column]) for m in mappings if m.core and m.name != "customer_id"]
    attributes = [(m.name, m.spec.type, chunk[m.column]) for m in mappings if m.spec is not None]
    rows = []
    for i in range(n):
        customer = customer_pb2.Customer(customer_id=ids[i])
        for name, cells in core:
            setattr(customer, name, cells[i])
        values = customer.attributes
        for name, kind, cells in attributes:
            cell = cells[i]
            if cell == "":
                continue
            attribute = coerce_text(kind, cell)
            setattr(values[name], _VALUE_FIELD[attribute.kind], attribute.value)
        rows.append(customer_pb2.ImportRow(row_number=first_row + i, customer=customer))
    return rows


_CELLS_FIELD = {"string": "string_values", "int": "int_values", "decimal": "decimal_values", "bool": "bool_values",
                "date": "date_values"}


def build_columns(chunk: dict[str, list[str]], first_row: int, id_column: str | None, id_prefix: str,
                  mappings: Sequence[ColumnMapping],
                  batch: customer_pb2.ImportColumns | None = None) -> customer_pb2.ImportColumns:
    """One chunk as a columnar batch (ImportColumns): the same content as build_rows, a column at a time. Empty
    cells are `missing`; a cell that does not parse as its type is sent as a string exception, which the service
    rejects with its row number and column."""
    n = len(next(iter(chunk.values()), []))
    ids = chunk[id_column] if id_column else [f"{id_prefix}-{first_row + i}" for i in range(n)]
    batch = customer_pb2.ImportColumns() if batch is None else batch
    batch.row_numbers.extend(range(first_row, first_row + n))
    batch.customer_ids.extend(ids)
    for m in mappings:
        if m.core and m.name != "customer_id":
            batch.core_columns.add(name=m.name).string_values.values.extend(chunk[m.column])
    for m in sorted((m for m in mappings if m.spec is not None), key=lambda m: m.name):
        assert m.spec is not None
        kind, values, missing, exceptions = coerce_column(m.spec.type, chunk[m.column])
        column = batch.attributes.add(name=m.name, missing=missing)
        getattr(column, _CELLS_FIELD[kind]).values.extend(values)
        for index, attribute in exceptions.items():
            cell = column.exceptions.add(index=index)
            setattr(cell.value, _VALUE_FIELD[attribute.kind], attribute.value)
    return batch


def _progress_bar(ctx: Context, total: int) -> Any:
    from tqdm import tqdm

    disabled = ctx.as_json or not ctx.err.isatty()
    return tqdm(total=total, unit="rows", unit_scale=True, file=ctx.err, disable=disabled, smoothing=0.1,
                desc="importing")


def cmd_import_customers(ctx: Context) -> int:
    args = ctx.args
    path = Path(args.file)
    if not path.is_file():
        raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"no such file: {path}")
    if not 1 <= args.batch_size <= MAX_BATCH_SIZE:
        raise CliError("INVALID_ARGUMENT", "INVALID_BATCH_SIZE", f"--batch-size must be 1 to {MAX_BATCH_SIZE}")
    sep = args.sep.encode().decode("unicode_escape") if args.sep else ","
    parquet = is_parquet(path)

    if args.schema:
        document = load_schema(Path(args.schema))
    else:
        sample = sample_columns(path, parquet, sep, args.sample_rows)
        if args.id_column and args.id_column not in sample:
            raise CliError("INVALID_ARGUMENT", "UNKNOWN_COLUMN", f"--id-column {args.id_column!r} is not in the file")
        document = infer_schema(sample, id_column=args.id_column)
        if args.infer_schema:
            out = Path(args.infer_schema)
            write_schema(out, document)
            attributes = [c for c in document["columns"] if not c.get("core")]
            ctx.emit(
                {"schema_file": str(out), "columns": len(document["columns"]), "attributes": len(attributes),
                 "pii": sorted(c["name"] for c in attributes if c.get("pii"))},
                f"schema of {len(document['columns'])} columns written to {out}: review it, then import with "
                f"--schema {out}",
            )
            return 0
    try:
        schema_id_column, mappings = parse_schema(document)
    except ValueError as error:
        raise CliError("INVALID_ARGUMENT", "INVALID_SCHEMA", f"schema: {error}") from None
    id_column = args.id_column or schema_id_column
    id_mapping = next((m for m in mappings if m.core and m.name == "customer_id"), None)
    if id_column is None and id_mapping is not None:
        id_column = id_mapping.column
    mappings = [m for m in mappings if m.column != id_column]

    file_hash = file_sha256(path)
    specs = [m.spec for m in mappings if m.spec is not None]
    schema_fingerprint = hashlib.sha256(
        json.dumps([document.get("columns"), id_column], sort_keys=True, default=str).encode()
    ).hexdigest()
    import_id = "imp-" + hashlib.sha256(
        f"{file_hash}:{schema_fingerprint}:{args.batch_size}".encode()
    ).hexdigest()[:32]
    total_rows = count_rows(path, parquet)
    started = time.perf_counter()
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024),
               ("grpc.max_send_message_length", 64 * 1024 * 1024)]
    with grpc.insecure_channel(ctx.addresses["profile"], options=options) as channel:
        stub = profile_service_pb2_grpc.ProfileServiceStub(channel)
        if specs:
            stub.UpsertAttributes(
                profile_service_pb2.UpsertAttributesRequest(
                    attributes=[spec_to_proto(s) for s in specs], request_id=f"import-schema-{schema_fingerprint[:40]}"
                ),
                timeout=ctx.timeout,
            )
        committed: set[int] = set()
        try:
            status = stub.GetImport(profile_service_pb2.GetImportRequest(import_id=import_id), timeout=ctx.timeout)
            committed = set(status.committed_batches)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise
        core_fields = [m.name for m in mappings if m.core and m.name != "customer_id"]
        columns = set(next(read_chunks(path, parquet, sep, 1), {}).keys())
        missing = [m.column for m in mappings if m.column not in columns]
        if id_column and id_column not in columns:
            missing.append(id_column)
        if missing:
            raise CliError("INVALID_ARGUMENT", "UNKNOWN_COLUMN", "not in the file: " + ", ".join(missing))
        bar = _progress_bar(ctx, total_rows)

        def requests() -> Iterator[profile_service_pb2.ImportCustomersRequest]:
            first_row = 1
            for number, table in enumerate(read_tables(path, parquet, sep, args.batch_size)):
                size = table.num_rows
                request = profile_service_pb2.ImportCustomersRequest(
                    import_id=import_id, batch_number=number, core_fields=core_fields)
                if number not in committed:  # a committed batch is sent empty: only its outcome is replayed
                    build_columns_arrow(table, first_row, id_column, f"r{file_hash[:12]}", mappings,
                                        request.columns)
                yield request
                bar.update(size)
                first_row += size

        try:
            response = stub.ImportCustomers(requests(), timeout=ctx.timeout + total_rows * 0.002)
        except KeyboardInterrupt:
            ctx.err.write("interrupted: the committed batches are kept; run the same command again to resume\n")
            return 130
        finally:
            bar.close()
    elapsed = time.perf_counter() - started
    error_file = None
    if response.errors:
        error_path = Path(args.errors) if args.errors else path.with_name(path.name + ".errors.csv")
        with error_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["row", "column", "reason", "description"])
            for e in response.errors:
                writer.writerow([e.row_number, e.column, e.reason, e.description])
        error_file = str(error_path)
    rate = (response.imported + response.failed) / elapsed if elapsed > 0 else 0.0
    data = {
        "import_id": response.import_id, "imported": response.imported, "failed": response.failed,
        "batches": response.batches, "batches_resumed": response.batches_skipped, "error_file": error_file,
        "errors_truncated": response.errors_truncated, "attributes_registered": len(specs),
        "seconds": round(elapsed, 3), "rows_per_second": round(rate, 1),
    }
    text = (f"imported {response.imported}, failed {response.failed} in {elapsed:.1f} s ({rate:,.0f} rows/s)"
            + (f"; {response.batches_skipped} batches were already committed" if response.batches_skipped else "")
            + (f"\nbad rows: {error_file}" if error_file else ""))
    ctx.emit(data, text)
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = group(commands, common, "import", "bulk import: customers (profile), campaign history (campaign)")
    customers = sub.add_parser("customers", parents=[common], help="customers from a CSV or Parquet file")
    customers.add_argument("file", help="CSV (any separator, quoted values) or Parquet")
    customers.add_argument("--id-column", default=None, help="the column holding the bank's customer id "
                           "(default: the column named customer_id, else ids from the file hash and row number)")
    customers.add_argument("--sep", default=",", help="CSV separator (default ','; e.g. ';' or '\\t')")
    customers.add_argument("--schema", default=None, help="YAML/JSON schema (as --infer-schema writes it)")
    customers.add_argument("--infer-schema", default=None, metavar="OUT",
                           help="infer the schema from the file, write it to OUT (.yaml or .json) and stop")
    customers.add_argument("--sample-rows", type=int, default=DEFAULT_SAMPLE_ROWS,
                           help=f"rows read to infer the schema (default {DEFAULT_SAMPLE_ROWS})")
    customers.add_argument("--errors", default=None, help="where bad rows go (default FILE.errors.csv)")
    customers.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                           help=f"rows per batch, the unit of commit and resumption (default {DEFAULT_BATCH_SIZE})")
    customers.set_defaults(handler=cmd_import_customers)

