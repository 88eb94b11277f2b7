"""Thompson sampling's pieces: Beta posteriors, P(best) by seeded Monte Carlo against a closed form, the hashed
draw (deterministic, with the stated probabilities), fixed-share probabilities."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from services.campaign import bandit
from services.campaign.domain import Arm, Campaign


def test_posterior_is_a_uniform_prior_updated_by_conversions_per_contact():
    assert bandit.posterior(0, 0) == (1.0, 1.0)
    assert bandit.posterior(3, 10) == (4.0, 8.0)
    assert bandit.posterior(12, 10) == (13.0, 1.0)  # more conversions than contacts (late responses) stays valid


def test_probability_best_matches_numerical_integration():
    a, b = (4.0, 8.0), (2.0, 10.0)
    got = bandit.probability_best(a, b, draws=200_000, seed=1)
    # P(X0 > X1) = integral of f0(x) * F1(x) dx
    exact, _ = integrate.quad(lambda x: stats.beta.pdf(x, a[0], b[0]) * stats.beta.cdf(x, a[1], b[1]), 0, 1)
    assert got[0] == pytest.approx(exact, abs=0.005)
    assert got.sum() == pytest.approx(1.0)
    # Seeded: the same counts always give the same probabilities.
    assert np.array_equal(bandit.probability_best(a, b), bandit.probability_best(a, b))
    assert list(bandit.probability_best([], [])) == [] and list(bandit.probability_best([2.0], [3.0])) == [1.0]


def test_equal_posteriors_share_evenly():
    got = bandit.probability_best([5.0] * 4, [50.0] * 4, draws=100_000)
    assert np.allclose(got, 0.25, atol=0.01)


def test_draw_is_deterministic_and_follows_the_probabilities():
    probabilities = [0.2, 0.5, 0.3]
    assert bandit.draw(probabilities, 0.0) == 0
    assert bandit.draw(probabilities, 0.199) == 0
    assert bandit.draw(probabilities, 0.2) == 1
    assert bandit.draw(probabilities, 0.7) == 2
    assert bandit.draw(probabilities, 0.999999) == 2
    us = np.array([bandit.uniform(bandit.arm_key("c", f"cust{i}")) for i in range(20_000)])
    drawn = bandit.draw_many(probabilities, us)
    assert [int(x) for x in drawn[:50]] == [bandit.draw(probabilities, u) for u in us[:50]]
    shares = np.bincount(drawn, minlength=3) / len(drawn)
    assert np.allclose(shares, probabilities, atol=0.015)
    assert bandit.uniform("x") == bandit.uniform("x") and 0 <= bandit.uniform("y") < 1


def test_fixed_probabilities_are_each_group_s_share():
    campaign = Campaign("c", control_share=0.2, arms=[Arm("a", 0.5, "A"), Arm("b", 0.3, "B")])
    got = bandit.fixed_probabilities(campaign, np.array([-1, 0, 1, 0], dtype=np.int16))
    assert [round(float(x), 9) for x in got] == [0.2, 0.5, 0.3, 0.5]


def test_a_clear_winner_gets_almost_all_traffic():
    alpha, beta = zip(bandit.posterior(60, 200), bandit.posterior(20, 200), strict=True)
    got = bandit.probability_best(alpha, beta)
    assert got[0] > 0.999 and math.isclose(got.sum(), 1.0)
