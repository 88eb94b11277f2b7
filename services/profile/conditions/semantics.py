"""Definitions shared by the SQL compiler and the in-memory evaluator, so that both mean the same thing."""

from __future__ import annotations

from datetime import date, datetime, timedelta

# Stored attribute kinds ({"t": kind} in customers.attributes) that each type family reads; any other kind
# reads as null, on both sides.
FAMILY_KINDS: dict[str, tuple[str, ...]] = {
    "string": ("string",),
    "number": ("int", "decimal"),
    "bool": ("bool",),
    "date": ("date",),
}


def age_on(birth_date: date, day: date) -> int:
    """Whole years completed on `day` (someone born on 29 February is a year older on 1 March)."""
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


def latest_birth_date(years: int, day: date) -> date:
    """The latest birth date for which age_on(birth_date, day) >= years."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February in a year without one
        return day.replace(year=day.year - years, day=28)


def window_bounds(as_of: datetime, window_days: int) -> tuple[datetime, datetime]:
    """(start, end): an event is in the window when start < occurred_at <= end and recorded_at <= end."""
    if as_of.tzinfo is None:
        raise ValueError("as_of must be timezone-aware")
    return as_of - timedelta(days=window_days), as_of
