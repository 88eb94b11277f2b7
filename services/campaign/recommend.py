"""Cross-sell recommendations: association rules and item-based collaborative filtering (docs/recommendations.md).

Pure: no database, no gRPC. A customer is a *basket* of items: the products held ("product:credit_card", from
profile's products_held) and the merchant categories of the last year's spend ("category:travel", from the
spend_category_<c>_365d features). Only products are recommended; categories are evidence.

- Association rules A => c (|A| is 1 or 2, c a product): support = P(A and c), confidence = P(c | A),
  lift = confidence / P(c), mined on the training customers with a minimum support and confidence.
- Item-based collaborative filtering: the cosine similarity of two items' customer vectors; the CF score of a
  product is the mean similarity between it and the customer's items (in [0, 1]).
- The score of a product the customer does not hold: RULE_WEIGHT x (the best confidence among the rules that
  fire, or the product's prior P(c) when none does) + (1 - RULE_WEIGHT) x CF score.

`evaluate` measures hit-rate@k on held-out customers (one held product hidden per customer, recommended from
the rest of the basket) beside a popularity baseline (the k most held products the customer lacks), in the
same run, on the same split.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np

PRODUCT_PREFIX = "product:"
CATEGORY_PREFIX = "category:"
RULE_WEIGHT = 0.6
MAX_RULES_PER_PRODUCT = 3
MAX_SIMILAR_ITEMS = 3
SPEND_FEATURE_PREFIX = "spend_category_"
SPEND_FEATURE_SUFFIX = "_365d"


class RecommenderError(ValueError):
    """Training cannot proceed (too few customers or products); the message says why."""


def basket_from_features(products_held: Iterable[str], features: Mapping[str, float]) -> frozenset[str]:
    """The items of one customer from profile's GetFeatures answer."""
    items = {PRODUCT_PREFIX + p for p in products_held if p}
    for name, value in features.items():
        if name.startswith(SPEND_FEATURE_PREFIX) and name.endswith(SPEND_FEATURE_SUFFIX) and value > 0:
            items.add(CATEGORY_PREFIX + name[len(SPEND_FEATURE_PREFIX):-len(SPEND_FEATURE_SUFFIX)])
    return frozenset(items)


def product_name(item: str) -> str:
    return item.removeprefix(PRODUCT_PREFIX)


@dataclass(frozen=True)
class Rule:
    antecedent: tuple[str, ...]
    consequent: str
    support: float
    confidence: float
    lift: float


@dataclass(frozen=True)
class Recommendation:
    product: str  # the product name, without the "product:" prefix
    score: float
    rules: tuple[Rule, ...]
    similar_items: tuple[tuple[str, float], ...]
    cf_score: float


