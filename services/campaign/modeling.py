"""Propensity and uplift models: feature frames, training with cross-validated metrics, scoring.

Pure: no database, no gRPC. A `FeatureSpec` fixes the columns, their kinds and the categories seen in
training, so that scoring builds exactly the frame the model was trained on (an unseen category is missing,
never a new code). Artefacts are LightGBM's own text format plus JSON — no pickle — so a version can be
stored in the database, audited and loaded safely.

Features of one (customer, contact): every customer attribute (numbers and booleans as numbers, text as
categories), age at the contact time (from birth_date), region, the contact's calendar (month, day of month,
weekday), the contact-time `context` facts imported with the history, and the customer's behaviour features
(`feature.<name>`, profile's docs/features.md) as of the contact time: computed by profile from the events that had
occurred and been recorded by then (EventService.BatchGetFeatures), so a later event never leaks into a training
row. Attributes are the profile's current values: they are point-in-time only as far as the bank's attributes do
not change after the contact (features derived from attributes — products from `products_held`, tenure from
`customer_since` — share that limit). A feature column absent for every training row, or equal on every row (a
history without events), is left out of the spec: scoring then never asks profile for it.

Propensity: P(converted | treated), LightGBM on treated rows. Uplift: the two-model method — one model on
treated rows, one on control rows, uplift = difference — trained only from randomised history.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

ALGORITHM = f"lightgbm-{lgb.__version__}"
PARAMS: dict[str, Any] = {
    "objective": "binary", "learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 40,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0,
    "max_cat_to_onehot": 8, "cat_smooth": 20, "verbose": -1, "num_threads": 1, "seed": 7,
    "deterministic": True, "force_row_wise": True,
}
ROUNDS = 300
MAX_CATEGORIES = 200
# Spec columns named "feature.<name>" are profile's behaviour features, fetched as of the contact/decision time.
FEATURE_PREFIX = "feature."


class TrainingError(ValueError):
    """Training cannot proceed (too few rows, one class only...); the message says why."""


@dataclass(frozen=True)
class Example:
    """One history record with the customer's facts, as the frame builder needs them."""

    attributes: dict[str, Any]
    birth_date: date | None
    region: str
    contact_time: datetime
    context: dict[str, str]
    treated: bool = True
    converted: bool = False
    # Behaviour features as of contact_time (profile's BatchGetFeatures): name -> value, absent when not present.
    features: dict[str, float] = field(default_factory=dict)


@dataclass
class FeatureSpec:
    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]

    def to_json(self) -> dict[str, Any]:
        return {"numeric": self.numeric, "categorical": self.categorical}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        return cls(list(data["numeric"]), {k: list(v) for k, v in data["categorical"].items()})


def _raw_features(example: Example) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in example.attributes.items():
        row[f"attr.{name}"] = value
    when = example.contact_time
    if example.birth_date is not None:
        b = example.birth_date
        row["age"] = when.year - b.year - ((when.month, when.day) < (b.month, b.day))
    row["region"] = example.region or None
    row["contact.month"] = str(when.month)
    row["contact.day"] = when.day
    row["contact.weekday"] = str(when.weekday())
    for name, value in example.context.items():
        row[f"context.{name}"] = value
    for name, value in example.features.items():
        row[f"{FEATURE_PREFIX}{name}"] = value
    return row


def event_features(spec: FeatureSpec) -> list[str]:
    """The profile features (names without the prefix) a model reads; empty when it needs none."""
    return [c.removeprefix(FEATURE_PREFIX) for c in spec.columns if c.startswith(FEATURE_PREFIX)]


def _as_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def infer_spec(examples: Sequence[Example]) -> FeatureSpec:
    """Numeric where every present value is a number, categorical otherwise (at most MAX_CATEGORIES levels)."""
    raw = [_raw_features(e) for e in examples]
    names = sorted({k for row in raw for k in row})
    spec = FeatureSpec()
    for name in names:
        values = [row.get(name) for row in raw if row.get(name) not in (None, "")]
        if not values:
            continue
        if name.startswith(FEATURE_PREFIX) and len(values) == len(raw) and len(set(values)) == 1:
            continue  # a feature present and equal on every row (no events at all: zeros) tells nothing
        if name not in ("contact.month", "contact.weekday") and all(_as_number(v) is not None for v in values):
            spec.numeric.append(name)
        else:
            counts = pd.Series([str(v) for v in values]).value_counts()
            spec.categorical[name] = sorted(counts.index[:MAX_CATEGORIES].tolist())
    return spec


def build_frame(examples: Iterable[Example], spec: FeatureSpec) -> pd.DataFrame:
    raw = [_raw_features(e) for e in examples]
    data: dict[str, Any] = {}
    for name in spec.numeric:
        data[name] = np.array([_as_number(row.get(name)) for row in raw], dtype=float)
    for name, levels in spec.categorical.items():
        known = set(levels)  # a category unseen in training is missing (pandas would refuse it in a future version)
        values = [None if (v := row.get(name)) in (None, "") or str(v) not in known else str(v) for row in raw]
        data[name] = pd.Categorical(values, categories=levels)
    return pd.DataFrame(data, columns=spec.columns)


