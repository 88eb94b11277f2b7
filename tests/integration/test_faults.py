"""The fast, deterministic parts of bench/faults.py: the delaying proxy, the verdict bookkeeping and the report.

The scenarios themselves (processes, SIGKILL, PostgreSQL, tmpfs) run from `make faults`, not in the suite.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from bench.faults import DelayProxy, Timeline, Verdict, append_reliability
from services.profile.app import DEFINITION as PROFILE


async def test_delay_proxy_forwards_and_delays_beyond_a_deadline(start) -> None:  # type: ignore[no-untyped-def]
    profile = await start(PROFILE)
    proxy = DelayProxy()
    try:
        proxy.upstream = ("127.0.0.1", profile.port)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
            proxy.delay = 1.0
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.3)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            proxy.delay = 0.0
            await asyncio.sleep(1.2)  # let the held chunks drain
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert response.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proxy.close()


def test_timeline_and_verdict() -> None:
    timeline = Timeline([(0.1, "OK"), (1.0, "UNAVAILABLE"), (2.5, "DEADLINE_EXCEEDED"), (3.0, "OK")])
    assert timeline.codes(0.5, 3.0) == {"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}
    assert timeline.last_error_after(0) == 2.5
    assert timeline.last_error_after(2.6) is None
    verdict = Verdict("x", True)
    verdict.check(True, "held")
    assert verdict.passed
    verdict.check(False, "broke")
    assert not verdict.passed
    assert verdict.lines()[0] == "**FAIL** — x"
    assert "- FAILED: broke" in verdict.lines()


def test_append_reliability_creates_and_appends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "reliability.md"
    monkeypatch.setenv("BENCH_RELIABILITY_PATH", str(target))
    append_reliability("Fault scenario `kill` (small)", "python -m bench.faults", [Verdict("a", True, held=["h"])])
    append_reliability("Fault scenario `latency` (small)", "python -m bench.faults", [Verdict("b", False)])
    text = target.read_text()
    assert text.startswith("# Reliability")
    assert text.index("`kill`") < text.index("`latency`")
    assert "**PASS** — a" in text and "- held: h" in text and "**FAIL** — b" in text
    assert "- command: `python -m bench.faults`" in text
