"""Churn: who is about to leave (docs/recommendations.md). Pure: no database, no gRPC.

Label, point-in-time: the population is the customers with a debit transaction in the 365 days before the
cut-off (profile's `recency_days` is present at the cut-off); a customer *churned* when profile's features as of
cut-off + horizon show no debit transaction after the cut-off: `recency_days` absent or >= horizon_days.
Features: every numeric feature profile's GetFeatures returns as of the cut-off (recency, frequency and its
trend against the previous 90 days, monetary, spend by category and channel, products held, tenure,
repayments and lateness, digital activity, campaign responses incl. declines) — nothing after the cut-off.

Model: LightGBM with the platform's parameters (modeling.py), validated by stratified k-fold cross-validation;
its metrics (AUC, lift by decile, calibration) are the registry's `Metrics`. Scoring: a customer with no debit
transaction in the last 365 days is already inactive: probability 1.0, risk "high".

Tiers of the `churn_risk` tag: probability < LOW_BELOW "low", < HIGH_FROM "medium", else "high".
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from services.campaign import modeling

DEFAULT_HORIZON_DAYS = 90
LOW_BELOW = 0.3
HIGH_FROM = 0.6
TAG_NAME = "churn_risk"
KIND = "churn"


def is_active(features: Mapping[str, float]) -> bool:
    """In the population: a debit transaction in the 365 days before the point in time."""
    return features.get("recency_days") is not None


def churned(features_after: Mapping[str, float], horizon_days: int) -> bool:
    """The label, from the features as of cut-off + horizon: no debit transaction in (cut-off, cut-off + h]."""
    recency = features_after.get("recency_days")
    return recency is None or recency >= horizon_days


def risk_tier(probability: float) -> str:
    if probability < LOW_BELOW:
        return "low"
    return "medium" if probability < HIGH_FROM else "high"


@dataclass(frozen=True)
class ChurnExample:
    features: Mapping[str, float]
    churned: bool


def feature_names(rows: Sequence[Mapping[str, float]]) -> list[str]:
    return sorted({name for row in rows for name, value in row.items()
                   if isinstance(value, (int, float)) and math.isfinite(value)})


def frame(rows: Sequence[Mapping[str, float]], columns: Sequence[str]) -> pd.DataFrame:
    data = {c: np.array([float(r[c]) if c in r else np.nan for r in rows], dtype=float) for c in columns}
    return pd.DataFrame(data, columns=list(columns))


def train(examples: Sequence[ChurnExample], folds: int = 5, seed: int = 7) -> modeling.TrainedModel:
    if not 2 <= folds <= 10:
        raise modeling.TrainingError("folds must be between 2 and 10")
    columns = feature_names([e.features for e in examples])
    if not columns:
        raise modeling.TrainingError("the customers carry no features to learn from")
    labels = np.array([e.churned for e in examples], dtype=float)
    modeling._check_labels(labels, "churn population", folds)
    x = frame([e.features for e in examples], columns)
    spec = modeling.FeatureSpec(numeric=columns)
    oof = np.zeros(len(labels))
    aucs = []
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
        booster = modeling._fit(x.iloc[train_idx], labels[train_idx], spec)
        oof[test_idx] = booster.predict(x.iloc[test_idx])
        aucs.append(roc_auc_score(labels[test_idx], oof[test_idx]))
    lift, calibration = modeling._lift_and_calibration(oof, labels)
    metrics = modeling.Metrics(float(np.mean(aucs)), float(np.std(aucs)), folds, lift, calibration, 0.0,
                               len(labels), float(labels.mean()),
                               f"{folds}-fold stratified cross-validation on the active customers at the cut-off")
    return modeling.TrainedModel(KIND, spec, {"treated": modeling._fit(x, labels, spec)}, metrics)


def score(model: modeling.TrainedModel, rows: Sequence[Mapping[str, float]]) -> list[float]:
    """Churn probabilities; 1.0 for a customer already inactive (no debit transaction in 365 days)."""
    if not rows:
        return []
    booster: lgb.Booster = model.boosters["treated"]
    predicted = np.asarray(booster.predict(frame(rows, model.spec.columns)))
    return [1.0 if not is_active(r) else float(p) for r, p in zip(rows, predicted, strict=True)]


# --- the win-back campaign template -------------------------------------------------------------------------
WINBACK_SEGMENT_ID = "churn-risk-high"
WINBACK_CONDITION = f'tag.{TAG_NAME} = "high"'
WINBACK_CONTROL_SHARE = 0.1


@dataclass(frozen=True)
class WinbackPreset:
    """A win-back campaign: the dynamic segment of customers whose churn_risk tag is "high", the offers and
    channels given, and a randomised control group, so that (1) launch scores each member by the offer's
    champion *uplift* model when one exists (uplift-aware selection: money goes to customers the contact
    persuades, not to those who would stay anyway or leave anyway), and (2) its own history trains the next
    uplift model."""

    segment_id: str
    condition: str
    campaign_id: str
    display_name: str
    description: str
    offer_ids: tuple[str, ...]
    channels: tuple[int, ...]
    control_share: float


def winback_preset(campaign_id: str, offer_ids: Sequence[str], channels: Sequence[int],
                   control_share: float = WINBACK_CONTROL_SHARE) -> WinbackPreset:
    if not offer_ids or not channels:
        raise ValueError("a win-back campaign needs at least one offer and one channel")
    if not 0 < control_share < 1:
        raise ValueError("the control share must be in (0, 1): uplift needs a randomised control group")
    return WinbackPreset(
        WINBACK_SEGMENT_ID, WINBACK_CONDITION, campaign_id, "Win-back: high churn risk",
        "Win-back preset (docs/recommendations.md): audience tag.churn_risk = \"high\" (refreshed by "
        "ScoreChurn with write_tags); members scored by the offer's champion uplift model when there is one; "
        f"{control_share:.0%} randomised control to measure and learn the uplift.",
        tuple(offer_ids), tuple(channels), control_share)
