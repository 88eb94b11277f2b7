"""`lodestar aml scan FILE`, `aml alerts`, `aml cases`, `aml case ID --state S --actor A`, `aml rules`
(anti-money-laundering monitoring, docs/aml.md).

The CSV of `aml scan` has a header; columns: transaction_id, customer_id, occurred_at (ISO 8601; without an
offset it is UTC), amount (decimal text), currency, direction (in | out), and optionally country (ISO 3166-1
alpha-2), counterparty, channel. Rows the CLI cannot read are counted as failed with their row number and not
sent; the others stream to the risk service in batches (each batch is stored and monitored as it arrives).
"""

from __future__ import annotations

import argparse
import csv
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf import json_format, timestamp_pb2
from tqdm import tqdm

from lodestar.risk.v1 import aml_pb2 as pb
from lodestar.risk.v1 import aml_pb2_grpc as pbg
from lodestar_cli.main import CliError, Context, table

MAX_REPORTED_ERRORS = 100
RULES = [v.name.removeprefix("AML_RULE_").lower() for v in pb.AmlRule.DESCRIPTOR.values if v.number]
STATES = [v.name.removeprefix("AML_CASE_STATE_").lower() for v in pb.AmlCaseState.DESCRIPTOR.values if v.number]
_DIRECTIONS = {"in": pb.AML_DIRECTION_IN, "out": pb.AML_DIRECTION_OUT}


def transaction_from_row(row: dict[str, str]) -> pb.AmlTransaction:
    """One CSV row; ValueError naming the column when it cannot be read."""
    get = lambda name: (row.get(name) or "").strip()  # noqa: E731
    for column in ("transaction_id", "customer_id", "occurred_at", "amount", "currency", "direction"):
        if not get(column):
            raise ValueError(f"{column} is required")
    try:
        when = datetime.fromisoformat(get("occurred_at"))
    except ValueError:
        raise ValueError("occurred_at must be an ISO 8601 time such as 2026-06-30T12:00:00+08:00") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    direction = _DIRECTIONS.get(get("direction").lower())
    if direction is None:
        raise ValueError("direction must be in or out")
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(when)
    return pb.AmlTransaction(transaction_id=get("transaction_id"), customer_id=get("customer_id"), occurred_at=stamp,
                             amount=get("amount"), currency=get("currency").upper(), direction=direction,
                             country=get("country").upper(), counterparty=get("counterparty"),
                             channel=get("channel").lower())


def cmd_scan(ctx: Context) -> int:
    path = Path(ctx.args.file)
    if not path.is_file():
        raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"no such file: {path}")
    size = path.stat().st_size
    show = not ctx.as_json and ctx.err.isatty()
    errors: list[dict[str, Any]] = []
    failed = 0

    def requests(bar: tqdm) -> Iterator[pb.MonitorTransactionsRequest]:  # type: ignore[type-arg]
        nonlocal failed
        batch: list[pb.AmlTransaction] = []
        consumed = 0  # approximate bytes read, for the progress bar
        with path.open(newline="", encoding="utf-8-sig") as handle:
            for number, row in enumerate(csv.DictReader(handle, delimiter=ctx.args.sep), start=2):
                consumed += sum(len(v) for v in row.values() if isinstance(v, str)) + len(row)
                try:
                    batch.append(transaction_from_row(row))
                except ValueError as error:
                    failed += 1
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append({"row": number, "reason": str(error)})
                if len(batch) >= ctx.args.batch_size:
                    yield pb.MonitorTransactionsRequest(transactions=batch)
                    batch = []
                    bar.update(min(size, consumed) - bar.n)
            if batch:
                yield pb.MonitorTransactionsRequest(transactions=batch)
            bar.update(size - bar.n)

    with ctx.channel("risk") as channel, tqdm(total=size, unit="B", unit_scale=True, file=ctx.err, disable=not show,
                                              desc="transactions") as bar:
        response = pbg.AmlServiceStub(channel).MonitorTransactions(requests(bar), timeout=ctx.args.stream_timeout)
    data = {"accepted": response.accepted, "duplicates": response.duplicates, "batches": response.batches,
            "alerts": response.alerts, "cases_opened": response.cases_opened,
            "rules_version": response.rules_version, "failed": failed, "errors": errors}
    text = (f"monitored {response.accepted} transactions ({response.duplicates} duplicates, {failed} unreadable): "
            f"{response.alerts} alerts, {response.cases_opened} cases opened (rules {response.rules_version})")
    if errors:
        text += "\n\n" + table([(e["row"], e["reason"]) for e in errors], ("ROW", "REASON"))
    ctx.emit(data, text)
    return 0 if failed == 0 else 1