@dataclass
class Metrics:
    auc: float
    auc_std: float
    folds: int
    lift_by_decile: list[float]
    calibration: list[tuple[float, float, int]]
    qini: float
    training_rows: int
    positive_rate: float
    validation: str


@dataclass
class TrainedModel:
    kind: str  # "propensity" | "uplift"
    spec: FeatureSpec
    boosters: dict[str, lgb.Booster]  # "treated" (and "control" for uplift)
    metrics: Metrics

    def score(self, frame: pd.DataFrame, *, threads: int = 1) -> np.ndarray:
        """P(convert) per row (propensity) or the uplift; `threads` > 1 for large batches (a launch partition):
        rows are scored independently, so the numbers do not depend on it."""
        columns = frame[self.spec.columns]
        treated = np.asarray(self.boosters["treated"].predict(columns, num_threads=threads))
        if self.kind == "uplift":
            return treated - np.asarray(self.boosters["control"].predict(columns, num_threads=threads))
        return treated

    def to_artifact(self) -> bytes:
        return json.dumps({
            "kind": self.kind, "spec": self.spec.to_json(),
            "boosters": {k: b.model_to_string() for k, b in self.boosters.items()},
        }).encode()

    @classmethod
    def from_artifact(cls, raw: bytes, metrics: Metrics) -> TrainedModel:
        data = json.loads(raw)
        return cls(kind=data["kind"], spec=FeatureSpec.from_json(data["spec"]),
                   boosters={k: lgb.Booster(model_str=s) for k, s in data["boosters"].items()}, metrics=metrics)


def _fit(frame: pd.DataFrame, labels: np.ndarray, spec: FeatureSpec) -> lgb.Booster:
    dataset = lgb.Dataset(frame, label=labels, categorical_feature=list(spec.categorical) or "auto",
                          free_raw_data=True)
    return lgb.train(PARAMS, dataset, num_boost_round=ROUNDS)


def _check_labels(labels: np.ndarray, what: str, folds: int) -> None:
    positives = int(labels.sum())
    if len(labels) < 10 * folds or positives < folds or len(labels) - positives < folds:
        raise TrainingError(f"{what}: {len(labels)} rows with {positives} conversions are too few to train and "
                            f"validate with {folds} folds")


def _lift_and_calibration(scores: np.ndarray, labels: np.ndarray) -> tuple[list[float], list[tuple[float, float, int]]]:
    order = np.argsort(-scores, kind="stable")
    base = labels.mean() or 1.0
    lift = [float(labels[chunk].mean() / base) if len(chunk) else 0.0 for chunk in np.array_split(order, 10)]
    calibration = []
    for chunk in np.array_split(np.argsort(scores, kind="stable"), 10):
        if len(chunk):
            calibration.append((float(scores[chunk].mean()), float(labels[chunk].mean()), len(chunk)))
    return lift, calibration


def qini_coefficient(uplift: np.ndarray, treated: np.ndarray, converted: np.ndarray) -> float:
    """Area between the Qini curve and the random-targeting line, divided by the number of treated."""
    order = np.argsort(-uplift, kind="stable")
    t, y = treated[order].astype(float), converted[order].astype(float)
    n_t, n_c = np.cumsum(t), np.cumsum(1 - t)
    y_t, y_c = np.cumsum(y * t), np.cumsum(y * (1 - t))
    with np.errstate(divide="ignore", invalid="ignore"):
        curve = y_t - np.where(n_c > 0, y_c * n_t / n_c, 0.0)
    random_line = np.linspace(0, curve[-1], len(curve))
    return float((curve - random_line).sum() / max(t.sum(), 1.0) / len(curve))


