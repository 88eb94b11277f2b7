"""The campaign service's domain objects: plain data, no SQL, no gRPC.

Enum-typed fields hold the numeric values of the shared contract's enums (lodestar.common.v1).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from lodestar.common.v1 import common_pb2

CREDIT_PRODUCTS = frozenset({
    common_pb2.PRODUCT_TYPE_CREDIT_CARD, common_pb2.PRODUCT_TYPE_CONSUMER_LOAN, common_pb2.PRODUCT_TYPE_INSTALMENT,
})


@dataclass(frozen=True)
class Disclosure:
    kind: str
    text: str


@dataclass
class Offer:
    offer_id: str
    title: str
    product_type: int
    risk_level: int
    conversion_value: float
    contact_cost: float
    disclosures: list[Disclosure] = field(default_factory=list)
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    version: int = 0
    create_time: datetime | None = None

    def is_active(self, at: datetime) -> bool:
        started = self.valid_from is None or self.valid_from <= at
        return started and (self.valid_until is None or at < self.valid_until)

    @property
    def etag(self) -> str:
        return f"{self.offer_id}:{self.version}".encode().hex()[-16:]


@dataclass(frozen=True)
class OfferPage:
    offers: list[Offer]
    next_after_id: str | None


@dataclass(frozen=True)
class DecisionContext:
    channel: int
    partner_id: str
    placement: str
    decision_time: datetime


@dataclass(frozen=True)
class CustomerSnapshot:
    """What Decide needs of a customer, as profile returned it."""

    customer_id: str
    birth_date: date | None
    region: str
    time_zone: str
    # Attribute values as Python values: str, int, bool; decimals and dates as text.
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Verdict:
    offer_id: str
    # "ALLOW", "DENY" or "HOLD"
    verdict: str
    # Risk reason codes without their prefix, e.g. "CONSENT_MISSING".
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ScreenResult:
    verdicts: dict[str, Verdict]
    policy_version: str


@dataclass(frozen=True)
class Reason:
    code: str
    message: str


@dataclass
class RankedOffer:
    offer: Offer
    rank: int
    propensity: float
    expected_value: float
    reasons: list[Reason]


@dataclass
class SuppressedOffer:
    offer_id: str
    reasons: list[Reason]


@dataclass
class Decision:
    decision_id: str
    offers: list[RankedOffer]
    suppressed: list[SuppressedOffer]
    policy_version: str
    model_version: str


def offer_to_json(offer: Offer) -> bytes:
    """Exact serialisation, used to replay the response of an idempotent request."""
    return json.dumps({
        "offer_id": offer.offer_id, "title": offer.title, "product_type": offer.product_type,
        "risk_level": offer.risk_level, "conversion_value": offer.conversion_value,
        "contact_cost": offer.contact_cost, "disclosures": [[d.kind, d.text] for d in offer.disclosures],
        "valid_from": offer.valid_from.isoformat() if offer.valid_from else None,
        "valid_until": offer.valid_until.isoformat() if offer.valid_until else None,
        "version": offer.version, "create_time": offer.create_time.isoformat() if offer.create_time else None,
    }, sort_keys=True).encode()


def offer_from_json(raw: bytes) -> Offer:
    data = json.loads(raw)

    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(data[key]) if data[key] else None

    return Offer(
        offer_id=data["offer_id"], title=data["title"], product_type=data["product_type"],
        risk_level=data["risk_level"], conversion_value=data["conversion_value"],
        contact_cost=data["contact_cost"], disclosures=[Disclosure(k, t) for k, t in data["disclosures"]],
        valid_from=when("valid_from"), valid_until=when("valid_until"), version=data["version"],
        create_time=when("create_time"),
    )
