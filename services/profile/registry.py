"""The attribute registry: checking definitions, checking customers' values against them, inferring a schema.

Pure logic (no SQL, no gRPC). Rules, also in docs/profile-import.md:

- The registry is *strict once any attribute is registered*: from then on a customer may only carry registered
  attributes (UNKNOWN_ATTRIBUTE otherwise). An empty registry accepts any well-formed attribute, as before.
- A value must be of the attribute's type (ATTRIBUTE_TYPE_MISMATCH), one of the allowed values of an enum
  (VALUE_NOT_ALLOWED), within [min, max] of a number or date (VALUE_OUT_OF_RANGE).
- Descriptions never carry the value of a PII attribute (nor, for PII enums, the allowed values).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from dataclasses import dataclass
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np

from services.platform.errors import FieldViolation, InvalidArgument
from services.platform.validation import Violations
from services.profile.domain import (
    ATTRIBUTE_TYPES,
    CORE_FIELDS,
    STORED_KIND,
    Attribute,
    AttributeKind,
    AttributeSpec,
    AttributeType,
)

ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_DEFINITIONS = 1000
MAX_ALLOWED_VALUES = 1000
MAX_DESCRIPTION = 1000
# Where each type's value is carried, as stored kinds (domain.Attribute.kind).
_ACCEPTED_KINDS: dict[str, tuple[str, ...]] = {
    "string": ("string",), "integer": ("int",), "decimal": ("decimal", "int"), "boolean": ("bool",),
    "date": ("date",), "enum": ("string",),
}
_WHERE = {
    "string": "string_value", "integer": "int_value", "decimal": "decimal_value (or int_value)",
    "boolean": "bool_value", "date": "date_value", "enum": "string_value",
}


@dataclass(frozen=True)
class Violation:
    """A problem with one attribute value: `column` is the attribute name."""

    column: str
    reason: str
    description: str


def attribute_field(name: str, prefix: str = "customer") -> str:
    return f"{prefix}.attributes[{name!r}]"


# -- definitions ----------------------------------------------------------------------------------------------


def _parse_bound(kind: AttributeType, text: str) -> int | Decimal | date:
    if kind == "integer":
        return int(text)
    if kind == "decimal":
        value = Decimal(text)
        if not value.is_finite():
            raise ValueError(text)
        return value
    return date.fromisoformat(text)


def check_definitions(specs: Sequence[AttributeSpec], prefix: str = "attributes") -> None:
    """Raises InvalidArgument listing every problem of a batch of definitions."""
    violations = Violations()
    if not specs:
        violations.add(prefix, "names no attribute")
    if len(specs) > MAX_DEFINITIONS:
        violations.add(prefix, f"at most {MAX_DEFINITIONS} definitions per request")
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        f = f"{prefix}[{i}]"
        if not ATTRIBUTE_NAME.match(spec.name):
            violations.add(f"{f}.name", "attribute names are lower_snake_case, at most 64 characters")
        elif spec.name in CORE_FIELDS:
            violations.add(f"{f}.name", "is a core field of Customer, not an attribute")
        elif spec.name in seen:
            violations.add(f"{f}.name", "appears twice in the request")
        seen.add(spec.name)
        if spec.type not in ATTRIBUTE_TYPES:
            violations.add(f"{f}.type", "is required: STRING, INTEGER, DECIMAL, BOOLEAN, DATE or ENUM")
            continue
        if spec.type == "enum":
            if not spec.allowed_values:
                violations.add(f"{f}.allowed_values", "an ENUM needs at least one allowed value")
            elif len(set(spec.allowed_values)) != len(spec.allowed_values):
                violations.add(f"{f}.allowed_values", "must be unique")
            elif len(spec.allowed_values) > MAX_ALLOWED_VALUES or any(
                not v or len(v) > 200 for v in spec.allowed_values
            ):
                violations.add(f"{f}.allowed_values", f"at most {MAX_ALLOWED_VALUES} values of 1-200 characters")
        elif spec.allowed_values:
            violations.add(f"{f}.allowed_values", "only an ENUM has allowed values")
        bounds: dict[str, Any] = {}
        for which in ("min", "max"):
            text = getattr(spec, which)
            if not text:
                continue
            if spec.type not in ("integer", "decimal", "date"):
                violations.add(f"{f}.{which}", "only INTEGER, DECIMAL and DATE attributes have a range")
                continue
            try:
                bounds[which] = _parse_bound(spec.type, text)
            except (ValueError, InvalidOperation):
                violations.add(f"{f}.{which}", f"is not a valid {spec.type.upper()} value")
        if "min" in bounds and "max" in bounds and bounds["min"] > bounds["max"]:
            violations.add(f"{f}.min", "must not be greater than max")
        if len(spec.description) > MAX_DESCRIPTION:
            violations.add(f"{f}.description", f"must be at most {MAX_DESCRIPTION} characters")
    violations.raise_if_any(reason="INVALID_ATTRIBUTE_DEFINITION")


# -- values ---------------------------------------------------------------------------------------------------

Checker = Callable[[Attribute], "Attribute | Violation"]


def _checker(spec: AttributeSpec) -> Checker:
    name, kind, pii = spec.name, spec.type, spec.pii
    accepted = _ACCEPTED_KINDS[kind]
    mismatch = Violation(name, "ATTRIBUTE_TYPE_MISMATCH", f"must be {kind.upper()}, in {_WHERE[kind]}")
    low = _parse_bound(kind, spec.min) if spec.min else None
    high = _parse_bound(kind, spec.max) if spec.max else None
    if low is not None and high is not None:
        range_text = f"between {spec.min} and {spec.max}"
    elif low is not None:
        range_text = f"at least {spec.min}"
    else:
        range_text = f"at most {spec.max}"
    allowed = frozenset(spec.allowed_values)
    if pii:
        not_allowed = "is not one of the allowed values"
    else:
        shown = ", ".join(sorted(spec.allowed_values)[:20]) + (", ..." if len(allowed) > 20 else "")
        not_allowed = f"must be one of: {shown}"

    def shows(value: object) -> str:
        return "" if pii else f" (got {str(value)[:40]!r})"

    def check(attribute: Attribute) -> Attribute | Violation:
        if attribute.kind not in accepted:
            return mismatch
        value = attribute.value
        if kind == "enum":
            if value not in allowed:
                return Violation(name, "VALUE_NOT_ALLOWED", not_allowed + shows(value))
            return attribute
        if kind in ("string", "boolean"):
            return attribute
        if kind == "integer":
            if type(value) is not int:
                return mismatch
            number: int | Decimal | date = value
        elif kind == "decimal":
            try:
                number = Decimal(value)  # type: ignore[arg-type]
                if not number.is_finite():
                    return mismatch
            except InvalidOperation:
                return mismatch
            if attribute.kind == "int":
                attribute = Attribute("decimal", str(value))
        else:
            try:
                number = date.fromisoformat(str(value))
            except ValueError:
                return mismatch
        if (low is not None and number < low) or (high is not None and number > high):  # type: ignore[operator]
            return Violation(name, "VALUE_OUT_OF_RANGE", f"must be {range_text}" + shows(value))
        return attribute

    return check


class Registry:
    """The registered attributes, compiled for checking many values fast."""

    def __init__(self, specs: Iterable[AttributeSpec]) -> None:
        self.specs: dict[str, AttributeSpec] = {s.name: s for s in specs}
        self._checkers = {name: _checker(spec) for name, spec in self.specs.items()}
        self._bounds = {
            name: (_parse_bound(spec.type, spec.min) if spec.min else None,
                   _parse_bound(spec.type, spec.max) if spec.max else None)
            for name, spec in self.specs.items() if spec.type in ("integer", "decimal", "date")
        }

    def bounds(self, name: str) -> tuple[Any, Any]:
        """(min, max) of a registered INTEGER, DECIMAL or DATE attribute, parsed (None when not set)."""
        return self._bounds.get(name, (None, None))

    @property
    def strict(self) -> bool:
        return bool(self.specs)

    @property
    def pii_names(self) -> frozenset[str]:
        """The attributes flagged PII: their values are encrypted at rest (services/profile/pii.py)."""
        return frozenset(name for name, spec in self.specs.items() if spec.pii)

    def check(self, attributes: Mapping[str, Attribute]) -> tuple[dict[str, Attribute], list[Violation]]:
        """The attributes normalised (an integer given for a decimal becomes a decimal) and every violation."""
        if not self.specs:
            return dict(attributes), []
        out: dict[str, Attribute] = {}
        problems: list[Violation] = []
        for name, attribute in attributes.items():
            checker = self._checkers.get(name)
            if checker is None:
                problems.append(Violation(name, "UNKNOWN_ATTRIBUTE", "is not in the attribute registry"))
                continue
            result = checker(attribute)
            if isinstance(result, Violation):
                problems.append(result)
            else:
                out[name] = result
        return out, problems

    def check_or_raise(self, attributes: Mapping[str, Attribute], prefix: str = "customer") -> dict[str, Attribute]:
        """For one customer: INVALID_ARGUMENT listing every violation, the first one's reason in ErrorInfo."""
        out, problems = self.check(attributes)
        if problems:
            raise InvalidArgument(
                [FieldViolation(attribute_field(p.column, prefix), p.description) for p in problems],
                reason=problems[0].reason,
            )
        return out


