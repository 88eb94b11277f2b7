"""Response intake's pure parts: the proto -> input mapping with its per-event reasons, the event checks, the
settings' validation."""

from datetime import UTC, datetime

import pytest

from lodestar.campaign.v1 import response_service_pb2 as pb
from services.campaign import responses
from services.campaign.response_handlers import check_settings, event_from_proto
from services.campaign.responses import ResponseInput, ResponseSettings, _check, group_name
from services.platform.config import ConfigError
from services.platform.timestamps import to_timestamp

WHEN = datetime(2026, 5, 1, 12, tzinfo=UTC)


def ev(**fields):
    fields.setdefault("outcome", pb.RESPONSE_OUTCOME_OPENED)
    fields.setdefault("response_time", to_timestamp(WHEN))
    return pb.ResponseEvent(**fields)


def test_a_good_event_maps_field_by_field():
    got = event_from_proto(ev(campaign="campaigns/spring", customer_id="c-1", outcome=pb.RESPONSE_OUTCOME_CONVERTED,
                              revenue=12.5, currency_code="CNY", offer_id="dep", event_id="e1"))
    assert got == ResponseInput(outcome="CONVERTED", response_time=WHEN, campaign_id="spring", customer_id="c-1",
                                revenue=12.5, currency_code="CNY", offer_id="dep", event_id="e1")
    assert _check(got) == ""
    decision = event_from_proto(ev(decision="decisions/abc123"))
    assert (decision.decision_id, _check(decision)) == ("abc123", "")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"campaign": "spring", "customer_id": "c"}, "INVALID_CAMPAIGN_NAME"),
    ({"decision": "decision/x"}, "INVALID_DECISION_NAME"),
    ({"delivery_key": "k", "customer_id": "bad id"}, "INVALID_CUSTOMER_ID"),
    ({"delivery_key": "k" * 201}, "INVALID_DELIVERY_KEY"),
    ({"delivery_key": "k", "offer_id": "no good"}, "INVALID_OFFER_ID"),
    ({"delivery_key": "k", "currency_code": "cny"}, "INVALID_CURRENCY_CODE"),
    ({"delivery_key": "k", "outcome": pb.RESPONSE_OUTCOME_UNSPECIFIED}, "OUTCOME_REQUIRED"),
    ({"delivery_key": "k", "outcome": 99}, "OUTCOME_REQUIRED"),
    ({"delivery_key": "k", "revenue": float("nan")}, "INVALID_REVENUE"),
    ({"delivery_key": "k", "revenue": -1.0, "outcome": pb.RESPONSE_OUTCOME_CONVERTED, "currency_code": "CNY"},
     "INVALID_REVENUE"),
    ({"delivery_key": "k", "revenue": 3.0, "currency_code": "CNY"}, "REVENUE_WITHOUT_CONVERSION"),
    ({"delivery_key": "k", "revenue": 3.0, "outcome": pb.RESPONSE_OUTCOME_CONVERTED}, "CURRENCY_REQUIRED"),
    ({"customer_id": "c"}, "ATTRIBUTION_KEY_REQUIRED"),
    ({"campaign": "campaigns/spring"}, "ATTRIBUTION_KEY_REQUIRED"),
])
def test_each_malformed_event_has_its_reason(fields, reason):
    assert _check(event_from_proto(ev(**fields))) == reason


def test_a_missing_or_impossible_time_is_named():
    missing = pb.ResponseEvent(outcome=pb.RESPONSE_OUTCOME_OPENED, delivery_key="k")
    assert _check(event_from_proto(missing)) == "RESPONSE_TIME_REQUIRED"
    impossible = ev(delivery_key="k")
    impossible.response_time.seconds = 253402300800 + 10
    assert _check(event_from_proto(impossible)) == "INVALID_TIMESTAMP"


def test_group_names():
    assert [group_name(g, ["a", "b"]) for g in (0, 1, -1, -2)] == ["a", "b", "control", "global_holdout"]


def _settings(extra):
    from services.campaign.app import DEFINITION

    return DEFINITION.settings_from_env({"DATABASE_URL": "sqlite+aiosqlite:///:memory:", **extra})


def test_settings_defaults_and_values():
    assert ResponseSettings.from_settings(_settings({})) == ResponseSettings()
    got = ResponseSettings.from_settings(_settings({"CAMPAIGN_CURRENCY": "EUR",
                                                    "CAMPAIGN_ATTRIBUTION_WINDOW_DAYS": "7"}))
    assert (got.currency, got.attribution_window.days) == ("EUR", 7)


@pytest.mark.parametrize(("name", "value"), [
    ("CAMPAIGN_CURRENCY", "euro"), ("CAMPAIGN_ATTRIBUTION_WINDOW_DAYS", "0"),
    ("CAMPAIGN_ATTRIBUTION_WINDOW_DAYS", "x"), ("CAMPAIGN_LEARNING_INTERVAL_SECONDS", "0"),
    ("CAMPAIGN_LEARNING_AUTO_PROMOTE", "maybe"),
])
def test_bad_settings_stop_the_service_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=name):
        check_settings(_settings({name: value}))


def test_every_disposition_has_a_contract_value():
    names = {v.name.removeprefix("RESPONSE_DISPOSITION_") for v in pb.ResponseDisposition.DESCRIPTOR.values}
    assert names - {"UNSPECIFIED"} == set(responses.DISPOSITIONS)
