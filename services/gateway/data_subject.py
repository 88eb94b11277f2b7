"""Data-subject requests, the gateway's half (lodestar.common.v1.DataSubjectService; risk drives it).

The gateway is the partner-facing door, so this service requires the bank-side admin token (`x-admin-token`,
GATEWAY_ADMIN_TOKEN), like GatewayAdminService: a partner's API key gets UNAUTHENTICATED.

Erasure: the links between partner-scoped refs and the customer (`partner_customers`) are DELETED, so no partner
ref resolves to the customer any more; leads keep their partner, offer, status and conversion (what partner
reports count) with the customer id and the customer ref replaced by ONE random pseudonym (`erased-<hex>`,
stored nowhere); presented offers and any other table with a (partner_id, customer_ref) pair get the refs
replaced the same way, and any other table with a `customer_id` column is pseudonymised (tables are found in the
models' metadata, so tables added later are covered). Stored idempotent responses holding the customer id or
one of its refs (IssuePseudonym, SubmitLead) are deleted. One transaction, recorded under the request id.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import Table, delete, select, tuple_, update

from lodestar.common.v1 import data_subject_pb2 as pb
from services.gateway.auth import ADMIN_TOKEN_HEADER, check_admin_token
from services.gateway.db import Base, IdempotencyKey, PartnerCustomerRow
from services.gateway.handlers import metadata_value
from services.platform.data_subject import DataSubjectHandlers as PlatformDataSubjectHandlers
from services.platform.data_subject import (
    erase_idempotently,
    export_response,
    scrub_idempotency_keys,
    sealed_receipt,
    table_section,
)
from services.platform.db import Database, UnitOfWork

SERVICE = "gateway"
LINKS = PartnerCustomerRow.__tablename__


def new_pseudonym() -> str:
    return "erased-" + secrets.token_hex(12)  # 31 characters: fits the 32 of a customer ref


def customer_tables() -> list[Table]:
    return sorted((t for t in Base.metadata.tables.values() if "customer_id" in t.c), key=lambda t: t.name)


def ref_tables() -> list[Table]:
    """Tables naming the customer only by a partner's ref."""
    return sorted((t for t in Base.metadata.tables.values()
                   if "customer_ref" in t.c and "partner_id" in t.c and "customer_id" not in t.c),
                  key=lambda t: t.name)


@dataclass
class GatewayDataSubject:
    database: Database

    def _uow(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    async def _refs(self, uow: UnitOfWork, customer_id: str) -> list[tuple[str, str]]:
        rows = await uow.session.execute(
            select(PartnerCustomerRow.partner_id, PartnerCustomerRow.customer_ref)
            .where(PartnerCustomerRow.customer_id == customer_id))
        return [(p, r) for p, r in rows]

    async def export(self, customer_id: str, counts_only: bool = False) -> pb.ExportCustomerDataResponse:
        sections = []
        async with self._uow() as uow:
            refs = await self._refs(uow, customer_id)
            queries = [(t, t.c.customer_id == customer_id) for t in customer_tables()]
            if refs:
                queries += [(t, tuple_(t.c.partner_id, t.c.customer_ref).in_(refs)) for t in ref_tables()]
            for table, where in sorted(queries, key=lambda q: q[0].name):
                section = await table_section(uow, table, where, counts_only)
                if section is not None:
                    sections.append(section)
        return export_response(SERVICE, sections)

    async def _erase(self, uow: UnitOfWork, customer_id: str, request_id: str) -> pb.ErasureReceipt:
        pseudonym = new_pseudonym()
        refs = await self._refs(uow, customer_id)
        tables: list[pb.TableReceipt] = []
        for table in ref_tables():
            count = 0
            if refs:
                result = await uow.session.execute(
                    update(table).where(tuple_(table.c.partner_id, table.c.customer_ref).in_(refs))
                    .values(customer_ref=pseudonym))
                count = max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
            tables.append(pb.TableReceipt(table=table.name, rows_pseudonymised=count,
                                          note="partner refs replaced by a one-way pseudonym"))
        for table in customer_tables():
            where = table.c.customer_id == customer_id
            if table.name == LINKS:
                result = await uow.session.execute(delete(table).where(where))
                tables.append(pb.TableReceipt(table=table.name, rows_deleted=max(result.rowcount or 0, 0),  # type: ignore[attr-defined]
                                              note="partner refs no longer resolve"))
                continue
            values = {"customer_id": pseudonym}
            if "customer_ref" in table.c:
                values["customer_ref"] = pseudonym
            result = await uow.session.execute(update(table).where(where).values(**values))
            tables.append(pb.TableReceipt(table=table.name, rows_pseudonymised=max(result.rowcount or 0, 0),  # type: ignore[attr-defined]
                                          note="customer replaced by a one-way pseudonym"))
        scrubbed = await scrub_idempotency_keys(uow, IdempotencyKey, [customer_id, *(ref for _, ref in refs)])
        tables.append(pb.TableReceipt(table=IdempotencyKey.__tablename__, rows_deleted=scrubbed,
                                      note="stored responses holding the customer or its refs"))
        return sealed_receipt(SERVICE, request_id, tables)

    async def erase(self, request: pb.EraseCustomerDataRequest) -> pb.ErasureReceipt:
        return await erase_idempotently(self._uow, IdempotencyKey, request,
                                        lambda uow: self._erase(uow, request.customer_id, request.request_id))



class DataSubjectHandlers(PlatformDataSubjectHandlers):
    """The gateway's port faces partners: the data-subject service wants the bank-side admin token."""

    def __init__(self, service: GatewayDataSubject, admin_token: str) -> None:
        super().__init__(service, lambda context: check_admin_token(
            admin_token, metadata_value(context, ADMIN_TOKEN_HEADER)))
