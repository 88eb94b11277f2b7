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
    # Set by a rotation: the end of the old key's overlap window.
    expire_time: datetime | None = None
    revoke_time: datetime | None = None

    def state(self, now: datetime) -> str:
        if self.revoked:
            return KEY_REVOKED
        if self.expire_time is not None:
            return KEY_EXPIRED if now >= self.expire_time else KEY_EXPIRING
        return KEY_ACTIVE


@dataclass(frozen=True)
class IssuedApiKey:
    """A new key: the full key is shown once, then only its hash exists."""

    key_id: str
    api_key: str


KEY_ACTIVE, KEY_EXPIRING, KEY_EXPIRED, KEY_REVOKED = "ACTIVE", "EXPIRING", "EXPIRED", "REVOKED"

# Rotation: how long the old key keeps working (RotateApiKeyRequest.overlap_seconds).
DEFAULT_OVERLAP_SECONDS = 86_400
MAX_OVERLAP_SECONDS = 30 * 86_400

# The scope each partner RPC needs. A partner holds a set of them; a new partner holds none.
SCOPE_OFFERS_READ = "offers:read"
SCOPE_LEADS_WRITE = "leads:write"
SCOPE_LEADS_READ = "leads:read"
SCOPE_CONVERSIONS_WRITE = "conversions:write"
SCOPE_ENGAGEMENT_WRITE = "engagement:write"
RPC_SCOPES = {
    "GetOffers": SCOPE_OFFERS_READ,
    "SubmitLead": SCOPE_LEADS_WRITE,
    "ReportConversion": SCOPE_CONVERSIONS_WRITE,
    "GetLeadStatus": SCOPE_LEADS_READ,
    "ReportEngagement": SCOPE_ENGAGEMENT_WRITE,
}
KNOWN_SCOPES = frozenset(RPC_SCOPES.values())
# The one allow-list entry that admits every offer.
ALL_OFFERS = "*"


@dataclass(frozen=True)
class Quota:
    """Token bucket (rate per second, burst) and calls per UTC day."""

    rate_per_second: float
    burst: int
    daily_quota: int


# What a partner gets until an admin sets otherwise.
DEFAULT_QUOTA = Quota(rate_per_second=10.0, burst=20, daily_quota=100_000)
MAX_RATE_PER_SECOND = 10_000.0
MAX_BURST = 100_000
MAX_DAILY_QUOTA = 1_000_000_000


@dataclass(frozen=True)
class PartnerPolicy:
    partner_id: str
    scopes: tuple[str, ...]
    offer_ids: tuple[str, ...]
    quota: Quota

    def allows_offer(self, offer_id: str) -> bool:
        return ALL_OFFERS in self.offer_ids or offer_id in self.offer_ids


@dataclass(frozen=True)
class ClientCertificate:
    """A partner's registered mTLS client certificate: matched on the SHA-256 of its DER encoding."""

    partner_id: str
    fingerprint: str
    subject_common_name: str
    create_time: datetime


@dataclass(frozen=True)
class Principal:
    """Who is calling the partner API, once the API key checked out."""

    partner_id: str
    key_id: str
    # The SHA-256 fingerprint of the mTLS client certificate the call was authenticated with, if any.
    cert_fingerprint: str = ""


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


LEAD_RECEIVED, LEAD_CONVERTED = "RECEIVED", "CONVERTED"
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")
MAX_NANOS = 999_999_999


@dataclass(frozen=True)
class Money:
    currency_code: str
    units: int
    nanos: int


@dataclass(frozen=True)
class LeadInput:
    """A validated SubmitLead request."""

    customer_ref: str
    offer_id: str
    decision_ref: str


# What a partner may report a customer did with a presented offer, and the response outcome campaign counts.
ENGAGEMENT_OUTCOMES = {"VIEWED": "OPENED", "CLICKED": "CLICKED"}


@dataclass(frozen=True)
class EngagementInput:
    """A validated ReportEngagement request."""

    customer_ref: str
    offer_id: str
    decision_ref: str
    kind: str  # a key of ENGAGEMENT_OUTCOMES
    event_time: datetime | None


@dataclass(frozen=True)
class Engagement:
    engagement_id: str
    kind: str
    event_time: datetime

    @property
    def name(self) -> str:
        return f"engagements/{self.engagement_id}"


def engagement_to_json(engagement: Engagement) -> bytes:
    return json.dumps({"id": engagement.engagement_id, "kind": engagement.kind,
                       "time": engagement.event_time.isoformat()}, sort_keys=True).encode()


def engagement_from_json(raw: bytes) -> Engagement:
    data = json.loads(raw)
    return Engagement(data["id"], data["kind"], datetime.fromisoformat(data["time"]))


@dataclass(frozen=True)
class ConversionInput:
    """A validated ReportConversion request."""

    lead_id: str
    revenue: Money
    conversion_time: datetime | None


@dataclass(frozen=True)
class Lead:
    """A lead as its partner sees it (no bank customer id, no forwarding state)."""

    lead_id: str
    customer_ref: str
    offer_id: str
    decision_ref: str
    status: str
    create_time: datetime
    update_time: datetime
    revenue: Money | None = None
    conversion_time: datetime | None = None

    @property
    def name(self) -> str:
        return f"leads/{self.lead_id}"


def _dt(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def lead_to_json(lead: Lead) -> bytes:
    """Exact serialisation, used to replay the response of an idempotent SubmitLead or ReportConversion."""
    data = {
        "lead_id": lead.lead_id, "customer_ref": lead.customer_ref, "offer_id": lead.offer_id,
        "decision_ref": lead.decision_ref, "status": lead.status, "create_time": _dt(lead.create_time),
        "update_time": _dt(lead.update_time), "conversion_time": _dt(lead.conversion_time),
        "revenue": None if lead.revenue is None else [lead.revenue.currency_code, lead.revenue.units,
                                                      lead.revenue.nanos],
    }
    return json.dumps(data, sort_keys=True).encode()


def lead_from_json(raw: bytes) -> Lead:
    data = json.loads(raw)
    revenue = data["revenue"]
    create_time, update_time = _parse_dt(data["create_time"]), _parse_dt(data["update_time"])
    assert create_time is not None and update_time is not None
    return Lead(
        lead_id=data["lead_id"], customer_ref=data["customer_ref"], offer_id=data["offer_id"],
        decision_ref=data["decision_ref"], status=data["status"], create_time=create_time, update_time=update_time,
        revenue=Money(revenue[0], int(revenue[1]), int(revenue[2])) if revenue else None,
        conversion_time=_parse_dt(data["conversion_time"]),
    )
