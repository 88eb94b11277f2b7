"""Campaign evaluation: funnel metrics, uplift against control, and the checks that keep the numbers honest.

Pure functions over counts and sums (no database, no gRPC). Every result is a frozen dataclass of plain
numbers (``None`` where a ratio is undefined, e.g. CPA with no conversion) so it serialises to JSON with
``dataclasses.asdict``. The formulas, and the choices between alternatives, are documented in
docs/evaluation.md; in short:

* rates: delivery = delivered/sent, open rate = opened/delivered, CTR = clicked/delivered,
  conversion = converted/assigned (per customer *assigned* to the group, so that a control group, which is
  sent nothing, is measured on the same footing), CPA = cost/converted, ROI = (revenue - cost)/cost;
* uplift of a proportion: difference treatment - control, CI with the unpooled standard error, two-sided
  z-test with the pooled standard error (the null hypothesis says the two rates are equal);
* revenue uplift: Welch's t-test on revenue per assigned customer (from values, or from n, sum and sum of
  squares), optionally a seeded percentile-bootstrap CI;
* sample-ratio mismatch: chi-square goodness of fit of the group sizes against the planned shares,
  flagged when p < 0.001;
* MDE and power at launch for a two-proportion test (alpha 0.05, power 0.8 by default);
* CUPED with theta = cov(x, y)/var(x) on the pooled groups;
* peeking guard: a fixed-horizon test is ``significant`` only once every group reached its planned size;
  before that a warning is returned and ``significant`` stays False;
* fairness: allocation rate and uplift per group, disparity ratio = rate / best group's rate, ``disparate``
  when a ratio falls below the threshold (four-fifths rule: 0.8).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8
SRM_THRESHOLD = 0.001
FOUR_FIFTHS = 0.8


class EvaluationError(ValueError):
    """Inputs that cannot be evaluated (negative counts, a funnel that grows, no control group...)."""


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


def _z(alpha: float) -> float:
    return float(stats.norm.ppf(1 - alpha / 2))


# --- per-arm funnel -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArmCounts:
    """What one group of a campaign did. ``assigned``: customers assigned to the group (for a control group,
    the customers held out); the other counts are of those customers. ``revenue_sq`` (sum of squared revenue
    per customer) lets the revenue test run from sums alone; ``planned_share`` is the share the design gave it.
    """

    arm_id: str
    assigned: int
    sent: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    converted: int = 0
    revenue: float = 0.0
    cost: float = 0.0
    is_control: bool = False
    revenue_sq: float | None = None
    planned_share: float | None = None

    def validate(self) -> None:
        counts = [("assigned", self.assigned), ("sent", self.sent), ("delivered", self.delivered),
                  ("opened", self.opened), ("clicked", self.clicked), ("converted", self.converted)]
        for name, value in counts:
            if value < 0:
                raise EvaluationError(f"arm {self.arm_id}: {name} is negative")
        if self.cost < 0:
            raise EvaluationError(f"arm {self.arm_id}: cost is negative")
        funnel = [("assigned", self.assigned), ("sent", self.sent), ("delivered", self.delivered),
                  ("opened", self.opened), ("clicked", self.clicked)]
        for (a, x), (b, y) in itertools.pairwise(funnel):
            if y > x:
                raise EvaluationError(f"arm {self.arm_id}: {b} ({y}) exceeds {a} ({x})")
        if self.converted > self.assigned:
            raise EvaluationError(f"arm {self.arm_id}: converted exceeds assigned")


@dataclass(frozen=True)
class ArmMetrics:
    arm_id: str
    is_control: bool
    assigned: int
    sent: int
    delivered: int
    opened: int
    clicked: int
    converted: int
    revenue: float
    cost: float
    delivery_rate: float | None
    open_rate: float | None
    ctr: float | None
    click_to_open: float | None
    conversion_rate: float | None
    revenue_per_customer: float | None
    cpa: float | None
    roi: float | None


def arm_metrics(arm: ArmCounts) -> ArmMetrics:
    arm.validate()
    return ArmMetrics(
        arm_id=arm.arm_id, is_control=arm.is_control, assigned=arm.assigned, sent=arm.sent,
        delivered=arm.delivered, opened=arm.opened, clicked=arm.clicked, converted=arm.converted,
        revenue=arm.revenue, cost=arm.cost,
        delivery_rate=_ratio(arm.delivered, arm.sent), open_rate=_ratio(arm.opened, arm.delivered),
        ctr=_ratio(arm.clicked, arm.delivered), click_to_open=_ratio(arm.clicked, arm.opened),
        conversion_rate=_ratio(arm.converted, arm.assigned),
        revenue_per_customer=_ratio(arm.revenue, arm.assigned), cpa=_ratio(arm.cost, arm.converted),
        roi=_ratio(arm.revenue - arm.cost, arm.cost),
    )


# --- uplift of a proportion --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProportionUplift:
    treatment_rate: float
    control_rate: float
    difference: float
    ci_low: float
    ci_high: float
    relative: float | None
    z: float
    p_value: float
    alpha: float


def proportion_uplift(x_t: int, n_t: int, x_c: int, n_c: int, *, alpha: float = ALPHA) -> ProportionUplift:
    """Difference of proportions p_t - p_c. CI: unpooled SE sqrt(p_t(1-p_t)/n_t + p_c(1-p_c)/n_c); test: pooled
    SE sqrt(p(1-p)(1/n_t + 1/n_c)) with p = (x_t + x_c)/(n_t + n_c), two-sided normal p-value."""
    if n_t <= 0 or n_c <= 0:
        raise EvaluationError("both groups need at least one customer")
    if not (0 <= x_t <= n_t and 0 <= x_c <= n_c):
        raise EvaluationError("successes must lie between 0 and the group size")
    p_t, p_c = x_t / n_t, x_c / n_c
    diff = p_t - p_c
    se_unpooled = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    z_crit = _z(alpha)
    pooled = (x_t + x_c) / (n_t + n_c)
    se_pooled = math.sqrt(pooled * (1 - pooled) * (1 / n_t + 1 / n_c))
    if se_pooled == 0:
        z, p_value = 0.0, 1.0
    else:
        z = diff / se_pooled
        p_value = float(2 * stats.norm.sf(abs(z)))
    return ProportionUplift(
        treatment_rate=p_t, control_rate=p_c, difference=diff, ci_low=diff - z_crit * se_unpooled,
        ci_high=diff + z_crit * se_unpooled, relative=_ratio(diff, p_c), z=z, p_value=p_value, alpha=alpha)


# --- uplift of a mean (revenue) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanSummary:
    n: int
    mean: float
    variance: float  # sample variance (ddof = 1)

    @classmethod
    def from_values(cls, values: Sequence[float] | np.ndarray) -> MeanSummary:
        arr = np.asarray(values, dtype=float)
        if arr.size < 2:
            raise EvaluationError("a mean test needs at least two values per group")
        return cls(int(arr.size), float(arr.mean()), float(arr.var(ddof=1)))

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> MeanSummary:
        if n < 2:
            raise EvaluationError("a mean test needs at least two values per group")
        mean = total / n
        return cls(n, mean, max(0.0, (total_sq - n * mean * mean) / (n - 1)))


@dataclass(frozen=True)
class MeanUplift:
    treatment_mean: float
    control_mean: float
    difference: float
    ci_low: float
    ci_high: float
    t: float
    df: float
    p_value: float
    alpha: float
    method: str = "welch"
    bootstrap_ci_low: float | None = None
    bootstrap_ci_high: float | None = None


def welch_uplift(treatment: MeanSummary, control: MeanSummary, *, alpha: float = ALPHA) -> MeanUplift:
    """Welch's unequal-variance t-test of mean(treatment) - mean(control), Welch-Satterthwaite df, t CI."""
    vt, vc = treatment.variance / treatment.n, control.variance / control.n
    diff = treatment.mean - control.mean
    se = math.sqrt(vt + vc)
    if se == 0:
        return MeanUplift(treatment.mean, control.mean, diff, diff, diff, 0.0,
                          float(treatment.n + control.n - 2), 1.0 if diff == 0 else 0.0, alpha)
    df = (vt + vc) ** 2 / (vt**2 / (treatment.n - 1) + vc**2 / (control.n - 1))
    t = diff / se
    p_value = float(2 * stats.t.sf(abs(t), df))
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se
    return MeanUplift(treatment.mean, control.mean, diff, diff - half, diff + half, t, df, p_value, alpha)


