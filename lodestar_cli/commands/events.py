"""`lodestar events import FILE`, `lodestar features get CUSTOMER_ID`, `lodestar tags get CUSTOMER_ID`.

The CSV of `events import` has a header; columns (docs/features.md): event_id, customer_id, kind
(transaction | digital_activity | repayment | campaign_response), occurred_at (ISO 8601; without an offset it
is UTC), then the columns of each kind: amount, currency, merchant_category, channel, direction (debit |
credit), action (view | click | application | login), target, due_date, days_late, product, campaign_id,
offer_id, response (delivered | opened | clicked | applied | converted | declined). Rows the CLI cannot read,
and events the service rejects, are counted as failed with their row number; the others are stored.
"""

from __future__ import annotations

import argparse
import csv
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tqdm import tqdm

from lodestar.profile.v1 import event_service_pb2 as pb
from lodestar.profile.v1 import event_service_pb2_grpc as pbg
from lodestar_cli.commands import group
from lodestar_cli.main import CliError, Context, table

MAX_REPORTED_ERRORS = 100
_VIOLATION = re.compile(r"^events\[(\d+)\]")
_KINDS = ("transaction", "digital_activity", "repayment", "campaign_response")


def _timestamp(text: str, what: str) -> timestamp_pb2.Timestamp:
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} must be an ISO 8601 time such as 2026-06-30T12:00:00+08:00") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


def _enum(enum: Any, prefix: str, text: str, column: str) -> Any:
    if not text:
        return 0
    try:
        return enum.Value(prefix + text.strip().upper())
    except ValueError:
        raise ValueError(f"{column}: unknown value {text!r}") from None


def event_from_row(row: dict[str, str]) -> pb.Event:
    """One CSV row as an Event; ValueError naming the column when it cannot be read."""
    get = lambda name: (row.get(name) or "").strip()  # noqa: E731
    kind = get("kind")
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {', '.join(_KINDS)}")
    if not get("occurred_at"):
        raise ValueError("occurred_at is required")
    event = pb.Event(event_id=get("event_id"), customer_id=get("customer_id"),
                     occurred_at=_timestamp(get("occurred_at"), "occurred_at"))
    if kind == "transaction":
        event.transaction.CopyFrom(pb.Transaction(
            amount=get("amount"), currency=get("currency"), merchant_category=get("merchant_category"),
            channel=get("channel"), direction=_enum(pb.TransactionDirection, "TRANSACTION_DIRECTION_",
                                                    get("direction"), "direction")))
    elif kind == "digital_activity":
        event.digital_activity.CopyFrom(pb.DigitalActivity(
            action=_enum(pb.DigitalAction, "DIGITAL_ACTION_", get("action"), "action"), channel=get("channel"),
            target=get("target")))
    elif kind == "repayment":
        try:
            days_late = int(get("days_late") or 0)
        except ValueError:
            raise ValueError("days_late must be a whole number") from None
        event.repayment.CopyFrom(pb.Repayment(amount=get("amount"), due_date=get("due_date"), days_late=days_late,
                                              product=get("product")))
    else:
        event.campaign_response.CopyFrom(pb.CampaignResponse(
            campaign_id=get("campaign_id"), offer_id=get("offer_id"),
            kind=_enum(pb.ResponseKind, "RESPONSE_KIND_", get("response"), "response")))
    return event


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    try:
        status = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return []
    out: list[tuple[str, str]] = []
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            out += [(v.field, v.description) for v in bad.field_violations]
    return out


class _Import:
    def __init__(self, stub: pbg.EventServiceStub, timeout: float) -> None:
        self.stub, self.timeout = stub, timeout
        self.imported = self.duplicates = self.failed = 0
        self.errors: list[dict[str, Any]] = []

    def fail(self, row: int, field: str, reason: str) -> None:
        self.failed += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"row": row, "field": field, "reason": reason})

    def send(self, batch: list[tuple[int, pb.Event]]) -> None:
        """Sends a batch; events the service rejects are reported and the rest sent again."""
        while batch:
            try:
                response = self.stub.IngestEvents(pb.IngestEventsRequest(events=[e for _, e in batch]),
                                                  timeout=self.timeout)
            except grpc.RpcError as error:
                violations = _violations(error) if error.code() == grpc.StatusCode.INVALID_ARGUMENT else []
                bad: dict[int, tuple[str, str]] = {}
                for field, description in violations:
                    match = _VIOLATION.match(field)
                    if match and int(match.group(1)) < len(batch):
                        bad.setdefault(int(match.group(1)), (field.split(".", 1)[-1], description))
                if not bad:
                    raise
                for index, (field, description) in sorted(bad.items()):
                    self.fail(batch[index][0], field, description)
                batch = [item for i, item in enumerate(batch) if i not in bad]
                continue
            self.imported += response.accepted
            self.duplicates += response.duplicates
            return


def _rows(path: Path, sep: str) -> Iterator[tuple[int, dict[str, str]]]:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, delimiter=sep)
        yield from enumerate(reader, start=2)  # row 1 is the header


