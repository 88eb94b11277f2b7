"""Assertion helpers shared by the tests."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


@dataclass
class RpcErrorDetails:
    code: grpc.StatusCode
    message: str
    reason: str
    domain: str
    metadata: dict[str, str]
    field_violations: list[tuple[str, str]]


def details_of(error: grpc.aio.AioRpcError | grpc.RpcError) -> RpcErrorDetails:
    """The status code, ErrorInfo and BadRequest of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason = domain = ""
    metadata: dict[str, str] = {}
    violations: list[tuple[str, str]] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, domain, metadata = info.reason, info.domain, dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    return RpcErrorDetails(error.code(), error.details() or "", reason, domain, metadata, violations)


async def expect_error(call, code: grpc.StatusCode, reason: str | None = None) -> RpcErrorDetails:  # type: ignore[no-untyped-def]
    """Await `call`, which must fail with `code` (and ErrorInfo.reason `reason`, when given)."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        got = details_of(error)
    else:
        raise AssertionError(f"expected {code.name}, the call succeeded")
    assert got.code == code, f"expected {code.name}, got {got.code.name}: {got.message}"
    if reason is not None:
        assert got.reason == reason, f"expected reason {reason}, got {got.reason!r}: {got.message}"
    return got


async def stored_partitions(database):
    """Every done launch partition's selection (launch.PartitionResult), of every launch in `database`, as the
    allocation reads it: from the partition's decision records."""
    from sqlalchemy import select

    from services.campaign.db import LaunchRow
    from services.campaign.launch import partition_results

    async with database.sessionmaker() as session:
        parts = []
        for launch_id in await session.scalars(select(LaunchRow.launch_id).order_by(LaunchRow.create_time)):
            parts += [part for _, part in await partition_results(session, launch_id)]
        return parts