def train(examples: Sequence[Example], kind: str = "propensity", folds: int = 5, seed: int = 7) -> TrainedModel:
    if kind not in ("propensity", "uplift"):
        raise TrainingError(f"unknown model kind {kind!r}")
    if not 2 <= folds <= 10:
        raise TrainingError("folds must be between 2 and 10")
    spec = infer_spec(examples)
    if not spec.columns:
        raise TrainingError("the history carries no features to learn from")
    frame = build_frame(examples, spec)
    treated = np.array([e.treated for e in examples])
    converted = np.array([e.converted for e in examples], dtype=float)
    if kind == "propensity":
        labels = converted[treated]
        frame_t = frame[treated].reset_index(drop=True)
        _check_labels(labels, "treated history", folds)
        oof = np.zeros(len(labels))
        aucs = []
        for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(frame_t, labels):
            booster = _fit(frame_t.iloc[train_idx], labels[train_idx], spec)
            oof[test_idx] = booster.predict(frame_t.iloc[test_idx])
            aucs.append(roc_auc_score(labels[test_idx], oof[test_idx]))
        lift, calibration = _lift_and_calibration(oof, labels)
        metrics = Metrics(float(np.mean(aucs)), float(np.std(aucs)), folds, lift, calibration, 0.0, len(labels),
                          float(labels.mean()), f"{folds}-fold stratified cross-validation on treated history")
        return TrainedModel(kind, spec, {"treated": _fit(frame_t, labels, spec)}, metrics)

    # Uplift: two models; validated by out-of-fold uplift scores on every row.
    if treated.all() or not treated.any():
        raise TrainingError("uplift needs randomised history with both treated and control customers")
    _check_labels(converted[treated], "treated history", folds)
    _check_labels(converted[~treated], "control history", folds)
    strata = treated.astype(int) * 2 + converted.astype(int)
    oof_t, oof_c = np.zeros(len(examples)), np.zeros(len(examples))
    aucs = []
    for train_idx, test_idx in StratifiedKFold(folds, shuffle=True, random_state=seed).split(frame, strata):
        tr_t = train_idx[treated[train_idx]]
        tr_c = train_idx[~treated[train_idx]]
        booster_t = _fit(frame.iloc[tr_t], converted[tr_t], spec)
        booster_c = _fit(frame.iloc[tr_c], converted[tr_c], spec)
        oof_t[test_idx] = booster_t.predict(frame.iloc[test_idx])
        oof_c[test_idx] = booster_c.predict(frame.iloc[test_idx])
        te_t = test_idx[treated[test_idx]]
        aucs.append(roc_auc_score(converted[te_t], oof_t[te_t]))
    uplift = oof_t - oof_c
    lift, calibration = _lift_and_calibration(oof_t[treated], converted[treated])
    metrics = Metrics(float(np.mean(aucs)), float(np.std(aucs)), folds, lift, calibration,
                      qini_coefficient(uplift, treated, converted), len(examples), float(converted.mean()),
                      f"{folds}-fold cross-validation stratified by group and outcome")
    boosters = {"treated": _fit(frame[treated], converted[treated], spec),
                "control": _fit(frame[~treated], converted[~treated], spec)}
    return TrainedModel(kind, spec, boosters, metrics)


def metrics_to_json(metrics: Metrics) -> dict[str, Any]:
    return {**metrics.__dict__, "calibration": [list(c) for c in metrics.calibration]}


def metrics_from_json(data: dict[str, Any]) -> Metrics:
    return Metrics(**{**data, "calibration": [tuple(c) for c in data["calibration"]]})


def _numeric_column(values: Sequence[Any]) -> np.ndarray:
    """_as_number of every value, vectorised where the column holds numbers, booleans and None only."""
    items = list(values)
    if {type(v) for v in items} <= {float, int, bool, type(None)}:
        return np.array(items, dtype=float)  # None -> NaN, True -> 1.0, as _as_number
    return np.array([np.nan if (x := _as_number(v)) is None else x for v in items], dtype=float)


def _categorical_column(values: Sequence[Any], levels: list[str]) -> pd.Categorical:
    """build_frame's categorical value of every value: None for None and "", else its text."""
    items = list(values)
    known = set(levels)
    if len({type(v) for v in items} - {type(None)}) <= 1:  # one kind: equal values have equal texts
        codes, uniques = pd.factorize(np.asarray(items, dtype=object), use_na_sentinel=True)
        texts = np.array([*(str(u) if str(u) in known and u != "" else None for u in uniques.tolist()), None],
                         dtype=object)
        if int((codes < 0).sum()) == sum(1 for v in items if v is None):  # no NaN taken for None
            return pd.Categorical(texts[codes], categories=levels)
    return pd.Categorical([None if v in (None, "") or str(v) not in known else str(v) for v in items],
                          categories=levels)


def frame_from_columns(spec: FeatureSpec, columns: Mapping[str, Sequence[Any]], n: int, *, ages: np.ndarray,
                       regions: Sequence[Any], contact_time: datetime) -> pd.DataFrame:
    """build_frame for a batch of customers given column by column (a launch partition: the audience export's
    columns by field name, ages in whole years at `contact_time`, NaN where unknown), without an Example per
    customer: the same frame, value for value, as build_frame of the corresponding Examples with no context."""
    def source(name: str) -> Sequence[Any] | None:
        if name in columns:
            return columns[name]
        if name == "age":
            known = np.isfinite(ages) & (ages >= 0) & (ages <= 150)
            return list(np.where(known, np.floor(np.where(known, ages, 0)), np.nan))
        if name == "region":
            return [r or None for r in regions]
        calendar = {"contact.month": str(contact_time.month), "contact.day": contact_time.day,
                    "contact.weekday": str(contact_time.weekday())}
        if name in calendar:
            return [calendar[name]] * n
        return None

    data: dict[str, Any] = {}
    for name in spec.numeric:
        values = source(name)
        data[name] = np.full(n, np.nan) if values is None else _numeric_column(values)
    for name, levels in spec.categorical.items():
        values = source(name)
        data[name] = pd.Categorical([None] * n if values is None else _categorical_column(values, levels),
                                    categories=levels)
    return pd.DataFrame(data, columns=spec.columns)