def cmd_events_import(ctx: Context) -> int:
    path = Path(ctx.args.file)
    if not path.is_file():
        raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"no such file: {path}")
    size = path.stat().st_size
    show = not ctx.as_json and ctx.err.isatty()
    with ctx.channel("profile") as channel, tqdm(total=size, unit="B", unit_scale=True, file=ctx.err,
                                                 disable=not show, desc="events") as bar:
        job = _Import(pbg.EventServiceStub(channel), ctx.timeout)
        batch: list[tuple[int, pb.Event]] = []
        consumed = 0  # approximate bytes read, for the progress bar
        for number, row in _rows(path, ctx.args.sep):
            consumed += sum(len(v) for v in row.values() if isinstance(v, str)) + len(row)
            try:
                batch.append((number, event_from_row(row)))
            except ValueError as error:
                job.fail(number, "", str(error))
            if len(batch) >= ctx.args.batch_size:
                job.send(batch)
                batch = []
                bar.update(min(size, consumed) - bar.n)
        job.send(batch)
        bar.update(size - bar.n)
    data = {"imported": job.imported, "duplicates": job.duplicates, "failed": job.failed, "errors": job.errors}
    text = f"imported {job.imported} events, {job.duplicates} duplicates (already stored), {job.failed} failed"
    if job.errors:
        text += "\n\n" + table([(e["row"], e["field"] or "-", e["reason"]) for e in job.errors],
                               ("ROW", "FIELD", "REASON"))
    ctx.emit(data, text)
    return 0 if job.failed == 0 else 1


def cmd_features_get(ctx: Context) -> int:
    request = pb.GetFeaturesRequest(customer_id=ctx.args.customer_id)
    if ctx.args.as_of:
        try:
            request.as_of.CopyFrom(_timestamp(ctx.args.as_of, "--as-of"))
        except ValueError as error:
            raise CliError("INVALID_ARGUMENT", "INVALID_AS_OF", str(error)) from None
    with ctx.channel("profile") as channel:
        response = pbg.EventServiceStub(channel).GetFeatures(request, timeout=ctx.timeout)
    features = dict(sorted(response.features.items()))
    data = {"customer_id": response.customer_id, "as_of": response.as_of.ToJsonString(), "features": features,
            "products_held": list(response.products_held)}
    text = f"features of {response.customer_id} as of {response.as_of.ToJsonString()}\n\n" + table(
        [(name, f"{value:g}") for name, value in features.items()], ("FEATURE", "VALUE"))
    ctx.emit(data, text)
    return 0


def _tag_dict(tag: pb.Tag) -> dict[str, str]:
    return {"name": tag.name, "value": tag.value, "source": tag.source, "rule_version": tag.rule_version,
            "as_of": tag.as_of.ToJsonString(), "computed_at": tag.computed_at.ToJsonString()}


def cmd_tags_get(ctx: Context) -> int:
    customer_id = ctx.args.customer_id
    with ctx.channel("profile") as channel:
        stub = pbg.EventServiceStub(channel)
        if ctx.args.compute:
            stub.ComputeTags(pb.ComputeTagsRequest(customer_ids=[customer_id]), timeout=ctx.timeout)
        response = stub.GetTags(pb.GetTagsRequest(customer_id=customer_id), timeout=ctx.timeout)
    tags = [_tag_dict(t) for t in response.tags]
    if tags:
        text = table([(t["name"], t["value"], t["source"], t["computed_at"]) for t in tags],
                     ("TAG", "VALUE", "SOURCE", "COMPUTED AT"))
    else:
        text = f"no tags computed for {customer_id} yet: run `lodestar tags get {customer_id} --compute`"
    ctx.emit({"customer_id": customer_id, "tags": tags}, text)
    return 0


def _batch_size(value: str) -> int:
    number = int(value)
    if not 1 <= number <= 1000:
        raise argparse.ArgumentTypeError("must be between 1 and 1000")
    return number


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    events = commands.add_parser("events", parents=[common], help="behaviour events")
    events_sub = events.add_subparsers(dest="events_command", required=True, metavar="COMMAND")
    load = events_sub.add_parser("import", parents=[common], help="import events from a CSV file")
    load.add_argument("file", help="CSV with a header (columns: see docs/features.md)")
    load.add_argument("--sep", default=",", help="column separator (default ,)")
    load.add_argument("--batch-size", type=_batch_size, default=500, help="events per request (default 500)")
    load.set_defaults(handler=cmd_events_import)

    features = commands.add_parser("features", parents=[common], help="point-in-time customer features")
    features_sub = features.add_subparsers(dest="features_command", required=True, metavar="COMMAND")
    get = features_sub.add_parser("get", parents=[common], help="the features of one customer")
    get.add_argument("customer_id")
    get.add_argument("--as-of", default="", help="ISO 8601 time (default now); without an offset it is UTC")
    get.set_defaults(handler=cmd_features_get)

    tags_sub = group(commands, common, "tags", "customer tags: built-in, rule and external")
    tags_get = tags_sub.add_parser("get", parents=[common], help="the stored tags of one customer")
    tags_get.add_argument("customer_id")
    tags_get.add_argument("--compute", action="store_true", help="compute them now first")
    tags_get.set_defaults(handler=cmd_tags_get)

