"""Cross-sell hit-rate@3 against the popularity baseline, on synthetic holdings with a known affinity structure.

    python -m bench.cross_sell [--scale small|full]

Synthetic bank: each customer has a persona (traveller, family, saver, investor, student, driver) that sets the
probability of each merchant category in its spend and of each product it holds; one product (a current
account) is held by most customers whatever the persona, so that popularity alone is a fair baseline. The
recommender (services/campaign/recommend.py: association rules + item-based CF) and the popularity baseline are
evaluated on the same held-out split (one held product hidden per test customer), over several seeds;
medians are reported with the ratio, and the rules-only and CF-only variants beside them.
"""

from __future__ import annotations

import random
import sys
import time

from bench.report import append_section, command_line, markdown_table, median, ratio, scale_parser
from services.campaign import recommend

P, C = recommend.PRODUCT_PREFIX, recommend.CATEGORY_PREFIX
# persona -> (category probabilities, product probabilities)
PERSONAS: dict[str, tuple[dict[str, float], dict[str, float]]] = {
    "traveller": ({"travel": 0.9, "dining": 0.7, "fuel": 0.2}, {"credit_card": 0.7, "travel_insurance": 0.5}),
    "family": ({"groceries": 0.95, "education": 0.6, "utilities": 0.8}, {"mortgage": 0.5, "instalment": 0.4,
                                                                         "deposit": 0.3}),
    "saver": ({"groceries": 0.7, "utilities": 0.7}, {"deposit": 0.7, "savings_bond": 0.5}),
    "investor": ({"securities": 0.8, "dining": 0.4}, {"wealth": 0.7, "savings_bond": 0.3, "credit_card": 0.3}),
    "student": ({"education": 0.8, "online": 0.9}, {"consumer_loan": 0.3, "credit_card": 0.2}),
    "driver": ({"fuel": 0.9, "car_services": 0.7}, {"auto_loan": 0.6, "credit_card": 0.3}),
}
POPULAR = ("current_account", 0.75)
NOISE = 0.03  # any product or category at random


def synthetic(n: int, seed: int) -> list[frozenset[str]]:
    rng = random.Random(seed)  # nosec B311 - synthetic data
    products = sorted({p for _, ps in PERSONAS.values() for p in ps} | {POPULAR[0]})
    categories = sorted({c for cs, _ in PERSONAS.values() for c in cs})
    names = sorted(PERSONAS)
    out = []
    for _ in range(n):
        cats, prods = PERSONAS[rng.choice(names)]
        items = {C + c for c, p in cats.items() if rng.random() < p}
        items |= {P + p for p, q in prods.items() if rng.random() < q}
        items |= {P + p for p in products if rng.random() < NOISE}
        items |= {C + c for c in categories if rng.random() < NOISE}
        if rng.random() < POPULAR[1]:
            items.add(P + POPULAR[0])
        out.append(frozenset(items))
    return out


def one(n: int, seed: int, k: int) -> dict[str, float]:
    baskets = synthetic(n, seed)
    started = time.perf_counter()
    model, evaluation = recommend.evaluate(baskets, k=k, test_fraction=0.2, min_support=0.01, min_confidence=0.1,
                                           seed=seed)
    seconds = time.perf_counter() - started
    training, test = recommend.split(baskets, 0.2, seed)
    cases = recommend.hide_one(test, seed + 4)
    trained = recommend.train(training, min_support=0.01, min_confidence=0.1)
    variants = {}
    default = recommend.RULE_WEIGHT
    try:
        for name, weight in (("rules", 1.0), ("cf", 0.0)):
            recommend.RULE_WEIGHT = weight
            variants[name] = sum(h in {P + r.product for r in trained.recommend(rest, k)} for rest, h in cases) / len(
                cases)
    finally:
        recommend.RULE_WEIGHT = default
    return {"hit_rate": evaluation.hit_rate, "popularity": evaluation.popularity_hit_rate,
            "rules_only": variants["rules"], "cf_only": variants["cf"], "seconds": seconds,
            "rules": float(len(model.rules)), "test": float(evaluation.test_customers)}


def main(argv: list[str] | None = None) -> int:
    args = scale_parser("cross-sell hit-rate@3 vs popularity").parse_args(argv)
    n, seeds, k = (5_000, 3, 3) if args.scale == "small" else (100_000, 5, 3)
    runs = [one(n, seed, k) for seed in range(seeds)]
    fig = {key: median([r[key] for r in runs]) for key in runs[0]}
    rows = [
        [f"association rules + item CF (weight {recommend.RULE_WEIGHT})", f"{fig['hit_rate']:.3f}"],
        ["rules only", f"{fig['rules_only']:.3f}"],
        ["item CF only", f"{fig['cf_only']:.3f}"],
        [f"baseline: the {k} most held products the customer lacks", f"{fig['popularity']:.3f}"],
    ]
    lines = [
        f"{n:,} synthetic customers (6 personas, a current account held by {POPULAR[1]:.0%}, {NOISE:.0%} noise), "
        f"20% held out, one held product hidden per test customer ({fig['test']:.0f} cases); medians over "
        f"{seeds} seeds.",
        "",
        *markdown_table(["recommender", f"hit-rate@{k}"], rows),
        "",
        f"- ratio recommender / popularity: {ratio(fig['hit_rate'], fig['popularity']):.2f}",
        f"- {fig['rules']:.0f} rules mined; train + evaluate + retrain {fig['seconds'] * 1000:.0f} ms (median)",
    ]
    print("\n".join(lines))
    append_section(f"Cross-sell hit-rate@{k} ({args.scale})", command_line(argv, "bench.cross_sell"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
