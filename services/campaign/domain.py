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
    # Terms chosen within the offer's price band (pricing.ChosenTerms.to_json()), when it has one.
    chosen_terms: dict[str, Any] | None = None


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


# --- campaigns -----------------------------------------------------------------------------------------------

DRAFT, SUBMITTED, APPROVED, SCHEDULED, RUNNING, PAUSED, COMPLETED, CANCELLED = (
    "DRAFT", "SUBMITTED", "APPROVED", "SCHEDULED", "RUNNING", "PAUSED", "COMPLETED", "CANCELLED")
TERMINAL_STATES = frozenset({COMPLETED, CANCELLED})
# Allowed transitions (from, to); CANCELLED is reachable from every non-terminal state.
TRANSITIONS = frozenset({
    (DRAFT, SUBMITTED), (SUBMITTED, APPROVED), (SUBMITTED, DRAFT), (APPROVED, SCHEDULED),
    (SCHEDULED, RUNNING), (RUNNING, PAUSED), (PAUSED, RUNNING), (RUNNING, COMPLETED), (PAUSED, COMPLETED),
}) | {(state, CANCELLED) for state in (DRAFT, SUBMITTED, APPROVED, SCHEDULED, RUNNING, PAUSED)}
# Fields UpdateCampaign may change (only while DRAFT).
CAMPAIGN_UPDATABLE = frozenset({
    "display_name", "description", "segment", "offer_ids", "channels", "start_time", "end_time", "budget",
    "capacities", "control_share", "arms", "arm_selection",
})


@dataclass(frozen=True)
class Arm:
    arm_id: str
    share: float
    content: str


@dataclass(frozen=True)
class StateChange:
    from_state: str
    to_state: str
    actor: str
    reason: str
    change_time: datetime


@dataclass
class Campaign:
    campaign_id: str
    display_name: str = ""
    description: str = ""
    state: str = DRAFT
    segment: str = ""
    offer_ids: list[str] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    start_time: datetime | None = None
    end_time: datetime | None = None
    budget: float = 0.0
    capacities: dict[int, int] = field(default_factory=dict)
    control_share: float = 0.0
    arms: list[Arm] = field(default_factory=list)
    # "FIXED_SHARES" or "THOMPSON_SAMPLING" (opt-in, always-on campaigns; bandit.py).
    arm_selection: str = "FIXED_SHARES"
    created_by: str = ""
    approved_by: str = ""
    version: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None
    history: list[StateChange] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return f"{self.campaign_id}:{self.version}".encode().hex()[-16:]


@dataclass(frozen=True)
class CampaignPage:
    campaigns: list[Campaign]
    next_after_id: str | None


def campaign_to_json(campaign: Campaign) -> bytes:
    """Exact serialisation, used to replay the response of an idempotent request."""

    def when(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return json.dumps({
        "campaign_id": campaign.campaign_id, "display_name": campaign.display_name,
        "description": campaign.description, "state": campaign.state, "segment": campaign.segment,
        "offer_ids": campaign.offer_ids, "channels": campaign.channels, "start_time": when(campaign.start_time),
        "end_time": when(campaign.end_time), "budget": campaign.budget,
        "capacities": [[k, v] for k, v in sorted(campaign.capacities.items())],
        "control_share": campaign.control_share, "arms": [[a.arm_id, a.share, a.content] for a in campaign.arms],
        "arm_selection": campaign.arm_selection,
        "created_by": campaign.created_by, "approved_by": campaign.approved_by, "version": campaign.version,
        "create_time": when(campaign.create_time), "update_time": when(campaign.update_time),
        "history": [[h.from_state, h.to_state, h.actor, h.reason, h.change_time.isoformat()]
                    for h in campaign.history],
    }, sort_keys=True).encode()


def campaign_from_json(raw: bytes) -> Campaign:
    data = json.loads(raw)

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    return Campaign(
        campaign_id=data["campaign_id"], display_name=data["display_name"], description=data["description"],
        state=data["state"], segment=data["segment"], offer_ids=list(data["offer_ids"]),
        channels=list(data["channels"]), start_time=when(data["start_time"]), end_time=when(data["end_time"]),
        budget=data["budget"], capacities={k: v for k, v in data["capacities"]},
        control_share=data["control_share"], arms=[Arm(*a) for a in data["arms"]],
        arm_selection=data.get("arm_selection", "FIXED_SHARES"),
        created_by=data["created_by"], approved_by=data["approved_by"], version=data["version"],
        create_time=when(data["create_time"]), update_time=when(data["update_time"]),
        history=[StateChange(f, t, a, r, datetime.fromisoformat(c)) for f, t, a, r, c in data["history"]],
    )
