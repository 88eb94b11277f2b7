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
