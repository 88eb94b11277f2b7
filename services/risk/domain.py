"""The risk service's domain objects: plain data, no SQL, no gRPC.

The enums mirror the contract's enums by name (without the proto prefix, e.g. `CHANNEL_SMS` -> `Channel.SMS`);
the handlers translate, and the database stores these names, so renumbering never rewrites history.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from enum import StrEnum


class Channel(StrEnum):
    SMS = "SMS"
    EMAIL = "EMAIL"
    APP_PUSH = "APP_PUSH"
    WECHAT = "WECHAT"
    PHONE = "PHONE"
    IN_APP = "IN_APP"
    PARTNER = "PARTNER"


class ConsentPurpose(StrEnum):
    MARKETING = "MARKETING"
    PARTNER_SHARING = "PARTNER_SHARING"
    PROFILING = "PROFILING"


class ConsentAction(StrEnum):
    GRANT = "GRANT"
    WITHDRAW = "WITHDRAW"


class ProductType(StrEnum):
    CREDIT_CARD = "CREDIT_CARD"
    CONSUMER_LOAN = "CONSUMER_LOAN"
    INSTALMENT = "INSTALMENT"
    SAVINGS_BOND = "SAVINGS_BOND"
    DEPOSIT = "DEPOSIT"
    WEALTH = "WEALTH"


class Verdict(StrEnum):
    ALLOW = "ALLOW"
    DENY = "DENY"
    HOLD = "HOLD"


class Reason(StrEnum):
    CONSENT_MISSING = "CONSENT_MISSING"
    DO_NOT_CONTACT = "DO_NOT_CONTACT"
    QUIET_HOURS = "QUIET_HOURS"
    FREQUENCY_CAP = "FREQUENCY_CAP"
    UNSUITABLE = "UNSUITABLE"
    UNDERAGE = "UNDERAGE"
    CREDIT_DECLINED = "CREDIT_DECLINED"
    FRAUD_SUSPECTED = "FRAUD_SUSPECTED"
    TIMEZONE_UNKNOWN = "TIMEZONE_UNKNOWN"
    IN_COLLECTIONS = "IN_COLLECTIONS"
    VULNERABLE_CUSTOMER = "VULNERABLE_CUSTOMER"
    AGE_UNKNOWN = "AGE_UNKNOWN"
    COOL_OFF = "COOL_OFF"
    AML_CASE_OPEN = "AML_CASE_OPEN"
    STUDENT_RESTRICTED = "STUDENT_RESTRICTED"


@dataclass(frozen=True)
class QuietHours:
    """Local clock times [start, end): a window that may wrap midnight. start == end means no quiet hours."""

    start: time
    end: time


@dataclass(frozen=True)
class CustomerFacts:
    birth_date: date | None = None
    time_zone: str = ""
    region: str = ""
    # 0 (unspecified) to 5: C1 (conservative) .. C5 (aggressive).
    risk_tolerance: int = 0
    in_collections: bool = False
    vulnerable: bool = False
    # The applicant's credit features (name, value as text), sorted by name; scored by the champion credit model.
    credit_features: tuple[tuple[str, str], ...] = ()
    monthly_income: float | None = None
    # A student (the flag, or occupation "student"): RISK_STUDENT_RULES apply (rules.py).
    student: bool = False
    occupation: str = ""


@dataclass(frozen=True)
class CreditLimit:
    """The pre-approved limit band of a credit offer, from the credit model that scored the customer."""

    band: str
    income_multiple: float
    max_limit: float | None
    declined: bool
    model_version: str
    pd: float
    score: float


@dataclass(frozen=True)
class OfferSubject:
    offer_id: str
    product_type: ProductType
    # 0 (unspecified) to 5: R1 (lowest) .. R5 (highest).
    risk_level: int = 0


@dataclass(frozen=True)
class ScreeningRequest:
    customer_id: str
    channel: Channel
    contact_time: datetime
    facts: CustomerFacts
    offers: tuple[OfferSubject, ...]


@dataclass(frozen=True)
class OfferVerdict:
    offer_id: str
    verdict: Verdict
    reasons: tuple[Reason, ...] = ()
    # Credit offers scored by the champion credit model only.
    limit_band: CreditLimit | None = None


@dataclass(frozen=True)
class ScreeningResult:
    verdicts: tuple[OfferVerdict, ...]
    policy_version: str


@dataclass
class ConsentRecord:
    customer_id: str
    channel: Channel
    purpose: ConsentPurpose
    action: ConsentAction
    source: str
    actor: str = ""
    record_time: datetime | None = None
    expire_time: datetime | None = None
    # The row id; orders records recorded at the same instant. None until stored.
    record_id: int | None = field(default=None, compare=False)


@dataclass(frozen=True)
class HistoryPosition:
    """Where a page of consent history ends: the last record returned (newest-first order)."""

    record_time: datetime
    record_id: int


@dataclass(frozen=True)
class ConsentPage:
    records: list[ConsentRecord]
    next_position: HistoryPosition | None


def consent_to_json(record: ConsentRecord) -> bytes:
    """Exact serialisation, used to replay the response of an idempotent request."""
    data = {
        "customer_id": record.customer_id, "channel": record.channel.value, "purpose": record.purpose.value,
        "action": record.action.value, "source": record.source, "actor": record.actor,
        "record_time": record.record_time.isoformat() if record.record_time else None,
        "expire_time": record.expire_time.isoformat() if record.expire_time else None,
        "record_id": record.record_id,
    }
    return json.dumps(data, sort_keys=True).encode()


def consent_from_json(raw: bytes) -> ConsentRecord:
    data = json.loads(raw)
    return ConsentRecord(
        customer_id=data["customer_id"], channel=Channel(data["channel"]),
        purpose=ConsentPurpose(data["purpose"]),
        action=ConsentAction(data["action"]), source=data["source"], actor=data["actor"],
        record_time=datetime.fromisoformat(data["record_time"]) if data["record_time"] else None,
        expire_time=datetime.fromisoformat(data["expire_time"]) if data["expire_time"] else None,
        record_id=data["record_id"],
    )


# --- contact policy ------------------------------------------------------------------------------------------

class DoNotContactAction(StrEnum):
    ADD = "ADD"
    REMOVE = "REMOVE"


@dataclass(frozen=True)
class DoNotContactEntry:
    customer_id: str
    action: DoNotContactAction
    source: str
    actor: str = ""
    reason: str = ""
    record_time: datetime | None = None


@dataclass(frozen=True)
class Complaint:
    customer_id: str
    channel: Channel | None
    source: str
    actor: str = ""
    category: str = ""
    record_time: datetime | None = None


@dataclass(frozen=True)
class Cap:
    """At most `limit` contacts within any `period` (rolling) on `channel`, or across channels when None."""

    channel: Channel | None
    limit: int
    period: str  # "day", "week" or "month"
    length: timedelta

    @property
    def label(self) -> str:
        return f"{self.channel.value.lower() if self.channel else 'all'}:{self.limit}/{self.period}"


@dataclass(frozen=True)
class ContactPolicy:
    caps: tuple[Cap, ...] = ()
    cool_off: timedelta = timedelta(days=30)
    reservation_ttl: timedelta = timedelta(minutes=15)

    @property
    def longest_cap(self) -> timedelta:
        return max((cap.length for cap in self.caps), default=timedelta(0))


@dataclass(frozen=True)
class CountedContact:
    """A confirmed or active reservation, as the caps see it."""

    channel: Channel
    contact_time: datetime


@dataclass
class ContactState:
    """Everything the screening rules need to know about one customer beyond the request's facts."""

    consents: dict[tuple[Channel, ConsentPurpose], ConsentRecord] = field(default_factory=dict)
    do_not_contact: bool = False
    last_complaint: datetime | None = None
    contacts: list[CountedContact] = field(default_factory=list)