def _alert_dict(a: pb.AmlAlert) -> dict[str, Any]:
    return {"name": a.name, "customer_id": a.customer_id, "rule": pb.AmlRule.Name(a.rule).removeprefix("AML_RULE_"),
            "reasons": list(a.reasons), "detail": a.detail, "amount": a.amount, "anomaly_score": a.anomaly_score,
            "window_start": a.window_start.ToJsonString(), "window_end": a.window_end.ToJsonString(),
            "transaction_ids": list(a.transaction_ids), "case": a.case, "rules_version": a.rules_version,
            "create_time": a.create_time.ToJsonString()}


def _case_dict(c: pb.AmlCase) -> dict[str, Any]:
    return {"name": c.name, "customer_id": c.customer_id,
            "state": pb.AmlCaseState.Name(c.state).removeprefix("AML_CASE_STATE_"), "alert_count": c.alert_count,
            "rules": [pb.AmlRule.Name(r).removeprefix("AML_RULE_") for r in c.rules], "actor": c.actor,
            "etag": c.etag, "create_time": c.create_time.ToJsonString(), "update_time": c.update_time.ToJsonString()}


def _pages(ctx: Context, call: Any, request: Any, field: str) -> list[Any]:
    out: list[Any] = []
    while len(out) < ctx.args.limit:
        request.page_size = min(1000, ctx.args.limit - len(out))
        response = call(request, timeout=ctx.timeout)
        out += list(getattr(response, field))
        if not response.next_page_token:
            break
        request.page_token = response.next_page_token
    return out


def cmd_alerts(ctx: Context) -> int:
    request = pb.ListAlertsRequest(customer_id=ctx.args.customer)
    if ctx.args.rule:
        request.rule = pb.AmlRule.Value("AML_RULE_" + ctx.args.rule.upper())
    if ctx.args.case:
        request.case = ctx.args.case if ctx.args.case.startswith("amlCases/") else f"amlCases/{ctx.args.case}"
    with ctx.channel("risk") as channel:
        alerts = [_alert_dict(a) for a in _pages(ctx, pbg.AmlServiceStub(channel).ListAlerts, request, "alerts")]
    text = table([(a["name"], a["customer_id"], a["rule"], ",".join(a["reasons"]), f"{a['amount']:.2f}",
                   a["case"], a["detail"]) for a in alerts],
                 ("ALERT", "CUSTOMER", "RULE", "REASONS", "AMOUNT", "CASE", "DETAIL")) if alerts else "no alerts"
    ctx.emit({"alerts": alerts}, text)
    return 0


def cmd_cases(ctx: Context) -> int:
    request = pb.ListCasesRequest(customer_id=ctx.args.customer)
    if ctx.args.state:
        request.state = pb.AmlCaseState.Value("AML_CASE_STATE_" + ctx.args.state.upper())
    with ctx.channel("risk") as channel:
        cases = [_case_dict(c) for c in _pages(ctx, pbg.AmlServiceStub(channel).ListCases, request, "cases")]
    text = table([(c["name"], c["customer_id"], c["state"], c["alert_count"], ",".join(c["rules"]), c["actor"],
                   c["update_time"]) for c in cases],
                 ("CASE", "CUSTOMER", "STATE", "ALERTS", "RULES", "ACTOR", "UPDATED")) if cases else "no cases"
    ctx.emit({"cases": cases}, text)
    return 0


