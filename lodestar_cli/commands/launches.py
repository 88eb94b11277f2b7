"""`lodestar campaigns launch ...` and `lodestar launches ...`: batch launches and their progress.

    lodestar campaigns launch spring --actor ops-1     # APPROVED/SCHEDULED -> RUNNING, work starts on every replica
    lodestar launches get spring [--watch]             # by campaign id or launch id; --watch follows it to DONE
    lodestar launches outbox LAUNCH_ID [--page-size N]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from typing import Any

from tqdm import tqdm

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, launch_pb2
from lodestar_cli.main import Context, table, to_dict


def _state(value: int) -> str:
    return launch_pb2.LaunchState.Name(value).removeprefix("LAUNCH_STATE_")  # type: ignore[arg-type]


def _name(ref: str) -> str:
    """A launch id (32 hex characters) or a campaign id."""
    if ref.startswith(("launches/", "campaigns/")):
        return ref
    if len(ref) == 32 and all(ch in "0123456789abcdef" for ch in ref):
        return f"launches/{ref}"
    return f"campaigns/{ref}"


def _summary(launch: launch_pb2.Launch) -> str:
    p = launch.progress
    lines = [f"{launch.name}  {_state(launch.state)}  {launch.campaign}  by {launch.actor}",
             f"  partitions {p.partitions_done}/{p.partitions_total}; audience {p.audience_size}; "
             f"processed {p.customers_done} (control {p.control_customers}, candidates {p.candidates}); "
             f"outbox {p.outbox_messages}"]
    if launch.status_message:
        lines.append(f"  waiting: {launch.status_message}")
    if launch.state == launch_pb2.LAUNCH_STATE_DONE:
        r = launch.report
        lines.append(f"  allocation ({r.method}): value {r.objective:.2f}, spend {r.spend:.2f}, "
                     f"expected conversions {r.expected_conversions:.1f}")
        lines += [f"  {c.constraint} binds: {c.step:g} more would add {c.value_gain:.2f} in value, "
                  f"{c.conversions_gain:.1f} conversions" for c in r.constraint_costs]
        lines += [f"  left out by {k}: {v}" for k, v in sorted(r.customers_cut_by.items())]
    return "\n".join(lines)


def cmd_launch(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).LaunchCampaign(
            campaign_service_pb2.LaunchCampaignRequest(name=f"campaigns/{ctx.args.campaign_id}", actor=ctx.args.actor,
                                                       request_id=ctx.args.request_id or uuid.uuid4().hex),
            timeout=ctx.timeout)
    ctx.emit({"launch": to_dict(response.launch)}, _summary(response.launch))
    return 0


def _get(stub: Any, name: str, timeout: float) -> launch_pb2.Launch:
    return stub.GetLaunch(campaign_service_pb2.GetLaunchRequest(name=name), timeout=timeout).launch  # type: ignore[no-any-return]


def cmd_get(ctx: Context) -> int:
    name = _name(ctx.args.launch)
    with ctx.channel("campaign") as channel:
        stub = campaign_service_pb2_grpc.CampaignServiceStub(channel)
        launch = _get(stub, name, ctx.timeout)
        finished = (launch_pb2.LAUNCH_STATE_DONE, launch_pb2.LAUNCH_STATE_CANCELLED)
        if ctx.args.watch and launch.state not in finished:
            show = not ctx.as_json and sys.stderr.isatty()
            bar = tqdm(total=launch.progress.partitions_total or None, unit="partition", file=sys.stderr,
                       disable=not show, desc="selecting")
            while launch.state not in finished:
                time.sleep(ctx.args.interval)
                launch = _get(stub, name, ctx.timeout)
                bar.total = launch.progress.partitions_total or bar.total
                bar.set_description(_state(launch.state).lower())
                bar.n = launch.progress.partitions_done
                if launch.status_message:
                    bar.set_postfix_str(launch.status_message[:60])
                bar.refresh()
            bar.close()
    ctx.emit({"launch": to_dict(launch)}, _summary(launch))
    return 0


def cmd_outbox(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).ListOutbox(
            campaign_service_pb2.ListOutboxRequest(launch=_name(ctx.args.launch_id), page_size=ctx.args.page_size,
                                                   page_token=ctx.args.page_token), timeout=ctx.timeout)
    rows = [(m.customer_id, m.offer_id, m.channel, m.arm_id, f"{m.expected_value:.2f}") for m in response.messages]
    text = table(rows, ("CUSTOMER", "OFFER", "CHANNEL", "ARM", "VALUE"))
    if response.next_page_token:
        text += f"\n\nnext page: --page-token {response.next_page_token}"
    ctx.emit({"messages": [to_dict(m) for m in response.messages], "next_page_token": response.next_page_token},
             text)
    return 0


def _campaigns_subparsers(commands: Any) -> Any:
    """The `campaigns` group's sub-commands (registered before this module: modules load in name order)."""
    parser = commands.choices.get("campaigns")
    if parser is None or parser._subparsers is None:
        return None
    return next((a for a in parser._subparsers._group_actions if isinstance(a, argparse._SubParsersAction)), None)


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    campaigns = _campaigns_subparsers(commands)
    if campaigns is not None:
        launch = campaigns.add_parser("launch", parents=[common], help="launch an approved campaign as a batch")
        launch.add_argument("campaign_id")
        launch.add_argument("--actor", required=True, help="your employee id")
        launch.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
        launch.set_defaults(handler=cmd_launch)

    group = commands.add_parser("launches", parents=[common], help="batch launches and their outbox")
    sub = group.add_subparsers(dest="launches_command", required=True, metavar="COMMAND")
    get = sub.add_parser("get", parents=[common], help="a launch's state and progress (by launch or campaign id)")
    get.add_argument("launch")
    get.add_argument("--watch", action="store_true", help="follow it until DONE, with a progress bar")
    get.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    get.set_defaults(handler=cmd_get)
    outbox = sub.add_parser("outbox", parents=[common], help="the outbox rows of a launch")
    outbox.add_argument("launch_id")
    outbox.add_argument("--page-size", type=int, default=50)
    outbox.add_argument("--page-token", default="")
    outbox.set_defaults(handler=cmd_outbox)
