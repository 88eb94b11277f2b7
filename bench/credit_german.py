"""Credit PD scorecard on the Statlog German credit data, beside a plain scikit-learn logistic regression.

    python -m bench.credit_german [--scale small|full]

Repeated stratified 5-fold cross-validation (small: 3 repeats, full: 10): each model is trained on four folds
and scores the fifth. Reported per model: AUC (mean over the five folds), Brier score, and the average cost
under the codebook's matrix (approving a bad applicant costs 5, rejecting a good one 1) when an applicant is
approved iff PD < 1/6 -- the Bayes decision for calibrated probabilities (approve when 5 * PD < 1 - PD). Both
models are held to the same rule, so the cost also rewards calibration. Medians over repeats; ratio = scorecard
/ baseline. The data set is read from ../shared/data/german_credit/german.data (skips if absent).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from bench.report import append_section, command_line, markdown_table, median, ratio, scale_parser
from services.risk.credit import train_pd_model

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("LODESTAR_SHARED_DATA", ROOT.parent / "shared" / "data")) / "german_credit" / "german.data"

# The codebook's 20 attributes, in file order, then the class (1 good, 2 bad).
COLUMNS = [
    "checking_account", "duration_months", "credit_history", "purpose", "credit_amount", "savings",
    "employment_since", "installment_rate", "personal_status", "other_debtors", "residence_since", "property",
    "age", "other_installment_plans", "housing", "existing_credits", "job", "dependents", "telephone",
    "foreign_worker", "class",
]
CATEGORICAL = [
    "checking_account", "credit_history", "purpose", "savings", "employment_since", "personal_status",
    "other_debtors", "property", "other_installment_plans", "housing", "job", "telephone", "foreign_worker",
]
NUMERIC = [c for c in COLUMNS[:-1] if c not in CATEGORICAL]
FEATURES = COLUMNS[:-1]
COST_BAD_APPROVED = 5.0
COST_GOOD_REJECTED = 1.0
THRESHOLD = COST_GOOD_REJECTED / (COST_GOOD_REJECTED + COST_BAD_APPROVED)  # 1/6


def load(path: Path = DATA) -> pd.DataFrame:
    frame = pd.read_csv(path, sep=r"\s+", header=None, names=COLUMNS)
    frame["bad"] = frame.pop("class") == 2
    return frame


def average_cost(bad: np.ndarray, pd_values: np.ndarray, threshold: float = THRESHOLD) -> float:
    approve = pd_values < threshold
    cost = COST_BAD_APPROVED * (approve & bad).sum() + COST_GOOD_REJECTED * (~approve & ~bad).sum()
    return float(cost / len(bad))


def baseline() -> Pipeline:
    """One-hot + scaling, default LogisticRegression: the plain model a data scientist writes first."""
    return Pipeline(
        [
            ("prep", ColumnTransformer([("cat", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
                                        ("num", StandardScaler(), NUMERIC)])),
            ("lr", LogisticRegression()),
        ]
    )


def one_repeat(frame: pd.DataFrame, seed: int) -> dict[str, dict[str, float]]:
    y = frame["bad"].to_numpy()
    preds = {"scorecard": np.empty(len(y)), "baseline": np.empty(len(y))}
    aucs: dict[str, list[float]] = {"scorecard": [], "baseline": []}
    seconds: dict[str, float] = {"scorecard": 0.0, "baseline": 0.0}
    for train_idx, test_idx in StratifiedKFold(5, shuffle=True, random_state=seed).split(frame, y):
        train, test = frame.iloc[train_idx], frame.iloc[test_idx]
        started = time.perf_counter()
        model = train_pd_model(train, "bad", features=FEATURES, categorical=CATEGORICAL, random_state=seed)
        seconds["scorecard"] += time.perf_counter() - started
        preds["scorecard"][test_idx] = model.score_frame(test)["pd"].to_numpy()
        started = time.perf_counter()
        lr = baseline().fit(train[FEATURES], y[train_idx])
        seconds["baseline"] += time.perf_counter() - started
        preds["baseline"][test_idx] = lr.predict_proba(test[FEATURES])[:, 1]
        for name in preds:
            aucs[name].append(roc_auc_score(y[test_idx], preds[name][test_idx]))
    return {
        name: {
            "auc": float(np.mean(aucs[name])),
            "cost": average_cost(y, preds[name]),
            "brier": float(brier_score_loss(y, preds[name])),
            "fit_seconds": seconds[name] / 5,
        }
        for name in preds
    }


def main(argv: list[str] | None = None) -> int:
    parser = scale_parser(__doc__.splitlines()[0] if __doc__ else "credit benchmark")
    args = parser.parse_args(argv)
    if not DATA.is_file():
        print(f"skipped: the German credit data set is absent ({DATA}); see ../shared/data/README.md")
        return 0
    frame = load()
    repeats = 3 if args.scale == "small" else 10
    runs = [one_repeat(frame, seed) for seed in range(repeats)]
    figures = {
        name: {metric: median([r[name][metric] for r in runs]) for metric in ("auc", "cost", "brier", "fit_seconds")}
        for name in ("scorecard", "baseline")
    }
    rows = [
        [name, f"{f['auc']:.4f}", f"{f['cost']:.4f}", f"{f['brier']:.4f}", f"{f['fit_seconds'] * 1000:.0f}"]
        for name, f in (("WoE scorecard + Platt (services.risk.credit)", figures["scorecard"]),
                        ("baseline: one-hot + scaling + LogisticRegression()", figures["baseline"]))
    ]
    auc_ratio = ratio(figures["scorecard"]["auc"], figures["baseline"]["auc"])
    cost_ratio = ratio(figures["scorecard"]["cost"], figures["baseline"]["cost"])
    lines = [
        f"German credit ({len(frame)} applicants, {int(frame['bad'].sum())} bad), stratified 5-fold CV x {repeats} "
        f"repeats, medians over repeats. Approve iff PD < 1/6; cost 5 per approved bad, 1 per rejected good.",
        "",
        *markdown_table(["model", "AUC", "avg cost", "Brier", "fit ms (per fold)"], rows),
        "",
        f"- ratio scorecard / baseline: AUC {auc_ratio:.3f}, average cost {cost_ratio:.3f} (lower cost is better)",
        f"- reference: rejecting everyone costs {1 - frame['bad'].mean():.3f}, approving everyone "
        f"{COST_BAD_APPROVED * frame['bad'].mean():.3f}",
    ]
    print("\n".join(lines))
    append_section("Credit PD scorecard on German credit", command_line(argv, "bench.credit_german"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
