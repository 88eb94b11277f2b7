"""The screening rules, policy version 2026.12-1. Pure functions: no I/O, no clock, no server time zone.

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
   - in_collections -> DENY IN_COLLECTIONS;
   - a champion credit model scored the customer's credit features (facts.credit_features) at a PD at or
     above its decline cut-off -> DENY CREDIT_DECLINED (the scoring is the service's; see docs/credit-risk.md).
4. Suitability (any product with a risk level): R(n) above the tolerance C(m), n > m -> DENY UNSUITABLE.
   An unspecified tolerance counts as C1; a product without a risk level is not checked.
5. Vulnerable customers: a product of risk level R4 or above, or any credit product -> DENY
   VULNERABLE_CUSTOMER.

Contact policy (policy 2026.12-1; outbound channels only, the same for every offer; listed after consent):
6. Do-not-contact: the customer's latest do-not-contact entry is ADD -> DENY DO_NOT_CONTACT. The entries kept
   after an erasure under the keyed hash `dsr:<hmac(customer id)>` (data_subject.py) are the customer's too:
   a customer re-imported under the same bank id stays suppressed, unless a newer entry under the id removes it.
7. Cool-off: a complaint, or a MARKETING consent withdrawal that is still the latest record of its channel,
   recorded less than the cool-off period (RISK_COOL_OFF_DAYS, default 30 days) before contact_time ->
   DENY COOL_OFF, on every outbound channel. A later grant on that channel ends a withdrawal's cool-off.
   Complaints kept under the keyed hash count (an erased customer's consent records do not: a re-imported
   customer starts without consent, so rule 1 denies until a new grant, which ends a withdrawal's cool-off).
8. Caps (RISK_CAPS): for each cap of the channel and each cross-channel cap, the confirmed and active
   reservations within the cap's rolling period of contact_time (|t - contact_time| < period: day 24 h,
   week 7 days, month 30 days) already reach its limit -> HOLD FREQUENCY_CAP. The symmetric window makes
   sequential acceptance imply the cap holds in every rolling window.

Customer restrictions (listed after suitability and vulnerability, per offer):
9. Students (facts.student, or facts.occupation among the student occupations): under RISK_STUDENT_RULES
   (default "deny_credit,max_risk=R3") a credit product -> DENY STUDENT_RESTRICTED with `deny_credit`, and a
   product of risk level above the cap -> DENY STUDENT_RESTRICTED with `max_risk=R<n>`. "none" lifts both.
10. Anti-money-laundering: a customer with an active AML case (open, investigating or reported; docs/aml.md)
   -> DENY AML_CASE_OPEN for credit products and wealth products (WEALTH, SAVINGS_BOND).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.risk.domain import (
    Cap,
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    ContactPolicy,
    ContactState,
    CountedContact,
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

POLICY_VERSION = "2026.12-1"
NO_POLICY = ContactPolicy()

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

# --- students and AML cases (rules 9 and 10) -----------------------------------------------------------------
STUDENT_RULES_SETTING = "RISK_STUDENT_RULES"
DEFAULT_STUDENT_RULES = "deny_credit,max_risk=R3"
AML_BLOCKED_PRODUCTS = CREDIT_PRODUCTS | {ProductType.WEALTH, ProductType.SAVINGS_BOND}


@dataclass(frozen=True)
class StudentRules:
    """What students may not be offered (rule 9). max_risk_level 0 = no cap."""

    deny_credit: bool = False
    max_risk_level: int = 0
    occupations: frozenset[str] = frozenset({"student"})


NO_STUDENT_RULES = StudentRules()


def parse_student_rules(raw: str | None) -> StudentRules:
    """RISK_STUDENT_RULES: comma-separated `deny_credit`, `max_risk=R<1-5>`, `occupations=a|b`; "none" or ""
    = no restriction. Unset: DEFAULT_STUDENT_RULES. A bad value is ValueError naming the part."""
    text = (DEFAULT_STUDENT_RULES if raw is None else raw).strip()
    if text.lower() in ("", "none"):
        return NO_STUDENT_RULES
    deny, cap, occupations = False, 0, frozenset({"student"})
    for part in (p.strip() for p in text.split(",")):
        name, _, value = part.partition("=")
        name, value = name.strip().lower(), value.strip()
        if name == "deny_credit" and not value:
            deny = True
        elif name == "max_risk" and value.upper() in {f"R{n}" for n in range(1, 6)}:
            cap = int(value[1:])
        elif name == "occupations" and value:
            occupations = frozenset(o.strip().lower() for o in value.split("|") if o.strip())
        else:
            raise ValueError(f"{STUDENT_RULES_SETTING}: {part!r} must be deny_credit, max_risk=R1..R5 or "
                             "occupations=a|b (comma-separated), or none")
    return StudentRules(deny, cap, occupations)


def is_student(facts: CustomerFacts, student_rules: StudentRules) -> bool:
    return facts.student or (bool(facts.occupation)
                             and facts.occupation.strip().lower() in student_rules.occupations)

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


def offer_reasons(offer: OfferSubject, facts: CustomerFacts, contact_date: date,
                  credit_declined: bool = False, *, student_rules: StudentRules = NO_STUDENT_RULES,
                  aml_case_open: bool = False) -> list[Reason]:
    """Reasons that depend on the offer (rules 3 to 5, 9 and 10)."""
    reasons: list[Reason] = []
    credit = offer.product_type in CREDIT_PRODUCTS
    if credit:
        if facts.birth_date is None:
            reasons.append(Reason.AGE_UNKNOWN)
        elif age_on(facts.birth_date, contact_date) < ADULT_AGE:
            reasons.append(Reason.UNDERAGE)
        if facts.in_collections:
            reasons.append(Reason.IN_COLLECTIONS)
        if credit_declined:
            reasons.append(Reason.CREDIT_DECLINED)
    tolerance = facts.risk_tolerance or DEFAULT_RISK_TOLERANCE
    if offer.risk_level and offer.risk_level > tolerance:
        reasons.append(Reason.UNSUITABLE)
    if facts.vulnerable and (credit or offer.risk_level >= VULNERABLE_MIN_DENIED_RISK_LEVEL):
        reasons.append(Reason.VULNERABLE_CUSTOMER)
    if student_rules != NO_STUDENT_RULES and is_student(facts, student_rules) and (
            (student_rules.deny_credit and credit)
            or (student_rules.max_risk_level and offer.risk_level > student_rules.max_risk_level)):
        reasons.append(Reason.STUDENT_RESTRICTED)
    if aml_case_open and offer.product_type in AML_BLOCKED_PRODUCTS:
        reasons.append(Reason.AML_CASE_OPEN)
    return reasons


def exceeded_caps(channel: Channel, contact_time: datetime, contacts: Iterable[CountedContact],
                  caps: Iterable[Cap]) -> list[Cap]:
    """The caps that one more contact on `channel` at `contact_time` would exceed (rule 8)."""
    applicable = [cap for cap in caps if cap.channel is None or cap.channel == channel]
    if not applicable:
        return []
    contacts = list(contacts)
    out = []
    for cap in applicable:
        count = sum(
            1 for c in contacts
            if (cap.channel is None or c.channel == cap.channel) and abs(c.contact_time - contact_time) < cap.length
        )
        if count >= cap.limit:
            out.append(cap)
    return out


def in_cool_off(state: ContactState, contact_time: datetime, policy: ContactPolicy) -> bool:
    """Rule 7: a complaint or a still-standing marketing withdrawal within the cool-off period."""
    since = contact_time - policy.cool_off
    if state.last_complaint is not None and since < state.last_complaint:
        return True
    for (_, purpose), record in state.consents.items():
        if (purpose == ConsentPurpose.MARKETING and record.action == ConsentAction.WITHDRAW
                and record.record_time is not None and since < record.record_time):
            return True
    return False


def policy_reasons(channel: Channel, contact_time: datetime, state: ContactState,
                   policy: ContactPolicy) -> list[Reason]:
    """Rules 6 to 8 (outbound channels only)."""
    if channel not in OUTBOUND_CHANNELS:
        return []
    reasons = []
    if state.do_not_contact:
        reasons.append(Reason.DO_NOT_CONTACT)
    if in_cool_off(state, contact_time, policy):
        reasons.append(Reason.COOL_OFF)
    if state.contacts and exceeded_caps(channel, contact_time, state.contacts, policy.caps):
        reasons.append(Reason.FREQUENCY_CAP)
    return reasons


def screening_signature(channel: Channel, contact_time: datetime, facts: CustomerFacts, state: ContactState,
                        policy: ContactPolicy) -> tuple[object, ...]:
    """Everything screen() reads, reduced to what its outcome depends on (for memoising it over a batch): the
    consent verdict, the contact-policy reasons, the zone and time (quiet hours, contact date), the age class
    on the contact date and the offer-relevant facts. Two customers with equal signatures get equal verdicts
    for the same offers."""
    key = required_consent(channel)
    consent_ok = key is None or consent_is_valid(state.consents.get(key), contact_time)
    zone = time_zone_for(facts)
    if facts.birth_date is None:
        age_class = -1
    else:
        contact_date = contact_time.astimezone(zone or UTC).date()
        age_class = int(age_on(facts.birth_date, contact_date) >= ADULT_AGE)
    return (channel, contact_time, zone, consent_ok, tuple(policy_reasons(channel, contact_time, state, policy)),
            age_class, facts.in_collections, facts.risk_tolerance, facts.vulnerable, facts.student,
            facts.occupation)


def verdict_for(reasons: list[Reason] | tuple[Reason, ...]) -> Verdict:
    if any(reason not in HOLD_REASONS for reason in reasons):
        return Verdict.DENY
    if reasons:
        return Verdict.HOLD
    return Verdict.ALLOW


def screen(
    request: ScreeningRequest, consents: Mapping[ConsentKey, ConsentRecord],
    quiet: QuietHours = DEFAULT_QUIET_HOURS, *, state: ContactState | None = None,
    policy: ContactPolicy = NO_POLICY, credit_declined: bool = False,
    student_rules: StudentRules = NO_STUDENT_RULES, aml_case_open: bool = False,
) -> ScreeningResult:
    """Screens every offer of `request`. `consents` holds the latest record per (channel, purpose) of the
    customer; only the key `required_consent(request.channel)` is read by rule 1 (every MARKETING one by
    rule 7). `state` (do-not-contact, complaints, counted contacts) enables rules 6 to 8. `credit_declined`: the
    champion credit model declined the customer (rule 3, credit products only). `student_rules`: rule 9;
    `aml_case_open`: the customer has an active AML case (rule 10)."""
    if request.contact_time.tzinfo is None:
        raise ValueError("contact_time must be timezone-aware")
    common = contact_reasons(request.channel, request.contact_time, request.facts, consents, quiet)
    if state is not None:
        extra = policy_reasons(request.channel, request.contact_time, state, policy)
        if extra:
            # consent first, then the contact-policy reasons, then quiet hours / time zone
            head = [r for r in common if r == Reason.CONSENT_MISSING]
            common = [*head, *extra, *(r for r in common if r != Reason.CONSENT_MISSING)]
    zone = time_zone_for(request.facts) or UTC
    contact_date = request.contact_time.astimezone(zone).date()
    verdicts = []
    for offer in request.offers:
        reasons = tuple(dict.fromkeys([*common, *offer_reasons(
            offer, request.facts, contact_date, credit_declined, student_rules=student_rules,
            aml_case_open=aml_case_open)]))
        verdicts.append(OfferVerdict(offer.offer_id, verdict_for(reasons), reasons))
    return ScreeningResult(tuple(verdicts), POLICY_VERSION)
