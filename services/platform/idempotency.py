"""Idempotent mutations (AIP-155): the request id and its response are stored in the change's transaction.

A retry with the same request id and the same payload gets the first response back and changes nothing; the
same id with a different payload is INVALID_ARGUMENT (REQUEST_ID_REUSED). Two concurrent first attempts race on
the key's primary key: the loser's transaction rolls back and it replays the winner's response.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import sqlalchemy.exc
from google.protobuf.message import Message
from sqlalchemy import select

from services.platform.db import IdempotencyKeyMixin, UnitOfWork
from services.platform.errors import InvalidArgument

T = TypeVar("T")
U = TypeVar("U", bound=UnitOfWork)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


@dataclass(frozen=True)
class IdempotencyKey:
    method: str
    request_id: str
    # sha256 of the request's deterministic serialisation without its request_id.
    fingerprint: str


def key_for(method: str, request: Message, *, field: str = "request_id") -> IdempotencyKey | None:
    """The idempotency key of a mutating request; None when it carries no request id (not deduplicated).

    The fingerprint covers the whole request except the request id, so the same id with another payload is
    detected.
    """
    request_id: str = getattr(request, field)
    if not request_id:
        return None
    if not _REQUEST_ID.match(request_id):
        raise InvalidArgument.field(
            field, "must be 1-128 characters of letters, digits, '.', '_', ':' or '-'", reason="INVALID_REQUEST_ID"
        )
    payload = type(request)()
    payload.CopyFrom(request)
    payload.ClearField(field)  # type: ignore[arg-type]
    fingerprint = hashlib.sha256(payload.SerializeToString(deterministic=True)).hexdigest()
    return IdempotencyKey(method, request_id, fingerprint)


@dataclass(frozen=True)
class Codec(Generic[T]):
    encode: Callable[[T], bytes]
    decode: Callable[[bytes], T]


async def run_idempotent(
    uow_factory: Callable[[], U],
    key_model: type[IdempotencyKeyMixin],
    key: IdempotencyKey | None,
    codec: Codec[T],
    operation: Callable[[U], Awaitable[T]],
) -> T:
    """Run `operation` in one transaction, recording (or replaying) its result under `key`."""
    for attempt in (1, 2):
        async with uow_factory() as uow:
            if key is not None:
                stored = await uow.session.scalar(
                    select(key_model).where(
                        key_model.method == key.method, key_model.request_id == key.request_id
                    )
                )
                if stored is not None:
                    if stored.request_fingerprint != key.fingerprint:
                        raise InvalidArgument.field(
                            "request_id", "was already used with a different request", reason="REQUEST_ID_REUSED"
                        )
                    return codec.decode(stored.response)
            result = await operation(uow)
            if key is not None:
                uow.session.add(
                    key_model(  # type: ignore[call-arg]
                        method=key.method,
                        request_id=key.request_id,
                        request_fingerprint=key.fingerprint,
                        response=codec.encode(result),
                    )
                )
            try:
                await uow.commit()
            except sqlalchemy.exc.IntegrityError:
                if key is None or attempt == 2:
                    raise
                continue  # a concurrent twin won the race: replay its response
            return result
    raise AssertionError("unreachable")
