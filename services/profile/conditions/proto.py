"""Tree <-> protobuf (lodestar.profile.v1.Condition). `from_proto` checks the shape of what it is given (a tree
from a client is untrusted); run `check` afterwards for names and types."""

from __future__ import annotations

from datetime import date
from decimal import Decimal, InvalidOperation

from lodestar.profile.v1 import condition_pb2 as pb
from services.profile.conditions import errors
from services.profile.conditions.errors import ConditionError
from services.profile.conditions.nodes import (
    Aggregate,
    AggregateFunction,
    And,
    AttributeRef,
    Between,
    Compare,
    CoreField,
    CoreFieldName,
    FeatureRef,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Operand,
    Or,
    TagRef,
)

MAX_DEPTH = 100

_OPS = {
    "=": pb.CONDITION_OPERATOR_EQUAL, "!=": pb.CONDITION_OPERATOR_NOT_EQUAL, "<": pb.CONDITION_OPERATOR_LESS,
    "<=": pb.CONDITION_OPERATOR_LESS_OR_EQUAL, ">": pb.CONDITION_OPERATOR_GREATER,
    ">=": pb.CONDITION_OPERATOR_GREATER_OR_EQUAL,
}
_OPS_BACK = {v: k for k, v in _OPS.items()}
_CORE: dict[CoreFieldName, pb.ConditionCoreField.ValueType] = {
    "age": pb.CONDITION_CORE_FIELD_AGE, "region": pb.CONDITION_CORE_FIELD_REGION,
    "time_zone": pb.CONDITION_CORE_FIELD_TIME_ZONE}
_CORE_BACK = {v: k for k, v in _CORE.items()}
_FUNCS: dict[AggregateFunction, pb.ConditionAggregateFunction.ValueType] = {
    "count": pb.CONDITION_AGGREGATE_FUNCTION_COUNT, "sum": pb.CONDITION_AGGREGATE_FUNCTION_SUM,
    "avg": pb.CONDITION_AGGREGATE_FUNCTION_AVG, "min": pb.CONDITION_AGGREGATE_FUNCTION_MIN,
    "max": pb.CONDITION_AGGREGATE_FUNCTION_MAX,
}
_FUNCS_BACK = {v: k for k, v in _FUNCS.items()}


def _bad(description: str) -> ConditionError:
    return ConditionError(errors.INVALID_TREE, description)


# AST -> protobuf ------------------------------------------------------------------------------------------


def value_to_proto(lit: Literal) -> pb.ConditionValue:
    value = lit.value
    if lit.kind == "string" and isinstance(value, str):
        return pb.ConditionValue(string_value=value)
    if lit.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return pb.ConditionValue(int_value=value)
    if lit.kind == "decimal" and isinstance(value, Decimal):
        return pb.ConditionValue(decimal_value=format(value, "f"))
    if lit.kind == "bool" and isinstance(value, bool):
        return pb.ConditionValue(bool_value=value)
    if lit.kind == "date" and isinstance(value, date):
        return pb.ConditionValue(date_value=value.isoformat())
    raise _bad(f"malformed {lit.kind} value")


def operand_to_proto(operand: Operand) -> pb.ConditionOperand:
    if isinstance(operand, CoreField):
        return pb.ConditionOperand(core_field=_CORE[operand.name])
    if isinstance(operand, AttributeRef):
        return pb.ConditionOperand(attribute=operand.name)
    if isinstance(operand, TagRef):
        return pb.ConditionOperand(tag=operand.name)
    if isinstance(operand, FeatureRef):
        return pb.ConditionOperand(feature=operand.name)
    return pb.ConditionOperand(aggregate=pb.ConditionAggregate(
        function=_FUNCS[operand.function], event_type=operand.event, field=operand.field or "",
        window_days=operand.window_days,
    ))


