"""Condition tree -> a SQLAlchemy Core boolean expression over the customers table.

Every literal becomes a bind parameter (never text in the SQL), attribute values are read with SQLAlchemy's JSON
accessors (JSON_EXTRACT on SQLite, #>> on PostgreSQL) and guarded by their stored kind, tags, features and
event aggregates are correlated scalar subqueries, and `age` is turned into a range over birth_date (so an
index on birth_date serves it). Usage:

    select(schema.customer_id).where(compile_sql(tree, schema, as_of=now))

Null semantics are SQL's three-valued logic; the evaluator implements the same (see docs/segments.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Integer,
    Numeric,
    String,
    Table,
    and_,
    case,
    cast,
    func,
    literal,
    not_,
    or_,
    select,
)

from services.profile.conditions import errors
from services.profile.conditions.checker import LITERAL_FAMILY, Catalog, check
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
from services.profile.conditions.semantics import FAMILY_KINDS, latest_birth_date, window_bounds

Col = ColumnElement[Any]


@dataclass(frozen=True)
class SqlSchema:
    """Where each part of the language lives. Columns carry their tables; build it with `from_tables`."""

    customer_id: Col
    birth_date: Col
    region: Col
    time_zone: Col
    attributes: Col  # JSON: {"name": {"t": kind, "v": value}}
    tag_customer_id: Col | None = None
    tag_name: Col | None = None
    tag_value: Col | None = None
    feature_customer_id: Col | None = None
    feature_name: Col | None = None
    feature_value: Col | None = None  # numeric
    event_customer_id: Col | None = None
    event_type: Col | None = None
    event_occurred_at: Col | None = None
    event_recorded_at: Col | None = None
    # condition field name -> numeric column of the events table
    event_fields: Mapping[str, Col] = field(default_factory=dict)
    # condition event name -> the value stored in the event type column (identity when absent)
    event_types: Mapping[str, str] = field(default_factory=dict)
    # tag name -> (customer_id, name, value) columns of another table holding that tag (e.g. built-in tags kept
    # apart from user-defined ones); every other tag is read from tag_customer_id/tag_name/tag_value
    named_tags: Mapping[str, tuple[Col, Col, Col]] = field(default_factory=dict)

    @classmethod
    def from_tables(
        cls,
        customers: Table,
        *,
        tags: Table | None = None,
        features: Table | None = None,
        events: Table | None = None,
        event_fields: Mapping[str, str] | None = None,
        event_types: Mapping[str, str] | None = None,
        columns: Mapping[str, str] | None = None,
        named_tags: Mapping[str, Table] | None = None,
    ) -> SqlSchema:
        """`columns` renames the defaults: customer_id, birth_date, region, time_zone, attributes,
        tag_customer_id/tag_name/tag_value, feature_customer_id/feature_name/feature_value,
        event_customer_id/event_type/event_occurred_at/event_recorded_at (default column names: the part after
        the prefix, e.g. tags.c.name; event_type defaults to "event_type")."""
        names = {
            "customer_id": "customer_id", "birth_date": "birth_date", "region": "region", "time_zone": "time_zone",
            "attributes": "attributes", "tag_customer_id": "customer_id", "tag_name": "name",
            "tag_value": "value", "feature_customer_id": "customer_id", "feature_name": "name",
            "feature_value": "value", "event_customer_id": "customer_id", "event_type": "event_type",
            "event_occurred_at": "occurred_at", "event_recorded_at": "recorded_at", **(columns or {}),
        }
        c = customers.c
        kwargs: dict[str, Any] = {k: c[names[k]] for k in ("customer_id", "birth_date", "region", "time_zone",
                                                            "attributes")}
        if tags is not None:
            kwargs.update({k: tags.c[names[k]] for k in ("tag_customer_id", "tag_name", "tag_value")})
        if features is not None:
            kwargs.update({k: features.c[names[k]] for k in ("feature_customer_id", "feature_name",
                                                               "feature_value")})
        if events is not None:
            kwargs.update({k: events.c[names[k]] for k in ("event_customer_id", "event_type", "event_occurred_at",
                                                            "event_recorded_at")})
            kwargs["event_fields"] = {name: events.c[col] for name, col in (event_fields or {}).items()}
        named = {tag: (table.c[names["tag_customer_id"]], table.c[names["tag_name"]], table.c[names["tag_value"]])
                 for tag, table in (named_tags or {}).items()}
        return cls(**kwargs, event_types=dict(event_types or {}), named_tags=named)


def _bind(lit: Literal) -> Col:
    """A bind parameter of the literal's type; dates compare as ISO text (how attributes store them)."""
    value = lit.value
    if lit.kind == "int":
        return literal(value, Integer())
    if lit.kind == "decimal":
        return literal(value, Numeric())
    if lit.kind == "bool":
        return literal(value, Boolean())
    if lit.kind == "date":
        return literal(value.isoformat(), String())  # type: ignore[union-attr]
    return literal(value, String())


