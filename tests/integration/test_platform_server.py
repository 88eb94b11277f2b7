"""The shared server lifecycle, through the profile service: health, readiness, graceful shutdown."""

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from services.platform import migrations
from services.platform.server import LIVENESS_SERVICE
from services.profile.app import DEFINITION

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def check(address, service=""):
    async with grpc.aio.insecure_channel(address) as ch:
        return (await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service))).status


async def test_serving_once_migrated(start):
    svc = await start(DEFINITION)
    assert await check(svc.address) == SERVING
    assert await check(svc.address, "lodestar.profile.v1.ProfileService") == SERVING
    assert await check(svc.address, LIVENESS_SERVICE) == SERVING


async def test_not_serving_until_migrations_are_at_head(start):
    svc = await start(DEFINITION, AUTO_MIGRATE="false")
    assert await check(svc.address) == NOT_SERVING
    assert await check(svc.address, LIVENESS_SERVICE) == SERVING  # alive, just not ready
    await __import__("asyncio").to_thread(migrations.upgrade, svc.runtime.settings.database_url, DEFINITION.migrations)
    assert await svc.check_ready() is True
    assert await check(svc.address) == SERVING


async def test_database_ahead_of_the_code_is_still_ready(start):
    """After a rollback the database carries a revision the older code does not know: keep serving."""
    svc = await start(DEFINITION)
    async with svc.runtime.database.engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'from_a_newer_release'"))
    assert await svc.check_ready() is True


async def test_database_down_is_not_ready_but_alive(start, tmp_path):
    svc = await start(DEFINITION)
    broken = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/missing/x.db")
    svc.runtime.database.engine, svc.runtime.database.sessionmaker = broken, async_sessionmaker(broken)
    assert await svc.check_ready() is False
    assert await check(svc.address) == NOT_SERVING
    assert await check(svc.address, LIVENESS_SERVICE) == SERVING
    await broken.dispose()


async def test_graceful_shutdown_reports_not_serving_then_refuses(start):
    svc = await start(DEFINITION)
    channel = grpc.aio.insecure_channel(svc.address)
    stub = health_pb2_grpc.HealthStub(channel)
    await svc.health.enter_graceful_shutdown()
    assert (await stub.Check(health_pb2.HealthCheckRequest())).status == NOT_SERVING
    assert (await stub.Check(health_pb2.HealthCheckRequest(service=LIVENESS_SERVICE))).status == NOT_SERVING
    await svc.stop(drain_seconds=0, grace_seconds=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await channel.close()


async def test_unexpected_exception_is_internal_with_trace_id_never_unknown(start, monkeypatch):
    from lodestar.profile.v1 import profile_service_pb2 as pb
    from lodestar.profile.v1 import profile_service_pb2_grpc as pbg
    from tests.helpers import expect_error

    svc = await start(DEFINITION)

    async def boom(customer_id):
        raise KeyError("a bug")

    monkeypatch.setattr(svc.runtime.components["service"], "get_customer", boom)
    async with grpc.aio.insecure_channel(svc.address) as ch:
        got = await expect_error(pbg.ProfileServiceStub(ch).GetCustomer(pb.GetCustomerRequest(name="customers/x")),
                                 grpc.StatusCode.INTERNAL, "INTERNAL")
    assert "a bug" not in got.message and "trace" in got.message


async def test_port_in_use_is_a_clear_startup_error(start):
    from services.platform.server import StartupError

    first = await start(DEFINITION)
    with pytest.raises(StartupError, match=f"127.0.0.1:{first.port}"):
        await start(DEFINITION, GRPC_PORT=str(first.port))


def test_port_in_use_exits_1_with_a_json_log_line(tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "GRPC_PORT": str(port), "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/p.db",
               "OTEL_TRACES_EXPORTER": "none"}
        done = subprocess.run([sys.executable, "-m", "services.profile", "serve"], env=env, capture_output=True,
                              text=True, timeout=60)
    assert done.returncode == 1
    last = json.loads(done.stderr.strip().splitlines()[-1])
    assert last["level"] == "ERROR" and f"127.0.0.1:{port}" in last["message"]
    assert "Traceback" not in done.stderr


def test_a_bad_service_setting_stops_the_service_with_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "RISK_QUIET_HOURS_START": "25:00", "GRPC_PORT": "0",
           "DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/r.db", "OTEL_TRACES_EXPORTER": "none"}
    done = subprocess.run([sys.executable, "-m", "services.risk", "serve"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert "RISK_QUIET_HOURS_START" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "r.db").exists()  # stopped before migrating anything


def test_driver_loggers_never_log_below_warning():
    import logging

    from services.platform.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("test", "DEBUG")
        for name in ("aiosqlite", "psycopg", "sqlalchemy.engine"):
            assert logging.getLogger(name).getEffectiveLevel() >= logging.WARNING, name
    finally:
        root.handlers[:], root.level = saved[0], saved[1]