def to_proto(node: Node) -> pb.Condition:
    if isinstance(node, And):
        return pb.Condition(all_of=pb.ConditionGroup(operands=[to_proto(i) for i in node.items]))
    if isinstance(node, Or):
        return pb.Condition(any_of=pb.ConditionGroup(operands=[to_proto(i) for i in node.items]))
    if isinstance(node, Not):
        return pb.Condition(negation=to_proto(node.item))
    if isinstance(node, Compare):
        return pb.Condition(comparison=pb.ConditionComparison(
            operand=operand_to_proto(node.operand), operator=_OPS[node.op], value=value_to_proto(node.value)))
    if isinstance(node, Between):
        return pb.Condition(between=pb.ConditionBetween(
            operand=operand_to_proto(node.operand), low=value_to_proto(node.low), high=value_to_proto(node.high)))
    if isinstance(node, InList):
        return pb.Condition(in_list=pb.ConditionInList(
            operand=operand_to_proto(node.operand), values=[value_to_proto(v) for v in node.values],
            negated=node.negated))
    if isinstance(node, IsNull):
        return pb.Condition(null_check=pb.ConditionNullCheck(operand=operand_to_proto(node.operand),
                                                            negated=node.negated))
    raise _bad("not a condition node")


# protobuf -> AST ------------------------------------------------------------------------------------------


def value_from_proto(msg: pb.ConditionValue) -> Literal:
    which = msg.WhichOneof("kind")
    if which == "string_value":
        if "\x00" in msg.string_value:
            raise _bad("a string value holds NUL")
        return Literal("string", msg.string_value)
    if which == "int_value":
        return Literal("int", msg.int_value)
    if which == "decimal_value":
        text = msg.decimal_value
        try:
            value = Decimal(text)
        except InvalidOperation:
            raise _bad("decimal_value is not a decimal number") from None
        if not value.is_finite() or len(text) > 40:
            raise _bad("decimal_value is not a finite decimal of at most 40 characters")
        return Literal("decimal", value)
    if which == "bool_value":
        return Literal("bool", msg.bool_value)
    if which == "date_value":
        try:
            if len(msg.date_value) != 10:
                raise ValueError
            return Literal("date", date.fromisoformat(msg.date_value))
        except ValueError:
            raise _bad("date_value is not a YYYY-MM-DD date") from None
    raise _bad("a value is empty")


def operand_from_proto(msg: pb.ConditionOperand) -> Operand:
    which = msg.WhichOneof("kind")
    if which == "core_field":
        if msg.core_field not in _CORE_BACK:
            raise _bad("core_field is unspecified or unknown")
        return CoreField(_CORE_BACK[msg.core_field])
    if which == "attribute":
        return AttributeRef(msg.attribute)
    if which == "tag":
        return TagRef(msg.tag)
    if which == "feature":
        return FeatureRef(msg.feature)
    if which == "aggregate":
        agg = msg.aggregate
        if agg.function not in _FUNCS_BACK:
            raise _bad("aggregate function is unspecified or unknown")
        function = _FUNCS_BACK[agg.function]
        field = None if function == "count" else agg.field
        if function == "count" and agg.field:
            raise _bad("count takes no field")
        return Aggregate(function, agg.event_type, field, agg.window_days)
    raise _bad("an operand is empty")


def from_proto(msg: pb.Condition, _depth: int = 0) -> Node:
    if _depth > MAX_DEPTH:
        raise ConditionError(errors.TOO_DEEP, f"nesting deeper than {MAX_DEPTH} levels")
    which = msg.WhichOneof("node")
    if which in ("all_of", "any_of"):
        group = msg.all_of if which == "all_of" else msg.any_of
        items = tuple(from_proto(op, _depth + 1) for op in group.operands)
        if not items:
            raise _bad(f"{which} has no operands")
        if len(items) == 1:
            return items[0]
        return And(items) if which == "all_of" else Or(items)
    if which == "negation":
        return Not(from_proto(msg.negation, _depth + 1))
    if which == "comparison":
        c = msg.comparison
        if c.operator not in _OPS_BACK:
            raise _bad("comparison operator is unspecified or unknown")
        return Compare(operand_from_proto(c.operand), _OPS_BACK[c.operator],  # type: ignore[arg-type]
                       value_from_proto(c.value))
    if which == "between":
        b = msg.between
        return Between(operand_from_proto(b.operand), value_from_proto(b.low), value_from_proto(b.high))
    if which == "in_list":
        il = msg.in_list
        if not il.values:
            raise _bad("in_list has no values")
        return InList(operand_from_proto(il.operand), tuple(value_from_proto(v) for v in il.values), il.negated)
    if which == "null_check":
        return IsNull(operand_from_proto(msg.null_check.operand), msg.null_check.negated)
    raise _bad("a condition is empty")
