"""Bulk customer import: the use case behind ImportCustomers. Owns the per-batch transaction; imports no grpc.

Per batch, in one transaction: if (import_id, batch_number) is already committed, nothing is written and the
stored outcome is replayed (this is how an interrupted import resumes: the client sends the file again from the
start with the same import id and batch size, and committed batches cost a primary-key lookup); otherwise every
row is checked against the registry, the good rows are upserted by customer_id in one executemany of a dialect
`INSERT ... ON CONFLICT DO UPDATE`, and the batch's outcome (counts and row errors) is recorded in
`import_batches`. A batch with bad rows still commits its good rows.

A batch comes as rows (ImportRow, one Customer each) or as columns (ImportColumns, the fast form). Columns are
checked a column at a time (registry.screen_column: numpy and per-distinct-value checks); only the cells the screen
cannot clear get the exact per-value check of a row, so both forms give the same row errors. The attributes JSON
of each customer is assembled from per-column fragments, and the upsert goes through the DBAPI's executemany.
"""

from __future__ import annotations

import binascii
import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from json.encoder import encode_basestring_ascii
from typing import Any

import sqlalchemy.exc

from services.platform.db import utcnow
from services.profile.db import CUSTOMER_COLUMNS, ProfileUnitOfWork
from services.profile.domain import Attribute, AttributeKind, BatchResult, Customer, ImportStatus, RowError
from services.profile.pii import NONCE_BYTES, plaintext
from services.profile.registry import Registry, screen_column

log = logging.getLogger("lodestar.profile.import")

MAX_ERRORS_RETURNED = 50_000


@dataclass
class ImportRowIn:
    """One row as the handler decoded it: a customer, or the errors that made it unusable."""

    row_number: int
    customer: Customer | None
    errors: list[RowError] = field(default_factory=list)


# The exact check of one attribute cell, as a row's AttributeValue would get it before the registry (well-formed
# name and value): (problems as (column, reason, description), the value) -- the value is None when a problem.
# kind None: an AttributeValue with no value set.
CellCheck = Callable[[str, AttributeKind | None, Any], tuple[list[tuple[str, str, str]], Attribute | None]]


@dataclass
class ColumnIn:
    """One attribute column of a columnar batch: `values` has one cell per row (placeholders where missing or
    given in `exceptions`)."""

    name: str
    kind: AttributeKind
    values: Sequence[Any]
    missing: frozenset[int] = frozenset()
    exceptions: dict[int, tuple[AttributeKind | None, Any]] = field(default_factory=dict)


@dataclass
class ColumnBatchIn:
    """A columnar batch as the handler decoded it, with the problems the handler found by row index: a bad id
    rejects the row with only that problem (as for a row); bad core fields are reported with the row's malformed
    attribute values, and hide its registry problems (as for a row)."""

    row_numbers: list[int]
    customer_ids: list[str]
    core: dict[str, list[Any]]
    attributes: list[ColumnIn]
    check_cell: CellCheck
    id_errors: dict[int, list[RowError]] = field(default_factory=dict)
    core_errors: dict[int, list[RowError]] = field(default_factory=dict)


@dataclass
class ImportTotals:
    import_id: str = ""
    imported: int = 0
    failed: int = 0
    batches: int = 0
    batches_skipped: int = 0
    errors: list[RowError] = field(default_factory=list)
    errors_truncated: bool = False

    def add(self, result: BatchResult) -> None:
        self.imported += result.imported
        self.failed += result.failed
        self.batches += 1
        self.batches_skipped += int(result.skipped)
        room = MAX_ERRORS_RETURNED - len(self.errors)
        if len(result.errors) > room:
            self.errors_truncated = True
        self.errors.extend(result.errors[:max(room, 0)])


def _stored_attributes(customer: Customer, pii: frozenset[str] = frozenset()) -> dict[str, Any]:
    return {k: {"t": a.kind, "v": a.value} for k, a in sorted(customer.attributes.items()) if k not in pii}


def _fragment_prefix(name: str, kind: str) -> str:
    # The exact text json.dumps gives the stored {"name": {"t": kind, "v": value}}, with a leading ", ".
    return f', {encode_basestring_ascii(name)}: {{"t": "{kind}", "v": '


def _fragments(column: ColumnIn, stored: AttributeKind, skip: set[int]) -> list[str]:
    """The column's cells as JSON fragments `, "name": {"t": ..., "v": ...}`; "" for the indexes in `skip`.

    A whole column is encoded at once: its value texts are joined with a NUL separator, wrapped and split again
    (C-level str operations); a text column is escaped cell by cell only when the joined text needs escaping."""
    prefix = _fragment_prefix(column.name, stored)
    values = column.values
    out: list[str]
    if not values:
        return []
    if column.kind == "bool":
        yes, no = prefix + "true}", prefix + "false}"
        out = [yes if v else no for v in values]
    else:
        if column.kind == "int":
            texts = list(map(str, values))
            quote = '"' if stored == "decimal" else ""
        else:
            texts = values  # type: ignore[assignment]
            quote = '"'
        joined = "\0".join(texts)
        # Each NUL separator encodes as 6 characters (\u0000); any other escape would make the text longer.
        if quote and (joined.count("\0") != len(texts) - 1
                      or len(encode_basestring_ascii(joined)) != len(joined) + 2 + 5 * (len(texts) - 1)):
            out = [prefix + encode_basestring_ascii(v) + "}" for v in texts]
        else:
            head, tail = prefix + quote, quote + "}"
            out = (head + joined.replace("\0", tail + "\0" + head) + tail).split("\0")
    for i in skip:
        out[i] = ""
    return out


