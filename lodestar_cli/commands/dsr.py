"""`lodestar dsr ...`: data-subject requests (access and erasure) across the four services, through risk.

    lodestar dsr access CUSTOMER --actor dpo-1 --out archive.zip [--reason R]   # waits, then writes the zip
    lodestar dsr erase CUSTOMER --actor dpo-1 --reason "ticket 42" [--no-wait]
    lodestar dsr status dsr_0123... [--watch]

Waiting shows a progress bar (steps done of four, on stderr; off with --json or when stderr is not a TTY).
Customers appear in the output only as tokens; the archive itself holds the customer's data.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodestar.risk.v1 import data_subject_request_pb2 as pb
from lodestar.risk.v1 import data_subject_request_pb2_grpc as pbg
from lodestar_cli.main import CliError, Context, enum_name, table, to_dict

COLLECTION = "dataSubjectRequests/"
FINAL = (pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED, pb.DATA_SUBJECT_REQUEST_STATE_REJECTED)


def _name(ref: str) -> str:
    return ref if ref.startswith(COLLECTION) else COLLECTION + ref


def _state(value: int) -> str:
    return enum_name(pb.DataSubjectRequestState, value, "DATA_SUBJECT_REQUEST_STATE_")


def _summary(request: pb.DataSubjectRequest) -> str:
    kind = enum_name(pb.DataSubjectRequestKind, request.kind, "DATA_SUBJECT_REQUEST_KIND_")
    lines = [f"{request.name}  {kind}  {_state(request.state)}  customer {request.customer_token}  "
             f"by {request.actor}"]
    if request.rejection_reason:
        lines.append(f"  rejected: {request.rejection_reason}")
    if request.status_message:
        lines.append(f"  waiting: {request.status_message}")
    rows = []
    for step in request.steps:
        if step.receipt.tables:
            deleted = sum(t.rows_deleted for t in step.receipt.tables)
            pseudonymised = sum(t.rows_pseudonymised for t in step.receipt.tables)
            what = f"{deleted} deleted, {pseudonymised} pseudonymised"
        else:
            what = f"{step.record_count} records" if step.done else ""
        rows.append((step.service, "done" if step.done else "pending", what, step.digest[:16],
                     step.last_error[:60]))
    lines.append(table(rows, ("SERVICE", "STEP", "RESULT", "DIGEST", "LAST ERROR")))
    if request.proof_digest:
        lines.append(f"proof sha256 {request.proof_digest}")
    return "\n".join(lines)


def _get(stub: Any, name: str, timeout: float) -> pb.DataSubjectRequest:
    return stub.GetDataSubjectRequest(pb.GetDataSubjectRequestRequest(name=name), timeout=timeout).request  # type: ignore[no-any-return]


def _wait(ctx: Context, stub: Any, request: pb.DataSubjectRequest) -> pb.DataSubjectRequest:
    show = not ctx.as_json and sys.stderr.isatty()
    bar = tqdm(total=len(request.steps) or 4, unit="service", file=sys.stderr, disable=not show,
               desc="data-subject request")
    deadline = time.monotonic() + ctx.args.wait_timeout
    while request.state not in FINAL:
        if time.monotonic() > deadline:
            bar.close()
            raise CliError("DEADLINE_EXCEEDED", "DSR_NOT_FINISHED",
                           f"{request.name} is still {_state(request.state)}; see `lodestar dsr status`")
        time.sleep(ctx.args.interval)
        request = _get(stub, request.name, ctx.timeout)
        bar.n = sum(1 for s in request.steps if s.done)
        if request.status_message:
            bar.set_postfix_str(request.status_message[:60])
        bar.refresh()
    bar.close()
    return request


def cmd_access(ctx: Context) -> int:
    with ctx.channel("risk", [("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
        stub = pbg.DataSubjectRequestServiceStub(channel)
        request = stub.StartAccessRequest(pb.StartAccessRequestRequest(
            customer_id=ctx.args.customer_id, actor=ctx.args.actor, reason=ctx.args.reason,
            request_id=ctx.args.request_id or uuid.uuid4().hex), timeout=ctx.timeout).request
        request = _wait(ctx, stub, request)
        if request.state != pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED:
            raise CliError("FAILED_PRECONDITION", request.rejection_reason or "DSR_NOT_SUCCEEDED",
                           f"{request.name} ended {_state(request.state)}")
        digest, size = hashlib.sha256(), 0
        out = Path(ctx.args.out)
        partial = out.with_name(out.name + ".partial")
        with partial.open("wb") as handle:
            for chunk in stub.GetAccessArchive(pb.GetAccessArchiveRequest(name=request.name), timeout=ctx.timeout):
                handle.write(chunk.chunk)
                digest.update(chunk.chunk)
                size += len(chunk.chunk)
        if digest.hexdigest() != request.proof_digest:
            partial.unlink(missing_ok=True)
            raise CliError("DATA_LOSS", "ARCHIVE_DIGEST_MISMATCH", "the archive received does not match its digest")
        partial.replace(out)
    ctx.emit({"request": to_dict(request), "archive": str(out), "bytes": size, "sha256": request.proof_digest},
             f"{_summary(request)}\narchive written to {out} ({size} bytes)")
    return 0


def cmd_erase(ctx: Context) -> int:
    with ctx.channel("risk") as channel:
        stub = pbg.DataSubjectRequestServiceStub(channel)
        response = stub.StartErasureRequest(pb.StartErasureRequestRequest(
            customer_id=ctx.args.customer_id, actor=ctx.args.actor, reason=ctx.args.reason,
            request_id=ctx.args.request_id or uuid.uuid4().hex), timeout=ctx.timeout)
        request = response.request
        if not ctx.args.no_wait:
            request = _wait(ctx, stub, request)
    note = "\n(this customer's erasure was already requested: that request is shown)" \
        if response.already_requested else ""
    ctx.emit({"request": to_dict(request), "already_requested": response.already_requested},
             _summary(request) + note)
    return 0


def cmd_status(ctx: Context) -> int:
    with ctx.channel("risk") as channel:
        stub = pbg.DataSubjectRequestServiceStub(channel)
        request = _get(stub, _name(ctx.args.request), ctx.timeout)
        if ctx.args.watch:
            request = _wait(ctx, stub, request)
    ctx.emit({"request": to_dict(request)}, _summary(request))
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("dsr", parents=[common], help="data-subject requests: access and erasure")
    sub = group.add_subparsers(dest="dsr_command", required=True, metavar="COMMAND")

    def waiting(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--wait-timeout", type=float, default=600.0, help="seconds to wait for the end")
        parser.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)

    access = sub.add_parser("access", parents=[common], help="export everything held about a customer as a zip")
    access.add_argument("customer_id")
    access.add_argument("--out", required=True, help="where to write the zip")
    access.add_argument("--actor", required=True, help="who asks on the customer's behalf (your employee id)")
    access.add_argument("--reason", default="", help="e.g. a ticket number (no personal data)")
    access.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
    waiting(access)
    access.set_defaults(handler=cmd_access)

    erase = sub.add_parser("erase", parents=[common], help="erase a customer in every service, with receipts")
    erase.add_argument("customer_id")
    erase.add_argument("--actor", required=True, help="who asks on the customer's behalf (your employee id)")
    erase.add_argument("--reason", required=True, help="e.g. a ticket number (no personal data)")
    erase.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
    erase.add_argument("--no-wait", action="store_true", help="return once recorded; see `lodestar dsr status`")
    waiting(erase)
    erase.set_defaults(handler=cmd_erase)

    status = sub.add_parser("status", parents=[common], help="a request's state, steps and receipts")
    status.add_argument("request", help="dsr_... or dataSubjectRequests/dsr_...")
    status.add_argument("--watch", action="store_true", help="follow it to the end, with a progress bar")
    waiting(status)
    status.set_defaults(handler=cmd_status)
