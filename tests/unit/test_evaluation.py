"""Campaign statistics against values computed by hand (or independently with scipy.stats) on known counts."""

import math

import numpy as np
import pytest
from scipy import stats

from services.campaign import evaluation as ev
from services.campaign.evaluation import ArmCounts, EvaluationError, GroupCounts, MeanSummary, Plan


def test_arm_metrics_funnel_rates_cpa_roi():
    m = ev.arm_metrics(ArmCounts("a", assigned=1000, sent=950, delivered=900, opened=450, clicked=90,
                                 converted=30, revenue=6000.0, cost=1500.0))
    assert m.delivery_rate == pytest.approx(900 / 950)
    assert m.open_rate == pytest.approx(0.5)
    assert m.ctr == pytest.approx(0.1)
    assert m.click_to_open == pytest.approx(0.2)
    assert m.conversion_rate == pytest.approx(0.03)
    assert m.revenue_per_customer == pytest.approx(6.0)
    assert m.cpa == pytest.approx(50.0)
    assert m.roi == pytest.approx(3.0)  # (6000 - 1500) / 1500


def test_arm_metrics_undefined_ratios_are_none_for_a_control_group():
    m = ev.arm_metrics(ArmCounts("control", assigned=500, converted=10, revenue=100.0, is_control=True))
    assert (m.open_rate, m.ctr, m.roi) == (None, None, None)
    assert m.cpa == 0.0  # no cost, ten conversions
    assert m.conversion_rate == pytest.approx(0.02)


@pytest.mark.parametrize("bad", [
    dict(assigned=10, sent=11), dict(assigned=10, sent=5, delivered=6), dict(assigned=10, converted=11),
    dict(assigned=-1), dict(assigned=10, cost=-1.0),
])
def test_arm_counts_that_cannot_be_true_are_rejected(bad):
    with pytest.raises(EvaluationError):
        ev.arm_metrics(ArmCounts("a", **bad))


def test_proportion_uplift_matches_hand_computation():
    # 120/1000 vs 100/1000
    r = ev.proportion_uplift(120, 1000, 100, 1000)
    se_unpooled = math.sqrt(0.12 * 0.88 / 1000 + 0.10 * 0.90 / 1000)  # 0.013986
    se_pooled = math.sqrt(0.11 * 0.89 * (2 / 1000))  # 0.013993
    assert r.difference == pytest.approx(0.02)
    assert r.ci_low == pytest.approx(0.02 - 1.959964 * se_unpooled, abs=1e-6)
    assert r.ci_high == pytest.approx(0.02 + 1.959964 * se_unpooled, abs=1e-6)
    assert r.ci_low == pytest.approx(-0.007411, abs=1e-5)
    assert r.z == pytest.approx(0.02 / se_pooled)
    assert r.z == pytest.approx(1.42929, abs=1e-4)
    assert r.p_value == pytest.approx(0.152913, abs=1e-5)
    assert r.relative == pytest.approx(0.2)


def test_proportion_uplift_pooled_test_agrees_with_chi_square():
    # The pooled two-proportion z-test is the 2x2 chi-square test without continuity correction: z^2 = chi2.
    r = ev.proportion_uplift(90, 800, 60, 820)
    chi2, p, _, _ = stats.chi2_contingency([[90, 710], [60, 760]], correction=False)
    assert r.z**2 == pytest.approx(chi2)
    assert r.p_value == pytest.approx(p)


def test_proportion_uplift_rejects_empty_groups():
    with pytest.raises(EvaluationError):
        ev.proportion_uplift(0, 0, 1, 10)


def test_welch_from_values_matches_scipy():
    t = [0, 0, 10, 20, 0, 35, 0, 5, 0, 50]
    c = [0, 5, 0, 0, 10, 0, 0, 0, 15, 0, 0, 2]
    r = ev.revenue_uplift(t, c)
    ref = stats.ttest_ind(t, c, equal_var=False)
    assert r.t == pytest.approx(ref.statistic)
    assert r.p_value == pytest.approx(ref.pvalue)
    assert r.difference == pytest.approx(np.mean(t) - np.mean(c))
    ci = ref.confidence_interval(0.95)
    assert (r.ci_low, r.ci_high) == pytest.approx((ci.low, ci.high))
    # df by hand (Welch-Satterthwaite)
    vt, vc = np.var(t, ddof=1) / 10, np.var(c, ddof=1) / 12
    assert r.df == pytest.approx((vt + vc) ** 2 / (vt**2 / 9 + vc**2 / 11))


