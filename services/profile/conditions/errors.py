"""Errors of the condition language: every one knows where in the text the mistake is.

Messages name attributes, operators and token kinds but never echo a literal value (a value compared with a
personal-data attribute is personal data). The caret excerpt, which does show the text, is kept apart
(`ConditionError.excerpt`) for the person who typed it; `to_invalid_argument` leaves it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.platform.errors import InvalidArgument

# Stable ErrorInfo reasons.
SYNTAX = "CONDITION_SYNTAX_ERROR"
TOO_LONG = "CONDITION_TOO_LONG"
TOO_DEEP = "CONDITION_TOO_DEEP"
UNKNOWN_ATTRIBUTE = "CONDITION_UNKNOWN_ATTRIBUTE"
UNKNOWN_FEATURE = "CONDITION_UNKNOWN_FEATURE"
UNKNOWN_EVENT = "CONDITION_UNKNOWN_EVENT"
TYPE_MISMATCH = "CONDITION_TYPE_MISMATCH"
VALUE_OUT_OF_RANGE = "CONDITION_VALUE_OUT_OF_RANGE"
WINDOW_OUT_OF_RANGE = "CONDITION_WINDOW_OUT_OF_RANGE"
PII_FORBIDDEN = "CONDITION_PII_FORBIDDEN"
INVALID_TREE = "CONDITION_INVALID_TREE"

FIELD = "condition"


@dataclass(frozen=True)
class Pos:
    """A place in the condition text: 0-based character offset, 1-based line and column."""

    offset: int
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


def pos_at(text: str, offset: int) -> Pos:
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    start = text.rfind("\n", 0, offset) + 1
    return Pos(offset, line, offset - start + 1)


def caret_excerpt(text: str, pos: Pos, width: int = 72) -> str:
    """The line holding `pos` (cut to `width` characters around it) and a caret under the column."""
    start = text.rfind("\n", 0, pos.offset) + 1
    end = text.find("\n", pos.offset)
    line = text[start : len(text) if end < 0 else end]
    col = pos.column - 1
    left = max(0, col - width // 2)
    shown = line[left : left + width]
    prefix = "..." if left else ""
    suffix = "..." if left + width < len(line) else ""
    # Tabs and other control characters would shift the caret; show them as spaces.
    shown = "".join(" " if ch.isspace() or not ch.isprintable() else ch for ch in shown)
    return f"{prefix}{shown}{suffix}\n{' ' * (len(prefix) + col - left)}^"


class ConditionError(Exception):
    """A condition that cannot be accepted: a semantic mistake (unknown attribute, wrong type, window out of
    range, personal data where policy forbids it). `pos` is None when the condition came as a tree."""

    def __init__(self, reason: str, description: str, pos: Pos | None = None, *, source: str | None = None) -> None:
        self.reason = reason
        self.description = description
        self.pos = pos
        self.source = source
        super().__init__(self.message)

    @property
    def line(self) -> int | None:
        return self.pos.line if self.pos else None

    @property
    def column(self) -> int | None:
        return self.pos.column if self.pos else None

    @property
    def message(self) -> str:
        where = f"line {self.pos.line}, column {self.pos.column}: " if self.pos else ""
        return f"{where}{self.description}"

    @property
    def excerpt(self) -> str:
        """The offending line with a caret under the mistake ('' without a position or source)."""
        if self.pos is None or self.source is None:
            return ""
        return caret_excerpt(self.source, self.pos)

    def pretty(self) -> str:
        """Message and caret excerpt, for the person who typed the condition (a terminal, not a log)."""
        excerpt = self.excerpt
        return f"{self.message}\n{excerpt}" if excerpt else self.message

    def with_source(self, source: str) -> ConditionError:
        self.source = source
        return self

    def __str__(self) -> str:
        return self.message


class ConditionSyntaxError(ConditionError):
    """Text that does not follow the grammar. `expected` says what would have been accepted there."""

    def __init__(self, description: str, pos: Pos, *, expected: str = "", source: str | None = None,
                 reason: str = SYNTAX) -> None:
        self.expected = expected
        super().__init__(reason, description, pos, source=source)


def to_invalid_argument(error: ConditionError) -> InvalidArgument:
    """The service-layer error for a rejected condition: INVALID_ARGUMENT, field "condition", the reason, and
    metadata "position" ("line:column", absent for a tree without positions). No excerpt, no literal values."""
    result = InvalidArgument.field(FIELD, error.message, reason=error.reason)
    if error.pos is not None:
        result.metadata["position"] = str(error.pos)
        result.metadata["line"] = str(error.pos.line)
        result.metadata["column"] = str(error.pos.column)
    return result
