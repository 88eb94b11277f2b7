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
from collections.abc import Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import delete, select

from lodestar.common.v1 import data_subject_pb2 as pb
from services.platform.db import UnitOfWork

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