@dataclass
class PreparedBatch:
    """What a batch writes: the customers (deduplicated by id, the later row wins), the row outcome."""

    customer_ids: list[str]
    core: dict[str, list[Any]]
    attributes_json: list[str]
    imported: int
    errors: list[RowError]
    row_count: int
    # The PII attributes of the batch as columns (name, plaintext JSON {"t", "v"} per customer as customer_ids,
    # "" where absent), to be encrypted under each customer's data key before the write; None when there are none.
    pii_columns: list[tuple[str, list[str]]] | None = None


def prepare_columns(batch: ColumnBatchIn, registry: Registry) -> PreparedBatch:
    """Checks a columnar batch against the registry and builds the rows to upsert. Pure: no I/O."""
    n = len(batch.row_numbers)
    id_errors = batch.id_errors
    # Problems of a row's AttributeValues before the registry (malformed values) hide its registry problems,
    # exactly as for a row: tier 1 = malformed core fields and values, tier 2 = registry.
    tier1: dict[int, list[RowError]] = {i: list(e) for i, e in batch.core_errors.items()}
    tier2: dict[int, list[RowError]] = {}
    columns: list[list[str]] = []
    pii_names = registry.pii_names
    pii_columns: list[tuple[str, int, list[str]]] = []
    for column in sorted(batch.attributes, key=lambda c: c.name):
        stored, suspects = screen_column(registry, column.name, column.kind, column.values)
        skip = set(column.missing) | set(column.exceptions)
        exact: dict[int, tuple[AttributeKind | None, Any]] = {
            i: (column.kind, column.values[i]) for i in suspects if i not in skip}
        exact.update(column.exceptions)
        fragments = _fragments(column, stored, skip | set(exact))
        for i, (kind, value) in exact.items():
            if i in id_errors:
                continue
            number = batch.row_numbers[i]
            problems, attribute = batch.check_cell(column.name, kind, value)
            if problems:
                tier1.setdefault(i, []).extend(RowError(number, c, r, d) for c, r, d in problems)
                continue
            assert attribute is not None
            checked, violations = registry.check({column.name: attribute})
            if violations:
                tier2.setdefault(i, []).extend(
                    RowError(number, v.column, v.reason, v.description) for v in violations)
                continue
            final = checked[column.name]
            fragments[i] = _fragment_prefix(column.name, final.kind) + json.dumps(final.value) + "}"
        if column.name in pii_names:
            # Never in the attributes JSON: the fragment minus its `, "name": ` is the value's plaintext.
            pii_columns.append((column.name, len(encode_basestring_ascii(column.name)) + 4, fragments))
        else:
            columns.append(fragments)
    errors: list[RowError] = []
    failed: set[int] = set()
    for i in sorted(set(id_errors) | set(tier1) | set(tier2)):
        failed.add(i)
        errors.extend(id_errors.get(i) or tier1.get(i) or tier2[i])
    good = [i for i in range(n) if i not in failed] if failed else list(range(n))
    ids = batch.customer_ids
    # The same id twice in a batch: the later row wins (one statement may not touch a row twice).
    last = {ids[i]: i for i in good}
    keep = good if len(last) == len(good) else sorted(last.values())
    if columns:
        joined = list(map("".join, zip(*columns, strict=True)))
        attributes_json = ["{" + joined[i][2:] + "}" for i in keep]
    else:
        attributes_json = ["{}"] * len(keep)
    all_rows = len(keep) == n
    core = {name: (values if all_rows else [values[i] for i in keep]) for name, values in batch.core.items()}
    secret = [(name, [c[cut:] for c in (cells if all_rows else [cells[i] for i in keep])])
              for name, cut, cells in pii_columns] if pii_columns else None
    return PreparedBatch(ids if all_rows else [ids[i] for i in keep], core, attributes_json, len(good), errors, n,
                         secret)


def prepare_rows(rows: list[ImportRowIn], registry: Registry) -> PreparedBatch:
    """Checks a batch of rows against the registry and builds the rows to upsert. Pure: no I/O."""
    errors: list[RowError] = []
    good: dict[str, Customer] = {}
    imported = 0
    for row in rows:
        customer = row.customer
        if customer is None:
            errors.extend(row.errors)
            continue
        attributes, problems = registry.check(customer.attributes)
        if problems:
            errors.extend(RowError(row.row_number, p.column, p.reason, p.description) for p in problems)
            continue
        customer.attributes = attributes
        imported += 1
        good.pop(customer.customer_id, None)  # the same id twice in a batch: the later row wins
        good[customer.customer_id] = customer
    customers = list(good.values())
    core: dict[str, list[Any]] = {name: [getattr(c, name) for c in customers] for name in CUSTOMER_COLUMNS}
    pii = registry.pii_names
    present = sorted({k for c in customers for k in c.attributes if k in pii})
    secret = [(k, [plaintext(c.attributes[k].kind, c.attributes[k].value) if k in c.attributes else ""
                   for c in customers]) for k in present] if present else None
    return PreparedBatch([c.customer_id for c in customers], core,
                         [json.dumps(_stored_attributes(c, pii)) for c in customers], imported, errors, len(rows),
                         secret)


