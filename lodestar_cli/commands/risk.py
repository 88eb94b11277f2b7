"""`lodestar risk ...`: do-not-contact list, complaints, content checks and audit-log verification.

    lodestar risk dnc add|remove CUSTOMER_ID --source S [--actor A] [--reason R]
    lodestar risk complaint CUSTOMER_ID --source S [--channel C] [--category K] [--actor A]
    lodestar risk content check (--text T | --file F) --product-type TYPE [--language zh|en]
    lodestar risk audit verify
    lodestar risk credit train FILE --label COL [--id-column C] [--features a,b] [--categorical c] [--promote]
    lodestar risk credit list | promote VERSION
    lodestar risk credit score CUSTOMER_ID --feature NAME=VALUE ... [--income N] [--model VERSION]
    lodestar risk fraud check --kind lead|redemption --partner P [--customer C] [--device D]
                              [--phone NUMBER | --phone-hash H] [--ip ADDRESS] [--at ISO-TIME]
"""

from __future__ import annotations

import argparse
import hashlib
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from lodestar.common.v1 import common_pb2
from lodestar.risk.v1 import (
    audit_pb2,
    contact_policy_pb2,
    content_pb2,
    credit_pb2,
    fraud_pb2,
    risk_service_pb2_grpc,
)
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


_TRUE = {"1", "true", "yes", "y", "t", "1.0"}
_FALSE = {"0", "false", "no", "n", "f", "0.0"}


def _model_dict(model: credit_pb2.CreditModel) -> dict[str, Any]:
    data = to_dict(model)
    data["status"] = credit_pb2.CreditModelStatus.Name(model.status).removeprefix("CREDIT_MODEL_STATUS_")
    return data


def _read_rows(ctx: Context) -> list[credit_pb2.CreditTrainingRow]:
    import pandas as pd
    from tqdm import tqdm

    args = ctx.args
    path = Path(args.file)
    if not path.exists():
        raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"no such file: {args.file}")
    frame = (pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype=str,
                                                                                   keep_default_na=False))
    if args.label not in frame.columns:
        raise CliError("INVALID_ARGUMENT", "UNKNOWN_LABEL", f"no column {args.label!r} in {path.name}")
    feature_columns = [c for c in frame.columns if c not in (args.label, args.id_column)]
    rows = []
    disabled = ctx.as_json or not ctx.err.isatty()
    records = frame.astype(str).to_dict("records")
    for i, record in enumerate(tqdm(records, unit="rows", file=ctx.err, disable=disabled, desc="reading")):
        label = str(record[args.label]).strip().lower()
        if label not in _TRUE | _FALSE:
            raise CliError("INVALID_ARGUMENT", "INVALID_LABEL",
                           f"row {i + 1}: the label must be true/false, yes/no or 1/0")
        customer_id = str(record[args.id_column]) if args.id_column in record else f"row-{i + 1}"
        features = {c: ("" if record[c] in ("nan", "None") else str(record[c])) for c in feature_columns}
        rows.append(credit_pb2.CreditTrainingRow(customer_id=customer_id, features=features,
                                                 defaulted=label in _TRUE))
    return rows


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def cmd_credit_train(ctx: Context) -> int:
    args = ctx.args
    window = dict(item.split("=", 1) for item in args.window) if args.window else {}
    request = credit_pb2.TrainCreditModelRequest(
        rows=_read_rows(ctx), features=_split(args.features), categorical=_split(args.categorical),
        training_window=window, folds=args.folds, promote=args.promote,
        request_id=args.request_id or f"cli:{uuid.uuid4()}")
    if not ctx.as_json and ctx.err.isatty():
        ctx.err.write(f"training on {len(request.rows):,} rows...\n")
    with ctx.channel("risk") as channel:
        model = _stub(ctx, channel).TrainCreditModel(request, timeout=max(ctx.timeout, 300.0)).model
    data = _model_dict(model)
    ctx.emit({"model": data}, f"credit model {model.version} ({data['status'].lower()}): AUC {model.auc:.3f}, "
             f"KS {model.ks:.3f}, Brier {model.brier:.4f}, {model.rows:,} rows; features "
             f"{', '.join(model.features)}")
    return 0


