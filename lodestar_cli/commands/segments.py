"""`lodestar segments preview|create|get|list|snapshot|delete|export` and `lodestar clusters run`
(SegmentService, docs/segments.md)."""

from __future__ import annotations

import argparse
import csv
from datetime import UTC, datetime
from typing import Any

from google.protobuf import timestamp_pb2
from tqdm import tqdm

from lodestar.profile.v1 import segment_service_pb2 as pb
from lodestar.profile.v1 import segment_service_pb2_grpc as pbg
from lodestar_cli.main import CliError, Context, enum_name, table

_KIND = {"dynamic": pb.SEGMENT_KIND_DYNAMIC, "static": pb.SEGMENT_KIND_STATIC}


def _as_of(text: str) -> timestamp_pb2.Timestamp | None:
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise CliError("INVALID_ARGUMENT", "INVALID_AS_OF",
                       "--as-of must be an ISO 8601 time such as 2026-06-30T12:00:00+08:00") from None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value if value.tzinfo else value.replace(tzinfo=UTC))
    return ts


def _stub(ctx: Context, channel: Any) -> pbg.SegmentServiceStub:
    return pbg.SegmentServiceStub(channel)


def segment_dict(segment: pb.Segment) -> dict[str, Any]:
    return {
        "name": segment.name, "segment_id": segment.segment_id, "display_name": segment.display_name,
        "kind": enum_name(pb.SegmentKind, segment.kind, "SEGMENT_KIND_").lower(),
        "condition": segment.condition_text, "member_count": segment.member_count,
        "snapshot_time": segment.snapshot_time.ToJsonString() if segment.HasField("snapshot_time") else None,
        "create_time": segment.create_time.ToJsonString() if segment.HasField("create_time") else None,
    }


def _segment_text(data: dict[str, Any]) -> str:
    members = data["member_count"] if data["kind"] == "static" else "(evaluated at use)"
    return "\n".join(f"{k}: {v}" for k, v in (
        ("name", data["name"]), ("kind", data["kind"]), ("condition", data["condition"] or "-"),
        ("members", members), ("snapshot", data["snapshot_time"] or "-")))


def cmd_preview(ctx: Context) -> int:
    request = pb.PreviewSegmentRequest(condition_text=ctx.args.condition, sample_size=ctx.args.sample,
                                       as_of=_as_of(ctx.args.as_of))
    with ctx.channel("profile") as channel:
        response = _stub(ctx, channel).PreviewSegment(request, timeout=ctx.timeout)
    data = {"count": response.count, "sample_customer_ids": list(response.sample_customer_ids),
            "condition": response.condition_text, "as_of": response.as_of.ToJsonString()}
    sample = ", ".join(response.sample_customer_ids) or "-"
    ctx.emit(data, f"{response.count} customers match {response.condition_text}\nsample: {sample}")
    return 0


def cmd_create(ctx: Context) -> int:
    segment = pb.Segment(segment_id=ctx.args.segment_id, kind=_KIND[ctx.args.kind],
                         condition_text=ctx.args.condition, display_name=ctx.args.display_name)
    request = pb.CreateSegmentRequest(segment=segment, as_of=_as_of(ctx.args.as_of), request_id=ctx.args.request_id)
    with ctx.channel("profile") as channel:
        response = _stub(ctx, channel).CreateSegment(request, timeout=ctx.timeout)
    data = segment_dict(response.segment)
    ctx.emit(data, _segment_text(data))
    return 0


def cmd_get(ctx: Context) -> int:
    with ctx.channel("profile") as channel:
        response = _stub(ctx, channel).GetSegment(pb.GetSegmentRequest(name=f"segments/{ctx.args.segment_id}"),
                                                  timeout=ctx.timeout)
    data = segment_dict(response.segment)
    ctx.emit(data, _segment_text(data))
    return 0


