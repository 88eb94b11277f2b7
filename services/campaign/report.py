"""The campaign report: one self-contained HTML file (inline CSS, inline SVG charts drawn here, no JavaScript, no
external fonts or CDNs) and the same data as JSON.

``render_html(report_data)`` shows, in this order: warnings (sample-ratio mismatch, peeking), a summary with a
plain-language verdict per arm, the funnel per arm, uplift with intervals (forest plot), cumulative gain and
lift by decile, the Qini curve, the daily trend and the fairness table, each chart beside a table of its
numbers. Every chart is an ``<svg>`` with a stable ``id`` (``chart-funnel``, ``chart-forest``, ``chart-gain``,
``chart-lift``, ``chart-qini``, ``chart-trend``) and a ``<title>``, so it is testable and read out by screen
readers. Nothing here reads personal data: the report holds aggregates only.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from html import escape
from typing import Any

from services.campaign.evaluation import CampaignEvaluation, DecilePoint, FairnessDimension, QiniCurve

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in greyscale print.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
CONTROL_COLOUR = "#7f7f7f"


@dataclass(frozen=True)
class DailyPoint:
    day: date
    arm_id: str
    sent: int = 0
    delivered: int = 0
    converted: int = 0
    revenue: float = 0.0


@dataclass(frozen=True)
class ReportData:
    campaign_id: str
    title: str
    generated_at: str  # ISO 8601, UTC
    evaluation: CampaignEvaluation
    deciles: list[DecilePoint] | None = None
    qini: QiniCurve | None = None
    daily: list[DailyPoint] = field(default_factory=list)
    fairness: list[FairnessDimension] = field(default_factory=list)
    currency: str = "CNY"


# --- formatting ---------------------------------------------------------------------------------------------

def _pct(v: float | None, digits: int = 1) -> str:
    return "—" if v is None else f"{v * 100:.{digits}f}%"


def _pp(v: float | None) -> str:
    """A difference of two rates, in percentage points with its sign."""
    return "—" if v is None else f"{v * 100:+.2f} pp"


def _num(v: float | None, digits: int = 0) -> str:
    return "—" if v is None else f"{v:,.{digits}f}"


def _money(v: float | None, currency: str) -> str:
    return "—" if v is None else f"{v:,.2f} {currency}"


def _p(v: float | None) -> str:
    if v is None:
        return "—"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _ratio(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


# --- SVG primitives -----------------------------------------------------------------------------------------

W, H = 560, 300
ML, MR, MT, MB = 64, 16, 36, 48  # margins: left, right, top, bottom


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for step in (1, 2, 2.5, 5, 10):
        if v <= step * exp:
            return step * exp
    return 10 * exp


def _svg_open(chart_id: str, title: str, desc: str, height: int = H) -> list[str]:
    return [f'<svg id="{escape(chart_id)}" class="chart" role="img" viewBox="0 0 {W} {height}" '
            f'width="{W}" height="{height}" xmlns="http://www.w3.org/2000/svg" '
            f'aria-labelledby="{escape(chart_id)}-title">',
            f'<title id="{escape(chart_id)}-title">{escape(title)}</title><desc>{escape(desc)}</desc>',
            f'<text x="{W / 2}" y="20" class="ctitle" text-anchor="middle">{escape(title)}</text>']


def _y_axis(lo: float, hi: float, fmt: Callable[[float], str], label: str, height: int = H) -> list[str]:
    out = []
    plot_h = height - MT - MB
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        y = MT + plot_h - plot_h * i / 4
        out.append(f'<line x1="{ML}" x2="{W - MR}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{ML - 6}" y="{y + 4:.1f}" text-anchor="end" class="tick">{escape(fmt(v))}</text>')
    out.append(f'<text transform="translate(14 {MT + plot_h / 2}) rotate(-90)" text-anchor="middle" '
               f'class="axis">{escape(label)}</text>')
    return out


def _legend(names: Sequence[str], colours: Sequence[str], y: float) -> list[str]:
    out, x = [], float(ML)
    for name, colour in zip(names, colours, strict=True):
        out.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{x + 14:.1f}" y="{y:.1f}" class="tick">{escape(name)}</text>')
        x += 24 + 7 * len(name)
    return out


def bar_chart(chart_id: str, title: str, categories: Sequence[str], series: dict[str, list[float | None]],
              colours: Sequence[str], *, y_label: str, fmt: Callable[[float], str]) -> str:
    """Grouped vertical bars: one group per category, one bar per series; the value is printed on each bar."""
    values = [v for vs in series.values() for v in vs if v is not None]
    top = _nice_max(max(values, default=0.0))
    plot_w, plot_h = W - ML - MR, H - MT - MB - 16
    out = _svg_open(chart_id, title, f"{y_label} by {', '.join(categories)}")
    out += _y_axis(0, top, fmt, y_label, H - 16)
    group_w = plot_w / max(1, len(categories))
    bar_w = min(36.0, group_w * 0.8 / max(1, len(series)))
    for ci, cat in enumerate(categories):
        gx = ML + group_w * ci + (group_w - bar_w * len(series)) / 2
        for si, (name, vs) in enumerate(series.items()):
            v = vs[ci]
            if v is None:
                continue
            h = plot_h * v / top
            x, y = gx + si * bar_w, MT + plot_h - h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar_w - 2:.1f}" height="{h:.1f}" '
                       f'fill="{colours[si]}"><title>{escape(name)} · {escape(cat)}: {escape(fmt(v))}</title></rect>')
            if bar_w >= 28:  # room for the label; the table beside the chart has every number
                out.append(f'<text x="{x + bar_w / 2 - 1:.1f}" y="{y - 3:.1f}" text-anchor="middle" '
                           f'class="val">{escape(fmt(v))}</text>')
        out.append(f'<text x="{ML + group_w * (ci + 0.5):.1f}" y="{MT + plot_h + 16}" text-anchor="middle" '
                   f'class="tick">{escape(cat)}</text>')
    out += _legend(list(series), colours[:len(series)], H - 8)
    out.append("</svg>")
    return "".join(out)


def line_chart(chart_id: str, title: str, series: dict[str, list[tuple[float, float]]], colours: Sequence[str],
               *, x_label: str, y_label: str, fmt_x: Callable[[float], str], fmt_y: Callable[[float], str],
               dashed: Sequence[str] = (), x_ticks: Sequence[tuple[float, str]] | None = None) -> str:
    """Lines with point markers; series named in ``dashed`` are drawn dashed (reference lines)."""
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x_lo, x_hi = (min(xs), max(xs)) if xs else (0.0, 1.0)
    if x_hi == x_lo:
        x_hi = x_lo + 1
    y_lo = min(0.0, min(ys, default=0.0))
    y_hi = _nice_max(max(ys, default=1.0))
    if y_lo < 0:
        y_lo = -_nice_max(-y_lo)
    plot_w, plot_h = W - ML - MR, H - MT - MB - 16

    def px(x: float) -> float:
        return ML + plot_w * (x - x_lo) / (x_hi - x_lo)

    def py(y: float) -> float:
        return MT + plot_h - plot_h * (y - y_lo) / (y_hi - y_lo)

    out = _svg_open(chart_id, title, f"{y_label} against {x_label}")
    out += _y_axis(y_lo, y_hi, fmt_y, y_label, H - 16)
    ticks = x_ticks if x_ticks is not None else [(x_lo + (x_hi - x_lo) * i / 5, "") for i in range(6)]
    for x, label in ticks:
        text = label or fmt_x(x)
        out.append(f'<text x="{px(x):.1f}" y="{MT + plot_h + 16}" text-anchor="middle" class="tick">'
                   f'{escape(text)}</text>')
    out.append(f'<text x="{ML + plot_w / 2}" y="{MT + plot_h + 32}" text-anchor="middle" class="axis">'
               f'{escape(x_label)}</text>')
    for (name, pts), colour in zip(series.items(), colours, strict=False):
        if not pts:
            continue
        path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        dash = ' stroke-dasharray="6 4"' if name in dashed else ""
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2.5"{dash}>'
                   f'<title>{escape(name)}</title></polyline>')
        if name not in dashed:
            for x, y in pts:
                out.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{colour}">'
                           f'<title>{escape(name)}: {escape(fmt_x(x))}, {escape(fmt_y(y))}</title></circle>')
    out += _legend(list(series), list(colours[:len(series)]), H - 4)
    out.append("</svg>")
    return "".join(out)


def forest_plot(chart_id: str, title: str, rows: Sequence[tuple[str, float, float, float, bool]],
                *, fmt: Callable[[float], str], x_label: str) -> str:
    """One row per comparison: the estimate as a square, its interval as a line, a dashed line at zero.
    Rows whose interval excludes zero are drawn filled, the others hollow."""
    height = MT + 40 * max(1, len(rows)) + 50
    lo = min([r[2] for r in rows] + [0.0])
    hi = max([r[3] for r in rows] + [0.0])
    pad = (hi - lo) * 0.1 or 0.01
    lo, hi = lo - pad, hi + pad
    left = 120
    plot_w = W - left - MR

    def px(x: float) -> float:
        return left + plot_w * (x - lo) / (hi - lo)

    out = _svg_open(chart_id, title, f"{x_label} with 95% confidence intervals", height)
    bottom = MT + 40 * max(1, len(rows))
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        out.append(f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{MT}" y2="{bottom}" class="grid"/>')
        out.append(f'<text x="{px(v):.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">'
                   f'{escape(fmt(v))}</text>')
    out.append(f'<line x1="{px(0):.1f}" x2="{px(0):.1f}" y1="{MT - 4}" y2="{bottom}" stroke="#333" '
               f'stroke-dasharray="4 3"/>')
    out.append(f'<text x="{left + plot_w / 2}" y="{bottom + 34}" text-anchor="middle" class="axis">'
               f'{escape(x_label)} (0 = no effect)</text>')
    for i, (label, est, ci_lo, ci_hi, sig) in enumerate(rows):
        y = MT + 20 + 40 * i
        colour = PALETTE[i % len(PALETTE)]
        fill = colour if sig else "#fff"
        out.append(f'<text x="{left - 8}" y="{y + 4}" text-anchor="end" class="tick">{escape(label)}</text>')
        out.append(f'<line x1="{px(ci_lo):.1f}" x2="{px(ci_hi):.1f}" y1="{y}" y2="{y}" stroke="{colour}" '
                   f'stroke-width="3"/>')
        out.append(f'<rect x="{px(est) - 6:.1f}" y="{y - 6}" width="12" height="12" fill="{fill}" '
                   f'stroke="{colour}" stroke-width="2"><title>{escape(label)}: {escape(fmt(est))} '
                   f'[{escape(fmt(ci_lo))}, {escape(fmt(ci_hi))}]</title></rect>')
    out.append("</svg>")
    return "".join(out)


# --- HTML ----------------------------------------------------------------------------------------------------

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       margin: 0 auto; max-width: 1200px; padding: 24px; color: #1a1a1a; background: #fff; line-height: 1.45; }
h1 { font-size: 1.6rem; margin: 0 0 4px; } h2 { font-size: 1.2rem; margin: 32px 0 6px;
     border-bottom: 2px solid #e5e5e5; padding-bottom: 4px; }
p.lead, p.note { color: #444; margin: 4px 0 12px; max-width: 80ch; }
.meta { color: #666; font-size: .9rem; }
.warn { background: #fff4e5; border-left: 5px solid #D55E00; padding: 10px 14px; margin: 12px 0; }
.ok { background: #eef8f1; border-left: 5px solid #009E73; padding: 10px 14px; margin: 12px 0; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 10px 14px; min-width: 130px; }
.card .k { font-size: .8rem; color: #555; text-transform: uppercase; letter-spacing: .03em; }
.card .v { font-size: 1.35rem; font-weight: 600; font-variant-numeric: tabular-nums; }
.pair { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
.pair > div { flex: 1 1 420px; overflow-x: auto; }
table { border-collapse: collapse; font-size: .88rem; font-variant-numeric: tabular-nums; margin: 6px 0; }
th, td { border-bottom: 1px solid #e5e5e5; padding: 4px 8px; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
th { background: #f6f6f6; font-weight: 600; }
td.bad { color: #b00020; font-weight: 600; } td.good { color: #00713f; font-weight: 600; }
svg.chart { max-width: 100%; height: auto; background: #fff; }
svg .ctitle { font-size: 14px; font-weight: 600; fill: #1a1a1a; }
svg .tick { font-size: 11px; fill: #333; } svg .axis { font-size: 12px; fill: #333; }
svg .val { font-size: 10px; fill: #1a1a1a; } svg .grid { stroke: #e6e6e6; stroke-width: 1; }
ul.verdicts li { margin: 4px 0; }
@media print { .pair > div { flex-basis: 100%; } }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str | tuple[str, str]]], caption: str = "") -> str:
    """Rows hold text, or (text, css class) for a highlighted cell. Text is escaped here."""
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{escape(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in headers) + "</tr></thead><tbody>")
    for row in rows:
        cells = []
        for cell in row:
            if isinstance(cell, tuple):
                cells.append(f'<td class="{cell[1]}">{escape(cell[0])}</td>')
            else:
                cells.append(f"<td>{escape(cell)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _pair(chart: str, table: str) -> str:
    return f'<div class="pair"><div>{chart}</div><div>{table}</div></div>'


def _colours(ev: CampaignEvaluation) -> dict[str, str]:
    colours, i = {}, 0
    for arm in ev.arms:
        if arm.is_control:
            colours[arm.arm_id] = CONTROL_COLOUR
        else:
            colours[arm.arm_id] = PALETTE[i % len(PALETTE)]
            i += 1
    return colours


def _summary(data: ReportData) -> str:
    ev, cur = data.evaluation, data.currency
    t = ev.totals
    cards = [("Customers", _num(t.assigned)), ("Messages sent", _num(t.sent)),
             ("Conversions", _num(t.converted)), ("Revenue", _money(t.revenue, cur)),
             ("Cost", _money(t.cost, cur)), ("ROI", _pct(t.roi, 0)), ("CPA", _money(t.cpa, cur))]
    out = ['<section id="summary"><h2>Summary</h2><div class="cards">']
    out += [f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{escape(v)}</div></div>'
            for k, v in cards]
    out.append('</div><ul class="verdicts">')
    for c in ev.comparisons:
        u = c.conversion
        if c.verdict is not None and not c.verdict.horizon_reached:
            call = "too early to call: the planned sample size is not reached yet"
        elif u.p_value < u.alpha and u.difference > 0:
            call = "a significant increase"
        elif u.p_value < u.alpha:
            call = "a significant decrease"
        else:
            call = "no significant difference"
        out.append(
            f"<li><strong>Arm {escape(c.arm_id)}</strong>: conversion {escape(_pct(u.treatment_rate, 2))} vs "
            f"{escape(_pct(u.control_rate, 2))} in control, {escape(_pp(u.difference))} "
            f"(95% CI {escape(_pp(u.ci_low))} to {escape(_pp(u.ci_high))}, p = {escape(_p(u.p_value))}) — "
            f"{escape(call)}.</li>")
    out.append("</ul></section>")
    return "".join(out)


def _warnings(data: ReportData) -> str:
    ev = data.evaluation
    items = list(ev.warnings)
    for dim in data.fairness:
        if dim.disparate:
            items.append(f"fairness: targeting by {dim.dimension} is disparate (lowest allocation ratio "
                         f"{_ratio(dim.worst_ratio)} < {dim.threshold:.2f}); a justification must be recorded")
    if not items:
        notes = []
        if ev.srm is not None:
            notes.append(f"Sample ratio check passed (p = {_p(ev.srm.p_value)}).")
        if any(c.verdict is not None for c in ev.comparisons):
            notes.append("Every planned sample size is reached.")
        return f'<section id="warnings"><div class="ok">No warnings. {escape(" ".join(notes))}</div></section>'
    lis = "".join(f"<li>{escape(w)}</li>" for w in items)
    return f'<section id="warnings" role="alert"><div class="warn"><strong>Read with care</strong><ul>{lis}' \
           f"</ul></div></section>"


def _funnel(data: ReportData, colours: dict[str, str]) -> str:
    ev = data.evaluation
    stages = ["sent", "delivered", "opened", "clicked", "converted"]
    series: dict[str, list[float | None]] = {}
    for a in ev.arms:
        vals: list[float | None] = []
        for s in stages:
            count = getattr(a, s)
            vals.append(None if a.is_control and s != "converted" else
                        (count / a.assigned if a.assigned else None))
        series[a.arm_id] = vals
    chart = bar_chart("chart-funnel", "Funnel per arm (share of customers assigned)", stages, series,
                      [colours[a] for a in series], y_label="% of customers assigned", fmt=lambda v: _pct(v, 1))
    rows = [[a.arm_id + (" (control)" if a.is_control else ""), _num(a.assigned), _num(a.sent),
             _num(a.delivered), _num(a.opened), _num(a.clicked), _num(a.converted), _pct(a.open_rate),
             _pct(a.ctr), _pct(a.conversion_rate, 2), _money(a.revenue, data.currency),
             _money(a.cost, data.currency), _money(a.cpa, data.currency), _pct(a.roi, 0)]
            for a in [*ev.arms, ev.totals]]
    table = _table(["arm", "assigned", "sent", "delivered", "opened", "clicked", "converted", "open rate",
                    "CTR", "conversion", "revenue", "cost", "CPA", "ROI"], rows)
    note = ('<p class="note">Open rate and CTR are per message delivered; conversion is per customer assigned, '
            "so that the control group (sent nothing) is measured the same way. ROI = (revenue - cost) / cost.</p>")
    return f'<section id="funnel"><h2>Funnel per arm</h2>{note}{chart}{table}</section>'


def _uplift(data: ReportData) -> str:
    ev = data.evaluation
    if not ev.comparisons:
        return ""
    rows_plot = []
    rows: list[list[str | tuple[str, str]]] = []
    for c in ev.comparisons:
        u = c.conversion
        sig = u.p_value < u.alpha and (c.verdict is None or c.verdict.horizon_reached)
        rows_plot.append((f"arm {c.arm_id}", u.difference, u.ci_low, u.ci_high, sig))
        status = ("significant" if sig else
                  "not yet (horizon)" if c.verdict is not None and not c.verdict.horizon_reached
                  else "not significant")
        rev = c.revenue
        rows.append([c.arm_id, _pp(u.difference), f"{_pp(u.ci_low)} … {_pp(u.ci_high)}",
                     _pct(u.relative, 1), _p(u.p_value), (status, "good" if sig else ""),
                     _num(rev.difference, 2) if rev else "—",
                     f"{_num(rev.ci_low, 2)} … {_num(rev.ci_high, 2)}" if rev else "—",
                     _p(rev.p_value) if rev else "—", _pp(c.mde_at_launch),
                     _pct(c.power_at_launch, 0), _pct(c.verdict.progress, 0) if c.verdict else "—"])
    chart = forest_plot("chart-forest", "Conversion uplift vs control (95% CI)", rows_plot,
                        fmt=lambda v: f"{v * 100:+.1f} pp", x_label="difference in conversion rate")
    table = _table(["arm", "uplift", "95% CI", "relative", "p-value", "verdict", f"revenue/cust. Δ ({data.currency})",
                    "95% CI", "p (Welch)", "MDE at launch", "power at launch", "sample reached"], rows)
    note = ('<p class="note">Filled squares: significant at the 5% level once the planned sample size is reached; '
            "hollow: not (yet). An interval crossing the dashed zero line is compatible with no effect. "
            "CI from the unpooled standard error; p-value from the pooled two-proportion z-test; revenue by "
            "Welch's t-test on revenue per customer.</p>")
    return f'<section id="uplift"><h2>Uplift against control</h2>{note}{chart}{table}</section>'


def _gain(data: ReportData) -> str:
    if not data.deciles:
        return ""
    d = data.deciles
    n = len(d)
    gain = {"model": [(0.0, 0.0)] + [(p.decile / n, p.cumulative_gain) for p in d],
            "random": [(0.0, 0.0), (1.0, 1.0)]}
    ticks = [(i / n, f"{round(100 * i / n)}%") for i in range(0, n + 1, 2)]
    chart_gain = line_chart("chart-gain", "Cumulative gain by decile", gain, [PALETTE[0], CONTROL_COLOUR],
                            x_label="customers contacted, highest score first", y_label="share of responders",
                            fmt_x=lambda v: f"{v:.0%}", fmt_y=lambda v: f"{v:.0%}", dashed=["random"],
                            x_ticks=ticks)
    lift = {"lift": [p.lift for p in d]}
    chart_lift = bar_chart("chart-lift", "Lift by decile (response rate / average)",
                           [str(p.decile) for p in d], lift,
                           [PALETTE[1]], y_label="lift (1 = average)", fmt=lambda v: f"{v:.1f}")
    rows = [[str(p.decile), _num(p.customers), _num(p.responders), _pct(p.response_rate, 2),
             _pct(p.cumulative_gain, 1), _ratio(p.lift), _ratio(p.cumulative_lift)] for p in d]
    table = _table(["decile", "customers", "responders", "response rate", "cumulative gain", "lift",
                    "cumulative lift"], rows)
    note = ('<p class="note">Customers ranked by model score, decile 1 the highest. The further the gain curve '
            "is above the dashed diagonal, the better the model concentrates responders at the top.</p>")
    return (f'<section id="gain"><h2>Cumulative gain and lift by decile</h2>{note}'
            f"{_pair(chart_gain, table)}{chart_lift}</section>")


def _qini(data: ReportData) -> str:
    if data.qini is None:
        return ""
    q = data.qini
    series = {"uplift model": [(p.fraction, p.qini) for p in q.points],
              "random targeting": [(p.fraction, p.random) for p in q.points]}
    chart = line_chart("chart-qini", "Qini curve (incremental responders)", series, [PALETTE[2], CONTROL_COLOUR],
                       x_label="share of customers targeted, highest uplift first",
                       y_label="incremental responders", fmt_x=lambda v: f"{v:.0%}",
                       fmt_y=lambda v: f"{v:,.0f}", dashed=["random targeting"])
    rows = [[f"{p.fraction:.0%}", _num(p.treated), _num(p.control), _num(p.qini, 1), _num(p.random, 1)]
            for p in q.points]
    table = _table(["targeted", "treated", "control", "incremental", "random"], rows)
    note = (f'<p class="note">Incremental responders if only the top share by predicted uplift were contacted. '
            f"A curve above the dashed line means the uplift model finds the persuadable customers; Qini "
            f"coefficient (area between the two) = {escape(_num(q.coefficient, 2))}.</p>")
    return f'<section id="qini"><h2>Qini curve for uplift targeting</h2>{note}{_pair(chart, table)}</section>'


def _trend(data: ReportData, colours: dict[str, str]) -> str:
    if not data.daily:
        return ""
    days = sorted({p.day for p in data.daily})
    index = {d: i for i, d in enumerate(days)}
    series: dict[str, list[tuple[float, float]]] = {}
    for p in sorted(data.daily, key=lambda p: (p.arm_id, p.day)):
        series.setdefault(p.arm_id, []).append((float(index[p.day]), float(p.converted)))
    step = max(1, len(days) // 7)
    ticks = [(float(i), days[i].strftime("%d %b")) for i in range(0, len(days), step)]
    chart = line_chart("chart-trend", "Conversions per day", series,
                       [colours.get(a, PALETTE[i % len(PALETTE)]) for i, a in enumerate(series)],
                       x_label="day", y_label="conversions", fmt_x=lambda v: days[int(v)].isoformat(),
                       fmt_y=lambda v: f"{v:,.0f}", x_ticks=ticks)
    rows = [[p.day.isoformat(), p.arm_id, _num(p.sent), _num(p.delivered), _num(p.converted),
             _money(p.revenue, data.currency)] for p in sorted(data.daily, key=lambda p: (p.day, p.arm_id))]
    table = _table(["day", "arm", "sent", "delivered", "converted", "revenue"], rows)
    return f'<section id="trend"><h2>Daily trend</h2>{_pair(chart, table)}</section>'


def _srm(data: ReportData) -> str:
    srm = data.evaluation.srm
    if srm is None:
        return ""
    rows = [[k, _num(srm.observed[k]), _num(srm.expected[k], 1)] for k in srm.observed]
    verdict = (("MISMATCH", "bad") if srm.mismatch else ("ok", "good"))
    table = _table(["group", "observed", "expected from the design"], rows)
    summary = _table(["chi-square", "df", "p-value", "threshold", "result"],
                     [[f"{srm.chi2:.2f}", str(srm.df), _p(srm.p_value), f"{srm.threshold:g}", verdict]])
    return f'<section id="srm"><h2>Sample ratio check</h2>{summary}{table}</section>'


def _fairness(data: ReportData) -> str:
    if not data.fairness:
        return ""
    out = ['<section id="fairness"><h2>Fairness</h2><p class="note">Allocation rate = customers targeted / '
           "customers eligible in the group; disparity ratio = the group's rate / the highest group's rate. "
           "A ratio below the threshold (four-fifths rule: 0.80) flags the group as disparate.</p>"]
    for dim in data.fairness:
        rows = [[g.group, _num(g.eligible), _num(g.targeted), _pct(g.allocation_rate),
                 (_ratio(g.allocation_ratio), "bad" if g.disparate else ""), _pp(g.uplift),
                 f"{_pp(g.uplift_ci_low)} … {_pp(g.uplift_ci_high)}" if g.uplift is not None else "—",
                 _ratio(g.uplift_ratio), ("disparate", "bad") if g.disparate else "ok"] for g in dim.groups]
        out.append(f"<h3>{escape(dim.dimension)} (threshold {dim.threshold:.2f})</h3>")
        out.append(_table(["group", "eligible", "targeted", "allocation rate", "disparity ratio", "uplift",
                           "95% CI", "uplift ratio", "flag"], rows))
    out.append("</section>")
    return "".join(out)


def render_html(report_data: ReportData) -> str:
    """The whole report as one HTML document (UTF-8, no external resources)."""
    d = report_data
    colours = _colours(d.evaluation)
    body = [
        f"<header><h1>{escape(d.title)}</h1><div class=\"meta\">Campaign {escape(d.campaign_id)} · control group "
        f"<strong>{escape(d.evaluation.control_arm)}</strong> · generated {escape(d.generated_at)}</div></header>",
        _warnings(d), _summary(d), _funnel(d, colours), _uplift(d), _srm(d), _gain(d), _qini(d),
        _trend(d, colours), _fairness(d),
    ]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(d.title)}</title><style>{CSS}</style></head><body>"
            + "".join(body) + "</body></html>\n")


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(report_data: ReportData) -> str:
    """The report's data as JSON (the same numbers as the HTML; undefined ratios and non-finite values null)."""
    return json.dumps(_jsonable(report_data), indent=2, sort_keys=True, allow_nan=False)
