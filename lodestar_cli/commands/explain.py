"""`lodestar explain DECISION`: a stored decision shown to a person, and re-evaluated.

    lodestar explain 3f2a...          # or decisions/3f2a...; --json for the machine-readable form

Shows the customer only as its token, each candidate with its value terms (probability x value - cost), its
risk verdict and reasons, the model versions, the probability with which the action was picked, and the result
of re-computing the ranking from the stored snapshot: "re-evaluated: same result", or the first difference
(exit code 1). Snapshot attribute values are not printed (only their names): they may be personal data.
"""

from __future__ import annotations

import argparse
from typing import Any

from lodestar.campaign.v1 import campaign_service_pb2, campaign_service_pb2_grpc, decision_pb2
from lodestar.common.v1 import common_pb2
from lodestar_cli.main import Context, enum_name, table, to_dict


def _name(ref: str) -> str:
    return ref if ref.startswith("decisions/") else f"decisions/{ref}"


def _candidate_row(c: decision_pb2.DecisionCandidate) -> tuple[object, ...]:
    if c.verdict == "ALLOW":
        terms = f"{c.probability:.4f} x {c.conversion_value:.2f} - {c.contact_cost:.2f} = {c.expected_value:.2f}"
    else:
        terms = "-"
    return (c.rank or "-", c.offer_id, c.verdict, ", ".join(c.risk_reasons) or "-", terms,
            c.model_version or "-", c.basis or "-")


def _data(response: campaign_service_pb2.ExplainDecisionResponse) -> dict[str, Any]:
    data = to_dict(response)
    snapshot = data.get("decision", {}).get("snapshot")
    if snapshot is not None:  # names only: attribute values can be personal data
        snapshot["attributes"] = sorted(response.decision.snapshot.attributes.keys())
    data["reproduced"] = response.reproduced
    return data


def _text(response: campaign_service_pb2.ExplainDecisionResponse) -> str:
    record = response.decision
    ctx = record.context
    when = ctx.decision_time.ToDatetime().isoformat() + "Z" if ctx.HasField("decision_time") else "-"
    snapshot = record.snapshot
    facts = [f"attributes: {', '.join(sorted(snapshot.attributes.keys())) or '-'}",
             f"region {snapshot.region or '-'}", f"time zone {snapshot.time_zone or '-'}",
             f"age {snapshot.age}" if snapshot.HasField("age") else "age unknown"]
    lines = [
        f"decision {record.name}  at {when}  channel {enum_name(common_pb2.Channel, ctx.channel, 'CHANNEL_')}"
        f"  placement {ctx.placement or '-'}  partner {ctx.partner_id or '-'}",
        f"customer {record.customer_token}",
        f"policy {record.policy_version or '-'}; models {record.model_version or '-'}; "
        f"{record.max_offers or '-'} offer(s) requested",
        f"snapshot sha256 {record.snapshot_hash or '-'} ({'; '.join(facts)})",
        f"action probability {record.action_probability:g} (deterministic arg-max ranking)",
        "",
        table([_candidate_row(c) for c in record.candidates],
              ("RANK", "OFFER", "VERDICT", "RISK REASONS", "P x VALUE - COST = EXP. VALUE", "MODEL", "BASIS")),
        "",
    ]
    if response.reproduced:
        lines.append("re-evaluated: same result")
    else:
        d = response.difference
        where = f"offer {d.offer_id}: " if d.offer_id else ""
        lines.append(f"re-evaluated: DIFFERENT — {where}{d.field} recorded {d.recorded}, recomputed {d.recomputed}")
    return "\n".join(lines)


def cmd_explain(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = campaign_service_pb2_grpc.CampaignServiceStub(channel).ExplainDecision(
            campaign_service_pb2.ExplainDecisionRequest(name=_name(ctx.args.decision)), timeout=ctx.timeout)
    ctx.emit(_data(response), _text(response))
    return 0 if response.reproduced else 1


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    explain = commands.add_parser("explain", parents=[common],
                                  help="show a stored decision and re-evaluate it from its snapshot")
    explain.add_argument("decision", help="a decision id or decisions/{id}")
    explain.set_defaults(handler=cmd_explain)
