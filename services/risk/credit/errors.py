"""Errors of the credit package: plain `ValueError` subclasses (the package imports no grpc).

Each names the request `field` at fault and a stable UPPER_SNAKE_CASE `reason`, so the RPC layer maps it with
one line: ``raise InvalidArgument.field(exc.field, exc.description, reason=exc.reason) from exc``.
Messages name columns and parameters, never a value from the data (values can be personal data).
"""

from __future__ import annotations


class CreditDataError(ValueError):
    """The training data, the parameters or a record to score cannot be used (INVALID_ARGUMENT)."""

    def __init__(self, field: str, reason: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.reason = reason
        self.description = description


class CreditModelFormatError(CreditDataError):
    """A serialised model that is not valid JSON of a known format version (INVALID_ARGUMENT on `model`)."""

    def __init__(self, description: str, *, field: str = "model") -> None:
        super().__init__(field, "INVALID_MODEL_FORMAT", description)
