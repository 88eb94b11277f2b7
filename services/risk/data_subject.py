"""Data-subject requests, risk's own data (called in-process by dsr.py; risk serves no DataSubjectService).

Risk keeps proof, and only what the law requires:
- consent records, do-not-contact entries, complaints, contact reservations, screening decisions, fraud events
  (and any table added later with a `customer_id` column, found in the models' metadata): KEPT with the customer
  id replaced by a keyed hash (`dsr:<hmac-sha256>`, key RISK_DSR_HASH_KEY): the proof that consent existed, that
  a do-not-contact request was honoured, that caps were respected — found again only by someone holding both the
  customer id and the key (a regulator's question about that customer), never read back from the table. Delivery
  keys embedding the id are rewritten the same way;
- contact locks (a per-customer row lock, no history): DELETED;
- anti-money-laundering tables (`aml_*`): RETAINED unchanged (record keeping the law requires), and never
  exported to the customer (no tipping-off);
- the audit log: untouched (append-only, hash-chained; it holds customer tokens, never ids);
- the ledger itself (dsr_requests, dsr_steps): clears the id when the request ends.
Stored idempotent responses holding the customer id (RecordConsent, ...) are deleted.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlalchemy import Table, delete, func, or_, select, update

from lodestar.common.v1 import data_subject_pb2 as pb
from services.platform.data_subject import (
    export_response,
    scrub_idempotency_keys,
    sealed_receipt,
    table_section,
)
from services.platform.db import UnitOfWork
from services.platform.idempotency import Codec, run_idempotent
from services.platform.idempotency import IdempotencyKey as Key
from services.risk.db import Base, IdempotencyKey

SERVICE = "risk"
ERASE_METHOD = "risk.dsr/EraseLocalData"
LEDGER = {"dsr_requests", "dsr_steps"}
DELETED = {"contact_locks"}
RETAINED_PREFIX = "aml_"
HASH_PREFIX = "dsr:"


# The key's setting and its development default (dsr.py imports them from here: it imports grpc, which the
# service layer does not).
HASH_KEY_SETTING = "RISK_DSR_HASH_KEY"
DEVELOPMENT_HASH_KEY = "lodestar-dsr-development-key"


def customer_hash(key: bytes, customer_id: str) -> str:
    """The one-way keyed value a customer's kept records carry after erasure (64 hex characters)."""
    return hmac.new(key, customer_id.encode(), hashlib.sha256).hexdigest()


def hash_key_from(settings: Mapping[str, str] | None = None) -> bytes:
    """RISK_DSR_HASH_KEY from `settings` (default: the process environment), else the development key."""
    source = os.environ if settings is None else settings
    return (source.get(HASH_KEY_SETTING, "").strip() or DEVELOPMENT_HASH_KEY).encode()


def kept_ids(key: bytes, customer_ids: Iterable[str]) -> dict[str, str]:
    """`dsr:<hmac>` -> customer id, for every id: what an erased customer's kept records are filed under, so that
    screening finds a do-not-contact entry or a complaint that outlived the erasure (the customer re-imported
    under the same bank id). About a microsecond per id (the keyed state is computed once and copied)."""
    keyed = hmac.new(key, digestmod=hashlib.sha256)
    out: dict[str, str] = {}
    for customer_id in customer_ids:
        h = keyed.copy()
        h.update(customer_id.encode())
        out[HASH_PREFIX + h.hexdigest()] = customer_id
    return out


def customer_tables() -> list[Table]:
    return sorted((t for t in Base.metadata.tables.values() if "customer_id" in t.c and t.name not in LEDGER),
                  key=lambda t: t.name)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class RiskDataSubject:
    """Export and erasure of what risk itself holds about a customer."""

    def __init__(self, uow_factory: Callable[[], UnitOfWork], hash_key: bytes) -> None:
        self.uow_factory = uow_factory
        self.hash_key = hash_key

    async def export(self, customer_id: str, counts_only: bool = False) -> pb.ExportCustomerDataResponse:
        sections = []
        async with self.uow_factory() as uow:
            for table in customer_tables():
                if table.name.startswith(RETAINED_PREFIX):
                    continue  # anti-money-laundering records are never disclosed to their subject
                section = await table_section(uow, table, table.c.customer_id == customer_id, counts_only)
                if section is not None:
                    sections.append(section)
        return export_response(SERVICE, sections)

    async def _erase(self, uow: UnitOfWork, customer_id: str, request_id: str) -> pb.ErasureReceipt:
        kept = HASH_PREFIX + customer_hash(self.hash_key, customer_id)
        tables: list[pb.TableReceipt] = []
        for table in customer_tables():
            where = table.c.customer_id == customer_id
            if table.name.startswith(RETAINED_PREFIX):
                count = int(await uow.session.scalar(select(func.count()).select_from(table).where(where)) or 0)
                tables.append(pb.TableReceipt(table=table.name, note=f"{count} rows retained: anti-money-laundering "
                                                                     "record keeping (law)"))
                continue
            if table.name in DELETED:
                result = await uow.session.execute(delete(table).where(where))
                tables.append(pb.TableReceipt(table=table.name, rows_deleted=max(result.rowcount or 0, 0)))  # type: ignore[attr-defined]
                continue
            values: dict[str, Any] = {"customer_id": kept}
            if "delivery_key" in table.c:
                values["delivery_key"] = func.replace(table.c.delivery_key, ":" + customer_id, ":" + kept)
            result = await uow.session.execute(update(table).where(where).values(**values))
            tables.append(pb.TableReceipt(table=table.name, rows_pseudonymised=max(result.rowcount or 0, 0),  # type: ignore[attr-defined]
                                          note="kept as proof under a keyed hash of the customer"))
        # Delivery keys of other customers' rows never embed this id; rows without a customer_id column that do:
        for table in sorted(Base.metadata.tables.values(), key=lambda t: t.name):
            if "delivery_key" in table.c and "customer_id" not in table.c:
                escaped = _like_escape(customer_id)
                await uow.session.execute(update(table).where(or_(
                    table.c.delivery_key.like(f"%:{escaped}", escape="\\"),
                    table.c.delivery_key.like(f"%:{escaped}:%", escape="\\"),
                )).values(delivery_key=func.replace(table.c.delivery_key, ":" + customer_id, ":" + kept)))
        scrubbed = await scrub_idempotency_keys(uow, IdempotencyKey, [customer_id])
        tables.append(pb.TableReceipt(table=IdempotencyKey.__tablename__, rows_deleted=scrubbed,
                                      note="stored responses holding the customer"))
        tables.append(pb.TableReceipt(table="audit_log", note="retained: append-only, customer tokens only"))
        return sealed_receipt(SERVICE, request_id, tables)

    async def erase(self, customer_id: str, request_id: str) -> pb.ErasureReceipt:
        fingerprint = hashlib.sha256(customer_hash(self.hash_key, customer_id).encode()).hexdigest()
        key = Key(ERASE_METHOD, request_id, fingerprint)
        codec: Codec[pb.ErasureReceipt] = Codec(lambda r: r.SerializeToString(), pb.ErasureReceipt.FromString)
        return await run_idempotent(self.uow_factory, IdempotencyKey, key, codec,
                                    lambda uow: self._erase(uow, customer_id, request_id))
