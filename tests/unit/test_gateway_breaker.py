"""The gateway's circuit breaker per downstream service, with an injected clock."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway.clients import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from services.platform.errors import DeadlineExceeded, DomainError, NotFound, Unavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Downstream:
    """Counts the calls that reached the network; fails with `error` when set."""

    def __init__(self) -> None:
        self.calls = 0
        self.error: DomainError | None = None

    async def __call__(self) -> str:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return "ok"


def down() -> Unavailable:
    return Unavailable("DEPENDENCY_UNAVAILABLE", "down", metadata={"dependency": "campaign"})


def slow() -> DeadlineExceeded:
    return DeadlineExceeded("DEPENDENCY_DEADLINE_EXCEEDED", "slow", metadata={"dependency": "campaign"})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def breaker(clock: Clock) -> CircuitBreaker:
    return CircuitBreaker("campaign", failure_threshold=3, cool_down_seconds=10.0, clock=clock)


async def fail_times(breaker: CircuitBreaker, downstream: Downstream, n: int) -> None:
    for _ in range(n):
        with pytest.raises(DomainError):
            await breaker.call(downstream)


async def test_opens_after_n_consecutive_failures_then_fails_fast(breaker: CircuitBreaker) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 2)
    assert breaker.state == CLOSED
    downstream.error = slow()  # both UNAVAILABLE and DEADLINE_EXCEEDED count
    await fail_times(breaker, downstream, 1)
    assert breaker.state == OPEN and downstream.calls == 3
    with pytest.raises(Unavailable) as caught:
        await breaker.call(downstream)
    assert caught.value.reason == "SERVICE_UNAVAILABLE"
    assert caught.value.metadata == {"dependency": "campaign", "circuit": "open"}
    assert downstream.calls == 3  # failed fast: the network was not touched


async def test_a_success_resets_the_count(breaker: CircuitBreaker) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 2)
    downstream.error = None
    assert await breaker.call(downstream) == "ok"
    downstream.error = down()
    await fail_times(breaker, downstream, 2)
    assert breaker.state == CLOSED and breaker.failures == 2


async def test_an_answer_with_an_error_counts_as_the_service_being_up(breaker: CircuitBreaker) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 2)
    downstream.error = NotFound("resource", "", reason="NOT_FOUND")
    await fail_times(breaker, downstream, 1)
    assert breaker.state == CLOSED and breaker.failures == 0


async def test_our_own_expired_deadline_does_not_count(breaker: CircuitBreaker) -> None:
    downstream = Downstream()
    downstream.error = DeadlineExceeded("DEADLINE_EXCEEDED", "the request's deadline expired")
    await fail_times(breaker, downstream, 5)
    assert breaker.state == CLOSED and breaker.failures == 0


async def test_half_open_probe_success_closes(breaker: CircuitBreaker, clock: Clock) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 3)
    clock.now += 9.99
    with pytest.raises(Unavailable):
        await breaker.call(downstream)
    assert downstream.calls == 3
    clock.now += 0.01
    downstream.error = None
    assert await breaker.call(downstream) == "ok"
    assert breaker.state == CLOSED and downstream.calls == 4


async def test_half_open_probe_failure_reopens_for_another_cool_down(breaker: CircuitBreaker, clock: Clock) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 3)
    clock.now += 10
    await fail_times(breaker, downstream, 1)  # the probe
    assert breaker.state == OPEN and downstream.calls == 4
    clock.now += 5
    with pytest.raises(Unavailable) as caught:
        await breaker.call(downstream)
    assert caught.value.reason == "SERVICE_UNAVAILABLE" and downstream.calls == 4
    clock.now += 5
    downstream.error = None
    assert await breaker.call(downstream) == "ok"
    assert breaker.state == CLOSED


async def test_only_one_probe_at_a_time(breaker: CircuitBreaker, clock: Clock) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 3)
    clock.now += 10
    downstream.error = None
    gate = asyncio.Event()

    async def slow_probe() -> str:
        await gate.wait()
        return await downstream()

    probe = asyncio.create_task(breaker.call(slow_probe))
    await asyncio.sleep(0)
    assert breaker.state == HALF_OPEN
    with pytest.raises(Unavailable):
        await breaker.call(downstream)  # while the probe is in flight
    gate.set()
    assert await probe == "ok"
    assert breaker.state == CLOSED and downstream.calls == 4


async def test_a_cancelled_probe_frees_the_slot(breaker: CircuitBreaker, clock: Clock) -> None:
    downstream = Downstream()
    downstream.error = down()
    await fail_times(breaker, downstream, 3)
    clock.now += 10

    async def hang() -> str:
        await asyncio.Event().wait()
        return "never"

    probe = asyncio.create_task(breaker.call(hang))
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    downstream.error = None
    assert await breaker.call(downstream) == "ok"
    assert breaker.state == CLOSED
