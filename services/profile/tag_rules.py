"""User-defined rule tags and tags set by other systems: names, values, and the SQL that applies a rule.

A rule tag definition says: customers matching CONDITION (the segment language, docs/segments.md) get the tag
TAG with VALUE. Several definitions may share a tag (one per value, e.g. `spend_band` = high / medium): for each
customer the first matching definition by definition id wins. The tag job applies every definition to one chunk
of customers at a time with one INSERT ... SELECT per definition (values bound, never in the SQL text).

Tag names are lower_snake_case, at most 32 characters; the built-in names (tags.BUILTIN_TAGS) are reserved, and a
name is either a rule tag or an external tag (SetCustomerTags), never both. Pure apart from the statements it
builds: no session, no grpc.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Insert, String, and_, exists, literal, select

from services.platform.validation import ID_PATTERN, ID_RULE, Violations
from services.profile.db import CustomerRow, CustomerTagValueRow, TagDefinitionRow
from services.profile.tags import BUILTIN_TAGS

TAG_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
TAG_NAME_RULE = "must be lower_snake_case: a letter, then letters, digits or '_', at most 32 characters"
MAX_VALUE = 64
SOURCE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
KIND_RULE, KIND_EXTERNAL = "rule", "external"


def check_tag_name(name: str, field: str, violations: Violations) -> None:
    if not name:
        violations.add(field, "is required")
    elif not TAG_NAME.match(name):
        violations.add(field, TAG_NAME_RULE)
    elif name in BUILTIN_TAGS:
        violations.add(field, "is a built-in tag name (reserved)")


def check_tag_value(value: str, field: str, violations: Violations) -> None:
    if not value or len(value) > MAX_VALUE or value != value.strip() or any(ord(c) < 32 for c in value):
        violations.add(field, f"must be 1 to {MAX_VALUE} characters, no control characters or outer spaces")


def check_definition(definition_id: str, tag: str, value: str, description: str) -> None:
    """Everything about a definition but its condition (the service parses that against the registry)."""
    violations = Violations()
    if not definition_id:
        violations.add("definition.definition_id", "is required")
    elif not ID_PATTERN.match(definition_id):
        violations.add("definition.definition_id", ID_RULE)
    check_tag_name(tag, "definition.tag", violations)
    check_tag_value(value, "definition.value", violations)
    if len(description) > 1000:
        violations.add("definition.description", "at most 1000 characters")
    violations.raise_if_any()


def apply_rule(definition: TagDefinitionRow, where: ColumnElement[bool], *, after: str | None, last: str,
               now: datetime) -> Insert:
    """INSERT the definition's tag for the customers of the chunk (after, last] matching `where` that do not have
    this tag yet (an earlier definition of the same tag matched them)."""
    taken = exists().where(CustomerTagValueRow.customer_id == CustomerRow.customer_id,
                           CustomerTagValueRow.name == literal(definition.tag, String()))
    bounds: list[ColumnElement[bool]] = [CustomerRow.customer_id <= literal(last, String())]
    if after is not None:
        bounds.append(CustomerRow.customer_id > literal(after, String()))
    values: list[Any] = [
        CustomerRow.customer_id,
        literal(definition.tag, String()).label("name"),
        literal(definition.value, String()).label("value"),
        literal(KIND_RULE, String()).label("kind"),
        literal(definition.definition_id, String()).label("source"),
        literal(now, CustomerTagValueRow.update_time.type).label("update_time"),
    ]
    chosen = select(*values).where(and_(*bounds), where, ~taken)
    return CustomerTagValueRow.__table__.insert().from_select(  # type: ignore[attr-defined, no-any-return]
        ["customer_id", "name", "value", "kind", "source", "update_time"], chosen)