class ReservationState(StrEnum):
    RESERVED = "RESERVED"
    CONFIRMED = "CONFIRMED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True)
class Reservation:
    delivery_key: str
    customer_id: str
    channel: Channel
    contact_time: datetime
    state: ReservationState
    create_time: datetime
    expire_time: datetime


@dataclass(frozen=True)
class ReservationOutcome:
    granted: bool
    reservation: Reservation | None
    exceeded: tuple[Cap, ...] = ()


@dataclass(frozen=True)
class BatchItem:
    customer_id: str
    channel: Channel
    contact_time: datetime
    facts: CustomerFacts
    # Indexes into the batch's offers.
    offers: tuple[int, ...]


@dataclass(frozen=True)
class AuditVerification:
    intact: bool
    entries_checked: int
    first_bad_seq: int = 0
    problem: str = ""  # "", "EDITED", "INSERTED", "DELETED"
    detail: str = ""
    head_hash: str = ""


def dnc_to_json(entry: DoNotContactEntry) -> bytes:
    data = {"customer_id": entry.customer_id, "action": entry.action.value, "source": entry.source,
            "actor": entry.actor, "reason": entry.reason,
            "record_time": entry.record_time.isoformat() if entry.record_time else None}
    return json.dumps(data, sort_keys=True).encode()


