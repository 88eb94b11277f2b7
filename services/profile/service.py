"""The profile service's use cases. Owns the transactions; raises domain errors; imports no grpc."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from services.platform.errors import Aborted, AlreadyExists, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.profile.db import IdempotencyKey as IdempotencyKeyRow
from services.profile.db import ProfileUnitOfWork
from services.profile.domain import (
    AttributeSpec,
    Customer,
    CustomerPage,
    customer_from_json,
    customer_to_json,
    specs_from_json,
    specs_to_json,
)
from services.profile.registry import Registry, check_definitions

CUSTOMER_CODEC = Codec(encode=customer_to_json, decode=customer_from_json)
SPECS_CODEC = Codec(encode=specs_to_json, decode=specs_from_json)
_SEALED = b"sealed:"


def _encode_without_pii(customer: Customer, pii: frozenset[str]) -> bytes:
    """The stored response of an idempotent create/update: PII attribute values are left out (the idempotency
    table is not encrypted) and only their names kept; a replay reads them back, decrypted, from the customer."""
    names = sorted(n for n in customer.attributes if n in pii)
    if not names:
        return customer_to_json(customer)
    plain = dataclasses.replace(customer, attributes={k: a for k, a in customer.attributes.items() if k not in pii})
    return _SEALED + json.dumps(names).encode() + b"\n" + customer_to_json(plain)


def _decode_sealed(raw: bytes) -> tuple[Customer, list[str]]:
    if not raw.startswith(_SEALED):
        return customer_from_json(raw), []
    head, _, body = raw.partition(b"\n")
    return customer_from_json(body), list(json.loads(head[len(_SEALED):]))


@dataclasses.dataclass
class _Outcome:
    """A create/update result, or a replayed one whose PII attributes must be read back."""

    customer: Customer
    sealed: list[str] = dataclasses.field(default_factory=list)


def _name(customer_id: str) -> str:
    return f"customers/{customer_id}"


class ProfileService:
    def __init__(self, uow_factory: Callable[[], ProfileUnitOfWork]) -> None:
        self.uow_factory = uow_factory

    async def get_customer(self, customer_id: str) -> Customer:
        async with self.uow_factory() as uow:
            customer = await uow.customers.get(customer_id)
        if customer is None:
            raise NotFound("customer", _name(customer_id))
        return customer

    async def list_customers(self, *, after_id: str | None, page_size: int, region: str | None) -> CustomerPage:
        async with self.uow_factory() as uow:
            rows = await uow.customers.list_page(after_id=after_id, limit=page_size + 1, region=region)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return CustomerPage(rows, rows[-1].customer_id if more and rows else None)

    def _codec(self, pii: set[str]) -> Codec[_Outcome]:
        return Codec(encode=lambda o: _encode_without_pii(o.customer, frozenset(pii)),
                     decode=lambda raw: _Outcome(*_decode_sealed(raw)))

    async def _unseal(self, outcome: _Outcome) -> Customer:
        """A replayed response gets its PII attributes back from the stored customer (decrypted)."""
        if not outcome.sealed:
            return outcome.customer
        async with self.uow_factory() as uow:
            current = await uow.customers.get(outcome.customer.customer_id)
        attributes = dict(outcome.customer.attributes)
        for name in outcome.sealed:
            if current is not None and name in current.attributes:
                attributes[name] = current.attributes[name]
        return dataclasses.replace(outcome.customer, attributes=dict(sorted(attributes.items())))

    async def create_customer(self, customer: Customer, key: IdempotencyKey | None) -> Customer:
        pii: set[str] = set()

        async def create(uow: ProfileUnitOfWork) -> _Outcome:
            registry = Registry(await uow.attributes.all())
            pii.update(registry.pii_names)
            checked = dataclasses.replace(customer, attributes=registry.check_or_raise(customer.attributes))
            if await uow.customers.get(customer.customer_id) is not None:
                raise AlreadyExists("customer", _name(customer.customer_id))
            return _Outcome(await uow.customers.add(checked, registry.pii_names))

        return await self._unseal(
            await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, self._codec(pii), create))

    async def update_customer(
        self, changes: Customer, paths: list[str], expected_etag: str, key: IdempotencyKey | None
    ) -> Customer:
        pii: set[str] = set()

        async def update(uow: ProfileUnitOfWork) -> _Outcome:
            current = await uow.customers.get(changes.customer_id)
            if current is None:
                raise NotFound("customer", _name(changes.customer_id))
            if expected_etag and expected_etag != current.etag:
                raise Aborted("ETAG_MISMATCH", "the customer changed since it was read; read it again and retry")
            registry = Registry(await uow.attributes.all())
            pii.update(registry.pii_names)
            # Only the attributes this update sets are checked: values stored before the registry stay.
            changed = {n: a for n, a in changes.attributes.items()
                       if "attributes" in paths or f"attributes.{n}" in paths}
            checked = registry.check_or_raise(changed)
            updated = apply_mask(current, dataclasses.replace(changes, attributes=checked), paths)
            return _Outcome(await uow.customers.save(updated, registry.pii_names))

        return await self._unseal(
            await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, self._codec(pii), update))

    async def delete_customer(self, customer_id: str, expected_etag: str, key: IdempotencyKey | None) -> None:
        async def delete(uow: ProfileUnitOfWork) -> Customer:
            current = await uow.customers.get(customer_id)
            if current is None:
                raise NotFound("customer", _name(customer_id))
            if expected_etag and expected_etag != current.etag:
                raise Aborted("ETAG_MISMATCH", "the customer changed since it was read; read it again and retry")
            await uow.customers.delete(customer_id)
            return Customer(customer_id=customer_id)

        await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CUSTOMER_CODEC, delete)


    # -- attribute registry --

    async def upsert_attributes(self, specs: list[AttributeSpec], key: IdempotencyKey | None) -> list[AttributeSpec]:
        check_definitions(specs)

        async def upsert(uow: ProfileUnitOfWork) -> list[AttributeSpec]:
            return await uow.attributes.upsert(specs)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, SPECS_CODEC, upsert)

    async def list_attributes(
        self, *, after_name: str | None, page_size: int
    ) -> tuple[list[AttributeSpec], str | None]:
        async with self.uow_factory() as uow:
            rows = await uow.attributes.list_page(after_name=after_name, limit=page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return rows, (rows[-1].name if more and rows else None)

    async def registry(self) -> Registry:
        async with self.uow_factory() as uow:
            return Registry(await uow.attributes.all())


def apply_mask(current: Customer, changes: Customer, paths: list[str]) -> Customer:
    """The customer with the masked fields taken from `changes`; `attributes.k` absent in changes deletes k."""
    updated = dataclasses.replace(current, attributes=dict(current.attributes))
    for path in paths:
        if path == "attributes":
            updated.attributes = dict(changes.attributes)
        elif path.startswith("attributes."):
            name = path.removeprefix("attributes.")
            if name in changes.attributes:
                updated.attributes[name] = changes.attributes[name]
            else:
                updated.attributes.pop(name, None)
        else:
            setattr(updated, path, getattr(changes, path))
    return updated
