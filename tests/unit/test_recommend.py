"""Cross-sell: baskets, association rules (support, confidence, lift), item-based CF, held-out evaluation."""

import random

import pytest

from services.campaign import recommend
from services.campaign.recommend import CATEGORY_PREFIX as C
from services.campaign.recommend import PRODUCT_PREFIX as P


def test_basket_from_features_takes_products_and_yearly_spend_categories():
    basket = recommend.basket_from_features(
        ["credit_card", ""], {"spend_category_travel_365d": 120.0, "spend_category_groceries_365d": 0.0,
                              "spend_category_dining_30d": 50.0, "recency_days": 3.0})
    assert basket == {P + "credit_card", C + "travel"}


def small_baskets():
    # 10 customers: travel spenders hold credit cards (4 of 5); nobody else does but one.
    baskets = [frozenset({C + "travel", P + "credit_card"})] * 4 + [frozenset({C + "travel"})]
    baskets += [frozenset({P + "deposit"})] * 4 + [frozenset({P + "deposit", P + "credit_card"})]
    return baskets


def test_rule_measures_are_exact():
    model = recommend.train(small_baskets(), min_support=0.1, min_confidence=0.1)
    rule = next(r for r in model.rules if r.antecedent == (C + "travel",) and r.consequent == P + "credit_card")
    assert rule.support == pytest.approx(0.4)  # 4 of 10 hold both
    assert rule.confidence == pytest.approx(0.8)  # 4 of the 5 travel spenders
    assert rule.lift == pytest.approx(0.8 / 0.5)  # P(credit_card) = 5/10
    # Categories are never consequents; rules below the minimum support are not kept.
    assert all(r.consequent.startswith(P) for r in model.rules)
    assert not any(r.antecedent == (P + "credit_card",) and r.consequent == P + "deposit" and r.support < 0.1
                   for r in model.rules)


def test_recommend_skips_held_products_and_shows_the_rule_that_fired():
    model = recommend.train(small_baskets(), min_support=0.1, min_confidence=0.1)
    recs = model.recommend({C + "travel"}, 3)
    assert recs[0].product == "credit_card"
    top = recs[0]
    assert top.rules[0].antecedent == (C + "travel",) and top.rules[0].confidence == pytest.approx(0.8)
    assert top.similar_items[0][0] == C + "travel" and top.similar_items[0][1] > 0
    assert top.score == pytest.approx(recommend.RULE_WEIGHT * 0.8 + (1 - recommend.RULE_WEIGHT) * top.cf_score,
                                      abs=1e-6)
    assert "credit_card" not in [r.product for r in model.recommend({P + "credit_card"}, 3)]


def test_artifact_round_trip_gives_the_same_recommendations():
    model = recommend.train(small_baskets(), min_support=0.1, min_confidence=0.1)
    again = recommend.Recommender.from_artifact(model.to_artifact())
    assert again.recommend({C + "travel"}, 2) == model.recommend({C + "travel"}, 2)


def test_too_few_customers_or_no_products_is_refused():
    with pytest.raises(recommend.RecommenderError, match="too few"):
        recommend.train([frozenset({P + "a"})] * 3)
    with pytest.raises(recommend.RecommenderError, match="holds a product"):
        recommend.train([frozenset({C + "travel"})] * 20)


def affinity_baskets(n, seed=1):
    """Known structure: travel -> credit_card, salary -> deposit + wealth, car -> consumer_loan; one very popular
    product (current_account) held by most, so that popularity alone guesses it."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        items = set()
        if rng.random() < 0.5:
            items.add(P + "current_account")
        kind = rng.choice(["travel", "salary", "car"])
        items.add(C + kind)
        if kind == "travel" and rng.random() < 0.7:
            items.add(P + "credit_card")
        if kind == "salary":
            if rng.random() < 0.7:
                items.add(P + "deposit")
            if rng.random() < 0.5:
                items.add(P + "wealth")
        if kind == "car" and rng.random() < 0.7:
            items.add(P + "consumer_loan")
        out.append(frozenset(items))
    return out


def test_evaluation_beats_the_popularity_baseline_on_known_affinities():
    model, evaluation = recommend.evaluate(affinity_baskets(600), k=1, test_fraction=0.25)
    assert evaluation.test_customers > 100
    assert evaluation.hit_rate > evaluation.popularity_hit_rate + 0.2
    assert evaluation.training_customers == 450 and evaluation.rules == len(model.rules)
    assert model.training_customers == 600  # the stored model is retrained on everyone


def test_hide_one_hides_a_held_product_only():
    cases = recommend.hide_one([frozenset({C + "travel", P + "a"}), frozenset({C + "x"}), frozenset({P + "b"})])
    assert cases == [(frozenset({C + "travel"}), P + "a")]
