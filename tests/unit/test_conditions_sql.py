"""The SQL compiler and the evaluator: parameterized SQL, exact age arithmetic, windows, null semantics."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import JSON, Column, Date, Engine, MetaData, String, Table, create_engine, insert, select, text
from sqlalchemy.dialects import postgresql, sqlite

from services.platform.db import UtcDateTime
from services.profile.conditions import (
    ConditionError,
    CustomerFacts,
    EventFact,
    SqlSchema,
    compile_sql,
    evaluate,
    evaluate_3vl,
    parse,
)
from services.profile.conditions.nodes import Compare, CoreField, Literal, TagRef
from services.profile.conditions.semantics import age_on, latest_birth_date
from services.profile.domain import Attribute

md = MetaData()
customers = Table("customers", md, Column("customer_id", String, primary_key=True), Column("birth_date", Date),
                  Column("region", String), Column("time_zone", String), Column("attributes", JSON))
tags = Table("tags", md, Column("customer_id", String), Column("name", String), Column("value", String))
events = Table("events", md, Column("customer_id", String), Column("event_type", String),
               Column("occurred_at", UtcDateTime()), Column("recorded_at", UtcDateTime()), Column("amount", String))
SCHEMA = SqlSchema.from_tables(customers, tags=tags, events=events)
AS_OF = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
INJECTIONS = ["'; DROP TABLE customers; --", "\" OR 1=1 --", "x') OR ('1'='1", "\\'; SELECT 1; --"]


@pytest.fixture
def engine() -> Iterator[Engine]:
    eng = create_engine("sqlite://")
    md.create_all(eng)
    yield eng
    eng.dispose()


@pytest.mark.parametrize("payload", INJECTIONS)
def test_literals_are_bind_parameters_never_sql_text(engine: Engine, payload: str) -> None:
    quoted = payload.replace("\\", "\\\\").replace('"', '\\"')
    tree = parse(f'tag.lifecycle = "{quoted}" or region in ("{quoted}") or attr.note != "{quoted}"')
    expr = compile_sql(tree, SCHEMA, as_of=AS_OF)
    for dialect in (sqlite.dialect(), postgresql.psycopg.dialect()):
        compiled = select(customers.c.customer_id).where(expr).compile(dialect=dialect)
        sql = str(compiled)
        assert payload not in sql and "DROP" not in sql and "1=1" not in sql
        assert list(compiled.params.values()).count(payload) >= 2  # tag and attribute comparisons
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"customer_id": "c1", "region": payload, "time_zone": "",
                                          "attributes": {"note": {"t": "string", "v": payload}}}])
        assert list(conn.scalars(select(customers.c.customer_id).where(expr))) == ["c1"]
        assert conn.execute(text("SELECT count(*) FROM customers")).scalar() == 1


def _members(engine: Engine, condition: str, as_of: datetime) -> set[str]:
    with engine.connect() as conn:
        return set(conn.scalars(select(customers.c.customer_id).where(compile_sql(parse(condition), SCHEMA,
                                                                                    as_of=as_of))))


@pytest.mark.parametrize("as_of", [datetime(2028, 2, 29, tzinfo=UTC), datetime(2027, 2, 28, 23, 0, tzinfo=UTC),
                                   datetime(2026, 3, 1, tzinfo=UTC), datetime(2024, 12, 31, 12, tzinfo=UTC)])
def test_age_ranges_over_birth_date_match_whole_years_exactly(engine: Engine, as_of: datetime) -> None:
    day = as_of.date()
    births = {latest_birth_date(n, day) + timedelta(days=d) for n in (17, 18, 19) for d in range(-3, 4)}
    births |= {date(2008, 2, 29), date(2009, 2, 28), date(2009, 3, 1), date(2010, 2, 28), date(2010, 3, 1)}
    people = {f"c{i}": b for i, b in enumerate(sorted(births))}
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"customer_id": c, "birth_date": b, "region": "", "time_zone": "",
                                          "attributes": {}} for c, b in people.items()])
    for condition in ("age >= 18", "age > 18", "age < 18", "age <= 18", "age = 18", "age != 18",
                      "age between 17 and 18", "age in (17, 19)", "age not in (18)"):
        expected = {c for c, b in people.items()
                    if evaluate(parse(condition), CustomerFacts(birth_date=b), as_of=as_of)}
        assert _members(engine, condition, as_of) == expected, condition
    assert age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert age_on(date(2008, 2, 29), date(2026, 3, 1)) == 18


def test_event_windows_are_as_known_at_the_evaluation_time(engine: Engine) -> None:
    def ev(days_ago: float, recorded_days_ago: float) -> dict[str, object]:
        return {"customer_id": "c1", "event_type": "txn", "amount": "1",
                "occurred_at": AS_OF - timedelta(days=days_ago),
                "recorded_at": AS_OF - timedelta(days=recorded_days_ago)}

    rows = [ev(0, 0), ev(7, 7), ev(6.5, -1), ev(-0.01, -0.01), ev(3, 3)]
    # in the 7-day window: occurred in (as_of - 7d, as_of] and recorded by as_of: the first and the last only
    facts = CustomerFacts(events=[EventFact(str(r["event_type"]), r["occurred_at"], r["recorded_at"],  # type: ignore[arg-type]
                                            {"amount": Decimal(1)}) for r in rows])
    with engine.begin() as conn:
        conn.execute(insert(customers), [{"customer_id": "c1", "region": "", "time_zone": "", "attributes": {}}])
        conn.execute(insert(events), rows)
    for condition, member in [("count(txn, 7d) = 2", True), ("count(txn, 8d) = 3", True),
                              ("count(other, 7d) = 0", True), ("count(txn, 1d) = 1", True)]:
        assert evaluate(parse(condition), facts, as_of=AS_OF) is member, condition
        assert (_members(engine, condition, AS_OF) == {"c1"}) is member, condition


def test_three_valued_logic_of_missing_values() -> None:
    facts = CustomerFacts(region="", attributes={"income": Attribute("string", "5000")}, tags={"tier": "gold"})
    assert evaluate_3vl(parse('region = "CN-31"'), facts, as_of=AS_OF) is None  # "" is unknown
    assert evaluate_3vl(parse("region is null"), facts, as_of=AS_OF) is True
    assert evaluate_3vl(parse("income > 10"), facts, as_of=AS_OF) is None  # stored as a string: not a number
    assert evaluate_3vl(parse("income is not null"), facts, as_of=AS_OF) is True
    assert evaluate_3vl(parse('not tag.lifecycle = "dormant"'), facts, as_of=AS_OF) is None
    assert evaluate_3vl(parse('tag.lifecycle = "x" or tag.tier = "gold"'), facts, as_of=AS_OF) is True
    assert evaluate_3vl(parse('tag.lifecycle = "x" and tag.tier = "silver"'), facts, as_of=AS_OF) is False
    assert evaluate_3vl(parse("sum(txn.amount, 30d) is null and count(txn, 30d) = 0"), facts, as_of=AS_OF) is True
    assert evaluate(parse('not tag.lifecycle = "dormant"'), facts, as_of=AS_OF) is False


def test_compiler_refuses_what_the_schema_lacks_and_naive_times() -> None:
    bare = SqlSchema.from_tables(customers)
    with pytest.raises(ConditionError) as info:
        compile_sql(parse("feature.recency > 3"), bare, as_of=AS_OF)
    assert (info.value.reason, info.value.column) == ("CONDITION_UNKNOWN_FEATURE", 1)
    with pytest.raises(ConditionError) as info:
        compile_sql(parse("age > 3 and max(txn.quantity, 3d) > 3"), SCHEMA, as_of=AS_OF)
    assert (info.value.reason, info.value.column) == ("CONDITION_UNKNOWN_EVENT", 13)
    with pytest.raises(ConditionError) as info:  # the compiler checks the tree first
        compile_sql(Compare(CoreField("region"), "<", Literal("string", "a")), SCHEMA, as_of=AS_OF)
    assert info.value.reason == "CONDITION_TYPE_MISMATCH"
    with pytest.raises(ValueError):
        compile_sql(Compare(TagRef("t"), "=", Literal("string", "a")), SCHEMA, as_of=datetime(2026, 1, 1))
