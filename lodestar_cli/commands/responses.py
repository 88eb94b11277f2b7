"""`lodestar responses record FILE` and `lodestar responses arms CAMPAIGN`: campaign responses (docs/responses.md).

    lodestar responses record responses.csv            # streams every row to RecordResponses, with a progress bar
    lodestar responses arms spring                     # assignments, outcomes and posteriors per arm

The CSV has a header; columns (all optional but the attribution key, outcome and time): delivery_key, decision
(decisions/{id}), campaign (a campaign id or campaigns/{id}), customer_id, outcome (opened, clicked, applied,
converted), response_time (ISO 8601 with an offset, or UTC when it has none), revenue, currency_code, offer_id,
event_id. Rows go in streams of at most 50,000 events, each with a request id derived from the file's bytes and
the stream's number: recording the same file twice changes nothing the second time.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import math
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodestar.campaign.v1 import response_service_pb2 as pb
from lodestar.campaign.v1 import response_service_pb2_grpc as pbg
from lodestar_cli.main import CliError, Context, table, to_dict
from services.platform.timestamps import to_timestamp

STREAM_EVENTS = 50_000
MESSAGE_EVENTS = 1000
OUTCOMES = {"opened": pb.RESPONSE_OUTCOME_OPENED, "clicked": pb.RESPONSE_OUTCOME_CLICKED,
            "applied": pb.RESPONSE_OUTCOME_APPLIED, "converted": pb.RESPONSE_OUTCOME_CONVERTED}


def _disposition(value: int) -> str:
    return pb.ResponseDisposition.Name(value).removeprefix("RESPONSE_DISPOSITION_")  # type: ignore[arg-type]


def parse_row(row: dict[str, str]) -> tuple[pb.ResponseEvent | None, str]:
    """(event, '') or (None, reason) for a row the CLI cannot send."""
    get = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}.get
    outcome = OUTCOMES.get((get("outcome") or "").lower())
    if outcome is None:
        return None, "INVALID_OUTCOME"
    try:
        when = datetime.fromisoformat(get("response_time") or "")
    except ValueError:
        return None, "INVALID_RESPONSE_TIME"
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    try:
        revenue = float(get("revenue") or 0)
    except ValueError:
        return None, "INVALID_REVENUE"
    if not math.isfinite(revenue):
        return None, "INVALID_REVENUE"
    campaign = get("campaign") or ""
    if campaign and not campaign.startswith("campaigns/"):
        campaign = f"campaigns/{campaign}"
    return pb.ResponseEvent(
        delivery_key=get("delivery_key") or "", decision=get("decision") or "", campaign=campaign,
        customer_id=get("customer_id") or "", outcome=outcome, response_time=to_timestamp(when), revenue=revenue,
        currency_code=get("currency_code") or "", offer_id=get("offer_id") or "", event_id=get("event_id") or "",
    ), ""


def cmd_record(ctx: Context) -> int:
    path = Path(ctx.args.file)
    if not path.is_file():
        raise CliError("INVALID_ARGUMENT", "FILE_NOT_FOUND", f"no such file: {path}")
    raw = path.read_bytes()
    base = ctx.args.request_id or "cli-" + hashlib.sha256(raw).hexdigest()[:32]
    rows = list(csv.DictReader(raw.decode("utf-8-sig").splitlines()))
    events: list[tuple[int, pb.ResponseEvent]] = []
    rejected: list[dict[str, Any]] = []
    for number, row in enumerate(rows, start=1):
        event, reason = parse_row(row)
        if event is None:
            rejected.append({"row": number, "disposition": "INVALID", "reason": reason})
        else:
            events.append((number, event))
    counts: Counter[str] = Counter({"INVALID": len(rejected)} if rejected else {})
    show = not ctx.as_json and sys.stderr.isatty()
    bar = tqdm(total=len(events), unit="response", file=sys.stderr, disable=not show, desc="recording")
    with ctx.channel("campaign") as channel:
        stub = pbg.ResponseServiceStub(channel)
        for stream_no, start in enumerate(range(0, len(events), STREAM_EVENTS)):
            chunk = events[start:start + STREAM_EVENTS]

            def messages(chunk: list[tuple[int, pb.ResponseEvent]] = chunk, stream_no: int = stream_no) -> Any:
                for i in range(0, len(chunk), MESSAGE_EVENTS):
                    yield pb.RecordResponsesRequest(request_id=f"{base}-{stream_no}",
                                                    events=[e for _, e in chunk[i:i + MESSAGE_EVENTS]])
                    bar.update(len(chunk[i:i + MESSAGE_EVENTS]))

            answer = stub.RecordResponses(messages(), timeout=max(ctx.timeout, 60.0))
            counts.update({_disposition(c.disposition): int(c.count) for c in answer.counts})
            rejected += [{"row": chunk[r.index][0], "disposition": _disposition(r.disposition), "reason": r.reason}
                         for r in answer.rejections]
    bar.close()
    rejected.sort(key=lambda r: int(r["row"]))
    data = {"file": str(path), "rows": len(rows), "recorded": counts.get("RECORDED", 0),
            "counts": dict(sorted(counts.items())), "rejections": rejected}
    text = [f"{path}: {len(rows)} rows, {data['recorded']} recorded"]
    text += [f"  {name.lower().replace('_', ' ')}: {n}" for name, n in sorted(counts.items()) if name != "RECORDED"]
    text += [f"  row {r['row']}: {r['disposition']} {r['reason']}" for r in rejected[:20]]
    if len(rejected) > 20:
        text.append(f"  ... and {len(rejected) - 20} more (--json lists them all)")
    ctx.emit(data, "\n".join(text))
    return 0


def cmd_arms(ctx: Context) -> int:
    campaign = ctx.args.campaign if ctx.args.campaign.startswith("campaigns/") else f"campaigns/{ctx.args.campaign}"
    with ctx.channel("campaign") as channel:
        answer = pbg.ResponseServiceStub(channel).GetArmOutcomes(pb.GetArmOutcomesRequest(campaign=campaign),
                                                                 timeout=ctx.timeout)
    rows = [(a.arm_id, a.assigned, a.contacted, a.opened, a.clicked, a.applied, a.converted, f"{a.revenue:.2f}",
             f"{a.probability_best:.3f}" if a.posterior_alpha else "-") for a in answer.arms]
    text = table(rows, ("ARM", "ASSIGNED", "CONTACTED", "OPENED", "CLICKED", "APPLIED", "CONVERTED",
                        f"REVENUE ({answer.currency_code})", "P(BEST)"))
    ctx.emit(to_dict(answer), f"{answer.campaign} (attribution window {answer.attribution_window_days} days)\n"
                              f"{text}")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("responses", parents=[common], help="campaign responses and outcomes per arm")
    sub = group.add_subparsers(dest="responses_command", required=True, metavar="COMMAND")
    record = sub.add_parser("record", parents=[common], help="record responses from a CSV file")
    record.add_argument("file")
    record.add_argument("--request-id", default="", help="idempotency key prefix (default: from the file's bytes)")
    record.set_defaults(handler=cmd_record)
    arms = sub.add_parser("arms", parents=[common], help="assignments, outcomes and posteriors per arm")
    arms.add_argument("campaign", help="campaign id or campaigns/{id}")
    arms.set_defaults(handler=cmd_arms)
