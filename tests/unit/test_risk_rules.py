"""The pure screening rules of services/risk/rules.py: every reason code, the boundaries, the precedence."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from services.platform.config import ConfigError
from services.risk import rules
from services.risk.config import quiet_hours_from
from services.risk.domain import (
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    CustomerFacts,
    OfferSubject,
    ProductType,
    QuietHours,
    Reason,
    ScreeningRequest,
    Verdict,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
# 12:00 in Shanghai: outside quiet hours.
NOON_SHANGHAI = datetime(2026, 11, 25, 12, 0, tzinfo=SHANGHAI).astimezone(UTC)
ADULT = CustomerFacts(birth_date=date(1990, 5, 17), time_zone="Asia/Shanghai", risk_tolerance=3)
DEPOSIT = OfferSubject("deposit-1", ProductType.DEPOSIT, 1)
CARD = OfferSubject("card-1", ProductType.CREDIT_CARD, 2)


def consent(channel: Channel = Channel.SMS, purpose: ConsentPurpose = ConsentPurpose.MARKETING,
            action: ConsentAction = ConsentAction.GRANT, expire_time: datetime | None = None,
            ) -> dict[rules.ConsentKey, ConsentRecord]:
    record = ConsentRecord("c-1", channel, purpose, action, "mobile-app",
                           record_time=NOON_SHANGHAI - timedelta(days=30), expire_time=expire_time)
    return {(channel, purpose): record}


GRANTED_SMS = consent()


def screen_one(offer: OfferSubject = DEPOSIT, *, channel: Channel = Channel.SMS, facts: CustomerFacts = ADULT,
               at: datetime = NOON_SHANGHAI, consents: dict[rules.ConsentKey, ConsentRecord] | None = None,
               quiet: QuietHours = rules.DEFAULT_QUIET_HOURS) -> tuple[Verdict, tuple[Reason, ...]]:
    request = ScreeningRequest("c-1", channel, at, facts, (offer,))
    result = rules.screen(request, GRANTED_SMS if consents is None else consents, quiet)
    assert result.policy_version == rules.POLICY_VERSION
    (verdict,) = result.verdicts
    assert verdict.offer_id == offer.offer_id
    return verdict.verdict, verdict.reasons


def local(hour: int, minute: int = 0, second: int = 0, micro: int = 0, zone: ZoneInfo = SHANGHAI) -> datetime:
    return datetime(2026, 11, 25, hour, minute, second, micro, tzinfo=zone).astimezone(UTC)


# --- the baseline -------------------------------------------------------------------------------------------

def test_consented_adult_in_daytime_is_allowed_with_no_reasons() -> None:
    assert screen_one() == (Verdict.ALLOW, ())


def test_policy_version_is_the_documented_one() -> None:
    assert rules.POLICY_VERSION == "2026.12-1"


# --- consent ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channel", sorted(rules.OUTBOUND_CHANNELS))
def test_outbound_channel_without_any_consent_record_is_denied(channel: Channel) -> None:
    assert screen_one(channel=channel, consents={}) == (Verdict.DENY, (Reason.CONSENT_MISSING,))


@pytest.mark.parametrize("channel", sorted(rules.OUTBOUND_CHANNELS))
def test_outbound_channel_with_marketing_grant_on_that_channel_is_allowed(channel: Channel) -> None:
    assert screen_one(channel=channel, consents=consent(channel)) == (Verdict.ALLOW, ())


def test_withdrawn_consent_is_missing() -> None:
    withdrawn = consent(action=ConsentAction.WITHDRAW)
    assert screen_one(consents=withdrawn) == (Verdict.DENY, (Reason.CONSENT_MISSING,))


def test_grant_on_another_channel_or_purpose_does_not_count() -> None:
    assert screen_one(consents=consent(Channel.EMAIL)) == (Verdict.DENY, (Reason.CONSENT_MISSING,))
    profiling = consent(purpose=ConsentPurpose.PROFILING)
    assert screen_one(consents=profiling) == (Verdict.DENY, (Reason.CONSENT_MISSING,))


def test_grant_expiring_exactly_at_contact_time_no_longer_counts() -> None:
    at_contact = consent(expire_time=NOON_SHANGHAI)
    assert screen_one(consents=at_contact) == (Verdict.DENY, (Reason.CONSENT_MISSING,))


def test_grant_expiring_just_after_contact_time_counts() -> None:
    just_after = consent(expire_time=NOON_SHANGHAI + timedelta(microseconds=1))
    assert screen_one(consents=just_after) == (Verdict.ALLOW, ())


def test_expired_grant_is_missing() -> None:
    expired = consent(expire_time=NOON_SHANGHAI - timedelta(days=1))
    assert screen_one(consents=expired) == (Verdict.DENY, (Reason.CONSENT_MISSING,))


def test_in_app_needs_no_consent() -> None:
    assert screen_one(channel=Channel.IN_APP, consents={}) == (Verdict.ALLOW, ())


def test_partner_needs_partner_sharing_consent_on_channel_partner() -> None:
    assert screen_one(channel=Channel.PARTNER, consents={}) == (Verdict.DENY, (Reason.CONSENT_MISSING,))
    marketing_only = consent(Channel.PARTNER, ConsentPurpose.MARKETING)
    assert screen_one(channel=Channel.PARTNER, consents=marketing_only) == (Verdict.DENY, (Reason.CONSENT_MISSING,))
    sharing = consent(Channel.PARTNER, ConsentPurpose.PARTNER_SHARING)
    assert screen_one(channel=Channel.PARTNER, consents=sharing) == (Verdict.ALLOW, ())


def test_required_consent_per_channel() -> None:
    assert rules.required_consent(Channel.WECHAT) == (Channel.WECHAT, ConsentPurpose.MARKETING)
    assert rules.required_consent(Channel.PARTNER) == (Channel.PARTNER, ConsentPurpose.PARTNER_SHARING)
    assert rules.required_consent(Channel.IN_APP) is None


# --- quiet hours --------------------------------------------------------------------------------------------

def test_21_00_exactly_is_quiet() -> None:
    assert screen_one(at=local(21)) == (Verdict.HOLD, (Reason.QUIET_HOURS,))


def test_just_before_21_00_is_not_quiet() -> None:
    assert screen_one(at=local(20, 59, 59, 999999)) == (Verdict.ALLOW, ())


def test_08_00_exactly_is_not_quiet() -> None:
    assert screen_one(at=local(8)) == (Verdict.ALLOW, ())


def test_just_before_08_00_is_quiet() -> None:
    assert screen_one(at=local(7, 59, 59, 999999)) == (Verdict.HOLD, (Reason.QUIET_HOURS,))


def test_midnight_is_quiet() -> None:
    assert screen_one(at=local(0)) == (Verdict.HOLD, (Reason.QUIET_HOURS,))


def test_quiet_hours_use_the_customers_zone_not_utc() -> None:
    # 13:30 UTC is 21:30 in Shanghai (quiet) but 13:30 in London (not quiet).
    at = datetime(2026, 11, 25, 13, 30, tzinfo=UTC)
    assert screen_one(at=at) == (Verdict.HOLD, (Reason.QUIET_HOURS,))
    london = CustomerFacts(birth_date=date(1990, 5, 17), time_zone="Europe/London", risk_tolerance=3)
    assert screen_one(at=at, facts=london) == (Verdict.ALLOW, ())


def test_quiet_hours_follow_daylight_saving_time() -> None:
    lisbon = CustomerFacts(region="PT", risk_tolerance=3)
    # 20:30 UTC is 21:30 in Lisbon in summer (WEST, UTC+1) and 20:30 in winter (WET, UTC+0).
    assert screen_one(at=datetime(2026, 7, 1, 20, 30, tzinfo=UTC), facts=lisbon) == (
        Verdict.HOLD, (Reason.QUIET_HOURS,))
    assert screen_one(at=datetime(2026, 1, 15, 20, 30, tzinfo=UTC), facts=lisbon) == (Verdict.ALLOW, ())


@pytest.mark.parametrize("channel", [Channel.IN_APP, Channel.PARTNER])
def test_quiet_hours_apply_to_outbound_channels_only(channel: Channel) -> None:
    consents = consent(Channel.PARTNER, ConsentPurpose.PARTNER_SHARING)
    assert screen_one(channel=channel, at=local(23), consents=consents) == (Verdict.ALLOW, ())


def test_configured_window_that_does_not_wrap_midnight() -> None:
    lunch = QuietHours(time(12, 0), time(14, 0))
    assert screen_one(at=local(12), quiet=lunch) == (Verdict.HOLD, (Reason.QUIET_HOURS,))
    assert screen_one(at=local(14), quiet=lunch) == (Verdict.ALLOW, ())
    assert screen_one(at=local(23), quiet=lunch) == (Verdict.ALLOW, ())


def test_empty_window_means_no_quiet_hours() -> None:
    never = QuietHours(time(21, 0), time(21, 0))
    assert screen_one(at=local(21), quiet=never) == (Verdict.ALLOW, ())


# --- time zone ----------------------------------------------------------------------------------------------

def test_unknown_time_zone_holds_outbound_contact() -> None:
    nowhere = CustomerFacts(birth_date=date(1990, 5, 17), risk_tolerance=3)
    assert screen_one(facts=nowhere) == (Verdict.HOLD, (Reason.TIMEZONE_UNKNOWN,))


def test_region_outside_the_table_is_unknown() -> None:
    multi_zone = CustomerFacts(region="US", risk_tolerance=3)
    assert screen_one(facts=multi_zone) == (Verdict.HOLD, (Reason.TIMEZONE_UNKNOWN,))


def test_unknown_time_zone_does_not_matter_in_app() -> None:
    assert screen_one(channel=Channel.IN_APP, facts=CustomerFacts(risk_tolerance=3)) == (Verdict.ALLOW, ())


def test_no_zone_is_never_the_servers_zone() -> None:
    assert rules.time_zone_for(CustomerFacts()) is None


@pytest.mark.parametrize(
    ("region", "zone"),
    [
        ("CN", "Asia/Shanghai"), ("HK", "Asia/Hong_Kong"), ("SG", "Asia/Singapore"), ("PT", "Europe/Lisbon"),
        ("GB", "Europe/London"), ("DE", "Europe/Berlin"), ("FR", "Europe/Paris"), ("JP", "Asia/Tokyo"),
        ("CN-31", "Asia/Shanghai"), ("cn-44", "Asia/Shanghai"), ("PT-30", "Europe/Lisbon"),
    ],
)
def test_region_to_time_zone_inference(region: str, zone: str) -> None:
    assert rules.time_zone_for(CustomerFacts(region=region)) == ZoneInfo(zone)


@pytest.mark.parametrize("region", ["", "US", "RU-MOW", "XX", "-"])
def test_regions_without_a_single_zone_stay_unknown(region: str) -> None:
    assert rules.time_zone_for(CustomerFacts(region=region)) is None


def test_explicit_time_zone_wins_over_region() -> None:
    facts = CustomerFacts(time_zone="Europe/London", region="CN")
    assert rules.time_zone_for(facts) == ZoneInfo("Europe/London")


def test_region_inferred_zone_drives_quiet_hours() -> None:
    shanghai_by_region = CustomerFacts(region="CN-31", risk_tolerance=3)
    assert screen_one(at=local(22), facts=shanghai_by_region) == (Verdict.HOLD, (Reason.QUIET_HOURS,))


# --- credit products ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("product", sorted(rules.CREDIT_PRODUCTS))
def test_credit_product_with_unknown_birth_date_is_denied(product: ProductType) -> None:
    facts = CustomerFacts(time_zone="Asia/Shanghai", risk_tolerance=3)
    offer = OfferSubject("credit", product, 0)
    assert screen_one(offer, facts=facts) == (Verdict.DENY, (Reason.AGE_UNKNOWN,))


def test_unknown_birth_date_is_fine_for_a_non_credit_product() -> None:
    facts = CustomerFacts(time_zone="Asia/Shanghai", risk_tolerance=3)
    assert screen_one(DEPOSIT, facts=facts) == (Verdict.ALLOW, ())


def test_minor_is_denied_credit() -> None:
    minor = CustomerFacts(birth_date=date(2010, 1, 1), time_zone="Asia/Shanghai", risk_tolerance=3)
    assert screen_one(CARD, facts=minor) == (Verdict.DENY, (Reason.UNDERAGE,))
    assert screen_one(DEPOSIT, facts=minor) == (Verdict.ALLOW, ())


def test_18th_birthday_at_contact_time_counts_as_adult() -> None:
    birthday = CustomerFacts(birth_date=date(2008, 11, 25), time_zone="Asia/Shanghai", risk_tolerance=3)
    assert screen_one(CARD, facts=birthday, at=local(8)) == (Verdict.ALLOW, ())


def test_the_day_before_the_18th_birthday_is_underage() -> None:
    tomorrow = CustomerFacts(birth_date=date(2008, 11, 26), time_zone="Asia/Shanghai", risk_tolerance=3)
    assert screen_one(CARD, facts=tomorrow, at=local(20, 59)) == (Verdict.DENY, (Reason.UNDERAGE,))


def test_age_uses_the_customers_local_date() -> None:
    # 17:00 UTC on 25 Nov is 01:00 on 26 Nov in Shanghai: the 18th birthday there, not yet in UTC.
    at = datetime(2026, 11, 25, 17, 0, tzinfo=UTC)
    in_shanghai = CustomerFacts(birth_date=date(2008, 11, 26), time_zone="Asia/Shanghai", risk_tolerance=3)
    assert screen_one(CARD, channel=Channel.IN_APP, facts=in_shanghai, at=at) == (Verdict.ALLOW, ())
    zone_unknown = CustomerFacts(birth_date=date(2008, 11, 26), risk_tolerance=3)
    assert screen_one(CARD, channel=Channel.IN_APP, facts=zone_unknown, at=at) == (
        Verdict.DENY, (Reason.UNDERAGE,))


def test_age_on_leap_day_birthday() -> None:
    born = date(2008, 2, 29)
    assert rules.age_on(born, date(2026, 2, 28)) == 17
    assert rules.age_on(born, date(2026, 3, 1)) == 18
    assert rules.age_on(born, date(2028, 2, 29)) == 20


def test_customer_in_collections_is_denied_credit_only() -> None:
    owing = CustomerFacts(birth_date=date(1990, 5, 17), time_zone="Asia/Shanghai", risk_tolerance=3,
                          in_collections=True)
    assert screen_one(CARD, facts=owing) == (Verdict.DENY, (Reason.IN_COLLECTIONS,))
    assert screen_one(DEPOSIT, facts=owing) == (Verdict.ALLOW, ())


# --- suitability --------------------------------------------------------------------------------------------

def test_product_riskier_than_tolerance_is_unsuitable() -> None:
    wealth = OfferSubject("wealth-1", ProductType.WEALTH, 4)
    assert screen_one(wealth) == (Verdict.DENY, (Reason.UNSUITABLE,))


def test_product_risk_equal_to_tolerance_is_suitable() -> None:
    wealth = OfferSubject("wealth-1", ProductType.WEALTH, 3)
    assert screen_one(wealth) == (Verdict.ALLOW, ())


def test_unspecified_tolerance_counts_as_c1() -> None:
    unknown = CustomerFacts(birth_date=date(1990, 5, 17), time_zone="Asia/Shanghai")
    r2 = OfferSubject("bond-1", ProductType.SAVINGS_BOND, 2)
    r1 = OfferSubject("bond-2", ProductType.SAVINGS_BOND, 1)
    assert screen_one(r2, facts=unknown) == (Verdict.DENY, (Reason.UNSUITABLE,))
    assert screen_one(r1, facts=unknown) == (Verdict.ALLOW, ())


def test_product_without_risk_level_is_not_checked_for_suitability() -> None:
    unknown = CustomerFacts(birth_date=date(1990, 5, 17), time_zone="Asia/Shanghai")
    assert screen_one(OfferSubject("deposit-0", ProductType.DEPOSIT, 0), facts=unknown) == (Verdict.ALLOW, ())


# --- vulnerable customers -----------------------------------------------------------------------------------

def vulnerable(tolerance: int = 5) -> CustomerFacts:
    return CustomerFacts(birth_date=date(1950, 1, 1), time_zone="Asia/Shanghai", risk_tolerance=tolerance,
                         vulnerable=True)


def test_vulnerable_customer_is_denied_r4_and_above() -> None:
    for level in (4, 5):
        offer = OfferSubject("wealth-1", ProductType.WEALTH, level)
        assert screen_one(offer, facts=vulnerable()) == (Verdict.DENY, (Reason.VULNERABLE_CUSTOMER,))


def test_vulnerable_customer_may_get_r3() -> None:
    assert screen_one(OfferSubject("wealth-1", ProductType.WEALTH, 3), facts=vulnerable()) == (Verdict.ALLOW, ())


def test_vulnerable_customer_is_denied_any_credit_product() -> None:
    loan = OfferSubject("loan-1", ProductType.CONSUMER_LOAN, 1)
    assert screen_one(loan, facts=vulnerable()) == (Verdict.DENY, (Reason.VULNERABLE_CUSTOMER,))


def test_the_same_r4_product_is_fine_for_a_robust_aggressive_customer() -> None:
    robust = CustomerFacts(birth_date=date(1990, 5, 17), time_zone="Asia/Shanghai", risk_tolerance=5)
    assert screen_one(OfferSubject("wealth-1", ProductType.WEALTH, 4), facts=robust) == (Verdict.ALLOW, ())


# --- combinations and precedence ----------------------------------------------------------------------------

def test_every_applicable_reason_is_listed_in_rule_order() -> None:
    worst = CustomerFacts(birth_date=date(2012, 3, 3), time_zone="Asia/Shanghai", in_collections=True,
                          vulnerable=True)
    offer = OfferSubject("card-9", ProductType.CREDIT_CARD, 3)
    assert screen_one(offer, at=local(22), consents={}, facts=worst) == (
        Verdict.DENY,
        (Reason.CONSENT_MISSING, Reason.QUIET_HOURS, Reason.UNDERAGE, Reason.IN_COLLECTIONS, Reason.UNSUITABLE,
         Reason.VULNERABLE_CUSTOMER),
    )


def test_age_unknown_and_timezone_unknown_together() -> None:
    nothing_known = CustomerFacts()
    assert screen_one(CARD, facts=nothing_known) == (
        Verdict.DENY, (Reason.TIMEZONE_UNKNOWN, Reason.AGE_UNKNOWN, Reason.UNSUITABLE))


def test_deny_wins_over_hold_and_keeps_the_hold_reason() -> None:
    assert screen_one(at=local(22), consents={}) == (Verdict.DENY, (Reason.CONSENT_MISSING, Reason.QUIET_HOURS))


def test_hold_only_reasons_give_hold() -> None:
    assert rules.verdict_for([Reason.QUIET_HOURS, Reason.TIMEZONE_UNKNOWN]) == Verdict.HOLD


@pytest.mark.parametrize("reason", [r for r in Reason if r not in rules.HOLD_REASONS])
def test_any_deny_reason_denies_even_beside_hold_reasons(reason: Reason) -> None:
    assert rules.verdict_for([Reason.QUIET_HOURS, reason]) == Verdict.DENY


def test_no_reason_allows() -> None:
    assert rules.verdict_for([]) == Verdict.ALLOW


def test_each_offer_gets_its_own_verdict_in_request_order() -> None:
    offers = (DEPOSIT, OfferSubject("wealth-5", ProductType.WEALTH, 5), CARD)
    minor = CustomerFacts(birth_date=date(2010, 1, 1), time_zone="Asia/Shanghai", risk_tolerance=3)
    result = rules.screen(ScreeningRequest("c-1", Channel.SMS, NOON_SHANGHAI, minor, offers), GRANTED_SMS)
    assert [(v.offer_id, v.verdict, v.reasons) for v in result.verdicts] == [
        ("deposit-1", Verdict.ALLOW, ()),
        ("wealth-5", Verdict.DENY, (Reason.UNSUITABLE,)),
        ("card-1", Verdict.DENY, (Reason.UNDERAGE,)),
    ]


def test_contact_reasons_apply_to_every_offer() -> None:
    offers = (DEPOSIT, OfferSubject("deposit-2", ProductType.DEPOSIT, 1))
    result = rules.screen(ScreeningRequest("c-1", Channel.EMAIL, local(23), ADULT, offers), {})
    assert [v.reasons for v in result.verdicts] == [(Reason.CONSENT_MISSING, Reason.QUIET_HOURS)] * 2


def test_naive_contact_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        rules.screen(ScreeningRequest("c-1", Channel.SMS, datetime(2026, 1, 1, 12), ADULT, (DEPOSIT,)), {})


# --- settings -----------------------------------------------------------------------------------------------

def test_quiet_hours_default_to_21_to_08() -> None:
    assert quiet_hours_from({}) == QuietHours(time(21, 0), time(8, 0))


def test_quiet_hours_from_settings() -> None:
    extra = {"RISK_QUIET_HOURS_START": "22:30", "RISK_QUIET_HOURS_END": "07:15"}
    assert quiet_hours_from(extra) == QuietHours(time(22, 30), time(7, 15))


@pytest.mark.parametrize("raw", ["24:00", "7:00", "21", "21:60", "nine"])
def test_malformed_quiet_hours_fail_fast_naming_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="RISK_QUIET_HOURS_START"):
        quiet_hours_from({"RISK_QUIET_HOURS_START": raw})
