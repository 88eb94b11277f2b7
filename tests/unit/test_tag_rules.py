"""Pure parts of rule and external tags: name and value rules, SetCustomerTags request checks, the SQL a rule
applies (values bound, never in the text), feature names the catalog accepts, the exported age and age band,
and the semi-join the compiler uses for feature comparisons."""

from datetime import UTC, date, datetime

import pytest
from sqlalchemy.dialects import postgresql, sqlite

from lodestar.profile.v1 import tag_service_pb2 as pb
from services.platform.errors import InvalidArgument
from services.platform.validation import Violations
from services.profile.conditions import Catalog, compile_sql, parse_condition
from services.profile.conditions.nodes import Not
from services.profile.db import TagDefinitionRow
from services.profile.feature_store import FEATURE_NAMES
from services.profile.segments import SCHEMA, _age_value
from services.profile.tag_handlers import check_items
from services.profile.tag_rules import apply_rule, check_definition, check_tag_name, check_tag_value
from services.profile.tags import BUILTIN_TAGS, age_band


def _violations(check, *args):
    violations = Violations()
    check(*args, "f", violations)
    return [v.description for v in violations.items]


@pytest.mark.parametrize("name", ["churn_risk", "a", "x1_y2", "a" * 32])
def test_good_tag_names(name):
    assert _violations(check_tag_name, name) == []


@pytest.mark.parametrize(("name", "why"), [
    ("", "is required"), ("Churn", "lower_snake_case"), ("1abc", "lower_snake_case"), ("a-b", "lower_snake_case"),
    ("a" * 33, "lower_snake_case"), ("lifecycle_stage", "built-in"), ("age_band", "built-in"),
])
def test_bad_tag_names(name, why):
    assert why in _violations(check_tag_name, name)[0]


def test_builtin_names_are_what_compute_tags_writes():
    assert BUILTIN_TAGS == {"lifecycle_stage", "value_tier", "clv_estimate", "risk_preference", "age_band",
                            "income_tier", "region_tier"}


@pytest.mark.parametrize(("value", "ok"), [("high", True), ("a" * 64, True), ("", False), ("a" * 65, False),
                                           (" high", False), ("hi\nx", False)])
def test_tag_values(value, ok):
    assert (_violations(check_tag_value, value) == []) is ok


def test_check_definition_lists_every_problem():
    with pytest.raises(InvalidArgument) as caught:
        check_definition("bad id", "Value_Tier", "", "x" * 1001)
    assert [v.field for v in caught.value.violations] == [
        "definition.definition_id", "definition.tag", "definition.value", "definition.description"]
    check_definition("d-1", "spend_band", "high", "")  # no error


def test_check_items_accepts_a_good_request_and_never_echoes_values():
    request = pb.SetCustomerTagsRequest(items=[pb.CustomerTagValues(customer_id="c-1", tags={"churn_risk": "high"}),
                                               pb.CustomerTagValues(customer_id="c-2", tags={"a": "1", "b": "2"})],
                                        source="campaign")
    assert check_items(request) == [("c-1", {"churn_risk": "high"}), ("c-2", {"a": "1", "b": "2"})]
    secret = "x" * 70
    bad = pb.SetCustomerTagsRequest(items=[pb.CustomerTagValues(customer_id="c-1", tags={"churn_risk": secret})],
                                    source="Campaign!")
    with pytest.raises(InvalidArgument) as caught:
        check_items(bad)
    assert [v.field for v in caught.value.violations] == ["source", "items[0].tags[churn_risk]"]
    assert secret not in caught.value.message


def test_check_items_limits():
    too_many = pb.SetCustomerTagsRequest(
        items=[pb.CustomerTagValues(customer_id=f"c-{i}", tags={"t": "v"}) for i in range(1001)], source="x")
    with pytest.raises(InvalidArgument) as caught:
        check_items(too_many)
    assert [v.field for v in caught.value.violations] == ["items"]
    empty = pb.SetCustomerTagsRequest(items=[pb.CustomerTagValues(customer_id="c-1")], source="x")
    with pytest.raises(InvalidArgument) as caught:
        check_items(empty)
    assert [v.field for v in caught.value.violations] == ["items[0].tags"]


