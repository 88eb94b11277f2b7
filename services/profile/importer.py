"""Bulk customer import: the use case behind ImportCustomers. Owns the per-batch transaction; imports no grpc.

Per batch, in one transaction: if (import_id, batch_number) is already committed, nothing is written and the
stored outcome is replayed (this is how an interrupted import resumes: the client sends the file again from the
start with the same import id and batch size, and committed batches cost a primary-key lookup); otherwise every
row is checked against the registry, the good rows are upserted by customer_id in one executemany of a dialect
`INSERT ... ON CONFLICT DO UPDATE`, and the batch's outcome (counts and row errors) is recorded in
`import_batches`. A batch with bad rows still commits its good rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy.exc

from services.platform.db import utcnow
from services.profile.db import ProfileUnitOfWork
from services.profile.domain import BatchResult, Customer, ImportStatus, RowError
from services.profile.registry import Registry

log = logging.getLogger("lodestar.profile.import")

MAX_ERRORS_RETURNED = 50_000


@dataclass
class ImportRowIn:
    """One row as the handler decoded it: a customer, or the errors that made it unusable."""

    row_number: int
    customer: Customer | None
    errors: list[RowError] = field(default_factory=list)


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


def _stored_attributes(customer: Customer) -> dict[str, Any]:
    return {k: {"t": a.kind, "v": a.value} for k, a in sorted(customer.attributes.items())}


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
        for attempt in (1, 2):
            try:
                return await self._import_batch(import_id, batch_number, rows, core_fields, registry)
            except sqlalchemy.exc.IntegrityError:
                # A concurrent stream committed the same batch first: the second attempt replays its outcome.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _import_batch(
        self, import_id: str, batch_number: int, rows: list[ImportRowIn], core_fields: frozenset[str],
        registry: Registry,
    ) -> BatchResult:
        async with self.uow_factory() as uow:
            done = await uow.imports.committed_batch(import_id, batch_number)
            if done is not None:
                return done
            errors: list[RowError] = []
            good: dict[str, dict[str, Any]] = {}
            now = utcnow()
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
                # The same id twice in a batch: the later row wins (one statement may not touch a row twice).
                good[customer.customer_id] = {
                    "customer_id": customer.customer_id, "full_name": customer.full_name, "email": customer.email,
                    "phone": customer.phone, "birth_date": customer.birth_date, "region": customer.region,
                    "time_zone": customer.time_zone, "attributes": _stored_attributes(customer), "version": 1,
                    "create_time": now, "update_time": now,
                }
            await uow.imports.upsert_customers(list(good.values()), core_fields)
            failed_rows = {e.row_number for e in errors}
            result = BatchResult(batch_number, imported, len(failed_rows), errors)
            await uow.imports.record_batch(import_id, result, len(rows))
            await uow.commit()
        log.info(
            "import batch committed",
            extra={"import_id": import_id, "batch_number": batch_number, "imported": imported,
                   "failed": result.failed},
        )
        return result