def test_welch_from_sums_equals_welch_from_values():
    t = np.array([1.0, 4.0, 0.0, 7.0, 3.0])
    c = np.array([0.0, 2.0, 1.0, 0.0])
    from_sums = ev.welch_uplift(MeanSummary.from_sums(5, t.sum(), (t**2).sum()),
                                MeanSummary.from_sums(4, c.sum(), (c**2).sum()))
    from_values = ev.welch_uplift(MeanSummary.from_values(t), MeanSummary.from_values(c))
    assert from_sums.p_value == pytest.approx(from_values.p_value)
    assert MeanSummary.from_sums(5, t.sum(), (t**2).sum()).variance == pytest.approx(7.5)  # (4+1+9+16+0)/4


def test_bootstrap_ci_is_seeded_and_matches_an_independent_resampling():
    rng = np.random.default_rng(3)
    t, c = rng.exponential(10, 200), rng.exponential(8, 200)
    r = ev.revenue_uplift(t, c, bootstrap=True, resamples=500, seed=11)
    again = ev.revenue_uplift(t, c, bootstrap=True, resamples=500, seed=11)
    assert (r.bootstrap_ci_low, r.bootstrap_ci_high) == (again.bootstrap_ci_low, again.bootstrap_ci_high)
    # Independent re-implementation with the documented draw order.
    g = np.random.default_rng(11)
    ti = g.integers(0, 200, size=(500, 200))
    ci = g.integers(0, 200, size=(500, 200))
    diffs = t[ti].mean(axis=1) - c[ci].mean(axis=1)
    assert r.bootstrap_ci_low == pytest.approx(np.quantile(diffs, 0.025))
    assert r.bootstrap_ci_high == pytest.approx(np.quantile(diffs, 0.975))
    assert r.method == "welch+bootstrap"
    assert r.bootstrap_ci_low < r.difference < r.bootstrap_ci_high


def test_srm_detects_a_mismatch_and_accepts_a_fair_split():
    # 50/50 design, 5200 vs 4800: chi2 = (200^2/5000)*2 = 16, df 1
    r = ev.srm_check({"a": 5200, "control": 4800}, {"a": 0.5, "control": 0.5})
    assert r.chi2 == pytest.approx(16.0)
    assert r.df == 1
    assert r.p_value == pytest.approx(stats.chi2.sf(16.0, 1))  # 6.3e-5
    assert r.mismatch is True
    ok = ev.srm_check({"a": 5050, "control": 4950}, {"a": 0.5, "control": 0.5})
    assert ok.chi2 == pytest.approx(1.0)  # (50^2/5000)*2
    assert ok.mismatch is False


def test_srm_three_groups_with_unequal_shares():
    # shares 0.45/0.45/0.1 of 1000 -> expected 450, 450, 100; observed 460, 440, 100
    r = ev.srm_check({"a": 460, "b": 440, "control": 100}, {"a": 0.45, "b": 0.45, "control": 0.1})
    assert r.chi2 == pytest.approx(100 / 450 * 2)
    assert r.df == 2
    assert r.p_value == pytest.approx(stats.chisquare([460, 440, 100], [450, 450, 100]).pvalue)


def test_mde_and_power_by_hand():
    z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)  # 2.8016
    mde = ev.minimum_detectable_effect(10_000, 10_000, 0.05)
    assert mde == pytest.approx(z * math.sqrt(0.05 * 0.95 * 2 / 10_000))
    assert mde == pytest.approx(0.008635, abs=1e-6)
    # Power for a 1-point uplift on 5%: se = sqrt(.05*.95/1e4 + .06*.94/1e4)
    se = math.sqrt(0.05 * 0.95 / 10_000 + 0.06 * 0.94 / 10_000)
    expected = stats.norm.cdf(0.01 / se - 1.959964) + stats.norm.cdf(-0.01 / se - 1.959964)
    assert ev.power_two_proportions(10_000, 10_000, 0.05, 0.01) == pytest.approx(expected, abs=1e-6)
    assert 0.8 < expected < 0.9
    assert ev.sample_size_per_group(0.05, mde) in (10_000, 10_001)


