"""`lodestar tags define|list|delete|set|run|status` (TagService, docs/tags.md). `lodestar tags get` (the stored
tags of one customer) lives in events.py; both add to the same `tags` group, whichever registers first."""

from __future__ import annotations

import argparse
import time
from typing import Any

from google.protobuf import timestamp_pb2
from tqdm import tqdm

from lodestar.profile.v1 import tag_service_pb2 as pb
from lodestar.profile.v1 import tag_service_pb2_grpc as pbg
from lodestar_cli.commands import group
from lodestar_cli.commands.segments import _as_of
from lodestar_cli.main import CliError, Context, enum_name, table


def _stub(channel: Any) -> pbg.TagServiceStub:
    return pbg.TagServiceStub(channel)


def definition_dict(d: pb.TagDefinition) -> dict[str, Any]:
    return {"name": d.name, "definition_id": d.definition_id, "tag": d.tag, "value": d.value,
            "condition": d.condition_text, "description": d.description,
            "create_time": d.create_time.ToJsonString() if d.HasField("create_time") else None}


def job_dict(job: pb.TagJob) -> dict[str, Any]:
    def ts(value: timestamp_pb2.Timestamp, present: bool) -> str | None:
        return value.ToJsonString() if present else None

    return {"name": job.name, "job_id": job.job_id, "state": enum_name(pb.TagJobState, job.state,
                                                                         "TAG_JOB_STATE_").lower(),
            "as_of": ts(job.as_of, job.HasField("as_of")), "chunk_size": job.chunk_size,
            "total_customers": job.total_customers, "processed_customers": job.processed_customers,
            "chunks_done": job.chunks_done, "error": job.error,
            "update_time": ts(job.update_time, job.HasField("update_time"))}


def _job_text(data: dict[str, Any]) -> str:
    text = (f"{data['name']}: {data['state']}, {data['processed_customers']}/{data['total_customers']} customers "
            f"in {data['chunks_done']} chunks (as of {data['as_of']})")
    return text + (f"\nerror: {data['error']}" if data["error"] else "")


def cmd_define(ctx: Context) -> int:
    definition = pb.TagDefinition(definition_id=ctx.args.definition_id, tag=ctx.args.tag,
                                  condition_text=ctx.args.condition, value=ctx.args.value,
                                  description=ctx.args.description)
    with ctx.channel("profile") as channel:
        response = _stub(channel).CreateTagDefinition(
            pb.CreateTagDefinitionRequest(definition=definition, request_id=ctx.args.request_id),
            timeout=ctx.timeout)
    data = definition_dict(response.definition)
    ctx.emit(data, f"{data['name']}: tag.{data['tag']} = \"{data['value']}\" when {data['condition']}")
    return 0


def cmd_list(ctx: Context) -> int:
    definitions: list[dict[str, Any]] = []
    token = ""  # nosec B105 - an empty page token (the first page), not a password
    with ctx.channel("profile") as channel:
        stub = _stub(channel)
        while True:
            page = stub.ListTagDefinitions(pb.ListTagDefinitionsRequest(page_size=500, page_token=token),
                                           timeout=ctx.timeout)
            definitions += [definition_dict(d) for d in page.definitions]
            token = page.next_page_token
            if not token:
                break
    rows = [(d["definition_id"], d["tag"], d["value"], d["condition"]) for d in definitions]
    ctx.emit({"definitions": definitions}, table(rows, ("DEFINITION", "TAG", "VALUE", "CONDITION"))
             if rows else "no tag definitions")
    return 0


def cmd_delete(ctx: Context) -> int:
    name = f"tagDefinitions/{ctx.args.definition_id}"
    with ctx.channel("profile") as channel:
        _stub(channel).DeleteTagDefinition(pb.DeleteTagDefinitionRequest(name=name, request_id=ctx.args.request_id),
                                           timeout=ctx.timeout)
    ctx.emit({"deleted": name}, f"deleted {name}")
    return 0