# -- columns of a bulk import: vectorised screening ---------------------------------------------------------------

MAX_STRING_VALUE = 1000  # the longest string attribute value (handlers.MAX_STRING_ATTRIBUTE is the same rule)


def _all_indexes(values: Sized) -> list[int]:
    return list(range(len(values)))


def _decimal_suspects(values: Sequence[Any], low: Any, high: Any) -> list[int]:
    """Indexes of decimal text cells that are malformed, not finite or not clearly inside [low, high]."""
    try:
        all(map(Decimal, values))  # raises on a malformed cell
        numbers = np.array(values, dtype=np.float64)
    except (InvalidOperation, ValueError, TypeError):
        # Some cell is malformed (or a placeholder): find them one by one, screen the others.
        texts = list(values)
        for i, value in enumerate(values):
            try:
                Decimal(value)
                float(value)
            except (InvalidOperation, ValueError, TypeError):
                texts[i] = "nan"
        numbers = np.array(texts, dtype=np.float64)
    return _range_suspects(numbers, low, high)


def _range_suspects(numbers: Any, low: Any, high: Any) -> list[int]:
    """Indexes of the numbers that are not finite or not *clearly* within the bounds: a float within a relative
    1e-9 of a bound is a suspect, so that the exact (Decimal) check decides it."""
    inside = np.isfinite(numbers)
    if low is not None:
        inside &= numbers >= float(low) + 1e-9 * max(1.0, abs(float(low)))
    if high is not None:
        inside &= numbers <= float(high) - 1e-9 * max(1.0, abs(float(high)))
    return np.flatnonzero(~inside).tolist()  # type: ignore[no-any-return]


