"""`lodestar risk ...`: do-not-contact list, complaints, content checks and audit-log verification.

    lodestar risk dnc add|remove CUSTOMER_ID --source S [--actor A] [--reason R]
    lodestar risk complaint CUSTOMER_ID --source S [--channel C] [--category K] [--actor A]
    lodestar risk content check (--text T | --file F) --product-type TYPE [--language zh|en]
    lodestar risk audit verify
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path
from typing import Any

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import audit_pb2, contact_policy_pb2, content_pb2, risk_service_pb2_grpc
from lodestar_cli import demo
from lodestar_cli.main import CliError, Context, table, to_dict

PRODUCT_TYPES = {v.name.removeprefix("PRODUCT_TYPE_").lower(): common_pb2.ProductType.Value(v.name)
                 for v in common_pb2.ProductType.DESCRIPTOR.values if v.number}


def _stub(ctx: Context, channel: Any) -> risk_service_pb2_grpc.RiskServiceStub:
    return risk_service_pb2_grpc.RiskServiceStub(channel)


def cmd_dnc(ctx: Context) -> int:
    args = ctx.args
    fields = {"customer_id": args.customer_id, "source": args.source, "actor": args.actor, "reason": args.reason,
              "request_id": args.request_id or f"cli:{uuid.uuid4()}"}
    with ctx.channel("risk") as channel:
        stub = _stub(ctx, channel)
        if args.dnc_command == "add":
            entry = stub.AddToDoNotContact(contact_policy_pb2.AddToDoNotContactRequest(**fields),
                                           timeout=ctx.timeout).entry
        else:
            entry = stub.RemoveFromDoNotContact(contact_policy_pb2.RemoveFromDoNotContactRequest(**fields),
                                                timeout=ctx.timeout).entry
    verb = "added to" if args.dnc_command == "add" else "removed from"
    ctx.emit({"entry": to_dict(entry)},
             f"{args.customer_id} {verb} the do-not-contact list (source {entry.source}"
             + (f", at {entry.record_time.ToJsonString()}" if entry.HasField("record_time") else "") + ")")
    return 0


def cmd_complaint(ctx: Context) -> int:
    args = ctx.args
    request = contact_policy_pb2.RecordComplaintRequest(
        customer_id=args.customer_id,
        channel=demo.CHANNEL_NAMES[args.channel] if args.channel else common_pb2.CHANNEL_UNSPECIFIED,
        source=args.source, actor=args.actor, category=args.category,
        request_id=args.request_id or f"cli:{uuid.uuid4()}",
    )
    with ctx.channel("risk") as channel:
        response = _stub(ctx, channel).RecordComplaint(request, timeout=ctx.timeout)
    ctx.emit(to_dict(response), f"complaint recorded; no marketing contact until "
                                f"{response.cool_off_until.ToJsonString()}")
    return 0


def cmd_content_check(ctx: Context) -> int:
    args = ctx.args
    if (args.text is None) == (args.file is None):
        raise CliError("INVALID_ARGUMENT", "INVALID_ARGUMENT", "give exactly one of --text or --file")
    text = args.text if args.text is not None else Path(args.file).read_text(encoding="utf-8")
    request = content_pb2.CheckContentRequest(text=text, product_type=PRODUCT_TYPES[args.product_type],
                                              language=args.language or "")
    with ctx.channel("risk") as channel:
        response = _stub(ctx, channel).CheckContent(request, timeout=ctx.timeout)
    rows = [
        (content_pb2.ViolationKind.Name(v.kind).removeprefix("VIOLATION_KIND_"), v.rule_id,
         f"{v.start}-{v.end}" if v.end else "-", text[v.start:v.end] if v.end else v.description)
        for v in response.violations
    ]
    summary = "compliant" if response.compliant else f"{len(rows)} violation(s)"
    ctx.emit(to_dict(response), f"{summary} (rules {response.rules_version})"
             + ("\n" + table(rows, ("KIND", "RULE", "AT", "TEXT")) if rows else ""))
    return 0 if response.compliant else 3


def cmd_audit_verify(ctx: Context) -> int:
    with ctx.channel("risk") as channel:
        response = _stub(ctx, channel).VerifyAuditLog(audit_pb2.VerifyAuditLogRequest(), timeout=ctx.timeout)
    if response.intact:
        text = f"audit log intact: {response.entries_checked} entries, head {response.head_hash[:16]}…"
    else:
        problem = audit_pb2.AuditProblem.Name(response.problem).removeprefix("AUDIT_PROBLEM_")
        text = f"audit log BROKEN at entry {response.first_bad_seq}: {problem} ({response.detail})"
    ctx.emit(to_dict(response), text)
    return 0 if response.intact else 3


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    risk = commands.add_parser("risk", parents=[common], help="do-not-contact, complaints, content, audit")
    risk_sub = risk.add_subparsers(dest="risk_command", required=True, metavar="COMMAND")

    dnc = risk_sub.add_parser("dnc", parents=[common], help="the do-not-contact list")
    dnc_sub = dnc.add_subparsers(dest="dnc_command", required=True, metavar="COMMAND")
    for name, help_text in (("add", "put a customer on the list"), ("remove", "take a customer off the list")):
        cmd = dnc_sub.add_parser(name, parents=[common], help=help_text)
        cmd.add_argument("customer_id")
        cmd.add_argument("--source", required=True, help="where it came from, e.g. call-centre, regulator")
        cmd.add_argument("--actor", default="cli", help="who records it (default cli)")
        cmd.add_argument("--reason", default="", help="why (no personal data)")
        cmd.add_argument("--request-id", default="", help="idempotency key (default: a fresh one)")
        cmd.set_defaults(handler=cmd_dnc)

    complaint = risk_sub.add_parser("complaint", parents=[common], help="record a complaint (starts a cool-off)")
    complaint.add_argument("customer_id")
    complaint.add_argument("--source", required=True)
    complaint.add_argument("--channel", choices=sorted(demo.CHANNEL_NAMES), default=None)
    complaint.add_argument("--category", default="", help="e.g. unwanted-contact")
    complaint.add_argument("--actor", default="cli")
    complaint.add_argument("--request-id", default="")
    complaint.set_defaults(handler=cmd_complaint)

    content = risk_sub.add_parser("content", parents=[common], help="content compliance")
    content_sub = content.add_subparsers(dest="content_command", required=True, metavar="COMMAND")
    check = content_sub.add_parser("check", parents=[common],
                                   help="banned claims and missing disclosures (exit 3 when not compliant)")
    check.add_argument("--text", default=None)
    check.add_argument("--file", default=None, help="a UTF-8 text file")
    check.add_argument("--product-type", required=True, choices=sorted(PRODUCT_TYPES))
    check.add_argument("--language", choices=("zh", "en"), default=None, help="default: both")
    check.set_defaults(handler=cmd_content_check)

    audit = risk_sub.add_parser("audit", parents=[common], help="the hash-chained audit log")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True, metavar="COMMAND")
    verify = audit_sub.add_parser("verify", parents=[common], help="recompute the chain (exit 3 when broken)")
    verify.set_defaults(handler=cmd_audit_verify)