def cmd_case(ctx: Context) -> int:
    name = ctx.args.case_id if ctx.args.case_id.startswith("amlCases/") else f"amlCases/{ctx.args.case_id}"
    request = pb.UpdateCaseRequest(name=name, state=pb.AmlCaseState.Value("AML_CASE_STATE_" + ctx.args.state.upper()),
                                   actor=ctx.args.actor, note=ctx.args.note, etag=ctx.args.etag,
                                   request_id=ctx.args.request_id)
    with ctx.channel("risk") as channel:
        case = pbg.AmlServiceStub(channel).UpdateCase(request, timeout=ctx.timeout).case
    data = _case_dict(case)
    ctx.emit(data, f"{data['name']} is now {data['state']} (by {data['actor']}, etag {data['etag']})")
    return 0


def cmd_rules(ctx: Context) -> int:
    with ctx.channel("risk") as channel:
        stub = pbg.AmlServiceStub(channel)
        if ctx.args.set:
            path = Path(ctx.args.set)
            if not path.is_file():
                raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"no such file: {path}")
            try:
                rules = json_format.Parse(path.read_text(encoding="utf-8"), pb.AmlRules())
            except json_format.ParseError as error:
                raise CliError("INVALID_ARGUMENT", "INVALID_RULES_FILE", str(error)) from None
            if not ctx.args.actor:
                raise CliError("INVALID_ARGUMENT", "REQUIRED_FIELD_MISSING", "--actor is required with --set")
            result = stub.SetAmlRules(pb.SetAmlRulesRequest(rules=rules, actor=ctx.args.actor),
                                      timeout=ctx.timeout).rules
        else:
            result = stub.GetAmlRules(pb.GetAmlRulesRequest(), timeout=ctx.timeout).rules
    data = json_format.MessageToDict(result, preserving_proto_field_name=True)
    ctx.emit(data, json_format.MessageToJson(result, preserving_proto_field_name=True, indent=2))
    return 0


def _batch_size(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 10_000:
        raise argparse.ArgumentTypeError("must be between 1 and 10000")
    return number


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("aml", parents=[common], help="anti-money-laundering monitoring")
    sub = group.add_subparsers(dest="aml_command", required=True, metavar="COMMAND")
    scan = sub.add_parser("scan", parents=[common], help="monitor the transactions of a CSV file")
    scan.add_argument("file", help="CSV with a header (columns: see docs/aml.md)")
    scan.add_argument("--sep", default=",", help="column separator (default ,)")
    scan.add_argument("--batch-size", type=_batch_size, default=5000, help="transactions per message (default 5000)")
    scan.add_argument("--stream-timeout", type=float, default=3600.0,
                      help="deadline of the whole upload in seconds (default 3600)")
    scan.set_defaults(handler=cmd_scan)

    alerts = sub.add_parser("alerts", parents=[common], help="list alerts, newest first")
    alerts.add_argument("--customer", default="", help="only this customer's alerts")
    alerts.add_argument("--rule", choices=RULES, help="only this rule's alerts")
    alerts.add_argument("--case", default="", help="only this case's alerts (ID or amlCases/ID)")
    alerts.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    alerts.set_defaults(handler=cmd_alerts)

    cases = sub.add_parser("cases", parents=[common], help="list cases, newest first")
    cases.add_argument("--state", choices=STATES, help="only cases in this state")
    cases.add_argument("--customer", default="", help="only this customer's cases")
    cases.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    cases.set_defaults(handler=cmd_cases)

    case = sub.add_parser("case", parents=[common], help="move a case to another state")
    case.add_argument("case_id", help="ID or amlCases/ID")
    case.add_argument("--state", required=True, choices=STATES)
    case.add_argument("--actor", required=True, help="who decides (an id, not a name)")
    case.add_argument("--note", default="", help="why (no personal data)")
    case.add_argument("--etag", default="", help="fail (ABORTED) if the case changed since this etag")
    case.add_argument("--request-id", default="", help="idempotency key: a retry changes nothing twice")
    case.set_defaults(handler=cmd_case)

    rules = sub.add_parser("rules", parents=[common], help="show the rules in force, or --set them from JSON")
    rules.add_argument("--set", default="", metavar="FILE", help="AmlRules as JSON (as `aml rules --json` prints)")
    rules.add_argument("--actor", default="", help="who changes them (required with --set)")
    rules.set_defaults(handler=cmd_rules)