def _distinct_suspects(values: Sequence[Any], good: Callable[[Any], bool]) -> list[int]:
    """Indexes of cells whose value fails `good`, evaluating it once per distinct value."""
    bad = {v for v in set(values) if not good(v)}
    return [i for i, v in enumerate(values) if v in bad] if bad else []


def _iso_date(text: Any) -> date | None:
    try:
        return date.fromisoformat(text)
    except (ValueError, TypeError):
        return None


def screen_column(
    registry: Registry, name: str, kind: AttributeKind, values: Sequence[Any],
) -> tuple[AttributeKind, list[int]]:
    """One column of an import batch, checked at once: the kind its cells are stored as and the indexes of the
    cells that *may* be wrong (every cell of an unknown attribute or of the wrong kind). Cells not listed pass
    every check of a row's AttributeValue (well-formed, registered, type, allowed values, range); the listed ones
    must get the exact per-value check, which gives the row errors. Placeholder cells (missing rows) may be
    listed: the caller ignores them."""
    stored: AttributeKind = kind
    if not ATTRIBUTE_NAME.match(name):
        return stored, _all_indexes(values)
    spec = registry.specs.get(name)
    if spec is None and registry.strict:
        return stored, _all_indexes(values)
    if spec is not None and kind not in _ACCEPTED_KINDS[spec.type]:
        return stored, _all_indexes(values)
    low, high = registry.bounds(name)
    if kind == "string":
        suspects = [i for i, v in enumerate(values) if len(v) > MAX_STRING_VALUE] if values and max(
            map(len, values)) > MAX_STRING_VALUE else []
        if spec is not None and spec.type == "enum":
            allowed = frozenset(spec.allowed_values)
            suspects = sorted(set(suspects) | set(_distinct_suspects(values, allowed.__contains__)))
        return stored, suspects
    if kind == "bool":
        return stored, []
    if kind == "int":
        if spec is not None and spec.type == "decimal":
            stored = "decimal"
        if low is None and high is None:
            return stored, []
        numbers = np.array(values, dtype=np.int64)
        if spec is not None and spec.type == "integer":
            inside = np.ones(len(values), dtype=bool)
            if low is not None:
                inside &= numbers >= int(low)
            if high is not None:
                inside &= numbers <= int(high)
            return stored, np.flatnonzero(~inside).tolist()
        return stored, _range_suspects(numbers.astype(np.float64), low, high)
    if kind == "decimal":
        return stored, _decimal_suspects(values, low, high)
    # date
    screened = _date_suspects(values, low, high)
    if screened is not None:
        return stored, screened

    def good_date(text: Any) -> bool:
        day = _iso_date(text)
        return day is not None and (low is None or day >= low) and (high is None or day <= high)

    return stored, _distinct_suspects(values, good_date)