def test_cuped_theta_and_adjusted_means_by_hand():
    # Outcome y = 2 x + noise; the pre-period x explains most of the variance.
    rng = np.random.default_rng(7)
    tx, cx = rng.normal(100, 20, 400), rng.normal(100, 20, 400)
    ty = 2 * tx + 5 + rng.normal(0, 5, 400)
    cy = 2 * cx + rng.normal(0, 5, 400)
    r = ev.cuped(ty, tx, cy, cx)
    x, y = np.concatenate([tx, cx]), np.concatenate([ty, cy])
    theta = np.sum((x - x.mean()) * (y - y.mean())) / np.sum((x - x.mean()) ** 2)
    assert r.theta == pytest.approx(theta)
    assert r.treatment_mean == pytest.approx(ty.mean() - theta * (tx.mean() - x.mean()))
    assert r.control_mean == pytest.approx(cy.mean() - theta * (cx.mean() - x.mean()))
    ref = stats.ttest_ind(ty - theta * (tx - x.mean()), cy - theta * (cx - x.mean()), equal_var=False)
    assert r.p_value == pytest.approx(ref.pvalue)
    # The adjusted interval is far narrower than the raw one, and still covers the true effect of 5.
    assert (r.ci_high - r.ci_low) < 0.5 * (r.unadjusted.ci_high - r.unadjusted.ci_low)
    assert r.ci_low < 5 < r.ci_high
    assert r.variance_reduction > 0.9


def test_peeking_guard_withholds_significance_until_the_horizon():
    early = ev.fixed_horizon_verdict(0.001, {"a": 500, "control": 600}, {"a": 1000, "control": 1000})
    assert early.significant is False
    assert early.horizon_reached is False
    assert early.progress == pytest.approx(0.5)
    assert "planned sample size not reached" in early.warning
    done = ev.fixed_horizon_verdict(0.001, {"a": 1000, "control": 1010}, {"a": 1000, "control": 1000})
    assert (done.significant, done.horizon_reached, done.warning) == (True, True, None)
    assert ev.fixed_horizon_verdict(0.2, {"a": 1000, "control": 1000}, {"a": 1000, "control": 1000}).significant \
        is False


def test_fairness_disparity_ratios_and_four_fifths_flag():
    groups = [
        GroupCounts("18-24", eligible=1000, targeted=300, treatment_n=250, treatment_converted=25,
                    control_n=50, control_converted=3),
        GroupCounts("25-34", eligible=2000, targeted=800, treatment_n=700, treatment_converted=84,
                    control_n=100, control_converted=8),
        GroupCounts("65+", eligible=500, targeted=50),
    ]
    r = ev.fairness("age_band", groups)
    by = {g.group: g for g in r.groups}
    # allocation rates 0.3, 0.4, 0.1; best 0.4
    assert by["18-24"].allocation_ratio == pytest.approx(0.75)
    assert by["25-34"].allocation_ratio == pytest.approx(1.0)
    assert by["65+"].allocation_ratio == pytest.approx(0.25)
    assert [by[g].disparate for g in ("18-24", "25-34", "65+")] == [True, False, True]
    assert r.disparate is True
    assert r.worst_ratio == pytest.approx(0.25)
    # uplift 0.10 - 0.06 = 0.04 and 0.12 - 0.08 = 0.04; 65+ has no experiment data
    assert by["18-24"].uplift == pytest.approx(0.04)
    assert by["25-34"].uplift_ratio == pytest.approx(1.0)
    assert by["65+"].uplift is None
    lenient = ev.fairness("age_band", groups, threshold=0.7)
    assert [g.disparate for g in lenient.groups] == [False, False, True]