def cmd_list(ctx: Context) -> int:
    segments: list[dict[str, Any]] = []
    token = ""  # nosec B105 - an empty page token (the first page), not a password
    with ctx.channel("profile") as channel:
        stub = _stub(ctx, channel)
        while True:
            page = stub.ListSegments(pb.ListSegmentsRequest(page_size=500, page_token=token), timeout=ctx.timeout)
            segments += [segment_dict(s) for s in page.segments]
            token = page.next_page_token
            if not token:
                break
    rows = [(s["segment_id"], s["kind"], s["member_count"] if s["kind"] == "static" else "-", s["condition"] or "-")
            for s in segments]
    ctx.emit({"segments": segments}, table(rows, ("SEGMENT", "KIND", "MEMBERS", "CONDITION")))
    return 0


def cmd_snapshot(ctx: Context) -> int:
    request = pb.RefreshSegmentRequest(name=f"segments/{ctx.args.segment_id}", as_of=_as_of(ctx.args.as_of),
                                       request_id=ctx.args.request_id)
    with ctx.channel("profile") as channel:
        response = _stub(ctx, channel).RefreshSegment(request, timeout=ctx.timeout)
    data = segment_dict(response.segment)
    ctx.emit(data, _segment_text(data))
    return 0


def cmd_delete(ctx: Context) -> int:
    with ctx.channel("profile") as channel:
        _stub(ctx, channel).DeleteSegment(pb.DeleteSegmentRequest(name=f"segments/{ctx.args.segment_id}",
                                                                  request_id=ctx.args.request_id),
                                          timeout=ctx.timeout)
    ctx.emit({"deleted": f"segments/{ctx.args.segment_id}"}, f"deleted segments/{ctx.args.segment_id}")
    return 0


def _column_value(column: pb.AudienceColumn, index: int) -> str:
    if not column.present[index]:
        return ""
    if column.type == pb.AUDIENCE_VALUE_TYPE_NUMBER:
        return f"{column.number_values[index]:g}"
    if column.type == pb.AUDIENCE_VALUE_TYPE_BOOL:
        return "true" if column.bool_values[index] else "false"
    return column.string_values[index]


def cmd_export(ctx: Context) -> int:
    """Writes the audience as CSV (customer_id, then the fields) to --out; a progress bar counts customers."""
    fields = [f.strip() for f in ctx.args.fields.split(",") if f.strip()]
    request = pb.ExportAudienceRequest(segment=f"segments/{ctx.args.segment_id}", fields=fields,
                                       batch_size=ctx.args.batch_size, resume_token=ctx.args.resume_token)
    show = not ctx.as_json and ctx.err.isatty()
    exported, batches, token = 0, 0, ""
    mode = "a" if ctx.args.resume_token else "w"
    with ctx.channel("profile") as channel, open(ctx.args.out, mode, newline="", encoding="utf-8") as handle, \
            tqdm(unit=" customers", file=ctx.err, disable=not show, desc="export") as bar:
        writer = csv.writer(handle)
        if mode == "w":
            writer.writerow(["customer_id", *fields])
        # A stream has no overall deadline here (it may be long); each message is awaited in turn.
        for batch in _stub(ctx, channel).ExportAudience(request):
            for i, customer_id in enumerate(batch.customer_ids):
                writer.writerow([customer_id, *(_column_value(c, i) for c in batch.columns)])
            exported += len(batch.customer_ids)
            batches += 1
            token = batch.resume_token
            bar.update(len(batch.customer_ids))
    data = {"exported": exported, "batches": batches, "out": ctx.args.out, "resume_token": token}
    ctx.emit(data, f"exported {exported} customers in {batches} batches to {ctx.args.out}")
    return 0