_DATE_DIGITS = [0, 1, 2, 3, 5, 6, 8, 9]


def _date_suspects(values: Sequence[Any], low: date | None, high: date | None) -> list[int] | None:
    """Indexes of the date cells outside [low, high], with numpy, when every cell is a plain YYYY-MM-DD that numpy
    parses (numpy reads exactly what date.fromisoformat reads for that shape); None otherwise: the caller then
    checks each distinct value the exact way."""
    if not values:
        return []
    lengths = set(map(len, values))
    if lengths != {10}:
        return None
    try:
        raw = np.array(values, dtype="S11")  # one byte more: an 11th character shows, and fails the shape
    except (UnicodeEncodeError, TypeError, ValueError):
        return None  # not ASCII: not a plain date
    grid = np.frombuffer(raw.tobytes(), dtype=np.uint8).reshape(len(values), 11)
    digits = (grid[:, _DATE_DIGITS] >= ord("0")) & (grid[:, _DATE_DIGITS] <= ord("9"))
    if not (digits.all() and (grid[:, 4] == ord("-")).all() and (grid[:, 7] == ord("-")).all()
            and (grid[:, 10] == 0).all()):
        return None
    try:
        days = raw.astype("U10").astype("datetime64[D]")
    except ValueError:
        return None  # a day that does not exist (2023-02-29): the exact check says which
    if (days < np.datetime64("0001-01-01", "D")).any():
        return None  # year 0: numpy reads it, date.fromisoformat does not
    outside = np.isnat(days)
    if low is not None:
        outside |= days < np.datetime64(low, "D")
    if high is not None:
        outside |= days > np.datetime64(high, "D")
    return np.flatnonzero(outside).tolist()  # type: ignore[no-any-return]


# -- text cells (CSV / Parquet) -> typed values ---------------------------------------------------------------

_TRUE = frozenset({"true", "yes", "y", "t"})
_FALSE = frozenset({"false", "no", "n", "f"})
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE_TEXT = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_LEADING_ZERO = re.compile(r"^[+-]?0\d")


