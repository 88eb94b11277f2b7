"""Clients of other services: one channel each, deadlines on every call, retries on UNAVAILABLE only.

Every call's timeout is the smaller of the client's default and what remains of the deadline of the request
being served (minus a small margin to answer in), so a deadline set at the edge holds across every hop.
Downstream errors are translated into domain errors naming the dependency, so a dependency down is
UNAVAILABLE to our caller, never UNKNOWN.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from services.platform.context import current_request
from services.platform.errors import (
    Aborted,
    AlreadyExists,
    DeadlineExceeded,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

TResp = TypeVar("TResp")

# Time kept back from the caller's deadline to build and send our own answer.
DEADLINE_MARGIN_SECONDS = 0.02


def service_config(service_names: Sequence[str]) -> str:
    return json.dumps(
        {
            "methodConfig": [
                {
                    "name": [{"service": name} for name in service_names],
                    "retryPolicy": {
                        "maxAttempts": 3,
                        "initialBackoff": "0.05s",
                        "maxBackoff": "0.5s",
                        "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"],
                    },
                }
            ]
        }
    )


def create_channel(
    address: str, service_names: Sequence[str], tracer_provider: TracerProvider | None = None
) -> grpc.aio.Channel:
    options = [
        ("grpc.service_config", service_config(service_names)),
        ("grpc.enable_retries", 1),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ]
    return grpc.aio.insecure_channel(
        address, options=options, interceptors=aio_client_interceptors(tracer_provider=tracer_provider)
    )


def call_timeout(default_seconds: float) -> float:
    request = current_request()
    remaining = request.time_remaining() if request else None
    if remaining is None:
        return default_seconds
    budget = remaining - DEADLINE_MARGIN_SECONDS
    if budget <= 0:
        raise DeadlineExceeded("DEADLINE_EXCEEDED", "the request's deadline expired before a dependency call")
    return min(default_seconds, budget)


def _details(error: grpc.aio.AioRpcError) -> tuple[str, list[FieldViolation]]:
    """The ErrorInfo reason and BadRequest violations a Lodestar service attached, if any."""
    reason, violations = "", []
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        status = None
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [FieldViolation(v.field, v.description) for v in bad.field_violations]
    return reason, violations


def translate_rpc_error(error: grpc.aio.AioRpcError, dependency: str) -> DomainError:
    code = error.code()
    reason, violations = _details(error)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable("DEPENDENCY_UNAVAILABLE", f"the {dependency} service is unavailable; retry later",
                           metadata={"dependency": dependency})
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded("DEPENDENCY_DEADLINE_EXCEEDED", f"the {dependency} service did not answer in time",
                                metadata={"dependency": dependency})
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgument(violations, reason=reason or "INVALID_ARGUMENT", message=error.details() or None)
    if code == grpc.StatusCode.NOT_FOUND:
        err: DomainError = NotFound("resource", "", reason=reason or "NOT_FOUND")
        err.message = error.details() or err.message
        return err
    simple: dict[grpc.StatusCode, type[DomainError]] = {
        grpc.StatusCode.ABORTED: Aborted,
        grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
        grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
        grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    }
    if code in simple:
        return simple[code](reason or code.name, error.details() or code.name.lower())
    if code == grpc.StatusCode.ALREADY_EXISTS:
        exists = AlreadyExists("resource", "", reason=reason or "ALREADY_EXISTS")
        exists.message = error.details() or exists.message
        return exists
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(reason or "RESOURCE_EXHAUSTED", error.details() or "exhausted", subject=dependency)
    return Internal("DEPENDENCY_FAILED", f"the {dependency} service failed", metadata={"dependency": dependency})


class ServiceClient:
    """Base of the typed client wrappers in each service's `clients.py`."""

    #: Fully-qualified gRPC service names the channel's retry policy covers.
    service_names: Sequence[str] = ()

    def __init__(self, dependency: str, address: str, stub_factory: Callable[[grpc.aio.Channel], Any], *,
                 tracer_provider: TracerProvider | None = None, default_timeout: float = 2.0) -> None:
        self.dependency = dependency
        self.default_timeout = default_timeout
        self.channel = create_channel(address, self.service_names, tracer_provider)
        self.stub = stub_factory(self.channel)

    async def call(self, method: Callable[..., Awaitable[TResp]], request: Any,
                   timeout: float | None = None) -> TResp:
        try:
            return await method(request, timeout=call_timeout(timeout or self.default_timeout))
        except grpc.aio.AioRpcError as error:
            raise translate_rpc_error(error, self.dependency) from None

    async def close(self) -> None:
        await self.channel.close()
