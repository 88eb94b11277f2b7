"""Per-request context, carried in contextvars so that clients can pass on what remains of the deadline."""

from __future__ import annotations

import contextvars
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class RequestContext:
    method: str
    # time.monotonic() value at which the caller's deadline expires; None when the caller set none.
    deadline: float | None
    metadata: dict[str, str]

    def time_remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("lodestar_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def set_current_request(value: RequestContext) -> contextvars.Token[RequestContext | None]:
    return _current.set(value)


def reset_current_request(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)