def cmd_clusters_run(ctx: Context) -> int:
    fields = [f.strip() for f in ctx.args.fields.split(",") if f.strip()]
    request = pb.ClusterCustomersRequest(fields=fields, k=ctx.args.k, sample_size=ctx.args.sample_size,
                                         save_segment_prefix=ctx.args.save_prefix, request_id=ctx.args.request_id)
    show = not ctx.as_json and ctx.err.isatty()
    with ctx.channel("profile") as channel, tqdm(total=1, desc="clustering", file=ctx.err, disable=not show,
                                                 bar_format="{desc}: {elapsed}") as bar:
        response = _stub(ctx, channel).ClusterCustomers(request, timeout=ctx.timeout)
        bar.update(1)
    clusters = []
    for c in response.clusters:
        clusters.append({
            "number": c.number, "size": c.size, "share": c.share, "segment": c.segment,
            "centre": {x.field: (x.mean if x.numeric else {"value": x.top_value, "share": x.top_share})
                       for x in c.centre},
            "traits": [{"field": t.field, "value": t.value, "z_score": t.z_score, "description": t.description}
                       for t in c.traits],
        })
    data = {"k": response.k, "silhouette": response.silhouette, "sample_size": response.sample_size,
            "silhouette_by_k": {str(k): v for k, v in sorted(response.silhouette_by_k.items())},
            "clusters": clusters}
    lines = [f"k = {response.k} (silhouette {response.silhouette:.3f}) over {response.sample_size} customers", ""]
    for c in clusters:
        lines.append(f"cluster {c['number']}: {c['size']} customers ({c['share']:.0%})"
                     + (f" -> {c['segment']}" if c["segment"] else ""))
        lines += [f"  - {t['description']}" for t in c["traits"]]
    ctx.emit(data, "\n".join(lines))
    return 0


def _positive(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    segments = commands.add_parser("segments", parents=[common], help="segments and audiences")
    sub = segments.add_subparsers(dest="segments_command", required=True, metavar="COMMAND")
    preview = sub.add_parser("preview", parents=[common], help="count the customers matching a condition")
    preview.add_argument("condition", help='e.g. \'region = "CN-31" and income > 5000\' (docs/segments.md)')
    preview.add_argument("--sample", type=_positive, default=10, help="member ids to show (default 10, max 100)")
    preview.add_argument("--as-of", default="", help="evaluation time, ISO 8601 (default now)")
    preview.set_defaults(handler=cmd_preview)

    create = sub.add_parser("create", parents=[common], help="create a dynamic or static segment")
    create.add_argument("segment_id")
    create.add_argument("--condition", required=True)
    create.add_argument("--kind", choices=sorted(_KIND), default="dynamic")
    create.add_argument("--display-name", default="")
    create.add_argument("--as-of", default="", help="static: evaluation time of the snapshot")
    create.add_argument("--request-id", default="")
    create.set_defaults(handler=cmd_create)

    get = sub.add_parser("get", parents=[common], help="one segment")
    get.add_argument("segment_id")
    get.set_defaults(handler=cmd_get)

    listing = sub.add_parser("list", parents=[common], help="every segment")
    listing.set_defaults(handler=cmd_list)

    snapshot = sub.add_parser("snapshot", parents=[common], help="re-snapshot a static segment")
    snapshot.add_argument("segment_id")
    snapshot.add_argument("--as-of", default="")
    snapshot.add_argument("--request-id", default="")
    snapshot.set_defaults(handler=cmd_snapshot)

    delete = sub.add_parser("delete", parents=[common], help="delete a segment")
    delete.add_argument("segment_id")
    delete.add_argument("--request-id", default="")
    delete.set_defaults(handler=cmd_delete)

    export = sub.add_parser("export", parents=[common], help="write a segment's members and values to CSV")
    export.add_argument("segment_id")
    export.add_argument("--fields", default="", help="comma-separated: region, income, tag.lifecycle_stage, ...")
    export.add_argument("--out", required=True, help="CSV file to write (appended to with --resume-token)")
    export.add_argument("--batch-size", type=_positive, default=5000)
    export.add_argument("--resume-token", default="", help="continue an interrupted export")
    export.set_defaults(handler=cmd_export)

    clusters = commands.add_parser("clusters", parents=[common], help="customer clustering")
    clusters_sub = clusters.add_subparsers(dest="clusters_command", required=True, metavar="COMMAND")
    run = clusters_sub.add_parser("run", parents=[common], help="k-means with a readable profile per cluster")
    run.add_argument("--fields", required=True, help="comma-separated attributes, region, tag.<name>")
    run.add_argument("--k", type=_positive, default=0, help="clusters (2-10; default: chosen by silhouette)")
    run.add_argument("--sample-size", type=_positive, default=0, help="customers sampled (default 10000)")
    run.add_argument("--save-prefix", default="", help="save each cluster as static segment PREFIX-n")
    run.add_argument("--request-id", default="")
    run.set_defaults(handler=cmd_clusters_run)