def dnc_from_json(raw: bytes) -> DoNotContactEntry:
    data = json.loads(raw)
    return DoNotContactEntry(
        customer_id=data["customer_id"], action=DoNotContactAction(data["action"]), source=data["source"],
        actor=data["actor"], reason=data["reason"],
        record_time=datetime.fromisoformat(data["record_time"]) if data["record_time"] else None,
    )


def time_to_json(value: datetime) -> bytes:
    return value.isoformat().encode()


def time_from_json(raw: bytes) -> datetime:
    return datetime.fromisoformat(raw.decode())


# --- credit model registry -----------------------------------------------------------------------------------

class CreditModelStatus(StrEnum):
    CHAMPION = "CHAMPION"
    CHALLENGER = "CHALLENGER"


@dataclass(frozen=True)
class CreditModelInfo:
    """A registry entry: what ListCreditModels shows (the JSON artefact stays in the database)."""

    version: str
    status: CreditModelStatus
    features: tuple[str, ...]
    candidate_features: tuple[str, ...]
    training_window: dict[str, str]
    rows: int
    default_rate: float
    auc: float
    ks: float
    brier: float
    decline_pd: float
    create_time: datetime
    promote_time: datetime | None = None


def credit_model_to_json(info: CreditModelInfo) -> bytes:
    data = {
        "version": info.version, "status": info.status.value, "features": list(info.features),
        "candidate_features": list(info.candidate_features), "training_window": info.training_window,
        "rows": info.rows, "default_rate": info.default_rate, "auc": info.auc, "ks": info.ks, "brier": info.brier,
        "decline_pd": info.decline_pd, "create_time": info.create_time.isoformat(),
        "promote_time": info.promote_time.isoformat() if info.promote_time else None,
    }
    return json.dumps(data, sort_keys=True).encode()


def credit_model_from_json(raw: bytes) -> CreditModelInfo:
    data = json.loads(raw)
    return CreditModelInfo(
        version=data["version"], status=CreditModelStatus(data["status"]), features=tuple(data["features"]),
        candidate_features=tuple(data["candidate_features"]), training_window=dict(data["training_window"]),
        rows=int(data["rows"]), default_rate=float(data["default_rate"]), auc=float(data["auc"]),
        ks=float(data["ks"]), brier=float(data["brier"]), decline_pd=float(data["decline_pd"]),
        create_time=datetime.fromisoformat(data["create_time"]),
        promote_time=datetime.fromisoformat(data["promote_time"]) if data["promote_time"] else None,
    )
