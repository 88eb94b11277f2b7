"""Semantic checks: names known to the registry, types that can be compared, windows in range, personal data
where policy forbids it, and the shape of trees that did not come from the parser (protobuf)."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from services.profile.conditions import errors
from services.profile.conditions.errors import ConditionError, Pos
from services.profile.conditions.nodes import (
    COMPARE_OPS,
    ORDERING_OPS,
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
    Node,
    Not,
    Operand,
    Or,
    TagRef,
)
from services.profile.conditions.printer import NAME_RE

MAX_WINDOW_DAYS = 3650
MAX_AGE = 150
MAX_IN_VALUES = 1000
MAX_TREE_DEPTH = 100

# Attribute kinds of the registry (and of the stored {"t": kind} tags) -> the type family a condition compares.
KIND_FAMILY = {
    "string": "string", "enum": "string",
    "int": "number", "integer": "number", "decimal": "number",
    "bool": "bool", "boolean": "bool",
    "date": "date",
}
LITERAL_FAMILY = {"string": "string", "int": "number", "decimal": "number", "bool": "bool", "date": "date"}
FAMILY_WORD = {"string": "a string", "number": "a number", "bool": "a boolean", "date": "a date"}


@dataclass(frozen=True)
class AttributeInfo:
    """What the attribute registry says about one attribute."""

    kind: str
    pii: bool = False
    allowed_values: Collection[str] | None = None


@dataclass(frozen=True)
class Catalog:
    """What a condition may name. None everywhere = anything (attribute types then come from the values they
    are compared with); `allow_pii=False` refuses attributes the registry marks as personal data."""

    attributes: Mapping[str, AttributeInfo] | None = None
    features: Collection[str] | None = None
    # event type -> its numeric fields (what sum/avg/min/max may aggregate)
    events: Mapping[str, Collection[str]] | None = None
    allow_pii: bool = True
    max_window_days: int = MAX_WINDOW_DAYS


def _fail(reason: str, description: str, pos: Pos | None) -> ConditionError:
    return ConditionError(reason, description, pos)


def _check_literal(lit: Literal) -> str:
    value, kind = lit.value, lit.kind
    ok = (
        (kind == "string" and isinstance(value, str) and "\x00" not in value)
        or (kind == "int" and isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63)
        or (kind == "decimal" and isinstance(value, Decimal) and value.is_finite())
        or (kind == "bool" and isinstance(value, bool))
        or (kind == "date" and isinstance(value, date))
    )
    if not ok:
        raise _fail(errors.INVALID_TREE, f"malformed {kind} value", lit.pos)
    return LITERAL_FAMILY[kind]


def _name(name: str, what: str, pos: Pos | None) -> None:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise _fail(errors.INVALID_TREE, f"{what} is not a valid name", pos)


class _Checker:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # without a registry, an attribute's type is the type of what it is compared with: one per condition
        self.inferred: dict[str, str] = {}

    def operand(self, operand: Operand) -> tuple[str | None, str]:
        """(type family or None when unknown, a description for messages)."""
        pos = operand.pos
        if isinstance(operand, CoreField):
            if operand.name not in ("age", "region", "time_zone"):
                raise _fail(errors.INVALID_TREE, "unknown core field", pos)
            return ("number" if operand.name == "age" else "string"), operand.name
        if isinstance(operand, AttributeRef):
            _name(operand.name, "an attribute name", pos)
            desc = f"attribute '{operand.name}'"
            if self.catalog.attributes is None:
                return None, desc
            info = self.catalog.attributes.get(operand.name)
            if info is None:
                raise _fail(errors.UNKNOWN_ATTRIBUTE, f"unknown {desc}", pos)
            if info.pii and not self.catalog.allow_pii:
                raise _fail(errors.PII_FORBIDDEN, f"{desc} is personal data, which policy forbids in conditions", pos)
            family = KIND_FAMILY.get(info.kind)
            if family is None:
                raise _fail(errors.TYPE_MISMATCH, f"{desc} has a type conditions cannot compare", pos)
            return family, desc
        if isinstance(operand, TagRef):
            _name(operand.name, "a tag name", pos)
            return "string", f"tag '{operand.name}'"
        if isinstance(operand, FeatureRef):
            _name(operand.name, "a feature name", pos)
            if self.catalog.features is not None and operand.name not in self.catalog.features:
                raise _fail(errors.UNKNOWN_FEATURE, f"unknown feature '{operand.name}'", pos)
            return "number", f"feature '{operand.name}'"
        if isinstance(operand, Aggregate):
            return self.aggregate(operand)
        raise _fail(errors.INVALID_TREE, "not an operand", None)

    def aggregate(self, agg: Aggregate) -> tuple[str, str]:
        pos = agg.pos
        if agg.function not in ("count", "sum", "avg", "min", "max"):
            raise _fail(errors.INVALID_TREE, "unknown aggregate function", pos)
        _name(agg.event, "an event type", pos)
        if (agg.function == "count") != (agg.field is None):
            raise _fail(errors.INVALID_TREE, "count takes no field; sum, avg, min and max take one", pos)
        if agg.field is not None:
            _name(agg.field, "an event field", pos)
        events = self.catalog.events
        if events is not None:
            if agg.event not in events:
                raise _fail(errors.UNKNOWN_EVENT, f"unknown event type '{agg.event}'", pos)
            if agg.field is not None and agg.field not in events[agg.event]:
                raise _fail(errors.UNKNOWN_EVENT, f"event type '{agg.event}' has no numeric field '{agg.field}'",
                            pos)
        window = agg.window_days
        if not isinstance(window, int) or isinstance(window, bool) or not 1 <= window <= self.catalog.max_window_days:
            raise _fail(errors.WINDOW_OUT_OF_RANGE,
                        f"the window must be between 1d and {self.catalog.max_window_days}d",
                        agg.window_pos or pos)
        name = f"{agg.function}({agg.event})" if agg.field is None else f"{agg.function}({agg.event}.{agg.field})"
        return "number", name

    def values(self, operand: Operand, family: str | None, desc: str, values: list[Literal],
               ordering: bool) -> None:
        seen = family
        for lit in values:
            lit_family = _check_literal(lit)
            if seen is not None and lit_family != seen:
                if family is not None:
                    raise _fail(errors.TYPE_MISMATCH,
                                f"{desc} is {FAMILY_WORD[family]}, cannot compare it with {FAMILY_WORD[lit_family]}",
                                lit.pos)
                raise _fail(errors.TYPE_MISMATCH,
                            f"values of different types compared with {desc}", lit.pos)
            seen = lit_family
            if isinstance(operand, AttributeRef) and self.catalog.attributes is None:
                if self.inferred.setdefault(operand.name, lit_family) != lit_family:
                    raise _fail(errors.TYPE_MISMATCH,
                                f"{desc} is compared with {FAMILY_WORD[self.inferred[operand.name]]} elsewhere in "
                                f"this condition, here with {FAMILY_WORD[lit_family]}", lit.pos)
            if isinstance(operand, CoreField) and operand.name == "age":
                if lit.kind != "int":
                    raise _fail(errors.TYPE_MISMATCH, "age is compared with whole numbers of years", lit.pos)
                assert isinstance(lit.value, int)
                if not 0 <= lit.value <= MAX_AGE:
                    raise _fail(errors.VALUE_OUT_OF_RANGE, f"age must be between 0 and {MAX_AGE}", lit.pos)
            if isinstance(operand, AttributeRef) and self.catalog.attributes is not None and lit.kind == "string":
                allowed = self.catalog.attributes[operand.name].allowed_values
                if allowed is not None and lit.value not in allowed:
                    raise _fail(errors.VALUE_OUT_OF_RANGE, f"value is not one of the allowed values of {desc}",
                                lit.pos)
        if ordering and seen in ("string", "bool"):
            raise _fail(errors.TYPE_MISMATCH,
                        f"{desc}: {FAMILY_WORD[seen]} can only be compared with =, !=, in, not in or is null",
                        values[0].pos if values else None)

    def node(self, node: Node, depth: int) -> None:
        if depth > MAX_TREE_DEPTH:
            raise _fail(errors.TOO_DEEP, f"nesting deeper than {MAX_TREE_DEPTH} levels", node.pos)
        if isinstance(node, And | Or):
            if len(node.items) < 2:
                raise _fail(errors.INVALID_TREE, "'and'/'or' needs at least two operands", node.pos)
            for item in node.items:
                self.node(item, depth + 1)
            return
        if isinstance(node, Not):
            self.node(node.item, depth + 1)
            return
        if isinstance(node, Compare | Between | InList | IsNull):
            family, desc = self.operand(node.operand)
            if isinstance(node, Compare):
                if node.op not in COMPARE_OPS:
                    raise _fail(errors.INVALID_TREE, "unknown comparison operator", node.pos)
                self.values(node.operand, family, desc, [node.value], node.op in ORDERING_OPS)
            elif isinstance(node, Between):
                self.values(node.operand, family, desc, [node.low, node.high], True)
            elif isinstance(node, InList):
                if not node.values or len(node.values) > MAX_IN_VALUES:
                    raise _fail(errors.INVALID_TREE, f"'in' takes 1 to {MAX_IN_VALUES} values", node.pos)
                self.values(node.operand, family, desc, list(node.values), False)
            return
        raise _fail(errors.INVALID_TREE, "not a condition node", None)


def check(node: Node, catalog: Catalog | None = None, *, source: str | None = None) -> Node:
    """Raises ConditionError (with the position, when the tree came from text) or returns the node."""
    try:
        _Checker(catalog or Catalog()).node(node, 0)
    except ConditionError as error:
        if source is not None:
            error.with_source(source)
        raise
    return node
