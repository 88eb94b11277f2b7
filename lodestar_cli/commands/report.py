"""`lodestar report CAMPAIGN`: a campaign's evaluation, as a table, as JSON, or as a self-contained HTML report.

    lodestar report spring                       # funnel and uplift per arm, total effect against the holdout
    lodestar report spring --html spring.html    # the HTML report (charts, tables), one file, no network needed
    lodestar report spring --json                # the report's data (services/campaign/report.py to_json)

Also `lodestar justify-targeting CAMPAIGN --text "..." --actor A`: records why a campaign's targeting may be
disparate (so ApproveCampaign's fairness gate lets it through).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from lodestar.campaign.v1 import campaign_report_pb2, campaign_report_pb2_grpc
from lodestar_cli.main import CliError, Context, table, to_dict


def _name(ref: str) -> str:
    return ref if ref.startswith("campaigns/") else f"campaigns/{ref}"


def _pct(value: Any) -> str:
    return "-" if value is None else f"{100 * float(value):.2f}%"


def _text(data: dict[str, Any]) -> str:
    ev = data["evaluation"]
    rows = [(a["arm_id"] + (" (control)" if a["is_control"] else ""), a["assigned"], a["sent"], a["delivered"],
             a["opened"], a["clicked"], a["converted"], _pct(a["conversion_rate"]), f"{a['revenue']:.2f}")
            for a in ev["arms"]]
    lines = [f"campaign {data['campaign_id']}: {data['title']}", "",
             table(rows, ("ARM", "ASSIGNED", "SENT", "DELIVERED", "OPENED", "CLICKED", "CONVERTED", "CONV.",
                          "REVENUE"))]
    for comparison in ev["comparisons"]:
        conv = comparison["conversion"]
        lines.append(f"arm {comparison['arm_id']} vs {ev['control_arm']}: {100 * conv['difference']:+.2f} points "
                     f"(95% CI {100 * conv['ci_low']:+.2f} to {100 * conv['ci_high']:+.2f}, "
                     f"p = {conv['p_value']:.3g})")
    total = data.get("total_effect")
    lines.append("total effect of marketing: " + (total["summary"] if total else "no global-holdout member yet"))
    for dimension in data.get("fairness") or []:
        flag = "DISPARATE" if dimension["disparate"] else "ok"
        worst = dimension["worst_ratio"]
        lines.append(f"fairness {dimension['dimension']}: {flag} (worst ratio "
                     f"{'-' if worst is None else f'{worst:.2f}'}, threshold {dimension['threshold']:g})")
    lines.extend(f"warning: {w}" for w in ev["warnings"])
    return "\n".join(lines)


def cmd_report(ctx: Context) -> int:
    html_path = Path(ctx.args.html) if ctx.args.html else None
    bar = tqdm(total=2 if html_path else 1, desc="report", unit="step", file=sys.stderr,
               disable=ctx.as_json or not sys.stderr.isatty())
    try:
        with ctx.channel("campaign") as channel:
            response = campaign_report_pb2_grpc.CampaignReportServiceStub(channel).GetCampaignReport(
                campaign_report_pb2.GetCampaignReportRequest(campaign=_name(ctx.args.campaign),
                                                             include_html=html_path is not None),
                timeout=ctx.timeout)
        bar.update(1)
        data = json.loads(response.report_json)
        if html_path is not None:
            try:
                html_path.write_text(response.html, encoding="utf-8")
            except OSError as error:
                raise CliError("INVALID_ARGUMENT", "CANNOT_WRITE_FILE",
                               f"cannot write {html_path}: {error.strerror}") from None
            bar.update(1)
            data["html_file"] = str(html_path)
    finally:
        bar.close()
    text = _text(data) + (f"\nwrote {html_path}" if html_path else "")
    ctx.emit(data, text)
    return 0


def cmd_justify(ctx: Context) -> int:
    with ctx.channel("campaign") as channel:
        response = campaign_report_pb2_grpc.CampaignReportServiceStub(channel).RecordTargetingJustification(
            campaign_report_pb2.RecordTargetingJustificationRequest(
                campaign=_name(ctx.args.campaign), justification=ctx.args.text, actor=ctx.args.actor,
                request_id=ctx.args.request_id or ""), timeout=ctx.timeout)
    j = response.justification
    ctx.emit(to_dict(response), f"{j.campaign}: justification recorded by {j.actor}")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    report = commands.add_parser("report", parents=[common],
                                 help="a campaign's report: funnel, uplift, deciles, trend, fairness, total effect")
    report.add_argument("campaign", help="a campaign id or campaigns/{id}")
    report.add_argument("--html", metavar="FILE", help="also write the self-contained HTML report to FILE")
    report.set_defaults(handler=cmd_report)
    justify = commands.add_parser("justify-targeting", parents=[common],
                                  help="record why a campaign's targeting may be disparate (before approval)")
    justify.add_argument("campaign", help="a campaign id or campaigns/{id}")
    justify.add_argument("--text", required=True, help="the justification, 10 to 2000 characters")
    justify.add_argument("--actor", required=True, help="employee id of who records it")
    justify.add_argument("--request-id", help="idempotency key")
    justify.set_defaults(handler=cmd_justify)
