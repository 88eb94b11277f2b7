"""`lodestar campaigns ...`: create campaigns from a YAML/JSON file and move them through their lifecycle.

    lodestar campaigns create spring.yaml --actor maker-1
    lodestar campaigns submit spring --actor maker-1
    lodestar campaigns approve spring --actor checker-2      # a second person (maker-checker)
    lodestar campaigns get spring | list [--state draft]

The file holds the Campaign message's fields (see protos/lodestar/campaign/v1/campaign.proto), e.g.

    campaign_id: spring
    display_name: Spring savings
    segment: segments/young-savers
    offer_ids: [deposit-12m]
    channels: [CHANNEL_SMS, CHANNEL_EMAIL]
    start_time: "2026-12-01T00:00:00Z"
    control_share: 0.1
    arms: [{arm_id: a, share: 0.9, content: "Save more this winter."}]
"""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from lodestar.campaign.v1 import campaign_pb2, campaign_service_pb2, campaign_service_pb2_grpc
from lodestar_cli.main import CliError, Context, table, to_dict

_TRANSITIONS = {
    # command: (RPC, request class, needs a reason)
    "submit": ("SubmitCampaign", campaign_service_pb2.SubmitCampaignRequest, False),
    "approve": ("ApproveCampaign", campaign_service_pb2.ApproveCampaignRequest, False),
    "reject": ("RejectCampaign", campaign_service_pb2.RejectCampaignRequest, True),
    "schedule": ("ScheduleCampaign", campaign_service_pb2.ScheduleCampaignRequest, False),
    "pause": ("PauseCampaign", campaign_service_pb2.PauseCampaignRequest, False),
    "resume": ("ResumeCampaign", campaign_service_pb2.ResumeCampaignRequest, False),
    "complete": ("CompleteCampaign", campaign_service_pb2.CompleteCampaignRequest, False),
    "cancel": ("CancelCampaign", campaign_service_pb2.CancelCampaignRequest, False),
}


def _state(value: int) -> str:
    return campaign_pb2.CampaignState.Name(value).removeprefix("CAMPAIGN_STATE_")  # type: ignore[arg-type]


def _summary(campaign: campaign_pb2.Campaign) -> str:
    lines = [
        f"{campaign.name}  {_state(campaign.state)}  etag {campaign.etag}",
        f"  {campaign.display_name}",
        f"  maker {campaign.created_by or '-'}, checker {campaign.approved_by or '-'}",
        f"  segment {campaign.segment or '-'}; offers {', '.join(campaign.offer_ids) or '-'}; "
        f"budget {campaign.budget:.2f}; control {campaign.control_share:.0%}",
    ]
    lines += [f"  arm {a.arm_id} {a.share:.0%}: {a.content}" for a in campaign.arms]
    lines += [f"  {h.change_time.ToJsonString()} {_state(h.from_state)} -> {_state(h.to_state)} by {h.actor}"
              + (f" ({h.reason})" if h.reason else "") for h in campaign.history]
    return "\n".join(lines)


def _load(path: str) -> campaign_pb2.Campaign:
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise CliError("INVALID_ARGUMENT", "CAMPAIGN_FILE_UNREADABLE", f"{path}: {error}") from None
    if not isinstance(data, dict):
        raise CliError("INVALID_ARGUMENT", "CAMPAIGN_FILE_UNREADABLE", f"{path}: expected a mapping of fields")
    try:
        return json_format.ParseDict(json.loads(json.dumps(data, default=str)), campaign_pb2.Campaign())
    except json_format.ParseError as error:
        raise CliError("INVALID_ARGUMENT", "CAMPAIGN_FILE_INVALID", f"{path}: {error}") from None


def cmd_create(ctx: Context) -> int:
    campaign = _load(ctx.args.file)
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).CreateCampaign(
            campaign_service_pb2.CreateCampaignRequest(campaign=campaign, actor=ctx.args.actor,
                                                       request_id=ctx.args.request_id or uuid.uuid4().hex),
            timeout=ctx.timeout)
    ctx.emit({"campaign": to_dict(response.campaign)}, _summary(response.campaign))
    return 0