@dataclass
class Recommender:
    items: list[str]
    prior: list[float]  # P(item) on the training customers
    rules: list[Rule]
    similarity: list[list[float]]  # cosine similarity, items x items
    training_customers: int
    _index: dict[str, int] = field(init=False, repr=False)
    _rules_by_consequent: dict[str, list[Rule]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._index = {item: i for i, item in enumerate(self.items)}
        self._rules_by_consequent = {}
        for rule in sorted(self.rules, key=lambda r: (-r.confidence, -r.lift, r.antecedent)):
            self._rules_by_consequent.setdefault(rule.consequent, []).append(rule)

    @property
    def products(self) -> list[str]:
        return [i for i in self.items if i.startswith(PRODUCT_PREFIX)]

    def recommend(self, basket: Iterable[str], k: int) -> list[Recommendation]:
        held = frozenset(basket)
        known = [self._index[i] for i in held if i in self._index]
        out: list[Recommendation] = []
        for product in self.products:
            if product in held:
                continue
            j = self._index[product]
            fired = tuple(r for r in self._rules_by_consequent.get(product, ()) if set(r.antecedent) <= held)
            rule_part = max([r.confidence for r in fired] + [self.prior[j]])
            sims = sorted(((self.items[i], self.similarity[i][j]) for i in known), key=lambda s: (-s[1], s[0]))
            cf = float(np.mean([s for _, s in sims])) if sims else 0.0
            score = RULE_WEIGHT * rule_part + (1 - RULE_WEIGHT) * cf
            out.append(Recommendation(product_name(product), round(score, 6), fired[:MAX_RULES_PER_PRODUCT],
                                      tuple((i, round(s, 6)) for i, s in sims[:MAX_SIMILAR_ITEMS] if s > 0),
                                      round(cf, 6)))
        out.sort(key=lambda r: (-r.score, r.product))
        return out[:k]

    def to_artifact(self) -> bytes:
        return json.dumps({
            "items": self.items, "prior": self.prior, "training_customers": self.training_customers,
            "rules": [[list(r.antecedent), r.consequent, r.support, r.confidence, r.lift] for r in self.rules],
            "similarity": self.similarity,
        }).encode()

    @classmethod
    def from_artifact(cls, raw: bytes) -> Recommender:
        data = json.loads(raw)
        return cls(items=data["items"], prior=data["prior"], training_customers=data["training_customers"],
                   rules=[Rule(tuple(a), c, s, conf, lift) for a, c, s, conf, lift in data["rules"]],
                   similarity=data["similarity"])


def train(baskets: Sequence[frozenset[str]], *, min_support: float = 0.01,
          min_confidence: float = 0.1) -> Recommender:
    if not 0 < min_support < 1 or not 0 < min_confidence < 1:
        raise RecommenderError("min_support and min_confidence must be between 0 and 1")
    baskets = [b for b in baskets if b]
    if len(baskets) < 10:
        raise RecommenderError(f"{len(baskets)} customers with holdings or spend are too few to mine rules from")
    items = sorted({i for b in baskets for i in b})
    if not any(i.startswith(PRODUCT_PREFIX) for i in items):
        raise RecommenderError("no customer holds a product: nothing to recommend")
    index = {item: i for i, item in enumerate(items)}
    matrix = np.zeros((len(baskets), len(items)), dtype=np.float64)
    for row, basket in enumerate(baskets):
        matrix[row, [index[i] for i in basket]] = 1.0
    n = float(len(baskets))
    prior = matrix.mean(axis=0)
    co = matrix.T @ matrix / n  # P(i and j)
    norms = np.sqrt(np.outer(prior, prior))
    with np.errstate(divide="ignore", invalid="ignore"):
        similarity = np.where(norms > 0, co / norms, 0.0)
    np.fill_diagonal(similarity, 0.0)
    products = [index[i] for i in items if i.startswith(PRODUCT_PREFIX)]
    rules: list[Rule] = []

    def add(antecedent: tuple[int, ...], support_a: float, consequent: int, support_ac: float) -> None:
        if support_ac < min_support or support_a <= 0:
            return
        confidence = support_ac / support_a
        if confidence < min_confidence:
            return
        rules.append(Rule(tuple(items[a] for a in antecedent), items[consequent], round(support_ac, 6),
                          round(confidence, 6), round(confidence / prior[consequent], 6)))

    frequent = [i for i in range(len(items)) if prior[i] >= min_support]
    for a in frequent:
        for c in products:
            if c != a:
                add((a,), prior[a], c, co[a, c])
    for a, b in combinations(frequent, 2):
        pair = matrix[:, a] * matrix[:, b]
        support_ab = pair.mean()
        if support_ab < min_support:
            continue
        joint = pair @ matrix / n
        for c in products:
            if c not in (a, b):
                add((a, b), support_ab, c, joint[c])
    return Recommender(items=items, prior=[round(float(p), 6) for p in prior], rules=rules,
                       similarity=np.round(similarity, 6).tolist(), training_customers=len(baskets))


@dataclass(frozen=True)
class Evaluation:
    k: int
    hit_rate: float
    popularity_hit_rate: float
    training_customers: int
    test_customers: int
    rules: int
    validation: str


def split(baskets: Sequence[frozenset[str]], test_fraction: float, seed: int = 7
          ) -> tuple[list[frozenset[str]], list[frozenset[str]]]:
    order = list(range(len(baskets)))
    random.Random(seed).shuffle(order)  # noqa: S311  # nosec B311 - a reproducible split, not security
    cut = round(len(order) * test_fraction)
    return [baskets[i] for i in order[cut:]], [baskets[i] for i in order[:cut]]


def hide_one(baskets: Sequence[frozenset[str]], seed: int = 11) -> list[tuple[frozenset[str], str]]:
    """Per test customer holding a product and at least one other item: (the rest of the basket, the hidden
    product)."""
    rng = random.Random(seed)  # noqa: S311  # nosec B311 - a reproducible choice, not security
    out = []
    for basket in baskets:
        held = sorted(i for i in basket if i.startswith(PRODUCT_PREFIX))
        if held and len(basket) >= 2:
            hidden = rng.choice(held)
            out.append((basket - {hidden}, hidden))
    return out


def popularity(prior_items: Sequence[str], prior: Sequence[float], basket: frozenset[str], k: int) -> list[str]:
    ranked = sorted(((p, i) for i, p in zip(prior_items, prior, strict=True) if i.startswith(PRODUCT_PREFIX)
                     and i not in basket), key=lambda t: (-t[0], t[1]))
    return [i for _, i in ranked[:k]]


def evaluate(baskets: Sequence[frozenset[str]], *, k: int = 3, test_fraction: float = 0.2,
             min_support: float = 0.01, min_confidence: float = 0.1, seed: int = 7
             ) -> tuple[Recommender, Evaluation]:
    """Trains on a split, measures hit-rate@k of the recommender and of the popularity baseline on the held-out
    customers, and returns the model retrained on every customer with those held-out metrics."""
    if not 0 < test_fraction <= 0.5:
        raise RecommenderError("test_fraction must be in (0, 0.5]")
    training, test = split(baskets, test_fraction, seed)
    model = train(training, min_support=min_support, min_confidence=min_confidence)
    cases = hide_one(test, seed + 4)
    if not cases:
        raise RecommenderError("no held-out customer holds a product besides another item: cannot evaluate")
    hits = sum(hidden in {PRODUCT_PREFIX + r.product for r in model.recommend(rest, k)} for rest, hidden in cases)
    pop_hits = sum(hidden in popularity(model.items, model.prior, rest, k) for rest, hidden in cases)
    final = train(baskets, min_support=min_support, min_confidence=min_confidence)
    evaluation = Evaluation(k, hits / len(cases), pop_hits / len(cases), len(training), len(cases),
                            len(final.rules),
                            f"hit-rate@{k}: one held product hidden per customer on a {test_fraction:.0%} held-out "
                            f"split (seed {seed}); baseline: the {k} most held products the customer lacks")
    return final, evaluation