def _compare(expr: Col, op: str, bound: Col) -> Col:
    if op == "=":
        return expr == bound
    if op == "!=":
        return expr != bound
    if op == "<":
        return expr < bound
    if op == "<=":
        return expr <= bound
    if op == ">":
        return expr > bound
    return expr >= bound


class _Compiler:
    def __init__(self, schema: SqlSchema, as_of: datetime) -> None:
        if as_of.tzinfo is None:
            raise ValueError("as_of must be timezone-aware")
        self.schema = schema
        self.as_of = as_of
        self.day = as_of.date()

    def _need(self, col: Col | None, what: str, reason: str, operand: Operand) -> Col:
        if col is None:
            raise ConditionError(reason, f"{what} are not available to this query", operand.pos)
        return col

    def value(self, operand: Operand, family: str) -> Col:
        s = self.schema
        if isinstance(operand, CoreField):
            col = s.region if operand.name == "region" else s.time_zone
            return func.nullif(col, literal("", String()))
        if isinstance(operand, AttributeRef):
            kind = s.attributes[(operand.name, "t")].as_string()
            raw = s.attributes[(operand.name, "v")]
            typed: Col
            if family == "number":
                typed = cast(raw.as_string(), Numeric())
            elif family == "bool":
                typed = raw.as_boolean()
            else:
                typed = raw.as_string()
            kinds = FAMILY_KINDS[family]
            guard = kind == literal(kinds[0], String()) if len(kinds) == 1 else kind.in_(list(kinds))
            return case((guard, typed))
        if isinstance(operand, TagRef):
            if operand.name in s.named_tags:
                cid, tag_name, tag_value = s.named_tags[operand.name]
            else:
                cid = self._need(s.tag_customer_id, "tags", errors.UNKNOWN_ATTRIBUTE, operand)
                assert s.tag_name is not None and s.tag_value is not None
                tag_name, tag_value = s.tag_name, s.tag_value
            return (select(func.max(tag_value))
                    .where(cid == s.customer_id, tag_name == literal(operand.name, String()))
                    .scalar_subquery())
        if isinstance(operand, FeatureRef):
            cid = self._need(s.feature_customer_id, "features", errors.UNKNOWN_FEATURE, operand)
            assert s.feature_name is not None and s.feature_value is not None
            return (select(func.max(s.feature_value))
                    .where(cid == s.customer_id, s.feature_name == literal(operand.name, String()))
                    .scalar_subquery())
        return self.aggregate(operand)

    def aggregate(self, agg: Aggregate) -> Col:
        s = self.schema
        cid = self._need(s.event_customer_id, "events", errors.UNKNOWN_EVENT, agg)
        assert s.event_type is not None and s.event_occurred_at is not None and s.event_recorded_at is not None
        start, end = window_bounds(self.as_of, agg.window_days)
        where = [
            cid == s.customer_id,
            s.event_type == literal(s.event_types.get(agg.event, agg.event), String()),
            s.event_occurred_at > start,
            s.event_occurred_at <= end,
            s.event_recorded_at <= end,
        ]
        if agg.function == "count":
            return select(func.count()).where(*where).scalar_subquery()
        column = s.event_fields.get(agg.field or "")
        if column is None:
            raise ConditionError(errors.UNKNOWN_EVENT, f"events have no numeric field '{agg.field}'", agg.pos)
        aggregated: Col
        if agg.function == "sum":
            aggregated = func.sum(column)
        elif agg.function == "avg":
            aggregated = func.avg(column)
        elif agg.function == "min":
            aggregated = func.min(column)
        else:
            aggregated = func.max(column)
        return select(aggregated).where(*where).scalar_subquery()

    def present(self, operand: Operand) -> Col:
        """An expression that is null exactly when the operand has no value (whatever its type)."""
        if isinstance(operand, CoreField) and operand.name == "age":
            return self.schema.birth_date
        if isinstance(operand, AttributeRef):
            return self.schema.attributes[(operand.name, "v")].as_string()
        if isinstance(operand, CoreField | TagRef):
            return self.value(operand, "string")
        return self.value(operand, "number")

    # age: a range over birth_date -----------------------------------------------------------------------
    def _age_at_least(self, years: int) -> Col:
        return self.schema.birth_date <= latest_birth_date(years, self.day)

    def _age_below(self, years: int) -> Col:
        return self.schema.birth_date > latest_birth_date(years, self.day)

    def age(self, op: str, years: int) -> Col:
        if op == ">=":
            return self._age_at_least(years)
        if op == ">":
            return self._age_at_least(years + 1)
        if op == "<":
            return self._age_below(years)
        if op == "<=":
            return self._age_below(years + 1)
        if op == "=":
            return and_(self._age_at_least(years), self._age_below(years + 1))
        return or_(self._age_below(years), self._age_at_least(years + 1))

    # nodes ------------------------------------------------------------------------------------------------
    def _plain_core(self, operand: Operand, values: Sequence[Literal]) -> bool:
        """region/time_zone compared with non-empty strings: there `NULLIF(col, '') = v` is TRUE exactly when
        `col = v` is, and only the bare column can use an index."""
        return (isinstance(operand, CoreField) and operand.name in ("region", "time_zone")
                and all(isinstance(v.value, str) and v.value != "" for v in values))

    def _feature_rows(self, operand: FeatureRef, predicate: Callable[[Col], Col]) -> Col:
        """`customer_id IN (SELECT customer_id FROM features WHERE name = :n AND <predicate on value>)`: where only
        TRUE matters, this is TRUE exactly when the correlated lookup's comparison is (the features table holds
        at most one row per customer and name, its primary key), and an index on (name, value) serves it instead
        of one lookup per customer."""
        s = self.schema
        cid = self._need(s.feature_customer_id, "features", errors.UNKNOWN_FEATURE, operand)
        assert s.feature_name is not None and s.feature_value is not None
        rows = select(cid).where(s.feature_name == literal(operand.name, String()), predicate(s.feature_value))
        return s.customer_id.in_(rows)

    def _core_column(self, operand: Operand) -> Col:
        s = self.schema
        return s.region if operand.name == "region" else s.time_zone  # type: ignore[union-attr]

    def node(self, node: Node, positive: bool = True) -> Col:
        """`positive`: only whether the expression is TRUE matters here (the top of the WHERE, under AND/OR and
        under an even number of NOTs), so a FALSE may stand in for a NULL. Under an odd number of NOTs the
        exact three-valued form is kept (NOT NULL is NULL, NOT FALSE is TRUE)."""
        if isinstance(node, And):
            return and_(*(self.node(i, positive) for i in node.items))
        if isinstance(node, Or):
            return or_(*(self.node(i, positive) for i in node.items))
        if isinstance(node, Not):
            return not_(self.node(node.item, not positive))
        operand = node.operand
        is_age = isinstance(operand, CoreField) and operand.name == "age"
        if isinstance(node, IsNull):
            expr = self.present(operand)
            return expr.is_not(None) if node.negated else expr.is_(None)
        if isinstance(node, Compare):
            if is_age:
                return self.age(node.op, int(node.value.value))  # type: ignore[arg-type]
            family = LITERAL_FAMILY[node.value.kind]
            if positive and node.op == "=" and self._plain_core(operand, [node.value]):
                return self._core_column(operand) == _bind(node.value)  # sargable: the index on region serves it
            if positive and isinstance(operand, FeatureRef):
                compare = node
                return self._feature_rows(operand, lambda v: _compare(v, compare.op, _bind(compare.value)))
            return _compare(self.value(operand, family), node.op, _bind(node.value))
        if isinstance(node, Between):
            if is_age:
                return and_(self.age(">=", int(node.low.value)),  # type: ignore[arg-type]
                            self.age("<=", int(node.high.value)))  # type: ignore[arg-type]
            family = LITERAL_FAMILY[node.low.kind]
            if positive and isinstance(operand, FeatureRef):
                between = node
                return self._feature_rows(operand, lambda v: and_(v >= _bind(between.low), v <= _bind(between.high)))
            expr = self.value(operand, family)
            return and_(expr >= _bind(node.low), expr <= _bind(node.high))
        if isinstance(node, InList):
            if is_age:
                years = [int(v.value) for v in node.values]  # type: ignore[arg-type]
                if node.negated:
                    return and_(*(self.age("!=", y) for y in years))
                return or_(*(self.age("=", y) for y in years))
            family = LITERAL_FAMILY[node.values[0].kind]
            binds = [_bind(v) for v in node.values]
            if positive and not node.negated and self._plain_core(operand, node.values):
                return self._core_column(operand).in_(binds)
            if positive and not node.negated and isinstance(operand, FeatureRef):
                return self._feature_rows(operand, lambda v: v.in_(binds))
            expr = self.value(operand, family)
            return expr.not_in(binds) if node.negated else expr.in_(binds)
        raise ConditionError(errors.INVALID_TREE, "not a condition node")


def compile_sql(node: Node, schema: SqlSchema, *, as_of: datetime, catalog: Catalog | None = None) -> Col:
    """The condition as a boolean SQL expression, true exactly for the matching customers at `as_of`
    (timezone-aware). The tree is checked first (against `catalog` when given); ConditionError otherwise."""
    check(node, catalog)
    return _Compiler(schema, as_of).node(node)
