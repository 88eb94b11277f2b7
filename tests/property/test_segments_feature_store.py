"""Property: on generated customers and behaviour events, conditions over `feature.*` and `tag.*` select the same
customers in SQL as in memory, through the service's real tables.

SQL side: features computed by the batch executor (features.compute_batch, what the tag job runs) and
materialised by feature_store into `customer_features`; built-in tags in `customer_tags`, external tags in
`customer_tag_values`; the condition compiled against segments.SCHEMA (the one PreviewSegment and exports use).
In-memory side: features computed by the real-time executor (features.compute_one) for one customer, tags from
the generated world, conditions.evaluate_3vl. Both sides must agree on members and on non-members (`not`
condition), on SQLite and on PostgreSQL (TEST_DATABASE_URL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, create_engine, delete, insert, select

import services.profile.app  # noqa: F401  # registers every table of the service on Base.metadata
from services.platform.db import sync_url
from services.profile.conditions import CustomerFacts as ConditionFacts
from services.profile.conditions import compile_sql, evaluate_3vl, to_text
from services.profile.conditions.nodes import (
    And,
    Between,
    Compare,
    FeatureRef,
    InList,
    IsNull,
    Literal,
    Node,
    Not,
    Or,
    TagRef,
)
from services.profile.db import Base, CustomerFeatureRow, CustomerRow, CustomerTagValueRow
from services.profile.events_db import EVENT_COLUMNS, CustomerTagRow
from services.profile.feature_store import FEATURE_NAMES, feature_rows
from services.profile.features import CustomerFacts, compute_batch, compute_one, records_frame
from services.profile.segments import SCHEMA

AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
AMOUNTS = [Decimal("0.1"), Decimal("0.2"), Decimal("100"), Decimal("250.50"), Decimal("4999.75"), Decimal("5000")]
CATEGORIES = ["travel", "groceries"]
FEATURES = ["monetary_90d", "monetary_365d", "frequency_90d", "recency_days", "tenure_days",
            "spend_category_travel_365d", "spend_channel_online_30d", "repayment_max_days_late_365d",
            "products_held_count", "product_consumer_loan"]
THRESHOLDS = [0, 1, 2, 10, 30, 100, 5000, Decimal("0.3"), Decimal("250.5"), Decimal("350.5"), Decimal("5000.1"),
              Decimal("-1")]


@dataclass
class World:
    customers: dict[str, CustomerFacts]
    records: list[tuple[Any, ...]]
    builtin: dict[str, dict[str, str]]
    external: dict[str, dict[str, str]]


@st.composite
def worlds(draw: st.DrawFn) -> World:
    customers: dict[str, CustomerFacts] = {}
    records: list[tuple[Any, ...]] = []
    builtin: dict[str, dict[str, str]] = {}
    external: dict[str, dict[str, str]] = {}
    # hours before AS_OF: window edges (30/90/365 days) and a few in the future (not known yet)
    edges = [h for d in (30, 90, 365) for h in (24 * d - 1, 24 * d, 24 * d + 1)]
    offsets = st.sampled_from([0, 1, *edges]) | st.integers(-48, 24 * 400)
    for i in range(draw(st.integers(1, 6))):
        cid = f"c{i}"
        attributes = {}
        if draw(st.booleans()):
            attributes["customer_since"] = draw(st.sampled_from(["2025-12-01", "2020-01-01", "2026-02-28"]))
        if draw(st.booleans()):
            attributes["products_held"] = draw(st.sampled_from(["credit_card", "consumer_loan,deposit"]))
        customers[cid] = CustomerFacts(cid, draw(st.sampled_from(["", "Asia/Shanghai", "Europe/Lisbon"])), "CN-31",
                                       None, attributes)
        for j in range(draw(st.integers(0, 6))):
            occurred = AS_OF - timedelta(hours=draw(offsets))
            recorded = occurred + timedelta(hours=draw(st.sampled_from([0, 1, 24 * 30])))
            kind = draw(st.sampled_from(["transaction", "transaction", "repayment"]))
            if kind == "transaction":
                records.append((cid, kind, occurred, recorded, draw(st.sampled_from(AMOUNTS)),
                                draw(st.sampled_from(["debit", "credit"])), draw(st.sampled_from(CATEGORIES)),
                                draw(st.sampled_from(["online", "pos"])), "", None, "", ""))
            else:
                records.append((cid, kind, occurred, recorded, Decimal("100"), "", "", "", "",
                                draw(st.sampled_from([0, 10, 45])), draw(st.sampled_from(["", "consumer_loan"])),
                                ""))
        if draw(st.booleans()):
            builtin[cid] = {"lifecycle_stage": draw(st.sampled_from(["new", "dormant", "mature"]))}
        if draw(st.booleans()):
            external[cid] = {"churn_risk": draw(st.sampled_from(["high", "low", ""]))}
    return World(customers, records, builtin, external)


def _lit(value: Any) -> Literal:
    if isinstance(value, int):
        return Literal("int", value)
    if isinstance(value, Decimal):
        return Literal("decimal", value)
    return Literal("string", value)


OPS = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
features = st.sampled_from(FEATURES).map(FeatureRef)
numbers = st.sampled_from(THRESHOLDS).map(_lit)
tags = st.sampled_from(["lifecycle_stage", "churn_risk"]).map(TagRef)
strings = st.sampled_from(["high", "low", "dormant", "new", ""]).map(_lit)
leaves = st.one_of(
    st.builds(Compare, features, OPS, numbers),
    st.builds(Between, features, numbers, numbers),
    st.builds(lambda o, vs, n: InList(o, tuple(vs), n), features, st.lists(numbers, min_size=1, max_size=3),
              st.booleans()),
    st.builds(IsNull, features, st.booleans()),
    st.builds(Compare, tags, st.sampled_from(["=", "!="]), strings),
    st.builds(lambda o, vs, n: InList(o, tuple(vs), n), tags, st.lists(strings, min_size=1, max_size=3),
              st.booleans()),
    st.builds(IsNull, tags, st.booleans()),
)
conditions: st.SearchStrategy[Node] = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda items: And(tuple(items))),
        st.lists(children, min_size=2, max_size=3).map(lambda items: Or(tuple(items))),
        children.map(Not),
    ),
    max_leaves=5,
)


@pytest.fixture
def engine(database_url: Callable[[str], str]) -> Iterator[Engine]:
    eng = create_engine(sync_url(database_url("profile")))
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def _first_seen(world: World, cid: str) -> datetime | None:
    known = [r[2] for r in world.records if r[0] == cid and r[2] <= AS_OF and r[3] <= AS_OF]
    return min(known) if known else None


def _load(eng: Engine, world: World) -> dict[str, dict[str, float]]:
    """Writes the SQL side; returns the in-memory side's features (the real-time executor)."""
    first = {c: f for c in world.customers if (f := _first_seen(world, c)) is not None}
    stored = compute_batch(records_frame(world.records), world.customers, first, AS_OF)
    with eng.begin() as conn:
        for model in (CustomerFeatureRow, CustomerTagRow, CustomerTagValueRow, CustomerRow):
            conn.execute(delete(model))
        conn.execute(insert(CustomerRow), [{
            "customer_id": c, "region": f.region, "time_zone": f.time_zone, "attributes": {}, "version": 1,
            "create_time": AS_OF, "update_time": AS_OF} for c, f in world.customers.items()])
        conn.execute(insert(CustomerFeatureRow), feature_rows(stored, AS_OF))
        builtin = [{"customer_id": c, "name": n, "value": v, "source": "test", "rule_version": "1", "as_of": AS_OF,
                    "computed_at": AS_OF} for c, t in world.builtin.items() for n, v in t.items()]
        external = [{"customer_id": c, "name": n, "value": v, "kind": "external", "source": "test",
                     "update_time": AS_OF} for c, t in world.external.items() for n, v in t.items()]
        for model, rows in ((CustomerTagRow, builtin), (CustomerTagValueRow, external)):
            if rows:
                conn.execute(insert(model), rows)
    return {c: compute_one([r for r in world.records if r[0] == c], f, first.get(c), AS_OF).values
            for c, f in world.customers.items()}


