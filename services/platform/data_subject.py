"""Shared pieces of every service's data-subject export and erasure (docs/data-subject-requests.md).

`json_value` / `canonical` turn rows into the archive's JSON; `scrub_idempotency_keys` deletes the stored
idempotent responses that carry a customer's identifiers (a replayed response must not resurrect erased data);
`receipt_digest` is the digest risk chains into its audit log. Each service keeps only what is its own: which
tables it erases or pseudonymises and why.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol

import grpc
from opentelemetry import trace
from sqlalchemy import Table, delete, select

from lodestar.common.v1 import data_subject_pb2 as pb
from lodestar.common.v1 import data_subject_pb2_grpc as pbg
from services.platform.db import UnitOfWork, utcnow
from services.platform.errors import InvalidArgument
from services.platform.idempotency import Codec, key_for, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.platform.timestamps import to_timestamp
from services.platform.validation import check_id

SCAN_PAGE = 500


def json_value(value: Any) -> Any:
    """A column value as JSON: ISO 8601 times, decimals as text, bytes as {"base64": ...}."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    return value


def canonical(value: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces): what digests are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def encoded_field(value: str) -> bytes:
    """How a protobuf string field holding exactly `value` is encoded after its tag: varint length, bytes."""
    raw = value.encode()
    length, prefix = len(raw), bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        prefix.append(byte | (0x80 if length else 0))
        if not length:
            return bytes(prefix) + raw


def needles(values: Sequence[str]) -> list[tuple[str, bytes, bytes]]:
    """Per value: itself (in a request id), as a protobuf string field, as a JSON string."""
    return [(v, encoded_field(v), json.dumps(v, ensure_ascii=False).encode()) for v in values]


def holds(found: list[tuple[str, bytes, bytes]], request_id: str, response: bytes) -> bool:
    """Whether a stored idempotent response (protobuf or JSON) or its request id carries one of the values.
    Request ids are matched only for values of 6 characters or more (a shorter one matches too much)."""
    return any(field in response or quoted in response or (len(value) >= 6 and value in request_id)
               for value, field, quoted in found)


async def scrub_idempotency_keys(uow: UnitOfWork, key_model: Any, values: Sequence[str]) -> int:
    """Deletes the service's stored idempotent responses (`key_model`, an IdempotencyKeyMixin table) holding one
    of `values` as a field value; their replays are lost (a retry would run again, which erasure makes moot)."""
    wanted, doomed, after = needles(values), [], ("", "")
    while True:
        rows = (await uow.session.execute(
            select(key_model.method, key_model.request_id, key_model.response)
            .where((key_model.method > after[0])
                   | ((key_model.method == after[0]) & (key_model.request_id > after[1])))
            .order_by(key_model.method, key_model.request_id).limit(SCAN_PAGE))).all()
        if not rows:
            break
        doomed += [(m, r) for m, r, response in rows if holds(wanted, r, bytes(response or b""))]
        after = (rows[-1][0], rows[-1][1])
    for method, request_id in doomed:
        await uow.session.execute(delete(key_model).where(key_model.method == method,
                                                          key_model.request_id == request_id))
    return len(doomed)


def receipt_digest(receipt: pb.ErasureReceipt) -> str:
    """SHA-256 over a receipt's canonical form: service, request, per-table counts and notes, time."""
    return hashlib.sha256(canonical({
        "service": receipt.service, "request_id": receipt.request_id,
        "tables": [[t.table, t.rows_deleted, t.rows_pseudonymised, t.note] for t in receipt.tables],
        "erase_time": receipt.erase_time.ToJsonString(),
    }).encode()).hexdigest()


# -- the parts every service's DataSubjectService implementation shares ------------------------------------------

ERASE_METHOD = f"/{pb.DESCRIPTOR.services_by_name['DataSubjectService'].full_name}/EraseCustomerData"


async def table_section(uow: UnitOfWork, table: Table, where: Any, counts_only: bool) -> pb.DataSection | None:
    """One table's rows matching `where` as an archive section (JSON, primary-key order); None when there are none."""
    rows = (await uow.session.execute(select(table).where(where).order_by(*table.primary_key.columns))).mappings().all()
    if not rows:
        return None
    document = "" if counts_only else canonical([{k: json_value(v) for k, v in row.items()} for row in rows])
    return pb.DataSection(name=table.name, json_document=document, record_count=len(rows))


def export_response(service: str, sections: Sequence[pb.DataSection]) -> pb.ExportCustomerDataResponse:
    """The export with its digest (over every section) and time."""
    digest = hashlib.sha256(canonical([[s.name, s.json_document, s.record_count] for s in sections]).encode())
    return pb.ExportCustomerDataResponse(service=service, sections=sections, digest=digest.hexdigest(),
                                         export_time=to_timestamp(utcnow()))


def sealed_receipt(service: str, request_id: str, tables: Sequence[pb.TableReceipt]) -> pb.ErasureReceipt:
    receipt = pb.ErasureReceipt(service=service, request_id=request_id, tables=tables,
                                erase_time=to_timestamp(utcnow()))
    receipt.digest = receipt_digest(receipt)
    return receipt


async def erase_idempotently(uow_factory: Callable[[], UnitOfWork], key_model: Any,
                             request: pb.EraseCustomerDataRequest,
                             erase: Callable[[UnitOfWork], Awaitable[pb.ErasureReceipt]]) -> pb.ErasureReceipt:
    """Runs `erase` in one transaction recorded under the request id: a retry replays the same receipt."""
    codec: Codec[pb.ErasureReceipt] = Codec(lambda r: r.SerializeToString(), pb.ErasureReceipt.FromString)
    return await run_idempotent(uow_factory, key_model, key_for(ERASE_METHOD, request), codec, erase)


def check_request(customer_id: str, request_id: str, *, required: bool) -> None:
    """INVALID_ARGUMENT for a malformed customer id or a missing request id; the span gets the customer token."""
    check_id(customer_id, "customer_id")
    if required and not request_id:
        raise InvalidArgument.field("request_id", "is required", reason="REQUIRED_FIELD_MISSING")
    trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))


class DataSubject(Protocol):
    async def export(self, customer_id: str, counts_only: bool = False) -> pb.ExportCustomerDataResponse: ...

    async def erase(self, request: pb.EraseCustomerDataRequest) -> pb.ErasureReceipt: ...


class DataSubjectHandlers(pbg.DataSubjectServiceServicer):
    """The DataSubjectService of one service; `authorize(context)` guards it where the port faces partners."""

    def __init__(self, service: DataSubject,
                 authorize: Callable[[grpc.aio.ServicerContext], None] | None = None) -> None:
        self.service = service
        self.authorize = authorize

    async def ExportCustomerData(self, request: pb.ExportCustomerDataRequest,
                                 context: grpc.aio.ServicerContext) -> pb.ExportCustomerDataResponse:
        if self.authorize is not None:
            self.authorize(context)
        check_request(request.customer_id, request.request_id, required=False)
        key_for(ERASE_METHOD, request)  # checks the request id's form
        return await self.service.export(request.customer_id, request.counts_only)

    async def EraseCustomerData(self, request: pb.EraseCustomerDataRequest,
                                context: grpc.aio.ServicerContext) -> pb.EraseCustomerDataResponse:
        if self.authorize is not None:
            self.authorize(context)
        check_request(request.customer_id, request.request_id, required=True)
        return pb.EraseCustomerDataResponse(receipt=await self.service.erase(request))
