"""The same condition evaluated in memory for one customer (real-time decisions, triggers).

Three-valued logic exactly as SQL: a missing value is null, a comparison with null is null, `not null` is
null, `false and null` is false, `true or null` is true; the customer matches only when the result is true.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from services.profile.conditions import errors
from services.profile.conditions.checker import LITERAL_FAMILY
from services.profile.conditions.errors import ConditionError
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
    Node,
    Not,
    Operand,
    Or,
    TagRef,
)
from services.profile.conditions.semantics import FAMILY_KINDS, age_on, window_bounds

Number = int | float | Decimal


class AttributeLike(Protocol):
    """services.profile.domain.Attribute: the stored kind and value."""

    @property
    def kind(self) -> str: ...

    @property
    def value(self) -> Any: ...


@dataclass(frozen=True)
class EventFact:
    event_type: str  # as stored (see SqlSchema.event_types for aliases)
    occurred_at: datetime
    recorded_at: datetime
    fields: Mapping[str, Number | None] = field(default_factory=dict)


@dataclass(frozen=True)
class CustomerFacts:
    """What a condition may look at for one customer."""

    birth_date: date | None = None
    region: str = ""
    time_zone: str = ""
    attributes: Mapping[str, AttributeLike] = field(default_factory=dict)
    tags: Mapping[str, str] = field(default_factory=dict)
    features: Mapping[str, Number | None] = field(default_factory=dict)
    events: Sequence[EventFact] = ()


def _number(value: Any) -> Decimal | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        result = value if isinstance(value, Decimal) else Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def _literal(lit: Literal) -> Any:
    if lit.kind in ("int", "decimal"):
        return Decimal(lit.value)  # type: ignore[arg-type]
    if lit.kind == "date":
        return lit.value.isoformat()  # type: ignore[union-attr]
    return lit.value


def _cmp(left: Any, op: str, right: Any) -> bool | None:
    if left is None:
        return None
    if op == "=":
        return bool(left == right)
    if op == "!=":
        return bool(left != right)
    if op == "<":
        return bool(left < right)
    if op == "<=":
        return bool(left <= right)
    if op == ">":
        return bool(left > right)
    return bool(left >= right)


def _and(values: list[bool | None]) -> bool | None:
    if any(v is False for v in values):
        return False
    return None if any(v is None for v in values) else True


def _or(values: list[bool | None]) -> bool | None:
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


class _Evaluator:
    def __init__(self, facts: CustomerFacts, as_of: datetime, event_types: Mapping[str, str]) -> None:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        self.facts = facts
        self.as_of = as_of
        self.event_types = event_types

    def value(self, operand: Operand, family: str) -> Any:
        f = self.facts
        if isinstance(operand, CoreField):
            if operand.name == "age":
                return None if f.birth_date is None else Decimal(age_on(f.birth_date, self.as_of.date()))
            text = f.region if operand.name == "region" else f.time_zone
            return text or None
        if isinstance(operand, AttributeRef):
            attribute = f.attributes.get(operand.name)
            if attribute is None or attribute.value is None or attribute.kind not in FAMILY_KINDS[family]:
                return None
            if family == "number":
                return _number(attribute.value)
            if family == "date":
                return str(attribute.value)
            return attribute.value
        if isinstance(operand, TagRef):
            tag = f.tags.get(operand.name)
            return tag if family == "string" else None
        if isinstance(operand, FeatureRef):
            return _number(f.features.get(operand.name)) if family == "number" else None
        return self.aggregate(operand)

    def present(self, operand: Operand) -> bool:
        if isinstance(operand, AttributeRef):
            attribute = self.facts.attributes.get(operand.name)
            return attribute is not None and attribute.value is not None
        if isinstance(operand, CoreField | TagRef):
            return self.value(operand, "number" if getattr(operand, "name", "") == "age" else "string") is not None
        return self.value(operand, "number") is not None

    def aggregate(self, agg: Aggregate) -> Decimal | None:
        start, end = window_bounds(self.as_of, agg.window_days)
        stored = self.event_types.get(agg.event, agg.event)
        matching = [e for e in self.facts.events
                    if e.event_type == stored and start < e.occurred_at <= end and e.recorded_at <= end]
        if agg.function == "count":
            return Decimal(len(matching))
        values = [v for v in (_number(e.fields.get(agg.field or "")) for e in matching) if v is not None]
        if not values:
            return None
        if agg.function == "sum":
            return sum(values, Decimal(0))
        if agg.function == "avg":
            return sum(values, Decimal(0)) / len(values)
        return min(values) if agg.function == "min" else max(values)

    def node(self, node: Node) -> bool | None:
        if isinstance(node, And):
            # every operand is evaluated, as in SQL (no short circuit changes the answer, only the cost)
            return _and([self.node(i) for i in node.items])
        if isinstance(node, Or):
            return _or([self.node(i) for i in node.items])
        if isinstance(node, Not):
            inner = self.node(node.item)
            return None if inner is None else not inner
        if isinstance(node, IsNull):
            present = self.present(node.operand)
            return present if node.negated else not present
        if isinstance(node, Compare):
            value = self.value(node.operand, LITERAL_FAMILY[node.value.kind])
            return _cmp(value, node.op, _literal(node.value))
        if isinstance(node, Between):
            value = self.value(node.operand, LITERAL_FAMILY[node.low.kind])
            return _and([_cmp(value, ">=", _literal(node.low)), _cmp(value, "<=", _literal(node.high))])
        if isinstance(node, InList):
            value = self.value(node.operand, LITERAL_FAMILY[node.values[0].kind])
            hits = _or([_cmp(value, "=", _literal(v)) for v in node.values])
            if node.negated:
                return None if hits is None else not hits
            return hits
        raise ConditionError(errors.INVALID_TREE, "not a condition node")


def evaluate_3vl(node: Node, facts: CustomerFacts, *, as_of: datetime,
                 event_types: Mapping[str, str] | None = None) -> bool | None:
    """True, false or null (unknown), as SQL would compute it. The tree should have passed `check`."""
    return _Evaluator(facts, as_of, event_types or {}).node(node)


def evaluate(node: Node, facts: CustomerFacts, *, as_of: datetime,
             event_types: Mapping[str, str] | None = None) -> bool:
    """Whether the customer is a member at `as_of` (timezone-aware): the condition is true, not null."""
    return evaluate_3vl(node, facts, as_of=as_of, event_types=event_types) is True
