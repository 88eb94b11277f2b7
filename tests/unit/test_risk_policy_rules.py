"""Contact-policy rules (do-not-contact, cool-off, caps) and their settings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from services.platform.config import ConfigError
from services.risk import rules
from services.risk.config import contact_policy_from, parse_caps
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
    ProductType,
    Reason,
    ScreeningRequest,
    Verdict,
)

AT = datetime(2026, 12, 3, 4, 0, tzinfo=UTC)  # 12:00 in Shanghai
DAY, WEEK = timedelta(days=1), timedelta(days=7)
POLICY = ContactPolicy(caps=(Cap(Channel.SMS, 1, "day", DAY), Cap(None, 2, "week", WEEK)), cool_off=timedelta(days=30))
FACTS = CustomerFacts(birth_date=date(1980, 1, 1), time_zone="Asia/Shanghai", risk_tolerance=3)
GRANT = ConsentRecord("c", Channel.SMS, ConsentPurpose.MARKETING, ConsentAction.GRANT, "app",
                      record_time=AT - timedelta(days=100))


def screen(state: ContactState, channel: Channel = Channel.SMS) -> tuple[Verdict, tuple[Reason, ...]]:
    consents = {**state.consents}
    consents.setdefault((Channel.SMS, ConsentPurpose.MARKETING), GRANT)
    consents.setdefault((Channel.EMAIL, ConsentPurpose.MARKETING), GRANT)
    state.consents = consents
    request = ScreeningRequest("c", channel, AT, FACTS, (OfferSubject("d", ProductType.DEPOSIT, 1),))
    [verdict] = rules.screen(request, consents, state=state, policy=POLICY).verdicts
    return verdict.verdict, verdict.reasons


def test_do_not_contact_denies_outbound_only() -> None:
    assert screen(ContactState(do_not_contact=True)) == (Verdict.DENY, (Reason.DO_NOT_CONTACT,))
    assert screen(ContactState(do_not_contact=True), Channel.IN_APP) == (Verdict.ALLOW, ())


def test_complaint_cool_off_is_half_open() -> None:
    assert screen(ContactState(last_complaint=AT - timedelta(days=29))) == (Verdict.DENY, (Reason.COOL_OFF,))
    assert screen(ContactState(last_complaint=AT - timedelta(days=30))) == (Verdict.ALLOW, ())


def test_a_standing_withdrawal_cools_off_other_channels() -> None:
    withdrawn = ConsentRecord("c", Channel.SMS, ConsentPurpose.MARKETING, ConsentAction.WITHDRAW, "app",
                              record_time=AT - timedelta(days=2))
    state = ContactState(consents={(Channel.SMS, ConsentPurpose.MARKETING): withdrawn})
    assert screen(state, Channel.EMAIL) == (Verdict.DENY, (Reason.COOL_OFF,))


def test_caps_hold_with_frequency_cap_in_a_rolling_window() -> None:
    near = ContactState(contacts=[CountedContact(Channel.SMS, AT - timedelta(hours=23))])
    assert screen(near) == (Verdict.HOLD, (Reason.FREQUENCY_CAP,))
    far = ContactState(contacts=[CountedContact(Channel.SMS, AT - timedelta(hours=24))])
    assert screen(far) == (Verdict.ALLOW, ())
    two_emails = ContactState(contacts=[CountedContact(Channel.EMAIL, AT - 2 * DAY),
                                        CountedContact(Channel.EMAIL, AT + 2 * DAY)])
    assert screen(two_emails, Channel.EMAIL) == (Verdict.HOLD, (Reason.FREQUENCY_CAP,))


def test_exceeded_caps_names_each_cap() -> None:
    contacts = [CountedContact(Channel.SMS, AT), CountedContact(Channel.EMAIL, AT)]
    assert [c.label for c in rules.exceeded_caps(Channel.SMS, AT, contacts, POLICY.caps)] == ["sms:1/day",
                                                                                             "all:2/week"]


def test_reason_order_consent_policy_then_quiet_hours() -> None:
    state = ContactState(do_not_contact=True, last_complaint=AT)
    request = ScreeningRequest("c", Channel.SMS, AT.replace(hour=15), FACTS,  # 23:00 in Shanghai
                               (OfferSubject("d", ProductType.DEPOSIT, 1),))
    [verdict] = rules.screen(request, {}, state=state, policy=POLICY).verdicts
    assert verdict.reasons == (Reason.CONSENT_MISSING, Reason.DO_NOT_CONTACT, Reason.COOL_OFF, Reason.QUIET_HOURS)


def test_caps_setting_parses_and_defaults() -> None:
    assert [c.label for c in parse_caps("sms:1/day,3/week;email:2/week;all:5/month")] == [
        "sms:1/day", "sms:3/week", "email:2/week", "all:5/month"]
    assert parse_caps("none") == ()
    policy = contact_policy_from({})
    assert [c.label for c in policy.caps] == ["sms:1/day", "sms:3/week", "email:2/week", "all:5/week"]
    assert policy.cool_off == timedelta(days=30) and policy.reservation_ttl == timedelta(seconds=900)
    custom = contact_policy_from({"RISK_COOL_OFF_DAYS": "7", "RISK_RESERVATION_TTL_SECONDS": "60"})
    assert (custom.cool_off, custom.reservation_ttl) == (timedelta(days=7), timedelta(seconds=60))


@pytest.mark.parametrize("raw", ["sms", "fax:1/day", "sms:0/day", "sms:1/year", "in_app:1/day", "sms:x/day"])
def test_bad_caps_fail_fast_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="RISK_CAPS"):
        parse_caps(raw)


def test_bad_cool_off_fails_fast() -> None:
    with pytest.raises(ConfigError, match="RISK_COOL_OFF_DAYS"):
        contact_policy_from({"RISK_COOL_OFF_DAYS": "-3"})
