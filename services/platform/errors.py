"""Domain errors and their one mapping to canonical gRPC status codes (AIP-193).

The service layer raises these (it imports no grpc); `interceptors.ErrorMappingInterceptor` turns each into a
`google.rpc.Status` with an `ErrorInfo` (reason, domain, metadata) and, where it applies, `BadRequest`,
`QuotaFailure`, `RetryInfo` or `ResourceInfo` details. Messages never carry personal data.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import sqlalchemy.exc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2


@dataclass(frozen=True)
class FieldViolation:
    field: str
    description: str


class DomainError(Exception):
    """Base of every error a service means to return. `reason` is UPPER_SNAKE_CASE and stable."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, message: str, *, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})

    def details(self) -> list[object]:
        """Extra google.rpc detail messages, beside ErrorInfo."""
        return []


class InvalidArgument(DomainError):
    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(
        self, violations: list[FieldViolation], *, reason: str = "INVALID_ARGUMENT", message: str | None = None
    ) -> None:
        self.violations = violations
        text = message or "; ".join(f"{v.field}: {v.description}" for v in violations) or "invalid argument"
        super().__init__(reason, text, metadata={"field": violations[0].field} if violations else None)

    @classmethod
    def field(cls, field: str, description: str, *, reason: str = "INVALID_ARGUMENT") -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)

    def details(self) -> list[object]:
        return [
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                    for v in self.violations
                ]
            )
        ]


class NotFound(DomainError):
    """The message names the resource type only: resource names can carry personal data (a bank customer id),
    and messages travel into callers' span statuses. The name is in the ResourceInfo detail."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, resource_type: str, resource_name: str, *, reason: str | None = None) -> None:
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(
            reason or f"{resource_type.upper()}_NOT_FOUND",
            f"{resource_type} not found",
            metadata={"resource_type": resource_type},
        )

    def details(self) -> list[object]:
        return [error_details_pb2.ResourceInfo(resource_type=self.resource_type, resource_name=self.resource_name)]


class AlreadyExists(DomainError):
    code = grpc.StatusCode.ALREADY_EXISTS

    def __init__(self, resource_type: str, resource_name: str, *, reason: str | None = None) -> None:
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(
            reason or f"{resource_type.upper()}_ALREADY_EXISTS",
            f"{resource_type} already exists",
            metadata={"resource_type": resource_type},
        )

    def details(self) -> list[object]:
        return [error_details_pb2.ResourceInfo(resource_type=self.resource_type, resource_name=self.resource_name)]


class Aborted(DomainError):
    """A concurrency conflict, e.g. a stale etag: re-read and retry."""

    code = grpc.StatusCode.ABORTED


class FailedPrecondition(DomainError):
    """The resource's state forbids the operation."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Unauthenticated(DomainError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(DomainError):
    code = grpc.StatusCode.PERMISSION_DENIED


class ResourceExhausted(DomainError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, reason: str, message: str, *, subject: str, retry_after_seconds: float | None = None) -> None:
        self.subject = subject
        self.retry_after_seconds = retry_after_seconds
        super().__init__(reason, message)

    def details(self) -> list[object]:
        out: list[object] = [
            error_details_pb2.QuotaFailure(
                violations=[error_details_pb2.QuotaFailure.Violation(subject=self.subject, description=self.message)]
            )
        ]
        if self.retry_after_seconds is not None:
            delay = duration_pb2.Duration()
            delay.FromNanoseconds(int(self.retry_after_seconds * 1e9))
            out.append(error_details_pb2.RetryInfo(retry_delay=delay))
        return out


class Unavailable(DomainError):
    """A database or a dependency cannot be reached; the caller may retry."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DomainError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unimplemented(DomainError):
    """An RPC of the contract this server does not implement (yet)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class Internal(DomainError):
    """Only for the unexpected; the message is generic, the details are in the log under the trace id."""

    code = grpc.StatusCode.INTERNAL


def from_infrastructure(exc: BaseException) -> DomainError | None:
    """Failures of the machinery (not bugs) that have a proper status code of their own."""
    if isinstance(exc, DomainError):
        return exc
    if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
        isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
    ):
        return Unavailable("DATABASE_UNAVAILABLE", "the database is unavailable; retry later")
    if isinstance(exc, sqlalchemy.exc.TimeoutError):
        return Unavailable("DATABASE_POOL_EXHAUSTED", "no database connection free; retry later")
    if isinstance(exc, NotImplementedError):  # the generated servicer's default for a missing handler
        return Unimplemented("NOT_IMPLEMENTED", "this method is not implemented by this server")
    if isinstance(exc, TimeoutError):
        return DeadlineExceeded("DEADLINE_EXCEEDED", "the operation did not finish in time")
    return None


def to_status_proto(error: DomainError, domain: str) -> status_pb2.Status:
    code_value = error.code.value[0]
    status = status_pb2.Status(code=code_value, message=error.message)
    info = error_details_pb2.ErrorInfo(reason=error.reason, domain=domain, metadata=error.metadata)
    for detail in [info, *error.details()]:
        packed = any_pb2.Any()
        packed.Pack(detail)  # type: ignore[arg-type]
        status.details.append(packed)
    return status


GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def status_code_name(code: int) -> str:
    return code_pb2.Code.Name(code)