def cmd_get(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).GetCampaign(
            campaign_service_pb2.GetCampaignRequest(name=f"campaigns/{ctx.args.campaign_id}"), timeout=ctx.timeout)
    ctx.emit({"campaign": to_dict(response.campaign)}, _summary(response.campaign))
    return 0


def cmd_list(ctx: Context) -> int:
    state = campaign_pb2.CampaignState.Value(f"CAMPAIGN_STATE_{ctx.args.state.upper()}") if ctx.args.state else 0
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).ListCampaigns(
            campaign_service_pb2.ListCampaignsRequest(page_size=ctx.args.page_size, page_token=ctx.args.page_token,
                                                      state=state),  # type: ignore[arg-type]
            timeout=ctx.timeout)
    rows = [(c.campaign_id, _state(c.state), c.created_by, c.approved_by or "-", c.display_name)
            for c in response.campaigns]
    text = table(rows, ("CAMPAIGN", "STATE", "MAKER", "CHECKER", "NAME"))
    if response.next_page_token:
        text += f"\n\nnext page: --page-token {response.next_page_token}"
    ctx.emit({"campaigns": [to_dict(c) for c in response.campaigns],
              "next_page_token": response.next_page_token}, text)
    return 0


def _transition(command: str) -> Any:
    rpc, request_class, needs_reason = _TRANSITIONS[command]

    def handler(ctx: Context) -> int:
        fields: dict[str, Any] = {"name": f"campaigns/{ctx.args.campaign_id}", "actor": ctx.args.actor,
                                  "etag": ctx.args.etag, "request_id": ctx.args.request_id or uuid.uuid4().hex}
        if "reason" in request_class.DESCRIPTOR.fields_by_name:
            fields["reason"] = ctx.args.reason
        with ctx.channel("campaign") as channel:
            stub = campaign_service_pb2_grpc.CampaignServiceStub(channel)
            response = getattr(stub, rpc)(request_class(**fields), timeout=ctx.timeout)
        ctx.emit({"campaign": to_dict(response.campaign)}, _summary(response.campaign))
        return 0

    handler.__doc__ = f"{command}: {rpc}" + (" (reason required)" if needs_reason else "")
    return handler


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("campaigns", parents=[common], help="campaigns and their lifecycle")
    sub = group.add_subparsers(dest="campaigns_command", required=True, metavar="COMMAND")

    create = sub.add_parser("create", parents=[common], help="create a DRAFT campaign from a YAML/JSON file")
    create.add_argument("file")
    create.add_argument("--actor", required=True, help="your employee id (the maker)")
    create.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
    create.set_defaults(handler=cmd_create)

    get = sub.add_parser("get", parents=[common], help="one campaign with its history")
    get.add_argument("campaign_id")
    get.set_defaults(handler=cmd_get)

    listing = sub.add_parser("list", parents=[common], help="campaigns ordered by id")
    listing.add_argument("--state", choices=[s.lower() for s in ("draft", "submitted", "approved", "scheduled",
                                                                 "running", "paused", "completed", "cancelled")])
    listing.add_argument("--page-size", type=int, default=50)
    listing.add_argument("--page-token", default="")
    listing.set_defaults(handler=cmd_list)

    for command, (rpc, _request, needs_reason) in _TRANSITIONS.items():
        parser = sub.add_parser(command, parents=[common], help=f"{rpc}")
        parser.add_argument("campaign_id")
        parser.add_argument("--actor", required=True, help="your employee id")
        parser.add_argument("--etag", default="", help="fail with ABORTED if the campaign changed since")
        parser.add_argument("--reason", default="", required=needs_reason)
        parser.add_argument("--request-id", default="", help="idempotency key (default: a new one)")
        parser.set_defaults(handler=_transition(command))
