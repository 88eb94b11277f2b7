"""A campaign's report assembled from its own data (GetCampaignReport, `lodestar report`), and the targeting
justifications the fairness gate honours. Owns its transactions; imports no grpc.

Where each number comes from (docs/triggers.md, "Reports"):
- assigned per group: the batch launch's partition results (every member's group: an arm, control, or the global
  holdout) plus the trigger firings (FIRED by the outbox row's arm, CONTROL, GLOBAL_HOLDOUT);
- sent: outbox rows of the campaign (its launch and its triggers) — the dispatcher's SENT deliveries once it has
  any; delivered: deliveries with a DELIVERED status (or opened/clicked); with no delivery status yet, sent;
- opened, clicked, converted and revenue: responses.outcome_counts (each customer once per outcome), revenue_sq
  from the CONVERTED rows; cost: the contact cost of each offer sent;
- deciles: the contacted customers' allocation probability against their conversion; the daily trend: outbox
  rows per creation day and conversions per response day;
- fairness: the audience's members by age band, gender and region tier from profile (composition_client), with
  targeted = contacted, and uplift per group from treatment/control conversions;
- total effect of marketing: everyone assigned in the campaign outside the global holdout against its members.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from html import escape
from typing import Any

import numpy as np
from sqlalchemy import func, select

from services.campaign import evaluation as ev
from services.campaign.batch_decisions import ALLOCATION_NUMBER
from services.campaign.batch_decisions import unpack as unpack_decisions
from services.campaign.composition_client import ProfileComposition
from services.campaign.db import (
    BatchDecisionRow,
    CampaignUnitOfWork,
    DeliveryRow,
    LaunchRow,
    OutboxRow,
    ResponseRow,
    TargetingJustificationRow,
    TriggerFiringRow,
)
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import DRAFT, SUBMITTED, Campaign
from services.campaign.fairness_gate import DEFAULT_THRESHOLD
from services.campaign.report import DailyPoint, ReportData, render_html, to_json
from services.campaign.responses import CONTROL, GLOBAL_HOLDOUT, group_name, launch_members, outcome_counts
from services.campaign.triggers import CONTROL as FIRING_CONTROL
from services.campaign.triggers import FIRED, trigger_launch_id
from services.campaign.triggers import HOLDOUT as FIRING_HOLDOUT
from services.platform.db import utcnow
from services.platform.errors import DomainError, FailedPrecondition, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent

log = logging.getLogger("lodestar.campaign.report")
# The Qini curve reads every member's decision record: above this audience it is left out of the report.
QINI_MAX_MEMBERS = 500_000


@dataclass(frozen=True)
class JustificationView:
    campaign_id: str
    justification: str
    actor: str
    record_time: datetime


JUSTIFICATION_CODEC = Codec(
    encode=lambda v: json.dumps([v.campaign_id, v.justification, v.actor, v.record_time.isoformat()]).encode(),
    decode=lambda raw: (lambda d: JustificationView(d[0], d[1], d[2], datetime.fromisoformat(d[3])))(
        json.loads(raw)),
)


@dataclass(frozen=True)
class CampaignReport:
    data: ReportData
    total_effect: dict[str, Any] | None

    def to_json(self) -> str:
        payload = json.loads(to_json(self.data))
        payload["total_effect"] = self.total_effect
        return json.dumps(payload, indent=2, sort_keys=True, allow_nan=False)

    def to_html(self) -> str:
        html = render_html(self.data)
        return html.replace("</body>", _total_effect_html(self.total_effect) + "</body>", 1)


def _total_effect_html(total: dict[str, Any] | None) -> str:
    title = "<h2>Total effect of marketing (against the global holdout)</h2>"
    if total is None:
        return (f"<section id=\"total-effect\">{title}<p>No member of the global holdout is in this campaign's "
                f"audience yet.</p></section>")

    def pct(v: float | None) -> str:
        return "—" if v is None else f"{100 * v:.2f}%"

    return (f"<section id=\"total-effect\">{title}<table><thead><tr><th>group</th><th>customers</th>"
            f"<th>converted</th><th>rate</th></tr></thead><tbody>"
            f"<tr><td>marketed (arms and control)</td><td>{total['marketed']}</td>"
            f"<td>{total['marketed_converted']}</td><td>{pct(total['marketed_rate'])}</td></tr>"
            f"<tr><td>global holdout</td><td>{total['holdout']}</td><td>{total['holdout_converted']}</td>"
            f"<td>{pct(total['holdout_rate'])}</td></tr></tbody></table>"
            f"<p>{escape(total['summary'])}</p></section>")


def _monotone(sent: int, delivered: int, opened: int, clicked: int) -> tuple[int, int, int, bool]:
    """The funnel made consistent (a response can arrive without its delivery status): delivered at least what
    was opened or clicked, nothing above what was sent."""
    d2 = min(sent, max(delivered, opened, clicked))
    o2 = min(d2, max(opened, clicked))
    c2 = min(o2, clicked)
    return d2, o2, c2, (d2, o2, c2) != (delivered, opened, clicked)


class CampaignReports:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], composition: ProfileComposition | None = None,
                 *, threshold: float = DEFAULT_THRESHOLD, clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.composition = composition
        self.threshold = threshold
        self.clock = clock

    async def record_justification(self, campaign_id: str, justification: str, actor: str,
                                   key: IdempotencyKey | None) -> JustificationView:
        async def write(uow: CampaignUnitOfWork) -> JustificationView:
            campaign = await uow.campaigns.get(campaign_id, for_update=True)
            if campaign is None:
                raise NotFound("campaign", f"campaigns/{campaign_id}")
            if campaign.state not in (DRAFT, SUBMITTED):
                raise FailedPrecondition("CAMPAIGN_NOT_EDITABLE", f"a justification is recorded before approval; "
                                                                  f"this campaign is {campaign.state}",
                                         metadata={"state": campaign.state})
            now = self.clock()
            row = await uow.session.get(TargetingJustificationRow, campaign_id)
            if row is None:
                row = TargetingJustificationRow(campaign_id=campaign_id)
                uow.session.add(row)
            row.justification, row.actor, row.record_time = justification, actor, now
            await uow.session.flush()
            return JustificationView(campaign_id, justification, actor, now)

        view = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, JUSTIFICATION_CODEC, write)
        log.info("campaigns/%s: targeting justification recorded by %s", campaign_id, actor)
        return view

    async def build(self, campaign_id: str) -> CampaignReport:
        async with self.uow_factory() as uow:
            campaign = await uow.campaigns.get(campaign_id)
            if campaign is None:
                raise NotFound("campaign", f"campaigns/{campaign_id}")
            return await self._build(uow, campaign)

    async def _build(self, uow: CampaignUnitOfWork, campaign: Campaign) -> CampaignReport:
        cid = campaign.campaign_id
        arm_ids = [a.arm_id for a in campaign.arms]
        warnings: list[str] = []
        launch = await uow.session.scalar(select(LaunchRow).where(LaunchRow.campaign_id == cid))
        launch_ids = [trigger_launch_id(cid)] + ([launch.launch_id] if launch is not None else [])
        # Groups: every member of the batch launch, then the trigger firings.
        member_ids, member_groups = np.zeros(0, dtype=str), np.zeros(0, dtype=np.int16)
        if launch is not None:
            member_ids, member_groups, _ = await launch_members(uow, launch.launch_id, done=launch.state == "DONE")
        assigned: Counter[str] = Counter(group_name(int(g), arm_ids) for g in member_groups.tolist())
        for outcome, n in (await uow.session.execute(
                select(TriggerFiringRow.outcome, func.count()).where(TriggerFiringRow.campaign_id == cid)
                .group_by(TriggerFiringRow.outcome))).tuples():
            if outcome == FIRING_CONTROL:
                assigned[CONTROL] += int(n)
            elif outcome == FIRING_HOLDOUT:
                assigned[GLOBAL_HOLDOUT] += int(n)
        outbox = list((await uow.session.execute(
            select(OutboxRow.customer_id, OutboxRow.arm_id, OutboxRow.offer_id, OutboxRow.probability,
                   OutboxRow.create_time, OutboxRow.delivery_key).where(OutboxRow.launch_id.in_(launch_ids)))).all())
        trigger_fired = {str(k) for k in await uow.session.scalars(select(TriggerFiringRow.delivery_key).where(
            TriggerFiringRow.campaign_id == cid, TriggerFiringRow.outcome == FIRED))}
        for row in outbox:
            if row.delivery_key in trigger_fired:
                assigned[row.arm_id] += 1
        deliveries = {r.delivery_key: r for r in await uow.session.scalars(
            select(DeliveryRow).where(DeliveryRow.launch_id.in_(launch_ids)))}
        costs = {o: (await uow.offers.get(o)) for o in {r.offer_id for r in outbox}}
        sent: Counter[str] = Counter()
        delivered: Counter[str] = Counter()
        cost: defaultdict[str, float] = defaultdict(float)
        daily_sent: Counter[tuple[date, str]] = Counter()
        for row in outbox:
            d = deliveries.get(row.delivery_key)
            if deliveries and (d is None or d.state != "SENT"):
                continue
            sent[row.arm_id] += 1
            offer = costs.get(row.offer_id)
            cost[row.arm_id] += offer.contact_cost if offer else 0.0
            daily_sent[(row.create_time.date(), row.arm_id)] += 1
            if d is None or d.delivery_status == "DELIVERED" or d.opened_time or d.clicked_time:
                delivered[row.arm_id] += 1
        if not deliveries and outbox:
            warnings.append("no delivery status yet: every outbox message is counted as sent and delivered")
        outcomes: defaultdict[tuple[str, str], int] = defaultdict(int)
        revenue: defaultdict[str, float] = defaultdict(float)
        daily_conv: Counter[tuple[date, str]] = Counter()
        daily_rev: defaultdict[tuple[date, str], float] = defaultdict(float)
        for oc in await outcome_counts(uow, cid):
            outcomes[(oc.arm_id, oc.outcome)] += oc.customers
            if oc.outcome == "CONVERTED":
                revenue[oc.arm_id] += oc.revenue
                daily_conv[(date.fromisoformat(oc.day), oc.arm_id)] += oc.customers
                daily_rev[(date.fromisoformat(oc.day), oc.arm_id)] += oc.revenue
        revenue_sq = {str(a): float(v or 0.0) for a, v in (await uow.session.execute(
            select(ResponseRow.arm_id, func.sum(ResponseRow.revenue * ResponseRow.revenue))
            .where(ResponseRow.campaign_id == cid, ResponseRow.outcome == "CONVERTED")
            .group_by(ResponseRow.arm_id))).tuples()}
        converted_customers = set(await uow.session.scalars(select(ResponseRow.customer_id).where(
            ResponseRow.campaign_id == cid, ResponseRow.outcome == "CONVERTED")))

        arms: list[ev.ArmCounts] = []
        fixed = campaign.arm_selection != "THOMPSON_SAMPLING"
        for arm_id, share, is_control in [*((a.arm_id, a.share, False) for a in campaign.arms),
                                          (CONTROL, campaign.control_share, True)]:
            n = assigned.get(arm_id, 0)
            s = min(sent.get(arm_id, 0), n)
            d2, o2, c2, clamped = _monotone(s, delivered.get(arm_id, 0), outcomes.get((arm_id, "OPENED"), 0),
                                            outcomes.get((arm_id, "CLICKED"), 0))
            if clamped:
                warnings.append(f"arm {arm_id}: responses without a delivery status; the funnel counts them "
                                f"as delivered")
            arms.append(ev.ArmCounts(
                arm_id=arm_id, assigned=n, sent=s, delivered=d2, opened=o2, clicked=c2,
                converted=min(outcomes.get((arm_id, "CONVERTED"), 0), n), revenue=revenue.get(arm_id, 0.0),
                cost=cost.get(arm_id, 0.0), is_control=is_control, revenue_sq=revenue_sq.get(arm_id, 0.0),
                planned_share=share if fixed and share > 0 else None))
        control = arms[-1]
        if control.assigned > 0 and any(a.assigned > 0 for a in arms[:-1]):
            evaluation = ev.evaluate_campaign(cid, arms)
            evaluation.warnings.extend(warnings)
        else:
            metrics = [ev.arm_metrics(a) for a in arms]
            totals = ev.arm_metrics(ev.ArmCounts("total", sum(a.assigned for a in arms), sum(a.sent for a in arms),
                                                 sum(a.delivered for a in arms), sum(a.opened for a in arms),
                                                 sum(a.clicked for a in arms), sum(a.converted for a in arms),
                                                 sum(a.revenue for a in arms), sum(a.cost for a in arms)))
            warnings.append("no control group (or no treated customer) yet: uplift cannot be measured")
            evaluation = ev.CampaignEvaluation(cid, CONTROL, metrics, totals, [], None, warnings)

        contacted = [(r.customer_id, r.probability) for r in outbox]
        deciles = None
        if len(contacted) >= 10 and converted_customers:
            deciles = ev.gain_lift_by_decile([p for _, p in contacted],
                                             [int(c in converted_customers) for c, _ in contacted])
        qini = await self._qini(uow, launch, converted_customers, evaluation.warnings)
        days = sorted({k for k in daily_sent} | {k for k in daily_conv})
        daily = [DailyPoint(day=d, arm_id=a, sent=daily_sent.get((d, a), 0), delivered=0,
                            converted=daily_conv.get((d, a), 0), revenue=daily_rev.get((d, a), 0.0))
                 for d, a in days]
        fairness = await self._fairness(campaign, launch, member_ids, member_groups,
                                         {c for c, _ in contacted}, converted_customers, evaluation.warnings)
        data = ReportData(campaign_id=cid, title=campaign.display_name or cid,
                          generated_at=self.clock().isoformat(), evaluation=evaluation, deciles=deciles, qini=qini,
                          daily=daily, fairness=fairness)
        return CampaignReport(data, self._total_effect(arms, assigned.get(GLOBAL_HOLDOUT, 0),
                                                       outcomes.get((GLOBAL_HOLDOUT, "CONVERTED"), 0)))

    async def _qini(self, uow: CampaignUnitOfWork, launch: LaunchRow | None, converted: set[str],
                    warnings: list[str]) -> ev.QiniCurve | None:
        """The Qini curve over the launch's treated and control members, scored by their best offer's probability
        as the batch decision records hold it (control members are scored too)."""
        if launch is None or launch.audience_size > QINI_MAX_MEMBERS:
            return None
        scores: list[float] = []
        treated: list[int] = []
        outcomes: list[int] = []
        for raw in await uow.session.scalars(select(BatchDecisionRow.records).where(
                BatchDecisionRow.launch_id == launch.launch_id, BatchDecisionRow.number > ALLOCATION_NUMBER)):
            doc = unpack_decisions(raw, snapshot=False)
            for customer, group, probabilities in zip(doc["ids"], doc["groups"], doc["probability"], strict=True):
                known = [float(p) for p in probabilities if p is not None and math.isfinite(p)]
                if group == -2 or not known:
                    continue
                scores.append(max(known))
                treated.append(int(group >= 0))
                outcomes.append(int(customer in converted))
        if not scores or all(treated) or not any(treated) or not any(outcomes):
            return None
        try:
            return ev.qini_curve(scores, treated, outcomes)
        except ev.EvaluationError as error:
            warnings.append(f"Qini curve not drawn: {error}")
            return None

    @staticmethod
    def _total_effect(arms: list[ev.ArmCounts], holdout_n: int, holdout_converted: int) -> dict[str, Any] | None:
        marketed_n = sum(a.assigned for a in arms)
        marketed_converted = sum(a.converted for a in arms)
        if holdout_n <= 0 or marketed_n <= 0:
            return None
        uplift = ev.proportion_uplift(marketed_converted, marketed_n, min(holdout_converted, holdout_n), holdout_n)
        significant = uplift.p_value < uplift.alpha
        summary = (f"Customers this campaign could reach converted at {100 * uplift.treatment_rate:.2f}% against "
                   f"{100 * uplift.control_rate:.2f}% in the global holdout: a difference of "
                   f"{100 * uplift.difference:+.2f} points (95% CI {100 * uplift.ci_low:+.2f} to "
                   f"{100 * uplift.ci_high:+.2f}), {'significant' if significant else 'not significant'} "
                   f"(p = {uplift.p_value:.3g}).")
        return {"marketed": marketed_n, "marketed_converted": marketed_converted,
                "marketed_rate": uplift.treatment_rate, "holdout": holdout_n,
                "holdout_converted": min(holdout_converted, holdout_n), "holdout_rate": uplift.control_rate,
                "difference": uplift.difference, "ci_low": uplift.ci_low, "ci_high": uplift.ci_high,
                "p_value": uplift.p_value, "significant": significant, "summary": summary}

    async def _fairness(self, campaign: Campaign, launch: LaunchRow | None, member_ids: np.ndarray,
                        member_groups: np.ndarray, contacted: set[str], converted: set[str],
                        warnings: list[str]) -> list[ev.FairnessDimension]:
        if self.composition is None or launch is None or not len(member_ids):
            return []
        try:
            ids, dims = await self.composition.members(campaign.segment, launch.as_of)
        except DomainError as error:
            warnings.append(f"fairness not computed: profile answered {error.reason}")
            return []
        group_of = {str(c): int(g) for c, g in zip(member_ids, member_groups, strict=True)}
        out = []
        for dimension, values in dims.items():
            counts: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
            for customer, value in zip(ids, values, strict=True):
                group = group_of.get(customer)
                if group is None or group == -2:
                    continue
                c = counts[value]
                c[0] += 1
                c[1] += customer in contacted
                if group >= 0:
                    c[2] += 1
                    c[3] += customer in converted
                else:
                    c[4] += 1
                    c[5] += customer in converted
            groups = [ev.GroupCounts(g, *c) for g, c in sorted(counts.items())]
            if groups:
                out.append(ev.fairness(dimension, groups, threshold=self.threshold))
        return out

