"""The server interceptor every service runs: request context, access log, RPC metrics, error mapping.

It sits inside the OpenTelemetry interceptor, so the access log and any error log carry the server span's
trace id. Domain errors become canonical status codes with ErrorInfo; infrastructure failures become
UNAVAILABLE or DEADLINE_EXCEEDED; anything else is INTERNAL with a generic message and a logged stack trace.
An exception never reaches gRPC as UNKNOWN. Every RPC but health checks and reflection is counted, by method
and status code, and its latency recorded (`ServiceMetrics.record_rpc`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc_status import rpc_status
from opentelemetry import trace

from services.platform.context import RequestContext, reset_current_request, set_current_request
from services.platform.errors import Internal, from_infrastructure, to_status_proto
from services.platform.telemetry import ATTR_ERROR_REASON, ServiceMetrics

log = logging.getLogger("lodestar.access")

_QUIET_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class _Outcome:
    __slots__ = ("code", "reason")

    def __init__(self) -> None:
        self.code = grpc.StatusCode.OK
        self.reason = ""


class ServiceInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, error_domain: str, metrics: ServiceMetrics | None = None) -> None:
        self.error_domain = error_domain
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(handler.unary_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                self._wrap_unary(handler.stream_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(handler.stream_stream, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler

    def _begin(self, method: str, context: grpc.aio.ServicerContext) -> Any:
        remaining = context.time_remaining()
        metadata = {key: value for key, value in (context.invocation_metadata() or ()) if isinstance(value, str)}
        deadline = time.monotonic() + remaining if remaining is not None else None
        return set_current_request(RequestContext(method=method, deadline=deadline, metadata=metadata))

    async def _fail(self, exc: BaseException, context: grpc.aio.ServicerContext, outcome: _Outcome) -> None:
        error = from_infrastructure(exc)
        if error is None:
            trace_id = format(trace.get_current_span().get_span_context().trace_id, "032x")
            log.error("unexpected error", exc_info=exc)
            error = Internal("INTERNAL", f"internal error (trace {trace_id})")
        outcome.code, outcome.reason = error.code, error.reason
        trace.get_current_span().set_attribute(ATTR_ERROR_REASON, error.reason)
        status = rpc_status.to_status(to_status_proto(error, self.error_domain))
        await context.abort(status.code, status.details, status.trailing_metadata)

    def _log(self, method: str, started: float, outcome: _Outcome) -> None:
        duration_ms = (time.perf_counter() - started) * 1000
        quiet = method.startswith(_QUIET_PREFIXES)
        if self.metrics is not None and not quiet:
            self.metrics.record_rpc(method, outcome.code.name, duration_ms)
        level = logging.DEBUG if quiet else logging.INFO
        if outcome.code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
            level = logging.ERROR
        log.log(
            level,
            "rpc %s %s",
            method,
            outcome.code.name,
            extra={
                "rpc_method": method,
                "grpc_code": outcome.code.name,
                "error_reason": outcome.reason,
                "duration_ms": round(duration_ms, 3),
            },
        )

    def _wrap_unary(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> Any:
            token = self._begin(method, context)
            started, outcome = time.perf_counter(), _Outcome()
            # The handler runs in its own task, shielded: when the caller gives up (deadline, cancel) we stop
            # waiting at once, but the handler is never interrupted in the middle of a database statement —
            # an interrupted aiosqlite/asyncpg call can leak its connection with the transaction open (on
            # SQLite that holds the write lock for good). It ends quickly anyway: its own calls to other
            # services get only what remains of the caller's deadline.
            task = asyncio.ensure_future(behavior(request, context))
            try:
                return await asyncio.shield(task)
            except grpc.aio.AbortError:
                outcome.code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except asyncio.CancelledError:  # the caller's deadline passed or it cancelled: log it as such
                outcome.code = grpc.StatusCode.CANCELLED
                task.add_done_callback(_discard_result)
                raise
            except Exception as exc:
                await self._fail(exc, context, outcome)
            finally:
                self._log(method, started, outcome)
                reset_current_request(token)

        return wrapper

    def _wrap_stream(self, behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., Any]:
        async def wrapper(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            token = self._begin(method, context)
            started, outcome = time.perf_counter(), _Outcome()
            try:
                async for item in behavior(request, context):
                    yield item
            except grpc.aio.AbortError:
                outcome.code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[assignment]
                raise
            except asyncio.CancelledError:  # the caller's deadline passed or it cancelled: log it as such
                outcome.code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                await self._fail(exc, context, outcome)
            finally:
                self._log(method, started, outcome)
                reset_current_request(token)

        return wrapper


def _discard_result(task: asyncio.Future[Any]) -> None:
    """The result of a handler whose caller went away: retrieved so that it is not reported as lost."""
    if not task.cancelled():
        task.exception()
