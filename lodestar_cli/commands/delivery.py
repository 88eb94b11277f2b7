"""`lodestar delivery ...`: what the dispatcher did with a launch's outbox (docs/delivery.md).

    lodestar delivery stats LAUNCH [--watch]           # by launch id or campaign id; --watch follows it until drained
    lodestar delivery dead-letters [--launch L] [--channel sms] [--page-size N] [--page-token T]
    lodestar delivery requeue DELIVERY_KEY --actor A   # a dead letter back into the queue, same delivery key
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from tqdm import tqdm

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc
from lodestar.campaign.v1 import delivery_service_pb2 as pb
from lodestar.campaign.v1 import delivery_service_pb2_grpc as pbg
from lodestar.common.v1 import common_pb2
from lodestar_cli.main import Context, table, to_dict

CHANNELS = {"sms": common_pb2.CHANNEL_SMS, "email": common_pb2.CHANNEL_EMAIL, "app_push": common_pb2.CHANNEL_APP_PUSH,
            "wechat": common_pb2.CHANNEL_WECHAT, "phone": common_pb2.CHANNEL_PHONE}
COLUMNS = ("total", "pending", "queued", "deferred", "sending", "sent", "dead", "delivered", "failed", "opened",
           "clicked", "ignored_callbacks", "attempts")


def _launch_name(channel: Any, ref: str, timeout: float) -> str:
    """launches/{id} for a launch id or name; a campaign id (or campaigns/{id}) is resolved through GetLaunch."""
    if ref.startswith("launches/"):
        return ref
    if len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref):
        return f"launches/{ref}"
    name = ref if ref.startswith("campaigns/") else f"campaigns/{ref}"
    launch = campaign_service_pb2_grpc.CampaignServiceStub(channel).GetLaunch(
        campaign_service_pb2.GetLaunchRequest(name=name), timeout=timeout).launch
    return f"launches/{launch.launch_id}"


def _channel_name(value: int) -> str:
    return common_pb2.Channel.Name(value).removeprefix("CHANNEL_").lower()  # type: ignore[arg-type]


def _stats_text(stats: pb.GetDeliveryStatsResponse) -> str:
    rows = [("all", *(getattr(stats.counts, c) for c in COLUMNS))]
    rows += [(_channel_name(ch.channel), *(getattr(ch.counts, c) for c in COLUMNS)) for ch in stats.channels]
    text = f"{stats.launch}\n" + table(rows, ("CHANNEL", *(c.upper() for c in COLUMNS)))
    if stats.dead_by_reason:
        text += "\n\ndead letters by reason:\n" + "\n".join(
            f"  {reason}: {n}" for reason, n in sorted(stats.dead_by_reason.items(), key=lambda kv: -kv[1]))
    return text


def _waiting(counts: pb.DeliveryCounts) -> int:
    return counts.pending + counts.queued + counts.sending


def cmd_stats(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        name = _launch_name(channel, ctx.args.launch, ctx.timeout)
        stub = pbg.DeliveryServiceStub(channel)
        stats = stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(launch=name), timeout=ctx.timeout)
        # --watch: until nothing is due any more (deferred messages wait for their time: the watch stops there).
        if ctx.args.watch and _waiting(stats.counts) - stats.counts.deferred > 0:
            bar = tqdm(total=stats.counts.total, unit="msg", file=sys.stderr, desc="dispatching",
                       disable=ctx.as_json or not sys.stderr.isatty())
            while _waiting(stats.counts) - stats.counts.deferred > 0:
                bar.n = stats.counts.sent + stats.counts.dead
                bar.set_postfix_str(f"dead {stats.counts.dead}, deferred {stats.counts.deferred}")
                bar.refresh()
                time.sleep(ctx.args.interval)
                stats = stub.GetDeliveryStats(pb.GetDeliveryStatsRequest(launch=name), timeout=ctx.timeout)
            bar.n = stats.counts.sent + stats.counts.dead
            bar.close()
    ctx.emit({"stats": to_dict(stats)}, _stats_text(stats))
    return 0


def cmd_dead_letters(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        launch = _launch_name(channel, ctx.args.launch, ctx.timeout) if ctx.args.launch else ""
        response = pbg.DeliveryServiceStub(channel).ListDeadLetters(pb.ListDeadLettersRequest(
            launch=launch, channel=CHANNELS.get(ctx.args.channel or "", 0), page_size=ctx.args.page_size,  # type: ignore[arg-type]
            page_token=ctx.args.page_token), timeout=ctx.timeout)
    rows = [(d.delivery_key, _channel_name(d.channel), d.last_reason, d.attempts,
             d.dead_time.ToDatetime().isoformat(timespec="seconds") if d.HasField("dead_time") else "")
            for d in response.deliveries]
    text = table(rows, ("DELIVERY KEY", "CHANNEL", "REASON", "ATTEMPTS", "DEAD SINCE")) if rows else "no dead letters"
    if response.next_page_token:
        text += f"\n\nnext page: --page-token {response.next_page_token}"
    ctx.emit({"deliveries": [to_dict(d) for d in response.deliveries],
              "next_page_token": response.next_page_token}, text)
    return 0


def cmd_requeue(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = pbg.DeliveryServiceStub(channel).RequeueDeadLetter(pb.RequeueDeadLetterRequest(
            delivery_key=ctx.args.delivery_key, actor=ctx.args.actor,
            request_id=ctx.args.request_id or uuid.uuid4().hex), timeout=ctx.timeout)
    ctx.emit({"delivery": to_dict(response.delivery)}, f"{response.delivery.delivery_key}: requeued, due now")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("delivery", parents=[common], help="dispatch statistics and dead letters")
    sub = group.add_subparsers(dest="delivery_command", required=True, metavar="COMMAND")
    stats = sub.add_parser("stats", parents=[common], help="a launch's deliveries by state and reported status")
    stats.add_argument("launch", help="launch id, launches/ID, or a campaign id")
    stats.add_argument("--watch", action="store_true", help="follow the dispatch until nothing is due, with a bar")
    stats.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    stats.set_defaults(handler=cmd_stats)
    dead = sub.add_parser("dead-letters", parents=[common], help="dead letters, oldest first, with their reasons")
    dead.add_argument("--launch", default="", help="only this launch (launch or campaign id)")
    dead.add_argument("--channel", choices=sorted(CHANNELS), default=None)
    dead.add_argument("--page-size", type=int, default=50)
    dead.add_argument("--page-token", default="")
    dead.set_defaults(handler=cmd_dead_letters)
    requeue = sub.add_parser("requeue", parents=[common], help="put a dead letter back in the queue")
    requeue.add_argument("delivery_key")
    requeue.add_argument("--actor", required=True, help="your employee id")
    requeue.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
    requeue.set_defaults(handler=cmd_requeue)
