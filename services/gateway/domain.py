"""The gateway's domain objects: plain data, no SQL, no gRPC."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

MAX_DISPLAY_NAME = 100
DEFAULT_MAX_OFFERS = 3
MAX_OFFERS = 10
MAX_PLACEMENT = 64

# "p_" + 26 lowercase base32 characters: what auth.pseudonym() produces.
CUSTOMER_REF_PATTERN = re.compile(r"^p_[a-z2-7]{26}$")
PLACEMENT_PATTERN = re.compile(r"^[A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Partner:
    """A partner as the admin API shows it. Its pseudonym key never leaves the repository."""

    partner_id: str
    display_name: str
    create_time: datetime | None = None

    @property
    def name(self) -> str:
        return partner_name(self.partner_id)


def partner_name(partner_id: str) -> str:
    return f"partners/{partner_id}"


@dataclass(frozen=True)
class ApiKeyRecord:
    key_id: str
    partner_id: str
    secret_hash: str
    revoked: bool
    create_time: datetime | None = None


@dataclass(frozen=True)
class IssuedApiKey:
    """A new key: the full key is shown once, then only its hash exists."""

    key_id: str
    api_key: str


@dataclass(frozen=True)
class Principal:
    """Who is calling the partner API, once the API key checked out."""

    partner_id: str
    key_id: str


@dataclass(frozen=True)
class Disclosure:
    kind: str
    text: str


@dataclass(frozen=True)
class PartnerOffer:
    """What a partner may see of a ranked offer: no propensity, no expected value, no customer id."""

    offer_id: str
    title: str
    product_type: int
    rank: int
    disclosures: tuple[Disclosure, ...] = ()
    reason_codes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    decision_ref: str
    offers: tuple[PartnerOffer, ...]


@dataclass(frozen=True)
class OfferQuery:
    """A validated GetOffers request."""

    customer_ref: str
    placement: str
    decision_time: datetime | None
    max_offers: int


def partner_to_json(partner: Partner) -> bytes:
    """Exact serialisation, used to replay the response of an idempotent CreatePartner."""
    data = {
        "partner_id": partner.partner_id, "display_name": partner.display_name,
        "create_time": partner.create_time.isoformat() if partner.create_time else None,
    }
    return json.dumps(data, sort_keys=True).encode()


def partner_from_json(raw: bytes) -> Partner:
    data = json.loads(raw)
    return Partner(
        partner_id=data["partner_id"], display_name=data["display_name"],
        create_time=datetime.fromisoformat(data["create_time"]) if data["create_time"] else None,
    )