def cmd_credit_list(ctx: Context) -> int:
    with ctx.channel("risk") as channel:
        response = _stub(ctx, channel).ListCreditModels(credit_pb2.ListCreditModelsRequest(page_size=100),
                                                         timeout=ctx.timeout)
    models = [_model_dict(m) for m in response.models]
    rows = [(m["version"], m["status"], f"{m.get('auc', 0):.3f}", f"{m.get('ks', 0):.3f}",
             f"{m.get('brier', 0):.4f}", str(m.get("rows", 0))) for m in models]
    ctx.emit({"models": models}, table(rows, ("VERSION", "STATUS", "AUC", "KS", "BRIER", "ROWS")) if rows
             else "no credit models")
    return 0


def cmd_credit_promote(ctx: Context) -> int:
    request = credit_pb2.PromoteCreditModelRequest(name=f"creditModels/{ctx.args.version}",
                                                   request_id=ctx.args.request_id or f"cli:{uuid.uuid4()}")
    with ctx.channel("risk") as channel:
        model = _stub(ctx, channel).PromoteCreditModel(request, timeout=ctx.timeout).model
    ctx.emit({"model": _model_dict(model)}, f"credit model {model.version} is champion")
    return 0


def cmd_credit_score(ctx: Context) -> int:
    args = ctx.args
    features = {}
    for item in args.feature or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise CliError("INVALID_ARGUMENT", "INVALID_ARGUMENT", f"--feature {item!r} must be NAME=VALUE")
        features[name] = value
    request = credit_pb2.ScoreCreditRequest(customer_id=args.customer_id, features=features,
                                            model=f"creditModels/{args.model}" if args.model else "")
    if args.income is not None:
        request.monthly_income = args.income
    with ctx.channel("risk") as channel:
        response = _stub(ctx, channel).ScoreCredit(request, timeout=ctx.timeout)
    band = response.limit_band
    limit = f", max limit {band.max_limit:,.0f}" if band.HasField("max_limit") else ""
    reasons = ", ".join(r.code for r in response.reasons) or "none"
    ctx.emit(to_dict(response), f"PD {response.pd:.2%}, score {response.score:.0f}, band {band.band}{limit} "
             f"({response.model}); adverse factors: {reasons}")
    return 0


ACTIVITY_KINDS = {"lead": fraud_pb2.ACTIVITY_KIND_LEAD_SUBMISSION,
                  "redemption": fraud_pb2.ACTIVITY_KIND_OFFER_REDEMPTION}


