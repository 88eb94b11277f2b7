"""The segment condition language (docs/segments.md).

    tree = parse_condition('age between 25 and 35 and tag.lifecycle = "dormant" and sum(txn.amount, 90d) > 5000',
                           catalog)
    to_text(tree)                      # canonical text; parse(to_text(tree)) == tree
    to_proto(tree) / from_proto(msg)   # lodestar.profile.v1.Condition
    compile_sql(tree, schema, as_of=t) # SQLAlchemy Core boolean expression, literals bound
    evaluate(tree, facts, as_of=t)     # the same answer in memory for one customer

Errors: ConditionSyntaxError / ConditionError with reason, line, column and a caret excerpt; the service layer
turns them into INVALID_ARGUMENT with `to_invalid_argument`. Pure: no database session, no gRPC.
"""

from __future__ import annotations

from services.profile.conditions.checker import AttributeInfo, Catalog, check
from services.profile.conditions.errors import ConditionError, ConditionSyntaxError, Pos, to_invalid_argument
from services.profile.conditions.evaluator import CustomerFacts, EventFact, evaluate, evaluate_3vl
from services.profile.conditions.nodes import Node
from services.profile.conditions.parser import parse
from services.profile.conditions.printer import to_text
from services.profile.conditions.proto import from_proto, to_proto
from services.profile.conditions.sql import SqlSchema, compile_sql


def parse_condition(text: str, catalog: Catalog | None = None) -> Node:
    """Parse and check: the tree, or a ConditionError pointing into `text`."""
    return check(parse(text), catalog, source=text)


__all__ = [
    "AttributeInfo", "Catalog", "ConditionError", "ConditionSyntaxError", "CustomerFacts", "EventFact", "Node",
    "Pos", "SqlSchema", "check", "compile_sql", "evaluate", "evaluate_3vl", "from_proto", "parse",
    "parse_condition", "to_invalid_argument", "to_proto", "to_text",
]
