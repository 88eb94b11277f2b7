"""The screening rules, policy version 2026.11-1. Pure functions: no I/O, no clock, no server time zone.

Each offer of a Screen call gets every applicable reason, in the order the rules below are listed (each reason
at most once). The verdict is DENY if any reason is a deny reason, else HOLD if any is a hold reason
(QUIET_HOURS, TIMEZONE_UNKNOWN: "not now, retry later"), else ALLOW with no reasons. A DENY still lists the
hold reasons that applied.

1. Consent (per channel, the same for every offer).
   - Outbound channels (SMS, EMAIL, APP_PUSH, WECHAT, PHONE) need MARKETING consent on that channel.
   - PARTNER needs PARTNER_SHARING consent on channel PARTNER.
   - IN_APP (the customer is in the app right now) needs no consent.
   Consent is valid when the latest record (newest record_time, then newest id) for
   (customer, channel, purpose) is a GRANT whose expire_time is unset or strictly after contact_time.
   No record, a WITHDRAW, or a grant expiring at or before contact_time -> DENY CONSENT_MISSING.
2. Quiet hours (outbound channels only). The customer's local time is computed in facts.time_zone, else in
   the zone inferred from facts.region (REGION_TIME_ZONES, by the country prefix: "CN-31" -> "CN"), else
   it is unknown -> HOLD TIMEZONE_UNKNOWN. Local time in [start, end) -> HOLD QUIET_HOURS. The default window
   is 21:00-08:00 (settings RISK_QUIET_HOURS_START / RISK_QUIET_HOURS_END): 21:00:00 exactly is quiet,
   08:00:00 exactly is not. A window may wrap midnight; start == end means no quiet hours.
3. Credit products (CREDIT_CARD, CONSUMER_LOAN, INSTALMENT):
   - birth date unknown -> DENY AGE_UNKNOWN;
   - age under 18 on the contact date -> DENY UNDERAGE. The contact date is the customer's local date when
     the time zone is known, else the UTC date; the 18th birthday itself counts as 18 (someone born on
     29 February turns 18 on 1 March in a non-leap year);
   - in_collections -> DENY IN_COLLECTIONS.
4. Suitability (any product with a risk level): R(n) above the tolerance C(m), n > m -> DENY UNSUITABLE.
   An unspecified tolerance counts as C1; a product without a risk level is not checked.
5. Vulnerable customers: a product of risk level R4 or above, or any credit product -> DENY
   VULNERABLE_CUSTOMER.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.risk.domain import (
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    CustomerFacts,
    OfferSubject,
    OfferVerdict,
    ProductType,
    QuietHours,
    Reason,
    ScreeningRequest,
    ScreeningResult,
    Verdict,
)

POLICY_VERSION = "2026.11-1"

OUTBOUND_CHANNELS = frozenset({Channel.SMS, Channel.EMAIL, Channel.APP_PUSH, Channel.WECHAT, Channel.PHONE})
CREDIT_PRODUCTS = frozenset({ProductType.CREDIT_CARD, ProductType.CONSUMER_LOAN, ProductType.INSTALMENT})
DEFAULT_QUIET_HOURS = QuietHours(start=time(21, 0), end=time(8, 0))
ADULT_AGE = 18
# Vulnerable customers are never offered products at or above this risk level (R4).
VULNERABLE_MIN_DENIED_RISK_LEVEL = 4
# An unspecified risk tolerance counts as C1.
DEFAULT_RISK_TOLERANCE = 1

# Country (ISO 3166-1 alpha-2, the part of a region code before "-") -> IANA zone used when the caller gives
# no time zone. Only single-zone countries belong here; anything else stays unknown (HOLD TIMEZONE_UNKNOWN).
REGION_TIME_ZONES: Mapping[str, str] = {
    "CN": "Asia/Shanghai",
    "HK": "Asia/Hong_Kong",
    "SG": "Asia/Singapore",
    "PT": "Europe/Lisbon",
    "GB": "Europe/London",
    "DE": "Europe/Berlin",
    "FR": "Europe/Paris",
    "JP": "Asia/Tokyo",
}

HOLD_REASONS = frozenset({Reason.QUIET_HOURS, Reason.TIMEZONE_UNKNOWN, Reason.FREQUENCY_CAP})

ConsentKey = tuple[Channel, ConsentPurpose]


def required_consent(channel: Channel) -> ConsentKey | None:
    """The (channel, purpose) whose consent a contact on `channel` needs; None when it needs none."""
    if channel in OUTBOUND_CHANNELS:
        return channel, ConsentPurpose.MARKETING
    if channel == Channel.PARTNER:
        return Channel.PARTNER, ConsentPurpose.PARTNER_SHARING
    return None


def consent_is_valid(latest: ConsentRecord | None, at: datetime) -> bool:
    """Whether the latest consent record grants consent at instant `at`."""
    if latest is None or latest.action != ConsentAction.GRANT:
        return False
    return latest.expire_time is None or latest.expire_time > at


def time_zone_for(facts: CustomerFacts) -> tzinfo | None:
    """The customer's zone: facts.time_zone, else inferred from the region's country, else None (unknown)."""
    name = facts.time_zone or REGION_TIME_ZONES.get(facts.region.split("-", 1)[0].strip().upper(), "")
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def in_quiet_hours(local: time, quiet: QuietHours) -> bool:
    if quiet.start == quiet.end:
        return False
    if quiet.start < quiet.end:
        return quiet.start <= local < quiet.end
    return local >= quiet.start or local < quiet.end


def age_on(birth_date: date, day: date) -> int:
    """Completed years on `day` (the birthday itself counts)."""
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def contact_reasons(
    channel: Channel,
    contact_time: datetime,
    facts: CustomerFacts,
    consents: Mapping[ConsentKey, ConsentRecord],
    quiet: QuietHours,
) -> list[Reason]:
    """Reasons that depend on the contact, not on the offer (rules 1 and 2)."""
    reasons: list[Reason] = []
    key = required_consent(channel)
    if key is not None and not consent_is_valid(consents.get(key), contact_time):
        reasons.append(Reason.CONSENT_MISSING)
    if channel in OUTBOUND_CHANNELS:
        zone = time_zone_for(facts)
        if zone is None:
            reasons.append(Reason.TIMEZONE_UNKNOWN)
        elif in_quiet_hours(contact_time.astimezone(zone).time().replace(tzinfo=None), quiet):
            reasons.append(Reason.QUIET_HOURS)
    return reasons


def offer_reasons(offer: OfferSubject, facts: CustomerFacts, contact_date: date) -> list[Reason]:
    """Reasons that depend on the offer (rules 3 to 5)."""
    reasons: list[Reason] = []
    credit = offer.product_type in CREDIT_PRODUCTS
    if credit:
        if facts.birth_date is None:
            reasons.append(Reason.AGE_UNKNOWN)
        elif age_on(facts.birth_date, contact_date) < ADULT_AGE:
            reasons.append(Reason.UNDERAGE)
        if facts.in_collections:
            reasons.append(Reason.IN_COLLECTIONS)
    tolerance = facts.risk_tolerance or DEFAULT_RISK_TOLERANCE
    if offer.risk_level and offer.risk_level > tolerance:
        reasons.append(Reason.UNSUITABLE)
    if facts.vulnerable and (credit or offer.risk_level >= VULNERABLE_MIN_DENIED_RISK_LEVEL):
        reasons.append(Reason.VULNERABLE_CUSTOMER)
    return reasons


def verdict_for(reasons: list[Reason] | tuple[Reason, ...]) -> Verdict:
    if any(reason not in HOLD_REASONS for reason in reasons):
        return Verdict.DENY
    if reasons:
        return Verdict.HOLD
    return Verdict.ALLOW


def screen(
    request: ScreeningRequest, consents: Mapping[ConsentKey, ConsentRecord],
    quiet: QuietHours = DEFAULT_QUIET_HOURS,
) -> ScreeningResult:
    """Screens every offer of `request`. `consents` holds the latest record per (channel, purpose) of the
    customer; only the key `required_consent(request.channel)` is read."""
    if request.contact_time.tzinfo is None:
        raise ValueError("contact_time must be timezone-aware")
    common = contact_reasons(request.channel, request.contact_time, request.facts, consents, quiet)
    zone = time_zone_for(request.facts) or UTC
    contact_date = request.contact_time.astimezone(zone).date()
    verdicts = []
    for offer in request.offers:
        reasons = tuple(dict.fromkeys([*common, *offer_reasons(offer, request.facts, contact_date)]))
        verdicts.append(OfferVerdict(offer.offer_id, verdict_for(reasons), reasons))
    return ScreeningResult(tuple(verdicts), POLICY_VERSION)