def bootstrap_mean_diff_ci(
    treatment: Sequence[float] | np.ndarray, control: Sequence[float] | np.ndarray, *,
    alpha: float = ALPHA, resamples: int = 2000, seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(treatment) - mean(control): each group resampled with replacement,
    ``resamples`` times, from ``numpy.random.default_rng(seed)`` (treatment indices drawn first)."""
    t = np.asarray(treatment, dtype=float)
    c = np.asarray(control, dtype=float)
    if t.size == 0 or c.size == 0:
        raise EvaluationError("both groups need values")
    rng = np.random.default_rng(seed)
    t_means = t[rng.integers(0, t.size, size=(resamples, t.size))].mean(axis=1)
    c_means = c[rng.integers(0, c.size, size=(resamples, c.size))].mean(axis=1)
    diffs = t_means - c_means
    return float(np.quantile(diffs, alpha / 2)), float(np.quantile(diffs, 1 - alpha / 2))


def revenue_uplift(
    treatment: Sequence[float] | np.ndarray, control: Sequence[float] | np.ndarray, *,
    alpha: float = ALPHA, bootstrap: bool = False, resamples: int = 2000, seed: int = 0,
) -> MeanUplift:
    """Welch on per-customer revenue (zeros included), with the bootstrap CI beside it when asked."""
    result = welch_uplift(MeanSummary.from_values(treatment), MeanSummary.from_values(control), alpha=alpha)
    if not bootstrap:
        return result
    low, high = bootstrap_mean_diff_ci(treatment, control, alpha=alpha, resamples=resamples, seed=seed)
    return MeanUplift(**{**result.__dict__, "method": "welch+bootstrap",
                         "bootstrap_ci_low": low, "bootstrap_ci_high": high})


# --- sample-ratio mismatch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SrmResult:
    observed: dict[str, int]
    expected: dict[str, float]
    chi2: float
    df: int
    p_value: float
    mismatch: bool
    threshold: float


def srm_check(
    observed: Mapping[str, int], planned_shares: Mapping[str, float], *, threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    """Chi-square goodness of fit of observed group sizes against the planned shares (normalised to sum 1)."""
    if set(observed) != set(planned_shares):
        raise EvaluationError("observed groups and planned shares must name the same groups")
    if len(observed) < 2:
        raise EvaluationError("a sample-ratio check needs at least two groups")
    total_share = sum(planned_shares.values())
    if total_share <= 0 or any(s <= 0 for s in planned_shares.values()):
        raise EvaluationError("planned shares must be positive")
    n = sum(observed.values())
    keys = sorted(observed)
    expected = {k: n * planned_shares[k] / total_share for k in keys}
    chi2 = sum((observed[k] - expected[k]) ** 2 / expected[k] for k in keys) if n else 0.0
    df = len(keys) - 1
    p_value = float(stats.chi2.sf(chi2, df)) if n else 1.0
    return SrmResult({k: observed[k] for k in keys}, expected, float(chi2), df, p_value,
                     p_value < threshold, threshold)


# --- power and minimum detectable effect -----------------------------------------------------------------


def minimum_detectable_effect(
    n_t: int, n_c: int, baseline: float, *, alpha: float = ALPHA, power: float = POWER,
) -> float:
    """Smallest absolute difference in rates a two-sided two-proportion z-test detects with the given power:
    (z_{1-alpha/2} + z_{power}) * sqrt(p(1-p)(1/n_t + 1/n_c)), p = the baseline rate."""
    if n_t <= 0 or n_c <= 0:
        raise EvaluationError("planned group sizes must be positive")
    if not 0 < baseline < 1:
        raise EvaluationError("the baseline rate must lie strictly between 0 and 1")
    z_power = float(stats.norm.ppf(power))
    return (_z(alpha) + z_power) * math.sqrt(baseline * (1 - baseline) * (1 / n_t + 1 / n_c))


def power_two_proportions(n_t: int, n_c: int, baseline: float, effect: float, *, alpha: float = ALPHA) -> float:
    """Power of the two-sided z-test for p_c = baseline, p_t = baseline + effect (unpooled SE under the
    alternative): Phi(|d|/se - z) + Phi(-|d|/se - z)."""
    p_t = baseline + effect
    if n_t <= 0 or n_c <= 0 or not 0 < baseline < 1 or not 0 <= p_t <= 1:
        raise EvaluationError("invalid sizes, baseline or effect")
    se = math.sqrt(baseline * (1 - baseline) / n_c + p_t * (1 - p_t) / n_t)
    if se == 0:
        return 1.0 if effect else alpha
    shift = abs(effect) / se
    z = _z(alpha)
    return float(stats.norm.cdf(shift - z) + stats.norm.cdf(-shift - z))


def sample_size_per_group(baseline: float, mde: float, *, alpha: float = ALPHA, power: float = POWER) -> int:
    """Equal group size that gives ``minimum_detectable_effect`` = ``mde`` (the inverse of that formula)."""
    if mde <= 0 or not 0 < baseline < 1:
        raise EvaluationError("mde must be positive and the baseline inside (0, 1)")
    z = _z(alpha) + float(stats.norm.ppf(power))
    return math.ceil(2 * baseline * (1 - baseline) * (z / mde) ** 2)


# --- CUPED ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CupedResult:
    theta: float
    pre_mean: float
    treatment_mean: float  # adjusted
    control_mean: float  # adjusted
    difference: float
    ci_low: float
    ci_high: float
    p_value: float
    variance_reduction: float  # 1 - var(adjusted)/var(raw), pooled
    unadjusted: MeanUplift


def cuped(
    treatment_y: Sequence[float] | np.ndarray, treatment_x: Sequence[float] | np.ndarray,
    control_y: Sequence[float] | np.ndarray, control_x: Sequence[float] | np.ndarray, *, alpha: float = ALPHA,
) -> CupedResult:
    """CUPED: y' = y - theta (x - mean(x)), theta = cov(x, y)/var(x) over both groups pooled (one theta, so
    the adjustment cannot itself create a difference), then Welch on the adjusted values."""
    ty, tx = np.asarray(treatment_y, dtype=float), np.asarray(treatment_x, dtype=float)
    cy, cx = np.asarray(control_y, dtype=float), np.asarray(control_x, dtype=float)
    if ty.shape != tx.shape or cy.shape != cx.shape:
        raise EvaluationError("each customer needs both an outcome and a pre-period value")
    y, x = np.concatenate([ty, cy]), np.concatenate([tx, cx])
    var_x = float(np.var(x, ddof=1))
    theta = float(np.cov(x, y, ddof=1)[0, 1] / var_x) if var_x > 0 else 0.0
    x_bar = float(x.mean())
    ty_adj, cy_adj = ty - theta * (tx - x_bar), cy - theta * (cx - x_bar)
    adjusted = welch_uplift(MeanSummary.from_values(ty_adj), MeanSummary.from_values(cy_adj), alpha=alpha)
    raw = welch_uplift(MeanSummary.from_values(ty), MeanSummary.from_values(cy), alpha=alpha)
    var_y = float(np.var(y, ddof=1))
    var_adj = float(np.var(np.concatenate([ty_adj, cy_adj]), ddof=1))
    return CupedResult(theta, x_bar, adjusted.treatment_mean, adjusted.control_mean, adjusted.difference,
                       adjusted.ci_low, adjusted.ci_high, adjusted.p_value,
                       1 - var_adj / var_y if var_y > 0 else 0.0, raw)


# --- peeking guard --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeekingVerdict:
    horizon_reached: bool
    significant: bool
    progress: float  # smallest observed/planned over the groups, capped at 1
    warning: str | None


def fixed_horizon_verdict(
    p_value: float, observed: Mapping[str, int], planned: Mapping[str, int], *, alpha: float = ALPHA,
) -> PeekingVerdict:
    """A fixed-horizon test may be read only once every group reached its planned size. Before that the result
    is never ``significant`` and the warning says how far along the test is."""
    if not planned or any(v <= 0 for v in planned.values()):
        raise EvaluationError("planned sizes must be positive")
    progress = min(1.0, min(observed.get(k, 0) / v for k, v in planned.items()))
    reached = all(observed.get(k, 0) >= v for k, v in planned.items())
    if reached:
        return PeekingVerdict(True, p_value < alpha, 1.0, None)
    warning = (f"planned sample size not reached ({progress:.0%} of the smallest group): this fixed-horizon "
               f"test cannot be called yet; p-values seen now overstate significance")
    return PeekingVerdict(False, False, progress, warning)


# --- fairness -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupCounts:
    """One group of a protected dimension (e.g. age band 25-34). ``eligible``: customers of the group in the
    audience; ``targeted``: those allocated a contact. The four outcome counts feed the uplift per group."""

    group: str
    eligible: int
    targeted: int
    treatment_n: int = 0
    treatment_converted: int = 0
    control_n: int = 0
    control_converted: int = 0


@dataclass(frozen=True)
class GroupFairness:
    group: str
    eligible: int
    targeted: int
    allocation_rate: float | None
    allocation_ratio: float | None
    uplift: float | None
    uplift_ci_low: float | None
    uplift_ci_high: float | None
    uplift_ratio: float | None
    disparate: bool


@dataclass(frozen=True)
class FairnessDimension:
    dimension: str
    threshold: float
    groups: list[GroupFairness] = field(default_factory=list)
    disparate: bool = False
    worst_ratio: float | None = None


def fairness(
    dimension: str, groups: Sequence[GroupCounts], *, threshold: float = FOUR_FIFTHS, alpha: float = ALPHA,
) -> FairnessDimension:
    """Allocation rate (targeted/eligible) and uplift per group. Disparity ratio = the group's rate / the best
    group's rate; a group is ``disparate`` when its allocation ratio is below ``threshold``. The uplift ratio
    is reported (for a positive best uplift) but does not set the flag: uplift is an outcome, not a choice."""
    if not 0 < threshold <= 1:
        raise EvaluationError("the disparity threshold must lie in (0, 1]")
    rates = {g.group: _ratio(g.targeted, g.eligible) for g in groups}
    best_rate = max((r for r in rates.values() if r is not None), default=None)
    uplifts: dict[str, ProportionUplift | None] = {}
    for g in groups:
        ok = g.treatment_n > 0 and g.control_n > 0
        uplifts[g.group] = (proportion_uplift(g.treatment_converted, g.treatment_n, g.control_converted,
                                              g.control_n, alpha=alpha) if ok else None)
    best_uplift = max((u.difference for u in uplifts.values() if u is not None), default=None)
    out = []
    for g in groups:
        rate = rates[g.group]
        ratio = rate / best_rate if rate is not None and best_rate else None
        u = uplifts[g.group]
        u_ratio = u.difference / best_uplift if u is not None and best_uplift and best_uplift > 0 else None
        out.append(GroupFairness(
            group=g.group, eligible=g.eligible, targeted=g.targeted, allocation_rate=rate, allocation_ratio=ratio,
            uplift=u.difference if u else None, uplift_ci_low=u.ci_low if u else None,
            uplift_ci_high=u.ci_high if u else None, uplift_ratio=u_ratio,
            disparate=ratio is not None and ratio < threshold))
    ratios = [g.allocation_ratio for g in out if g.allocation_ratio is not None]
    return FairnessDimension(dimension, threshold, out, any(g.disparate for g in out),
                             min(ratios) if ratios else None)


# --- targeting curves ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecilePoint:
    decile: int  # 1 = highest scores
    customers: int
    responders: int
    response_rate: float
    cumulative_gain: float  # share of all responders captured in deciles 1..k
    lift: float | None  # decile response rate / overall rate
    cumulative_lift: float | None


def _order(scores: np.ndarray) -> np.ndarray:
    # Highest score first; ties keep input order (stable), so results are reproducible.
    return np.argsort(-scores, kind="stable")


def gain_lift_by_decile(scores: Sequence[float] | np.ndarray, outcomes: Sequence[int] | np.ndarray,
                        *, bins: int = 10) -> list[DecilePoint]:
    """Cumulative gain and lift by score decile (np.array_split of the score-sorted customers, so the first
    deciles take one extra customer when n is not a multiple of ``bins``)."""
    s, y = np.asarray(scores, dtype=float), np.asarray(outcomes, dtype=float)
    if s.shape != y.shape or s.size < bins:
        raise EvaluationError(f"need one outcome per score and at least {bins} customers")
    y = y[_order(s)]
    total, overall = y.sum(), y.mean()
    points, cum_n, cum_y = [], 0, 0.0
    for k, chunk in enumerate(np.array_split(y, bins), start=1):
        cum_n += chunk.size
        cum_y += chunk.sum()
        rate = float(chunk.mean())
        points.append(DecilePoint(
            decile=k, customers=int(chunk.size), responders=int(chunk.sum()), response_rate=rate,
            cumulative_gain=float(cum_y / total) if total else 0.0,
            lift=rate / overall if overall else None,
            cumulative_lift=float(cum_y / cum_n / overall) if overall else None))
    return points


@dataclass(frozen=True)
class QiniPoint:
    fraction: float  # share of the population targeted, by descending uplift score
    treated: int
    control: int
    qini: float  # incremental responders: Y_t - Y_c * N_t / N_c
    random: float  # the same at random targeting: fraction * qini(1)


@dataclass(frozen=True)
class QiniCurve:
    points: list[QiniPoint]
    coefficient: float  # area between the curve and the random line (trapezoids over the points), / N


def qini_curve(
    scores: Sequence[float] | np.ndarray, treated: Sequence[int] | np.ndarray, outcomes: Sequence[int] | np.ndarray,
    *, bins: int = 10,
) -> QiniCurve:
    """Qini curve (Radcliffe): customers sorted by uplift score; at each cut k of ``bins`` equal parts,
    Q(k) = Y_t(k) - Y_c(k) * N_t(k)/N_c(k) (0 when no control customer is above the cut)."""
    s = np.asarray(scores, dtype=float)
    w = np.asarray(treated, dtype=int)
    y = np.asarray(outcomes, dtype=float)
    if not (s.shape == w.shape == y.shape) or s.size < bins:
        raise EvaluationError(f"need scores, treatment flags and outcomes of one length, at least {bins}")
    order = _order(s)
    w, y = w[order], y[order]
    n = s.size
    cuts = [round(n * k / bins) for k in range(bins + 1)]

    def q(m: int) -> tuple[int, int, float]:
        nt, nc = int(w[:m].sum()), int(m - w[:m].sum())
        yt, yc = float(y[:m][w[:m] == 1].sum()), float(y[:m][w[:m] == 0].sum())
        return nt, nc, (yt - yc * nt / nc) if nc else 0.0

    full = q(n)[2]
    points = []
    for m in cuts:
        nt, nc, value = q(m)
        points.append(QiniPoint(m / n, nt, nc, value, full * m / n))
    area = sum((b.fraction - a.fraction) * ((b.qini - b.random) + (a.qini - a.random)) / 2
               for a, b in itertools.pairwise(points))
    return QiniCurve(points, area)


# --- the campaign as a whole ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """The design at launch: planned customers per group, the control baseline rate expected, and
    optionally the uplift the campaign was sized for (to report power at launch)."""

    planned_sizes: dict[str, int]
    baseline_rate: float
    target_uplift: float | None = None
    alpha: float = ALPHA
    power: float = POWER


@dataclass(frozen=True)
class ArmComparison:
    arm_id: str
    conversion: ProportionUplift
    revenue: MeanUplift | None
    mde_at_launch: float | None
    power_at_launch: float | None
    verdict: PeekingVerdict | None


@dataclass(frozen=True)
class CampaignEvaluation:
    campaign_id: str
    control_arm: str
    arms: list[ArmMetrics]
    totals: ArmMetrics
    comparisons: list[ArmComparison]
    srm: SrmResult | None
    warnings: list[str]


def evaluate_campaign(campaign_id: str, arms: Sequence[ArmCounts], *, plan: Plan | None = None,
                      alpha: float = ALPHA) -> CampaignEvaluation:
    """Everything per arm, each treatment arm against the (single) control group, SRM when the arms carry
    planned shares, MDE/power and the peeking verdict when a plan is given."""
    controls = [a for a in arms if a.is_control]
    if len(controls) != 1:
        raise EvaluationError("exactly one arm must be the control group")
    if len({a.arm_id for a in arms}) != len(arms):
        raise EvaluationError("arm ids must be unique")
    control = controls[0]
    metrics = [arm_metrics(a) for a in arms]
    totals = arm_metrics(ArmCounts(
        "total", sum(a.assigned for a in arms), sum(a.sent for a in arms), sum(a.delivered for a in arms),
        sum(a.opened for a in arms), sum(a.clicked for a in arms), sum(a.converted for a in arms),
        sum(a.revenue for a in arms), sum(a.cost for a in arms)))
    warnings: list[str] = []
    srm = None
    if all(a.planned_share for a in arms):
        srm = srm_check({a.arm_id: a.assigned for a in arms}, {a.arm_id: float(a.planned_share or 0) for a in arms})
        if srm.mismatch:
            warnings.append(f"sample ratio mismatch (chi-square p = {srm.p_value:.2g} < {srm.threshold}): group "
                            f"sizes differ from the design; check assignment and delivery before reading uplift")
    comparisons = []
    for arm in arms:
        if arm.is_control:
            continue
        conv = proportion_uplift(arm.converted, arm.assigned, control.converted, control.assigned, alpha=alpha)
        revenue = None
        if arm.revenue_sq is not None and control.revenue_sq is not None:
            revenue = welch_uplift(MeanSummary.from_sums(arm.assigned, arm.revenue, arm.revenue_sq),
                                   MeanSummary.from_sums(control.assigned, control.revenue, control.revenue_sq),
                                   alpha=alpha)
        mde = power = None
        verdict = None
        if plan is not None:
            n_t, n_c = plan.planned_sizes.get(arm.arm_id, 0), plan.planned_sizes.get(control.arm_id, 0)
            if n_t > 0 and n_c > 0:
                mde = minimum_detectable_effect(n_t, n_c, plan.baseline_rate, alpha=plan.alpha, power=plan.power)
                if plan.target_uplift is not None:
                    power = power_two_proportions(n_t, n_c, plan.baseline_rate, plan.target_uplift,
                                                  alpha=plan.alpha)
                verdict = fixed_horizon_verdict(
                    conv.p_value, {arm.arm_id: arm.assigned, control.arm_id: control.assigned},
                    {arm.arm_id: n_t, control.arm_id: n_c}, alpha=alpha)
                if verdict.warning:
                    warnings.append(f"arm {arm.arm_id}: {verdict.warning}")
        comparisons.append(ArmComparison(arm.arm_id, conv, revenue, mde, power, verdict))
    return CampaignEvaluation(campaign_id, control.arm_id, metrics, totals, comparisons, srm, warnings)
