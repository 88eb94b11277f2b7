"""The condition language: parsing, canonical text, protobuf trees, semantic checks and error positions."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import grpc
import pytest

from lodestar.profile.v1 import condition_pb2 as pb
from services.profile.conditions import (
    AttributeInfo,
    Catalog,
    ConditionError,
    ConditionSyntaxError,
    check,
    from_proto,
    parse,
    parse_condition,
    to_invalid_argument,
    to_proto,
    to_text,
)
from services.profile.conditions.nodes import (
    Aggregate,
    And,
    AttributeRef,
    Between,
    Compare,
    CoreField,
    FeatureRef,
    InList,
    IsNull,
    Literal,
    Not,
    Or,
    TagRef,
)

EXAMPLE = 'age between 25 and 35 and tag.lifecycle = "dormant" and sum(txn.amount, 90d) > 5000'


def test_the_issue_example_parses_to_the_expected_tree() -> None:
    assert parse(EXAMPLE) == And((
        Between(CoreField("age"), Literal("int", 25), Literal("int", 35)),
        Compare(TagRef("lifecycle"), "=", Literal("string", "dormant")),
        Compare(Aggregate("sum", "txn", "amount", 90), ">", Literal("int", 5000)),
    ))
    assert to_text(parse(EXAMPLE)) == EXAMPLE


def test_operands_literals_and_predicates() -> None:
    text = ('income >= 1.50 and attr.region = "x" and feature.rfm_recency < -3 and count(login, 7d) != 0 '
            'and opened <= date("2026-01-31") and vip = TRUE and region not in ("CN-31", "CN-11") '
            'and time_zone is not null and tag.tier is null and max(txn.amount, 30d) in (1, 2)')
    node = parse(text)
    assert isinstance(node, And)
    assert node.items == (
        Compare(AttributeRef("income"), ">=", Literal("decimal", Decimal("1.50"))),
        Compare(AttributeRef("region"), "=", Literal("string", "x")),
        Compare(FeatureRef("rfm_recency"), "<", Literal("int", -3)),
        Compare(Aggregate("count", "login", None, 7), "!=", Literal("int", 0)),
        Compare(AttributeRef("opened"), "<=", Literal("date", date(2026, 1, 31))),
        Compare(AttributeRef("vip"), "=", Literal("bool", True)),
        InList(CoreField("region"), (Literal("string", "CN-31"), Literal("string", "CN-11")), negated=True),
        IsNull(CoreField("time_zone"), negated=True),
        IsNull(TagRef("tier")),
        InList(Aggregate("max", "txn", "amount", 30), (Literal("int", 1), Literal("int", 2))),
    )


def test_precedence_not_binds_tighter_than_and_tighter_than_or() -> None:
    a, b, c = (Compare(AttributeRef(n), "=", Literal("int", 1)) for n in "abc")
    assert parse("a = 1 or b = 1 and c = 1") == Or((a, And((b, c))))
    assert parse("not a = 1 and b = 1") == And((Not(a), b))
    assert parse("(a = 1 or b = 1) and c = 1") == And((Or((a, b)), c))
    assert parse("a = 1 and (b = 1 and c = 1)") == And((a, And((b, c))))
    assert parse("NOT not a = 1") == Not(Not(a))


def test_string_escapes_round_trip() -> None:
    node = parse(r'name = "say \"hi\"\\ \n\t\u00e9 /"')
    assert isinstance(node, Compare)
    assert node.value.value == 'say "hi"\\ \n\té /'
    assert parse(to_text(node)) == node


@pytest.mark.parametrize("text", [
    EXAMPLE,
    "a = 1 or b = 2 and not (c = 3 or d = 4)",
    "(a = 1 and b = 2) and c = 3",
    "a = 1 or (b = 2 or c = 3)",
    "not (a = 1 and b = 2)",
    "not not tag.x = \"y\"",
    "x = 100000.0 and y = -0.5 and z = 0.0000001",
    "attr.and = 1 and attr.age = 2 and tag.or = \"x\"",
    "count(txn, 1d) >= 0 or min(repayment.days_late, 3650d) > 30",
    "attr.s in (\"\\u0001\", \"\\\"\")",
])
def test_canonical_text_reparses_to_the_same_tree(text: str) -> None:
    node = parse(text)
    printed = to_text(node)
    assert parse(printed) == node
    assert to_text(parse(printed)) == printed


def test_protobuf_round_trip_and_shape() -> None:
    node = parse(EXAMPLE + ' or not (region in ("a") and vip is not null and d = date("2024-02-29"))')
    msg = to_proto(node)
    assert msg.WhichOneof("node") == "any_of"
    first = msg.any_of.operands[0].all_of.operands[2].comparison
    assert first.operand.aggregate == pb.ConditionAggregate(
        function=pb.CONDITION_AGGREGATE_FUNCTION_SUM, event_type="txn", field="amount", window_days=90)
    assert first.operator == pb.CONDITION_OPERATOR_GREATER and first.value.int_value == 5000
    wire = msg.SerializeToString()
    assert from_proto(pb.Condition.FromString(wire)) == node


@pytest.mark.parametrize("msg, fragment", [
    (pb.Condition(), "empty"),
    (pb.Condition(all_of=pb.ConditionGroup()), "no operands"),
    (pb.Condition(comparison=pb.ConditionComparison(
        operand=pb.ConditionOperand(attribute="a"), value=pb.ConditionValue(int_value=1))), "operator"),
    (pb.Condition(comparison=pb.ConditionComparison(
        operand=pb.ConditionOperand(attribute="a"), operator=pb.CONDITION_OPERATOR_EQUAL,
        value=pb.ConditionValue(decimal_value="NaN"))), "decimal"),
    (pb.Condition(comparison=pb.ConditionComparison(
        operand=pb.ConditionOperand(attribute="a"), operator=pb.CONDITION_OPERATOR_EQUAL,
        value=pb.ConditionValue(date_value="2026-1-1"))), "date"),
    (pb.Condition(null_check=pb.ConditionNullCheck(
        operand=pb.ConditionOperand(core_field=pb.CONDITION_CORE_FIELD_UNSPECIFIED))), "core_field"),
    (pb.Condition(null_check=pb.ConditionNullCheck(operand=pb.ConditionOperand(aggregate=pb.ConditionAggregate(
        function=pb.CONDITION_AGGREGATE_FUNCTION_COUNT, event_type="t", field="x", window_days=3)))), "count"),
])
def test_malformed_trees_are_rejected(msg: pb.Condition, fragment: str) -> None:
    with pytest.raises(ConditionError) as info:
        from_proto(msg)
    assert info.value.reason == "CONDITION_INVALID_TREE"
    assert fragment in info.value.message
    assert info.value.pos is None


def test_trees_from_protobuf_are_checked_too() -> None:
    bad_name = pb.Condition(null_check=pb.ConditionNullCheck(operand=pb.ConditionOperand(attribute="a b")))
    with pytest.raises(ConditionError) as info:
        check(from_proto(bad_name))
    assert info.value.reason == "CONDITION_INVALID_TREE"
    window = pb.Condition(null_check=pb.ConditionNullCheck(operand=pb.ConditionOperand(
        aggregate=pb.ConditionAggregate(function=pb.CONDITION_AGGREGATE_FUNCTION_COUNT, event_type="t",
                                        window_days=0))))
    with pytest.raises(ConditionError) as info:
        check(from_proto(window))
    assert info.value.reason == "CONDITION_WINDOW_OUT_OF_RANGE"


@pytest.mark.parametrize("text, line, column, expected", [
    ("age between 25 35", 1, 16, "'and' (between LOW and HIGH)"),
    ("age >", 1, 6, 'a value: "string", number, true, false or date("YYYY-MM-DD")'),
    ("a = 1\n  and (b = 2", 2, 13, "')' or 'and'/'or'"),
    ("a = 1 b = 2", 1, 7, "'and', 'or' or the end of the condition"),
    ("sum(txn, 90d) > 1", 1, 8, "'.' and a field (sum(<event>.<field>, <N>d))"),
    ("count(txn, 90) > 1", 1, 12, "a window such as 90d"),
    ("x in ()", 1, 7, 'a value: "string", number, true, false or date("YYYY-MM-DD")'),
    ("x is nul", 1, 6, "'null' or 'not null'"),
    ("", 1, 1, "a condition"),
    ("x = \"abc", 1, 5, "a closing '\"'"),
    ("x = 12abc", 1, 5, "digits, a decimal point and digits, or <N>d"),
    ("x = \"\\q\"", 1, 6, "one of \\\" \\\\ \\/ \\n \\t \\r \\b \\f \\uXXXX"),
    ("x = 1 & y = 2", 1, 7, "a name, a value, an operator, '(' or ')'"),
])
def test_syntax_errors_point_at_the_mistake(text: str, line: int, column: int, expected: str) -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse(text)
    error = info.value
    assert (error.reason, error.line, error.column, error.expected) == ("CONDITION_SYNTAX_ERROR", line, column,
                                                                        expected)
    assert error.message.startswith(f"line {line}, column {column}: ")
    caret_line = error.excerpt.splitlines()[-1]
    assert caret_line == " " * (column - 1) + "^"


def test_the_caret_excerpt_shows_the_offending_line() -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse('region = "a"\nand age >> 3')
    assert info.value.pretty() == (
        "line 2, column 10: expected a value: \"string\", number, true, false or date(\"YYYY-MM-DD\"), found '>'\n"
        "and age >> 3\n"
        "         ^"
    )


def test_error_messages_never_echo_values_or_names_found() -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse('email = "alice@example.com" "bob@example.com"')
    assert "example" not in info.value.message
    with pytest.raises(ConditionSyntaxError) as info:
        parse("x = 1 13800138000")
    assert "13800138000" not in info.value.message


def test_limits_are_syntax_errors_not_crashes() -> None:
    with pytest.raises(ConditionSyntaxError) as info:
        parse("(" * 40 + "a = 1" + ")" * 40)
    assert info.value.reason == "CONDITION_TOO_DEEP"
    with pytest.raises(ConditionSyntaxError) as info:
        parse("not " * 1000 + "a = 1")
    assert info.value.reason == "CONDITION_TOO_DEEP"
    with pytest.raises(ConditionSyntaxError) as info:
        parse("a = " + "9" * 5000)
    assert info.value.reason == "CONDITION_VALUE_OUT_OF_RANGE"
    with pytest.raises(ConditionSyntaxError) as info:
        parse("a = 9223372036854775808")
    assert info.value.reason == "CONDITION_VALUE_OUT_OF_RANGE"
    assert parse("a = -9223372036854775808") == Compare(AttributeRef("a"), "=", Literal("int", -(2**63)))
    with pytest.raises(ConditionSyntaxError) as info:
        parse("a = 1 or " * 3000 + "a = 1")
    assert info.value.reason == "CONDITION_TOO_LONG"
    with pytest.raises(ConditionSyntaxError):
        parse('a = "\\u0000"')
    with pytest.raises(ConditionSyntaxError):
        parse('a = date("2026-02-30")')


REGISTRY = {
    "income": AttributeInfo("decimal"),
    "segment": AttributeInfo("enum", allowed_values=("mass", "affluent")),
    "national_id": AttributeInfo("string", pii=True),
    "vip": AttributeInfo("boolean"),
}


@pytest.mark.parametrize("text, reason, column", [
    ("incme > 5", "CONDITION_UNKNOWN_ATTRIBUTE", 1),
    ('age > 3 and income > "high"', "CONDITION_TYPE_MISMATCH", 22),
    ('segment = "poor"', "CONDITION_VALUE_OUT_OF_RANGE", 11),
    ('national_id = "X1"', "CONDITION_PII_FORBIDDEN", 1),
    ("vip > true", "CONDITION_TYPE_MISMATCH", 7),
    ('segment < "mass"', "CONDITION_TYPE_MISMATCH", 11),
    ("age = 30.5", "CONDITION_TYPE_MISMATCH", 7),
    ("age < 151", "CONDITION_VALUE_OUT_OF_RANGE", 7),
    ("count(txn, 3651d) > 1", "CONDITION_WINDOW_OUT_OF_RANGE", 12),
    ("count(txn, 0d) > 1", "CONDITION_WINDOW_OUT_OF_RANGE", 12),
    ('tag.lifecycle = 3', "CONDITION_TYPE_MISMATCH", 17),
    ('feature.recency in (1, "a")', "CONDITION_TYPE_MISMATCH", 24),
    ("feature.nope > 1", "CONDITION_UNKNOWN_FEATURE", 1),
    ("sum(txn.currency, 9d) > 1", "CONDITION_UNKNOWN_EVENT", 1),
    ("count(payment, 9d) > 1", "CONDITION_UNKNOWN_EVENT", 1),
])
def test_semantic_errors_carry_reason_and_position(text: str, reason: str, column: int) -> None:
    catalog = Catalog(attributes=REGISTRY, features={"recency"}, events={"txn": {"amount"}}, allow_pii=False)
    with pytest.raises(ConditionError) as info:
        parse_condition(text, catalog)
    error = info.value
    assert (error.reason, error.line, error.column) == (reason, 1, column), error.message
    assert error.excerpt.splitlines()[-1] == " " * (column - 1) + "^"


def test_pii_attributes_are_allowed_when_policy_allows() -> None:
    parse_condition('national_id is not null', Catalog(attributes=REGISTRY, allow_pii=True))


def test_without_a_registry_an_attribute_keeps_one_type_per_condition() -> None:
    parse_condition('income > 5 and income < 9.5')
    with pytest.raises(ConditionError) as info:
        parse_condition('income > 5 or income = "x"')
    assert (info.value.reason, info.value.column) == ("CONDITION_TYPE_MISMATCH", 24)


def test_to_invalid_argument_maps_to_field_condition_with_position() -> None:
    with pytest.raises(ConditionError) as info:
        parse_condition('national_id = "310101199001011234"', Catalog(attributes=REGISTRY, allow_pii=False))
    error = to_invalid_argument(info.value)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "CONDITION_PII_FORBIDDEN"
    assert error.metadata == {"field": "condition", "position": "1:1", "line": "1", "column": "1"}
    assert [(v.field, v.description) for v in error.violations] == [
        ("condition", "line 1, column 1: attribute 'national_id' is personal data, which policy forbids in conditions")
    ]
    assert "310101199001011234" not in error.message
