"""Data-subject requests, profile's half (lodestar.common.v1.DataSubjectService; risk drives it).

Profile is the system of record of a customer: erasure DELETES every row of every table of profile's database
with a `customer_id` column (customers, events, built-in tags, tag values, segment members, and any table added
later: the tables are found in the models' metadata, not listed here), destroys the customer's PII key when the
field-level encryption module (`services/profile/pii.py`, `destroy_customer_key`) is present, and deletes the
stored idempotent responses that carry the customer id (a CreateCustomer response holds the whole customer).
Everything happens in one transaction, recorded under the request id: a retry replays the same receipt.

Export answers one JSON document per table holding rows of the customer. Nothing personal is logged or traced:
the span carries the customer token only.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Table, delete

import services.profile.events_db  # registers its tables on Base.metadata
import services.profile.segments_db  # noqa: F401  # registers its tables on Base.metadata
from lodestar.common.v1 import data_subject_pb2 as pb
from services.platform.data_subject import (
    canonical,
    erase_idempotently,
    export_response,
    scrub_idempotency_keys,
    sealed_receipt,
    table_section,
)
from services.platform.db import Database, UnitOfWork
from services.profile.db import Base, CustomerKeyRow, CustomerRow, IdempotencyKey, ProfileUnitOfWork
from services.profile.pii import Keyring, destroy_customer_key

SERVICE = "profile"
# The export's section of PII attribute values, decrypted (customers.pii holds them as ciphertext).
PII_SECTION = "customer_pii_attributes"


def customer_tables() -> list[Table]:
    """Every table of profile's models with a customer_id column, in a stable order."""
    return sorted((t for t in Base.metadata.tables.values() if "customer_id" in t.c), key=lambda t: t.name)


@dataclass
class ProfileDataSubject:
    database: Database
    # With the keyring the export adds the customer's PII attribute values decrypted (the stored ones are
    # ciphertext); without it they are left out.
    keyring: Keyring | None = None

    def _uow(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    async def export(self, customer_id: str, counts_only: bool = False) -> pb.ExportCustomerDataResponse:
        sections = []
        async with self._uow() as uow:
            for table in customer_tables():
                section = await table_section(uow, table, table.c.customer_id == customer_id, counts_only)
                if section is not None:
                    sections.append(section)
        if self.keyring is not None:
            async with ProfileUnitOfWork(self.database, self.keyring) as profile:
                row = await profile.session.get(CustomerRow, customer_id)
                pii = set((row.pii or {}) if row is not None else ())
                customer = await profile.customers.get(customer_id) if pii else None
            values = {n: a.value for n, a in (customer.attributes.items() if customer else ()) if n in pii}
            if values:
                sections.append(pb.DataSection(name=PII_SECTION, record_count=len(values),
                                               json_document="" if counts_only else canonical(values)))
        return export_response(SERVICE, sections)

    async def _erase(self, uow: UnitOfWork, customer_id: str, request_id: str) -> pb.ErasureReceipt:
        tables: list[pb.TableReceipt] = []
        destroyed = await destroy_customer_key(uow.session, customer_id)  # crypto-shredding: backups too
        tables.append(pb.TableReceipt(table="customer_keys", rows_deleted=int(destroyed),
                                      note="customer key destroyed"))
        for table in customer_tables():
            if table.name == CustomerKeyRow.__tablename__:
                continue  # done above, by destroy_customer_key
            result = await uow.session.execute(delete(table).where(table.c.customer_id == customer_id))
            tables.append(pb.TableReceipt(table=table.name, rows_deleted=max(result.rowcount or 0, 0)))  # type: ignore[attr-defined]
        scrubbed = await scrub_idempotency_keys(uow, IdempotencyKey, [customer_id])
        tables.append(pb.TableReceipt(table=IdempotencyKey.__tablename__, rows_deleted=scrubbed,
                                      note="stored responses holding the customer"))
        return sealed_receipt(SERVICE, request_id, tables)

    async def erase(self, request: pb.EraseCustomerDataRequest) -> pb.ErasureReceipt:
        return await erase_idempotently(self._uow, IdempotencyKey, request,
                                        lambda uow: self._erase(uow, request.customer_id, request.request_id))



