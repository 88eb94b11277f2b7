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

import hashlib
from dataclasses import dataclass

import grpc
from opentelemetry import trace
from sqlalchemy import Table, delete, select

import services.profile.events_db  # registers its tables on Base.metadata
import services.profile.segments_db  # noqa: F401  # registers its tables on Base.metadata
from lodestar.common.v1 import data_subject_pb2 as pb
from lodestar.common.v1 import data_subject_pb2_grpc as pbg
from services.platform.data_subject import canonical, json_value, receipt_digest, scrub_idempotency_keys
from services.platform.db import Database, UnitOfWork, utcnow
from services.platform.errors import InvalidArgument
from services.platform.idempotency import Codec, key_for, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.platform.timestamps import to_timestamp
from services.platform.validation import check_id
from services.profile.db import Base, CustomerKeyRow, CustomerRow, IdempotencyKey, ProfileUnitOfWork
from services.profile.pii import Keyring, destroy_customer_key

SERVICE = "profile"
# The export's section of PII attribute values, decrypted (customers.pii holds them as ciphertext).
PII_SECTION = "customer_pii_attributes"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["DataSubjectService"].full_name
ERASE_METHOD = f"/{SERVICE_NAME}/EraseCustomerData"


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
                rows = (await uow.session.execute(
                    select(table).where(table.c.customer_id == customer_id)
                    .order_by(*table.primary_key.columns))).mappings().all()
                if not rows:
                    continue
                document = "" if counts_only else canonical(
                    [{k: json_value(v) for k, v in row.items()} for row in rows])
                sections.append(pb.DataSection(name=table.name, json_document=document, record_count=len(rows)))
        if self.keyring is not None:
            async with ProfileUnitOfWork(self.database, self.keyring) as profile:
                row = await profile.session.get(CustomerRow, customer_id)
                pii = set((row.pii or {}) if row is not None else ())
                customer = await profile.customers.get(customer_id) if pii else None
            values = {n: a.value for n, a in (customer.attributes.items() if customer else ()) if n in pii}
            if values:
                sections.append(pb.DataSection(name=PII_SECTION, record_count=len(values),
                                               json_document="" if counts_only else canonical(values)))
        digest = hashlib.sha256(canonical([[s.name, s.json_document, s.record_count] for s in sections]).encode())
        return pb.ExportCustomerDataResponse(service=SERVICE, sections=sections, digest=digest.hexdigest(),
                                             export_time=to_timestamp(utcnow()))

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
        receipt = pb.ErasureReceipt(service=SERVICE, request_id=request_id, tables=tables,
                                    erase_time=to_timestamp(utcnow()))
        receipt.digest = receipt_digest(receipt)
        return receipt

    async def erase(self, request: pb.EraseCustomerDataRequest) -> pb.ErasureReceipt:
        key = key_for(ERASE_METHOD, request)
        codec: Codec[pb.ErasureReceipt] = Codec(lambda r: r.SerializeToString(), pb.ErasureReceipt.FromString)
        return await run_idempotent(self._uow, IdempotencyKey, key, codec,
                                    lambda uow: self._erase(uow, request.customer_id, request.request_id))


def check_request(customer_id: str, request_id: str, *, required: bool) -> None:
    check_id(customer_id, "customer_id")
    if required and not request_id:
        raise InvalidArgument.field("request_id", "is required", reason="REQUIRED_FIELD_MISSING")
    trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))


class DataSubjectHandlers(pbg.DataSubjectServiceServicer):
    def __init__(self, service: ProfileDataSubject) -> None:
        self.service = service

    async def ExportCustomerData(self, request: pb.ExportCustomerDataRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ExportCustomerDataResponse:
        check_request(request.customer_id, request.request_id, required=False)
        key_for(ERASE_METHOD, request)  # checks the request id's form
        return await self.service.export(request.customer_id, request.counts_only)

    async def EraseCustomerData(self, request: pb.EraseCustomerDataRequest,
                                context: grpc.aio.ServicerContext) -> pb.EraseCustomerDataResponse:
        check_request(request.customer_id, request.request_id, required=True)
        return pb.EraseCustomerDataResponse(receipt=await self.service.erase(request))
