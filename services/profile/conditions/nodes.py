"""The condition tree. Frozen dataclasses; positions are carried for error messages but never compared, so
`parse(to_text(tree)) == tree` holds whatever the layout of the original text."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Literal as TypingLiteral

from services.profile.conditions.errors import Pos

LiteralKind = TypingLiteral["string", "int", "decimal", "bool", "date"]
CoreFieldName = TypingLiteral["age", "region", "time_zone"]
AggregateFunction = TypingLiteral["count", "sum", "avg", "min", "max"]
CompareOp = TypingLiteral["=", "!=", "<", "<=", ">", ">="]

CORE_FIELDS: tuple[CoreFieldName, ...] = ("age", "region", "time_zone")
AGGREGATE_FUNCTIONS: tuple[AggregateFunction, ...] = ("count", "sum", "avg", "min", "max")
COMPARE_OPS: tuple[CompareOp, ...] = ("=", "!=", "<", "<=", ">", ">=")
ORDERING_OPS = frozenset({"<", "<=", ">", ">="})


@dataclass(frozen=True)
class Literal:
    kind: LiteralKind
    value: str | int | Decimal | bool | date
    pos: Pos | None = field(default=None, compare=False, repr=False)


# Operands -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoreField:
    """age (whole years from birth_date at the evaluation date), region, time_zone."""

    name: CoreFieldName
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class AttributeRef:
    name: str
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TagRef:
    name: str
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class FeatureRef:
    name: str
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Aggregate:
    """count(event, Nd) when field is None; sum|avg|min|max(event.field, Nd) otherwise."""

    function: AggregateFunction
    event: str
    field: str | None
    window_days: int
    pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False)
    window_pos: Pos | None = dataclasses.field(default=None, compare=False, repr=False)


Operand = CoreField | AttributeRef | TagRef | FeatureRef | Aggregate


# Predicates and boolean structure --------------------------------------------------------------------------


@dataclass(frozen=True)
class Compare:
    operand: Operand
    op: CompareOp
    value: Literal
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Between:
    """low <= operand <= high."""

    operand: Operand
    low: Literal
    high: Literal
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class InList:
    operand: Operand
    values: tuple[Literal, ...]
    negated: bool = False
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class IsNull:
    operand: Operand
    negated: bool = False
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]
    pos: Pos | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Not:
    item: Node
    pos: Pos | None = field(default=None, compare=False, repr=False)


Predicate = Compare | Between | InList | IsNull
Node = And | Or | Not | Compare | Between | InList | IsNull


def operands_of(node: Node) -> list[Operand]:
    """Every operand in the tree, in text order."""
    out: list[Operand] = []
    stack: list[Node] = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, And | Or):
            stack.extend(reversed(current.items))
        elif isinstance(current, Not):
            stack.append(current.item)
        else:
            out.append(current.operand)
    return out