def test_gain_and_lift_by_decile_by_hand():
    # 20 customers, scores 20..1; responders at ranks 1, 2, 3, 5, 12 (1-based, by descending score)
    scores = np.arange(20, 0, -1, dtype=float)
    y = np.zeros(20, dtype=int)
    y[[0, 1, 2, 4, 11]] = 1
    pts = ev.gain_lift_by_decile(scores, y)
    assert [p.responders for p in pts] == [2, 1, 1, 0, 0, 1, 0, 0, 0, 0]
    assert pts[0].cumulative_gain == pytest.approx(2 / 5)
    assert pts[2].cumulative_gain == pytest.approx(4 / 5)
    assert pts[9].cumulative_gain == pytest.approx(1.0)
    assert pts[0].lift == pytest.approx((2 / 2) / (5 / 20))  # 4.0
    assert pts[1].cumulative_lift == pytest.approx((3 / 4) / 0.25)  # 3.0
    # shuffled input gives the same curve
    perm = np.random.default_rng(1).permutation(20)
    assert ev.gain_lift_by_decile(scores[perm], y[perm]) == pts


def test_qini_curve_by_hand():
    # 10 customers sorted by score; treated flags and outcomes chosen so each cut is easy to add up.
    scores = np.linspace(1.0, 0.1, 10)
    w = np.array([1, 0, 1, 0, 1, 0, 1, 0, 1, 0])
    y = np.array([1, 0, 1, 0, 1, 1, 0, 0, 0, 1])
    c = ev.qini_curve(scores, w, y, bins=5)
    q = [p.qini for p in c.points]
    # cut 2: Yt=1,Yc=0 -> 1; cut 4: Yt=2,Yc=0 -> 2; cut 6: Yt=3,Yc=1,Nt=3,Nc=3 -> 2;
    # cut 8: Yt=3,Yc=1 -> 2; cut 10: Yt=3,Yc=2,Nt=5,Nc=5 -> 1
    assert q == pytest.approx([0.0, 1.0, 2.0, 2.0, 2.0, 1.0])
    assert [p.random for p in c.points] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    # area between curve and random line: diffs 0, .8, 1.6, 1.4, 1.2, 0; trapezoids of width .2
    assert c.coefficient == pytest.approx(0.2 * (0.4 + 1.2 + 1.5 + 1.3 + 0.6))


def test_evaluate_campaign_composes_everything():
    arms = [
        ArmCounts("a", assigned=4500, sent=4500, delivered=4400, opened=2000, clicked=400, converted=180,
                  revenue=18000.0, cost=900.0, planned_share=0.45, revenue_sq=18000.0 * 150),
        ArmCounts("b", assigned=4400, sent=4400, delivered=4300, opened=1900, clicked=380, converted=150,
                  revenue=15000.0, cost=880.0, planned_share=0.45, revenue_sq=15000.0 * 150),
        ArmCounts("control", assigned=1100, converted=30, revenue=3000.0, is_control=True, planned_share=0.1,
                  revenue_sq=3000.0 * 150),
    ]
    plan = Plan(planned_sizes={"a": 9000, "b": 9000, "control": 2000}, baseline_rate=0.03, target_uplift=0.01)
    r = ev.evaluate_campaign("campaigns/c1", arms, plan=plan)
    assert r.control_arm == "control"
    assert [c.arm_id for c in r.comparisons] == ["a", "b"]
    a = r.comparisons[0]
    assert a.conversion.difference == pytest.approx(180 / 4500 - 30 / 1100)
    assert a.mde_at_launch == pytest.approx(ev.minimum_detectable_effect(9000, 2000, 0.03))
    assert a.power_at_launch == pytest.approx(ev.power_two_proportions(9000, 2000, 0.03, 0.01))
    assert a.verdict is not None and a.verdict.significant is False
    assert a.revenue is not None and a.revenue.difference == pytest.approx(4.0 - 3000 / 1100)
    assert r.totals.assigned == 10_000 and r.totals.converted == 360
    assert r.srm is not None and r.srm.mismatch is False
    assert any("planned sample size not reached" in w for w in r.warnings)


def test_evaluate_campaign_needs_exactly_one_control():
    with pytest.raises(EvaluationError):
        ev.evaluate_campaign("c", [ArmCounts("a", assigned=10), ArmCounts("b", assigned=10)])
