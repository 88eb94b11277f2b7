"""Tree -> canonical text. `parse(to_text(tree)) == tree` for every valid tree: keywords in lower case,
attributes always as `attr.<name>`, single spaces, parentheses only where the structure needs them."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal

from services.profile.conditions import errors
from services.profile.conditions.errors import ConditionError
from services.profile.conditions.nodes import (
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

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")


def check_name(name: str, what: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise ConditionError(errors.INVALID_TREE, f"{what} is not a valid name")
    return name


def quote(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\x00":
            raise ConditionError(errors.INVALID_TREE, "a string holds NUL")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def literal_text(lit: Literal) -> str:
    value = lit.value
    if lit.kind == "string" and isinstance(value, str):
        return quote(value)
    if lit.kind == "bool" and isinstance(value, bool):
        return "true" if value else "false"
    if lit.kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if lit.kind == "decimal" and isinstance(value, Decimal) and value.is_finite():
        text = format(value, "f")
        return text if "." in text else text + ".0"
    if lit.kind == "date" and isinstance(value, date):
        return f'date("{value.isoformat()}")'
    raise ConditionError(errors.INVALID_TREE, f"a {lit.kind} value of the wrong Python type")


def operand_text(operand: Operand) -> str:
    if isinstance(operand, CoreField):
        return operand.name
    if isinstance(operand, AttributeRef):
        return "attr." + check_name(operand.name, "an attribute name")
    if isinstance(operand, TagRef):
        return "tag." + check_name(operand.name, "a tag name")
    if isinstance(operand, FeatureRef):
        return "feature." + check_name(operand.name, "a feature name")
    event = check_name(operand.event, "an event type")
    if operand.function == "count":
        return f"count({event}, {operand.window_days}d)"
    field = check_name(operand.field or "", "an event field")
    return f"{operand.function}({event}.{field}, {operand.window_days}d)"


def to_text(node: Node) -> str:
    if isinstance(node, And):
        return " and ".join(f"({to_text(i)})" if isinstance(i, And | Or) else to_text(i) for i in node.items)
    if isinstance(node, Or):
        return " or ".join(f"({to_text(i)})" if isinstance(i, Or) else to_text(i) for i in node.items)
    if isinstance(node, Not):
        inner = to_text(node.item)
        return f"not ({inner})" if isinstance(node.item, And | Or) else f"not {inner}"
    if isinstance(node, Compare):
        return f"{operand_text(node.operand)} {node.op} {literal_text(node.value)}"
    if isinstance(node, Between):
        return (f"{operand_text(node.operand)} between {literal_text(node.low)} "
                f"and {literal_text(node.high)}")
    if isinstance(node, InList):
        values = ", ".join(literal_text(v) for v in node.values)
        return f"{operand_text(node.operand)} {'not in' if node.negated else 'in'} ({values})"
    if isinstance(node, IsNull):
        return f"{operand_text(node.operand)} is {'not null' if node.negated else 'null'}"
    raise ConditionError(errors.INVALID_TREE, "not a condition node")