@pytest.mark.parametrize("dialect", [sqlite.dialect(), postgresql.dialect()])
def test_apply_rule_binds_every_value(dialect):
    definition = TagDefinitionRow(definition_id="d-secret", tag="spend_band", value="VALUE'X", condition_text="")
    where = compile_sql(parse_condition('region = "CN-99" and feature.monetary_90d > 1234'), SCHEMA,
                        as_of=datetime(2026, 1, 1, tzinfo=UTC))
    statement = apply_rule(definition, where, after="c-0001", last="c-0999", now=datetime(2026, 1, 1, tzinfo=UTC))
    sql = str(statement.compile(dialect=dialect))
    assert sql.startswith("INSERT INTO customer_tag_values (customer_id, name, value, kind, source, update_time)")
    for value in ("d-secret", "spend_band", "VALUE'X", "CN-99", "1234", "c-0001", "c-0999", "monetary_90d"):
        assert value not in sql
    assert "NOT (EXISTS" in sql


def test_feature_names_known_to_the_catalog():
    for name in ("monetary_90d", "frequency_prev_90d", "recency_days", "tenure_days", "products_held_count",
                 "spend_category_groceries_365d", "spend_tod_evening_30d", "spend_weekday_mon_90d",
                 "response_converted_count_365d", "product_consumer_loan", "digital_login_count_30d",
                 "repayment_max_days_late_365d"):
        assert name in FEATURE_NAMES, name
    for name in ("monetary_91d", "spend_category__365d", "bogus", "spend_category_Travel_365d", 7):
        assert name not in FEATURE_NAMES, name
    assert "monetary_90d" in set(FEATURE_NAMES) and len(FEATURE_NAMES) == len(set(FEATURE_NAMES))


def test_feature_conditions_pass_the_checker_with_the_store():
    catalog = Catalog(features=FEATURE_NAMES)
    parse_condition("feature.spend_category_travel_365d > 100", catalog)
    with pytest.raises(Exception) as caught:
        parse_condition("feature.nope > 1", catalog)
    assert getattr(caught.value, "reason", "") == "CONDITION_UNKNOWN_FEATURE"


def test_feature_comparison_is_a_semi_join_only_where_true_matters():
    as_of = datetime(2026, 1, 1, tzinfo=UTC)
    tree = parse_condition("feature.monetary_90d > 5")
    positive = str(compile_sql(tree, SCHEMA, as_of=as_of).compile(dialect=sqlite.dialect()))
    assert positive.startswith("customers.customer_id IN (SELECT customer_features.customer_id")
    negated = str(compile_sql(Not(tree), SCHEMA, as_of=as_of).compile(dialect=sqlite.dialect()))
    assert "IN (SELECT" not in negated and "max(customer_features.value)" in negated


@pytest.mark.parametrize(("birth", "day", "age", "band"), [
    (date(2000, 6, 30), date(2026, 6, 30), 26, "25-34"),
    (date(2000, 7, 1), date(2026, 6, 30), 25, "25-34"),
    (date(2008, 7, 1), date(2026, 6, 30), 17, "minor"),
    (date(2008, 2, 29), date(2026, 2, 28), 17, "minor"),
    (date(2008, 2, 29), date(2026, 3, 1), 18, "18-24"),
    ("1960-01-01", date(2026, 6, 30), 66, "65+"),
    (None, date(2026, 6, 30), None, "unknown"),
])
def test_exported_age_and_band_match_the_age_band_tag(birth, day, age, band):
    assert _age_value("age", birth, day) == age
    assert _age_value("age_band", birth, day) == band
    as_date = date.fromisoformat(birth) if isinstance(birth, str) else birth
    assert age_band(as_date, datetime(day.year, day.month, day.day, 12, tzinfo=UTC)).value == band