def cmd_set(ctx: Context) -> int:
    tags: dict[str, str] = {}
    for pair in ctx.args.tag:
        name, sep, value = pair.partition("=")
        if not sep:
            raise CliError("INVALID_ARGUMENT", "INVALID_TAG", f"--tag {pair!r}: expected NAME=VALUE")
        tags[name.strip()] = value.strip()
    request = pb.SetCustomerTagsRequest(items=[pb.CustomerTagValues(customer_id=ctx.args.customer_id, tags=tags)],
                                        source=ctx.args.source, request_id=ctx.args.request_id)
    with ctx.channel("profile") as channel:
        response = _stub(channel).SetCustomerTags(request, timeout=ctx.timeout)
    ctx.emit({"customers": response.customers, "tags": response.tags},
             f"set {response.tags} tags on {response.customers} customer")
    return 0


def _follow(ctx: Context, stub: pbg.TagServiceStub, job: pb.TagJob) -> pb.TagJob:
    """Polls until the job is no longer running; a progress bar (stderr, TTY only, not with --json)."""
    show = not ctx.as_json and ctx.err.isatty()
    with tqdm(total=job.total_customers or None, unit=" customers", desc=f"tag job {job.job_id}", file=ctx.err,
              disable=not show) as bar:
        bar.update(job.processed_customers)
        while job.state == pb.TAG_JOB_STATE_RUNNING:
            time.sleep(ctx.args.poll)
            job = stub.GetTagJob(pb.GetTagJobRequest(name=job.name), timeout=ctx.timeout).job
            bar.update(job.processed_customers - bar.n)
    return job


def cmd_run(ctx: Context) -> int:
    request = pb.RunTagJobRequest(job_id=ctx.args.job_id, as_of=_as_of(ctx.args.as_of),
                                  chunk_size=ctx.args.chunk_size)
    with ctx.channel("profile") as channel:
        stub = _stub(channel)
        job = stub.RunTagJob(request, timeout=ctx.timeout).job
        if not ctx.args.no_wait:
            job = _follow(ctx, stub, job)
    data = job_dict(job)
    ctx.emit(data, _job_text(data))
    return 1 if job.state == pb.TAG_JOB_STATE_FAILED else 0


def cmd_status(ctx: Context) -> int:
    with ctx.channel("profile") as channel:
        stub = _stub(channel)
        job = stub.GetTagJob(pb.GetTagJobRequest(name=f"tagJobs/{ctx.args.job_id}"), timeout=ctx.timeout).job
        if ctx.args.wait:
            job = _follow(ctx, stub, job)
    data = job_dict(job)
    ctx.emit(data, _job_text(data))
    return 0


def _non_negative(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return number


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    sub = group(commands, common, "tags", "customer tags")
    define = sub.add_parser("define", parents=[common], help="define a rule tag: TAG = VALUE when CONDITION")
    define.add_argument("definition_id")
    define.add_argument("--tag", required=True, help="lower_snake_case tag name, e.g. spend_band")
    define.add_argument("--value", required=True)
    define.add_argument("--condition", required=True, help="the segment language (docs/segments.md)")
    define.add_argument("--description", default="")
    define.add_argument("--request-id", default="")
    define.set_defaults(handler=cmd_define)

    listing = sub.add_parser("list", parents=[common], help="the rule tag definitions")
    listing.set_defaults(handler=cmd_list)

    delete = sub.add_parser("delete", parents=[common], help="delete a rule tag definition and its values")
    delete.add_argument("definition_id")
    delete.add_argument("--request-id", default="")
    delete.set_defaults(handler=cmd_delete)

    set_ = sub.add_parser("set", parents=[common], help="set external tags of one customer")
    set_.add_argument("customer_id")
    set_.add_argument("--tag", action="append", required=True, metavar="NAME=VALUE")
    set_.add_argument("--source", required=True, help="who computed them, e.g. campaign")
    set_.add_argument("--request-id", default="")
    set_.set_defaults(handler=cmd_set)

    run = sub.add_parser("run", parents=[common], help="run (or resume) the batch tag job, with a progress bar")
    run.add_argument("--job-id", default="", help="resume this job (default: a new one)")
    run.add_argument("--as-of", default="", help="ISO 8601 time (default now)")
    run.add_argument("--chunk-size", type=_non_negative, default=0, help="100-10000 (default 1000)")
    run.add_argument("--no-wait", action="store_true", help="start it and return")
    run.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser("status", parents=[common], help="the state and progress of a tag job")
    status.add_argument("job_id")
    status.add_argument("--wait", action="store_true", help="follow it until it finishes")
    status.add_argument("--poll", type=float, default=0.5, help=argparse.SUPPRESS)
    status.set_defaults(handler=cmd_status)
