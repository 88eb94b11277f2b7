"""The profile service's domain objects: plain data, no SQL, no gRPC."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

AttributeKind = Literal["string", "int", "decimal", "bool", "date"]

# Fields of Customer an update may name, beside attributes and attributes.<key>.
UPDATABLE_FIELDS = frozenset({"full_name", "email", "phone", "birth_date", "region", "time_zone"})


@dataclass(frozen=True)
class Attribute:
    kind: AttributeKind
    # str for string/decimal/date (ISO text), int for int, bool for bool.
    value: str | int | bool


@dataclass
class Customer:
    customer_id: str
    full_name: str = ""
    email: str = ""
    phone: str = ""
    birth_date: date | None = None
    region: str = ""
    time_zone: str = ""
    attributes: dict[str, Attribute] = field(default_factory=dict)
    version: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None

    @property
    def etag(self) -> str:
        return hashlib.sha256(f"{self.customer_id}:{self.version}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class CustomerPage:
    customers: list[Customer]
    next_after_id: str | None


def customer_to_json(customer: Customer) -> bytes:
    """Exact serialisation, used to replay the response of an idempotent request."""
    data = {
        "customer_id": customer.customer_id, "full_name": customer.full_name, "email": customer.email,
        "phone": customer.phone, "birth_date": customer.birth_date.isoformat() if customer.birth_date else None,
        "region": customer.region, "time_zone": customer.time_zone,
        "attributes": {k: [a.kind, a.value] for k, a in customer.attributes.items()},
        "version": customer.version,
        "create_time": customer.create_time.isoformat() if customer.create_time else None,
        "update_time": customer.update_time.isoformat() if customer.update_time else None,
    }
    return json.dumps(data, sort_keys=True).encode()


def customer_from_json(raw: bytes) -> Customer:
    data = json.loads(raw)
    return Customer(
        customer_id=data["customer_id"], full_name=data["full_name"], email=data["email"], phone=data["phone"],
        birth_date=date.fromisoformat(data["birth_date"]) if data["birth_date"] else None,
        region=data["region"], time_zone=data["time_zone"],
        attributes={k: Attribute(kind, value) for k, (kind, value) in data["attributes"].items()},
        version=data["version"],
        create_time=datetime.fromisoformat(data["create_time"]) if data["create_time"] else None,
        update_time=datetime.fromisoformat(data["update_time"]) if data["update_time"] else None,
    )


# -- attribute registry and bulk import ------------------------------------------------------------------------

AttributeType = Literal["string", "integer", "decimal", "boolean", "date", "enum"]
ATTRIBUTE_TYPES: tuple[AttributeType, ...] = ("string", "integer", "decimal", "boolean", "date", "enum")
# The AttributeValue kind each registered type is stored as (enum values are strings).
STORED_KIND: dict[str, AttributeKind] = {
    "string": "string", "integer": "int", "decimal": "decimal", "boolean": "bool", "date": "date", "enum": "string",
}
# Columns of an import that are Customer's own fields rather than attributes.
CORE_FIELDS = ("customer_id", "full_name", "email", "phone", "birth_date", "region", "time_zone")


@dataclass(frozen=True)
class AttributeSpec:
    """One registered attribute. min/max are text in the type's own notation ("18", "0.5", "2000-01-01")."""

    name: str
    type: AttributeType
    pii: bool = False
    allowed_values: tuple[str, ...] = ()
    min: str = ""
    max: str = ""
    description: str = ""
    update_time: datetime | None = None


@dataclass(frozen=True)
class RowError:
    row_number: int
    column: str
    reason: str
    description: str


@dataclass
class BatchResult:
    batch_number: int
    imported: int
    failed: int
    errors: list[RowError]
    skipped: bool = False


@dataclass(frozen=True)
class ImportStatus:
    import_id: str
    committed_batches: list[int]
    imported: int
    failed: int


def specs_to_json(specs: list[AttributeSpec]) -> bytes:
    return json.dumps([
        {"name": s.name, "type": s.type, "pii": s.pii, "allowed_values": list(s.allowed_values), "min": s.min,
         "max": s.max, "description": s.description,
         "update_time": s.update_time.isoformat() if s.update_time else None}
        for s in specs
    ], sort_keys=True).encode()


def specs_from_json(raw: bytes) -> list[AttributeSpec]:
    return [
        AttributeSpec(
            name=d["name"], type=d["type"], pii=d["pii"], allowed_values=tuple(d["allowed_values"]), min=d["min"],
            max=d["max"], description=d["description"],
            update_time=datetime.fromisoformat(d["update_time"]) if d["update_time"] else None,
        )
        for d in json.loads(raw)
    ]