def coerce_text(kind: AttributeType, text: str) -> Attribute:
    """A file's cell as the attribute's type. A cell that does not parse stays a string: the service then
    rejects it as ATTRIBUTE_TYPE_MISMATCH with its row number, like any other bad value."""
    if kind == "integer":
        if _INT_TEXT.match(text):
            return Attribute("int", int(text))
    elif kind == "decimal":
        if _DECIMAL_TEXT.match(text):
            return Attribute("decimal", text)
    elif kind == "boolean":
        lowered = text.lower()
        if lowered in _TRUE or lowered == "1":
            return Attribute("bool", True)
        if lowered in _FALSE or lowered == "0":
            return Attribute("bool", False)
    elif kind == "date":
        if _DATE_TEXT.match(text):
            return Attribute("date", text)
    return Attribute("string", text)


_PLACEHOLDER: dict[str, Any] = {"string": "", "int": 0, "decimal": "0", "bool": False, "date": ""}
_INT64 = 2**63


def coerce_column(kind: AttributeType, cells: Sequence[str]) -> tuple[AttributeKind, list[Any], list[int],
                                                                       dict[int, Attribute]]:
    """A file's column of text cells as one typed column of an import batch, cell for cell as coerce_text would
    convert it: (the column's kind, its values with placeholders, the indexes of empty cells, the cells that did
    not parse as the type, as the string Attribute the service will reject)."""
    stored = STORED_KIND[kind]
    placeholder = _PLACEHOLDER[stored]
    missing = [i for i, c in enumerate(cells) if c == ""] if "" in cells else []
    filled = list(cells)
    for i in missing:
        filled[i] = "0" if stored in ("int", "decimal") else ""
    if kind in ("string", "enum"):
        return stored, filled, missing, {}
    if kind == "integer" and all(map(str.isdecimal, filled)) and max(map(len, filled), default=0) <= 18:
        return stored, list(map(int, filled)), missing, {}
    if kind == "decimal" and all(map(_DECIMAL_TEXT.match, filled)):
        return stored, filled, missing, {}
    memo: dict[str, Attribute] = {c: coerce_text(kind, c) for c in set(filled)} if kind in (
        "boolean", "date") else {}
    if memo and not missing and all(a.kind == stored for a in memo.values()):
        converted = {c: a.value for c, a in memo.items()}
        return stored, list(map(converted.__getitem__, filled)), missing, {}
    values: list[Any] = []
    exceptions: dict[int, Attribute] = {}
    skip = set(missing)
    for i, cell in enumerate(filled):
        if i in skip:
            values.append(placeholder)
            continue
        attribute = memo.get(cell)
        if attribute is None:
            attribute = memo[cell] = coerce_text(kind, cell)
        if attribute.kind == stored and not (stored == "int" and not -_INT64 <= attribute.value < _INT64):  # type: ignore[operator]
            values.append(attribute.value)
        else:
            values.append(placeholder)
            exceptions[i] = attribute if attribute.kind == "string" else Attribute("string", cell)
    return stored, values, missing, exceptions


# -- inference ------------------------------------------------------------------------------------------------

PII_NAME_HINTS = (
    "name", "email", "e_mail", "mail", "phone", "mobile", "tel", "telephone", "id_number", "idnumber", "ssn",
    "passport", "address", "street", "birth", "dob", "iban", "account_number", "card_number", "national_id",
    "tax_id", "zip", "postcode", "postal_code",
)
ENUM_MAX_VALUES = 32


def attribute_name_for(column: str) -> str:
    """A file's column header as an attribute name: lower_snake_case, starting with a letter."""
    name = re.sub(r"[^a-z0-9]+", "_", column.strip().lower()).strip("_") or "column"
    if not name[0].isalpha():
        name = "c_" + name
    return name[:64]


def looks_pii(name: str) -> bool:
    tokens = name.split("_")
    joined = name
    return any(hint in tokens or (("_" in hint or len(hint) > 4) and hint in joined) for hint in PII_NAME_HINTS)