def test_generated_feature_names_are_known_to_the_catalog() -> None:
    assert all(name in FEATURE_NAMES for name in FEATURES)
    assert len(EVENT_COLUMNS) == 12  # the records above are in this order


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(world=worlds(), trees=st.lists(conditions, min_size=1, max_size=4))
def test_feature_store_sql_and_real_time_evaluator_select_the_same_members(engine: Engine, world: World,
                                                                          trees: list[Node]) -> None:
    live = _load(engine, world)
    with engine.connect() as conn:
        for tree in trees:
            # Non-members through the compiled `not` (the compiler may use forms that are exact only where TRUE
            # matters, e.g. the semi-join over the feature store: negating its SQL from outside would not be).
            in_sql = set(conn.scalars(select(CustomerRow.customer_id).where(compile_sql(tree, SCHEMA, as_of=AS_OF))))
            out_sql = set(conn.scalars(select(CustomerRow.customer_id)
                                       .where(compile_sql(Not(tree), SCHEMA, as_of=AS_OF))))
            verdicts = {
                c: evaluate_3vl(tree, ConditionFacts(features=live[c],
                                                     tags={**world.builtin.get(c, {}), **world.external.get(c, {})}),
                                as_of=AS_OF)
                for c in world.customers
            }
            text = to_text(tree)
            assert in_sql == {c for c, v in verdicts.items() if v is True}, text
            assert out_sql == {c for c, v in verdicts.items() if v is False}, text
