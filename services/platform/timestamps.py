"""google.protobuf.Timestamp <-> timezone-aware UTC datetime, checked.

A Timestamp outside 0001-01-01..9999-12-31, or with nanos outside [0, 1e9), cannot become a datetime;
`from_timestamp` turns that into INVALID_ARGUMENT naming the field (reason INVALID_TIMESTAMP) instead of a
ValueError that would surface as INTERNAL. Every handler converts through here.
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from services.platform.errors import InvalidArgument

# The range google.protobuf.Timestamp itself documents, and Python's datetime can hold.
MIN_SECONDS = -62135596800  # 0001-01-01T00:00:00Z
MAX_SECONDS = 253402300799  # 9999-12-31T23:59:59Z


def is_valid(value: timestamp_pb2.Timestamp) -> bool:
    return MIN_SECONDS <= value.seconds <= MAX_SECONDS and 0 <= value.nanos < 1_000_000_000


def to_datetime(value: timestamp_pb2.Timestamp, field: str) -> datetime:
    """The Timestamp as an aware UTC datetime; INVALID_ARGUMENT on `field` when out of range."""
    if not is_valid(value):
        raise InvalidArgument.field(field, "must be a timestamp between 0001-01-01 and 9999-12-31 with nanos in "
                                           "[0, 1e9)", reason="INVALID_TIMESTAMP")
    return value.ToDatetime(tzinfo=UTC)


def from_field(message: object, name: str, path: str | None = None) -> datetime | None:
    """message.<name> as a datetime, or None when the field is unset (`path` names it in errors)."""
    if not message.HasField(name):  # type: ignore[attr-defined]
        return None
    return to_datetime(getattr(message, name), path or name)


def to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value)
    return out