def cmd_fraud_check(ctx: Context) -> int:
    """Checks one activity event; exit 3 when denied or sent for review. A --phone number is hashed here
    (sha256 of its digits and '+'), so the number itself never leaves this machine."""
    args = ctx.args
    if args.phone and args.phone_hash:
        raise CliError("INVALID_ARGUMENT", "INVALID_ARGUMENT", "give at most one of --phone and --phone-hash")
    phone_hash = args.phone_hash
    if args.phone:
        phone_hash = hashlib.sha256("".join(c for c in args.phone if c.isdigit() or c == "+").encode()).hexdigest()
    event = fraud_pb2.ActivityEvent(kind=ACTIVITY_KINDS[args.kind], partner_id=args.partner,
                                    customer_id=args.customer, device_id=args.device, phone_hash=phone_hash,
                                    ip_address=args.ip)
    if args.at:
        try:
            when = datetime.fromisoformat(args.at)
        except ValueError:
            raise CliError("INVALID_ARGUMENT", "INVALID_ARGUMENT", "--at must be an ISO 8601 time") from None
        if when.tzinfo is None:
            raise CliError("INVALID_ARGUMENT", "INVALID_ARGUMENT", "--at needs a UTC offset, e.g. +08:00 or Z")
        event.event_time.FromDatetime(when)
    request = fraud_pb2.CheckActivityRequest(event=event, request_id=args.request_id or f"cli:{uuid.uuid4()}")
    with ctx.channel("risk") as channel:
        response = _stub(ctx, channel).CheckActivity(request, timeout=ctx.timeout)
    decision = fraud_pb2.FraudDecision.Name(response.decision).removeprefix("FRAUD_DECISION_")
    data = to_dict(response)
    data["decision"] = decision
    lines = [f"{decision} ({response.name})"]
    rows = [(h.rule_id, str(h.observed), str(h.limit)) for h in response.hits]
    if rows:
        lines.append(table(rows, ("RULE", "OBSERVED", "LIMIT")))
    anomaly = response.anomaly
    lines.append(f"anomaly score {anomaly.score:.3f} (threshold {anomaly.threshold:.3f}, trained on "
                 f"{anomaly.training_events} events){' FLAGGED' if anomaly.flagged else ''}" if anomaly.scored
                 else "anomaly model not trained yet (too little history)")
    ctx.emit(data, "\n".join(lines))
    return 0 if response.decision == fraud_pb2.FRAUD_DECISION_ALLOW else 3


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

    credit = risk_sub.add_parser("credit", parents=[common], help="the credit-risk (PD) model registry")
    credit_sub = credit.add_subparsers(dest="credit_command", required=True, metavar="COMMAND")
    train = credit_sub.add_parser("train", parents=[common], help="train a PD scorecard from a CSV/Parquet file")
    train.add_argument("file")
    train.add_argument("--label", required=True, help="the default flag column (true/false, 1/0, yes/no)")
    train.add_argument("--id-column", default="customer_id", help="the customer id column (default customer_id)")
    train.add_argument("--features", default="", help="comma-separated; default: every other column")
    train.add_argument("--categorical", default="", help="comma-separated; default: non-numeric columns")
    train.add_argument("--window", action="append", default=[], metavar="KEY=VALUE",
                       help="training window, e.g. --window cutoff=2025-01-01 --window window_days=365")
    train.add_argument("--folds", type=int, default=5)
    train.add_argument("--promote", action="store_true", help="make the new version champion")
    train.add_argument("--request-id", default="")
    train.set_defaults(handler=cmd_credit_train)
    listing = credit_sub.add_parser("list", parents=[common], help="the model versions, newest first")
    listing.set_defaults(handler=cmd_credit_list)
    promote = credit_sub.add_parser("promote", parents=[common], help="make a version champion")
    promote.add_argument("version")
    promote.add_argument("--request-id", default="")
    promote.set_defaults(handler=cmd_credit_promote)
    score = credit_sub.add_parser("score", parents=[common], help="score one applicant with the champion")
    score.add_argument("customer_id")
    score.add_argument("--feature", action="append", metavar="NAME=VALUE", help="repeat per feature")
    score.add_argument("--income", type=float, default=None, help="monthly income (gives the max limit)")
    score.add_argument("--model", default="", help="a version instead of the champion")
    score.set_defaults(handler=cmd_credit_score)

    fraud = risk_sub.add_parser("fraud", parents=[common], help="fraud and abuse checks")
    fraud_sub = fraud.add_subparsers(dest="fraud_command", required=True, metavar="COMMAND")
    fraud_check = fraud_sub.add_parser("check", parents=[common],
                                       help="check a lead or redemption (exit 3 when denied or for review)")
    fraud_check.add_argument("--kind", required=True, choices=sorted(ACTIVITY_KINDS))
    fraud_check.add_argument("--partner", required=True, help="the partner id")
    fraud_check.add_argument("--customer", default="", help="the customer id, when known")
    fraud_check.add_argument("--device", default="", help="the device id")
    fraud_check.add_argument("--phone", default="", help="a phone number (hashed locally before sending)")
    fraud_check.add_argument("--phone-hash", default="", help="a phone hash (32-128 hex digits)")
    fraud_check.add_argument("--ip", default="", help="the IP address")
    fraud_check.add_argument("--at", default="", help="event time, ISO 8601 with offset (default now)")
    fraud_check.add_argument("--request-id", default="")
    fraud_check.set_defaults(handler=cmd_fraud_check)