async def _encrypt_pii(uow: ProfileUnitOfWork, prepared: PreparedBatch) -> list[str | None] | None:
    """Each customer's PII values encrypted under its data key (created when new), as JSON text {name: token}
    (None for a customer without any): pii.PiiCipher.seal_many's tokens, built a column at a time."""
    columns = prepared.pii_columns
    if not columns:
        return None
    ids = prepared.customer_ids
    n = len(ids)
    has = list(map(any, zip(*(cells for _, cells in columns), strict=True)))  # a customer with some PII value
    owners = [cid for cid, flag in zip(ids, has, strict=True) if flag]
    if not owners:
        return None
    keys = await uow.imports.keys.ensure(owners, fresh_first=True)
    aeads = [keys[cid].aead.encrypt if flag else None for cid, flag in zip(ids, has, strict=True)]
    heads = [keys[cid].key_id + "." if flag else "" for cid, flag in zip(ids, has, strict=True)]
    aad_heads = [cid.encode() + b"\0" for cid in ids]
    b64 = binascii.b2a_base64
    fragments: list[list[str]] = []
    for name, cells in columns:
        filled = sum(1 for c in cells if c)
        nonces = os.urandom(NONCE_BYTES * filled)
        tail = name.encode()
        # Tokens are "<hex id>.<base64>" and names are lower_snake_case: no JSON escaping is ever needed.
        prefix = f', "{name}": "'
        out = [""] * n
        k = 0
        for i, text in enumerate(cells):
            if not text:
                continue
            nonce = nonces[k:k + NONCE_BYTES]
            k += NONCE_BYTES
            sealed = aeads[i](nonce, text.encode(), aad_heads[i] + tail)  # type: ignore[misc]
            out[i] = prefix + heads[i] + b64(nonce + sealed, newline=False).decode() + '"'
        fragments.append(out)
    joined = list(map("".join, zip(*fragments, strict=True)))
    return ["{" + text[2:] + "}" if text else None for text in joined]


class Importer:
    def __init__(self, uow_factory: Callable[[], ProfileUnitOfWork]) -> None:
        self.uow_factory = uow_factory

    async def load_registry(self) -> Registry:
        async with self.uow_factory() as uow:
            return Registry(await uow.attributes.all())

    async def status(self, import_id: str) -> ImportStatus | None:
        async with self.uow_factory() as uow:
            return await uow.imports.status(import_id)

    async def import_batch(
        self, import_id: str, batch_number: int, rows: list[ImportRowIn], core_fields: frozenset[str],
        registry: Registry,
    ) -> BatchResult:
        """A batch of rows: checked, upserted and recorded in one transaction (or replayed when committed)."""
        return await self._commit(import_id, batch_number, core_fields, lambda: prepare_rows(rows, registry))

    async def import_columns(
        self, import_id: str, batch_number: int, batch: ColumnBatchIn, core_fields: frozenset[str],
        registry: Registry,
    ) -> BatchResult:
        """A columnar batch: the same outcome as the same rows given to import_batch."""
        return await self._commit(import_id, batch_number, core_fields, lambda: prepare_columns(batch, registry))

    async def _commit(
        self, import_id: str, batch_number: int, core_fields: frozenset[str], prepare: Callable[[], PreparedBatch],
    ) -> BatchResult:
        prepared: PreparedBatch | None = None
        for attempt in (1, 2):
            try:
                async with self.uow_factory() as uow:
                    done = await uow.imports.committed_batch(import_id, batch_number)
                    if done is not None:
                        return done
                    if prepared is None:
                        prepared = prepare()
                    await uow.imports.relax_durability()
                    now: datetime = utcnow()
                    pii_json = await _encrypt_pii(uow, prepared)
                    await uow.imports.upsert_customers(
                        prepared.customer_ids, prepared.core, prepared.attributes_json, now, core_fields, pii_json,
                        tuple(name for name, _ in prepared.pii_columns or ()))
                    failed = len({e.row_number for e in prepared.errors})
                    result = BatchResult(batch_number, prepared.imported, failed, prepared.errors)
                    await uow.imports.record_batch(import_id, result, prepared.row_count)
                    await uow.commit()
            except sqlalchemy.exc.IntegrityError:
                # A concurrent stream committed the same batch first: the second attempt replays its outcome.
                if attempt == 2:
                    raise
                continue
            log.info(
                "import batch committed",
                extra={"import_id": import_id, "batch_number": batch_number, "imported": result.imported,
                       "failed": result.failed},
            )
            return result
        raise AssertionError("unreachable")
