"""Request validation shared by every handler: ids, resource names, enums, field masks.

Each check raises InvalidArgument naming the field, so the caller learns exactly what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import date
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.platform.errors import FieldViolation, InvalidArgument

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_RULE = "must be 1-128 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"


class Violations:
    """Collects every problem of a request, so one error lists them all."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self, reason: str = "INVALID_ARGUMENT") -> None:
        if self.items:
            raise InvalidArgument(self.items, reason=reason)


def check_id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument.field(field, "is required", reason="REQUIRED_FIELD_MISSING")
    if not ID_PATTERN.match(value):
        raise InvalidArgument.field(field, ID_RULE, reason="INVALID_ID")
    return value


def parse_name(name: str, collection: str, field: str = "name") -> str:
    """'customers/abc' -> 'abc'; anything else is INVALID_ARGUMENT on `field`."""
    if not name:
        raise InvalidArgument.field(field, f"is required, as {collection}/{{id}}", reason="REQUIRED_FIELD_MISSING")
    prefix = collection + "/"
    if not name.startswith(prefix) or not ID_PATTERN.match(name[len(prefix):]):
        raise InvalidArgument.field(field, f"must be {collection}/{{id}} where id {ID_RULE}", reason="INVALID_NAME")
    return name[len(prefix):]


def check_enum(value: int, enum: Any, field: str, *, required: bool = True) -> int:
    names = {v.number for v in enum.DESCRIPTOR.values}
    if value not in names:
        raise InvalidArgument.field(field, f"unknown value {value}", reason="UNKNOWN_ENUM_VALUE")
    if required and value == 0:
        raise InvalidArgument.field(field, "is required", reason="REQUIRED_FIELD_MISSING")
    return value


def check_date(value: str, field: str, violations: Violations) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        violations.add(field, "must be a date YYYY-MM-DD")
        return None


def check_time_zone(value: str, field: str, violations: Violations) -> None:
    if not value:
        return
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        violations.add(field, "must be an IANA time zone such as Asia/Shanghai")


def check_mask(paths: Iterable[str], allowed: set[str], prefixes: tuple[str, ...] = ()) -> list[str]:
    """The update_mask paths, each checked against `allowed` (or an allowed `prefix.` for map keys)."""
    paths = list(paths)
    if not paths:
        raise InvalidArgument.field("update_mask", "names no field to update", reason="REQUIRED_FIELD_MISSING")
    violations = Violations()
    for path in paths:
        if path not in allowed and not any(path.startswith(p + ".") and len(path) > len(p) + 1 for p in prefixes):
            violations.add("update_mask", f"cannot update {path!r}")
    violations.raise_if_any(reason="INVALID_UPDATE_MASK")
    return paths
