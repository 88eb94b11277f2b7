"""Trigger conditions over one event: the profile condition language, evaluated in memory."""

from datetime import UTC, datetime

import pytest
from google.protobuf import timestamp_pb2

from lodestar.profile.v1 import event_service_pb2 as epb
from services.campaign.feed_client import feed_event
from services.campaign.triggers import FeedEvent, compile_trigger, matches, trigger_delivery_key, trigger_launch_id
from services.platform.errors import InvalidArgument

WHEN = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)


def event(**fields):
    return FeedEvent("e-1", "c-1", WHEN, WHEN, fields)


BIG_PURCHASE = event(kind="transaction", amount="9000.50", currency="CNY", direction="debit",
                     merchant_category="travel", channel="pos")
SALARY = event(kind="transaction", amount="15000", currency="CNY", direction="credit", merchant_category="salary",
               channel="transfer")
LATE = event(kind="repayment", amount="300", days_late=12, product="credit_card", due_date="2026-11-01")


@pytest.mark.parametrize(("condition", "hits"), [
    ('kind = "transaction" and txn.amount > 5000', [BIG_PURCHASE, SALARY]),
    ("event.amount > 9000.5", [SALARY]),
    ('direction = "credit" and merchant_category = "salary"', [SALARY]),
    ('merchant_category in ("travel", "airlines") and amount >= 9000.50', [BIG_PURCHASE]),
    ("days_late > 7", [LATE]),
    ('due_date < date("2026-11-15") and product = "credit_card"', [LATE]),
    ("not (amount > 1000)", [LATE]),
    ('merchant_category = "txn.amount"', []),  # text inside a literal is not rewritten
    ("days_late is null", [BIG_PURCHASE, SALARY]),
])
def test_conditions_match_exactly_the_events_they_describe(condition, hits):
    node = compile_trigger(condition)
    assert [e for e in (BIG_PURCHASE, SALARY, LATE) if matches(node, e)] == hits


def test_canonical_text_names_the_event_fields():
    from services.profile.conditions import to_text

    assert to_text(compile_trigger("txn.amount > 5000")) == "attr.amount > 5000"


@pytest.mark.parametrize("condition", ["amount >", "colour = 3", 'amount = "high"', "sum(txn.amount, 30d) > 1"])
def test_bad_conditions_are_invalid_argument_on_the_condition(condition):
    with pytest.raises(InvalidArgument) as caught:
        compile_trigger(condition)
    assert caught.value.violations[0].field == "trigger.condition"
    assert caught.value.metadata["field"] == "trigger.condition"


def test_keys():
    assert trigger_delivery_key("travel", "e-9") == "trigger:travel:e-9"
    assert len(trigger_launch_id("travel")) == 32 and trigger_launch_id("travel") == trigger_launch_id("travel")
    assert trigger_launch_id("travel") != trigger_launch_id("salary")


def test_feed_events_flatten_the_profile_event():
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(WHEN)
    got = feed_event(epb.Event(event_id="e-1", customer_id="c-1", occurred_at=when, recorded_at=when,
                               transaction=epb.Transaction(amount="15000", currency="CNY",
                                                           merchant_category="salary", channel="transfer",
                                                           direction=epb.TRANSACTION_DIRECTION_CREDIT)))
    assert got == SALARY
    repayment = feed_event(epb.Event(event_id="e-1", customer_id="c-1", occurred_at=when, recorded_at=when,
                                     repayment=epb.Repayment(amount="300", due_date="2026-11-01", days_late=12,
                                                             product="credit_card")))
    assert repayment == LATE
