"""`lodestar triggers set|get`: the trigger of a campaign (docs/triggers.md).

    lodestar triggers set spring --condition 'kind = "transaction" and txn.amount > 5000' --actor maker-1
    lodestar triggers get spring            # the condition and what it has done (firings by outcome)
"""

from __future__ import annotations

import argparse
from typing import Any

from lodestar.campaign.v1 import trigger_pb2, trigger_pb2_grpc
from lodestar_cli.main import Context, to_dict


def _name(ref: str) -> str:
    return ref if ref.startswith("campaigns/") else f"campaigns/{ref}"


def _text(trigger: trigger_pb2.CampaignTrigger) -> str:
    firings = ", ".join(f"{k} {v}" for k, v in sorted(trigger.firings.items())) or "none yet"
    return (f"{trigger.campaign}: {trigger.canonical_condition}\n"
            f"at most one contact per customer every {trigger.dedupe_hours} h; firings: {firings}")


def cmd_set(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = trigger_pb2_grpc.TriggerServiceStub(channel).SetCampaignTrigger(
            trigger_pb2.SetCampaignTriggerRequest(
                trigger=trigger_pb2.CampaignTrigger(campaign=_name(ctx.args.campaign), condition=ctx.args.condition,
                                                    dedupe_hours=ctx.args.dedupe_hours),
                actor=ctx.args.actor, request_id=ctx.args.request_id or ""), timeout=ctx.timeout)
    ctx.emit(to_dict(response), _text(response.trigger))
    return 0


def cmd_get(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = trigger_pb2_grpc.TriggerServiceStub(channel).GetCampaignTrigger(
            trigger_pb2.GetCampaignTriggerRequest(campaign=_name(ctx.args.campaign)), timeout=ctx.timeout)
    ctx.emit(to_dict(response), _text(response.trigger))
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    triggers = commands.add_parser("triggers", help="triggered campaigns: an event fires an offer within seconds")
    sub = triggers.add_subparsers(dest="triggers_command", required=True)
    set_ = sub.add_parser("set", parents=[common], help="set the trigger of a DRAFT campaign")
    set_.add_argument("campaign", help="a campaign id or campaigns/{id}")
    set_.add_argument("--condition", required=True, help="condition over the event, e.g. 'txn.amount > 5000'")
    set_.add_argument("--dedupe-hours", type=int, default=0, help="at most one contact per customer this often "
                                                                   "(default 24)")
    set_.add_argument("--actor", required=True, help="employee id of who sets it")
    set_.add_argument("--request-id", help="idempotency key")
    set_.set_defaults(handler=cmd_set)
    get = sub.add_parser("get", parents=[common], help="a campaign's trigger and its firings")
    get.add_argument("campaign", help="a campaign id or campaigns/{id}")
    get.set_defaults(handler=cmd_get)