def infer_column(name: str, values: Sequence[str | None]) -> dict[str, Any]:
    """The definition of one column from a sample of its cells (None or "" = missing)."""
    present = [v.strip() for v in values if v is not None and v.strip() != ""]
    pii = looks_pii(name)
    kind: AttributeType = "string"
    allowed: list[str] = []
    if present:
        distinct = set(present)
        # Leading zeros ("007") or PII columns of digits (phone numbers, ids) are codes, not numbers.
        code_like = pii or any(_LEADING_ZERO.match(v) for v in distinct)
        if not code_like and all(_INT_TEXT.match(v) and len(v.lstrip("+-")) <= 18 for v in distinct):
            kind = "integer"
        elif all(v.lower() in _TRUE or v.lower() in _FALSE for v in distinct):
            kind = "boolean"
        elif not code_like and all(_DECIMAL_TEXT.match(v) for v in distinct):
            kind = "decimal"
        elif all(_DATE_TEXT.match(v) for v in distinct) and _all_dates(distinct):
            kind = "date"
        elif not pii and len(distinct) <= ENUM_MAX_VALUES and len(present) >= 2 * len(distinct):
            kind = "enum"
            allowed = sorted(distinct)
    definition: dict[str, Any] = {"type": kind, "pii": pii}
    if allowed:
        definition["allowed_values"] = allowed
    return definition


def _all_dates(values: Iterable[str]) -> bool:
    try:
        for value in values:
            date.fromisoformat(value)
    except ValueError:
        return False
    return True


def infer_schema(columns: Mapping[str, Sequence[str | None]], *, id_column: str | None = None) -> dict[str, Any]:
    """A schema document (what --infer-schema writes and --schema reads) from column samples, in file order.

    A column whose attribute name is a core field of Customer (full_name, email, ...) maps to that field.
    """
    out: list[dict[str, Any]] = []
    used: set[str] = set()
    for column, values in columns.items():
        if column == id_column:
            continue
        name = attribute_name_for(column)
        base, n = name, 2
        while name in used:
            name = f"{base[:60]}_{n}"
            n += 1
        used.add(name)
        entry: dict[str, Any] = {"column": column, "name": name}
        if name in CORE_FIELDS:
            entry["core"] = True
        else:
            entry.update(infer_column(name, values))
            entry["description"] = f"inferred from column {column!r}"
        out.append(entry)
    return {"version": 1, "id_column": id_column, "columns": out}


@dataclass(frozen=True)
class ColumnMapping:
    column: str
    name: str
    core: bool
    spec: AttributeSpec | None


def parse_schema(document: Mapping[str, Any]) -> tuple[str | None, list[ColumnMapping]]:
    """(id_column, column mappings) of a schema document; ValueError naming the entry at fault."""
    if not isinstance(document, Mapping) or not isinstance(document.get("columns"), list):
        raise ValueError("a schema is a mapping with a 'columns' list")
    id_column = document.get("id_column")
    mappings: list[ColumnMapping] = []
    for i, entry in enumerate(document["columns"]):
        if not isinstance(entry, Mapping) or not entry.get("column"):
            raise ValueError(f"columns[{i}]: needs 'column'")
        column = str(entry["column"])
        name = str(entry.get("name") or attribute_name_for(column))
        if entry.get("core") or name in CORE_FIELDS:
            if name not in CORE_FIELDS:
                raise ValueError(f"columns[{i}]: {name!r} is not a core field ({', '.join(CORE_FIELDS)})")
            mappings.append(ColumnMapping(column, name, True, None))
            continue
        kind = str(entry.get("type", "")).lower()
        if kind not in ATTRIBUTE_TYPES:
            raise ValueError(f"columns[{i}]: type must be one of {', '.join(ATTRIBUTE_TYPES)}")
        spec = AttributeSpec(
            name=name, type=kind,  # type: ignore[arg-type]
            pii=bool(entry.get("pii", False)),
            allowed_values=tuple(str(v) for v in entry.get("allowed_values") or ()),
            min="" if entry.get("min") is None else str(entry["min"]),
            max="" if entry.get("max") is None else str(entry["max"]),
            description=str(entry.get("description") or ""),
        )
        mappings.append(ColumnMapping(column, name, False, spec))
    specs = [m.spec for m in mappings if m.spec is not None]
    try:
        if specs:
            check_definitions(specs)
    except InvalidArgument as error:
        raise ValueError(error.message) from None
    return (str(id_column) if id_column else None), mappings
