"""The probability-of-default scorecard: WoE bins + logistic regression, Platt-calibrated on held-out folds.

    raw(x)   = intercept + sum_j coef_j * woe_j(x_j)          (coef_j > 0: a riskier bin never lowers the PD)
    logit(x) = slope * raw(x) + shift                          (Platt map fitted on out-of-fold raw scores)
    PD       = 1 / (1 + exp(-logit))
    score    = offset - factor * logit = offset + factor * ln(good:bad odds),
               factor = PDO / ln 2, offset = base_score - factor * ln(base_odds)

Because the calibration is affine in the logit, the score stays a sum of points per feature bin
(points_j = -factor * slope * coef_j * woe_j, plus a base): reason codes are the bins that lost the most points
against the best bin of their feature (the "points below maximum" method of adverse-action notices).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from services.risk.credit.binning import FeatureBinning, as_float, fit_categorical, fit_numeric
from services.risk.credit.errors import CreditDataError, CreditModelFormatError
from services.risk.credit.limits import (
    DEFAULT_LIMIT_BANDS,
    LimitBand,
    LimitBandRule,
    check_bands,
    limit_band,
)
from services.risk.credit.metrics import pd_metrics

FORMAT = "lodestar.risk.credit.pd-scorecard/1"
PD_FLOOR = 1e-9
COEF_EPS = 1e-9


@dataclass(frozen=True)
class ScoreScale:
    """Points to double the odds: `base_score` points at `base_odds` good:bad, +`pdo` points per doubling."""

    base_score: float = 600.0
    base_odds: float = 50.0
    pdo: float = 20.0

    @property
    def factor(self) -> float:
        return self.pdo / math.log(2.0)

    @property
    def offset(self) -> float:
        return self.base_score - self.factor * math.log(self.base_odds)

    def score_for_odds(self, good_bad_odds: float) -> float:
        return self.offset + self.factor * math.log(good_bad_odds)

    def score_for_pd(self, pd_value: float) -> float:
        p = min(max(pd_value, PD_FLOOR), 1.0 - PD_FLOOR)
        return self.score_for_odds((1.0 - p) / p)

    def check(self) -> ScoreScale:
        if not (self.base_odds > 0 and self.pdo > 0 and math.isfinite(self.base_score)):
            raise CreditDataError("scale", "INVALID_SCALE", "base_odds and pdo must be positive, base_score finite")
        return self


@dataclass(frozen=True)
class Reason:
    code: str  # CHECKING_ACCOUNT_A11, DURATION_MONTHS_HIGH, AGE_MISSING
    feature: str
    bin: str  # the bin's label, never the raw value
    points_lost: float  # against the best bin of the feature

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "feature": self.feature, "bin": self.bin, "points_lost": self.points_lost}


@dataclass(frozen=True)
class CreditScore:
    pd: float
    score: float
    reasons: tuple[Reason, ...]
    limit_band: LimitBand

    @property
    def reason_codes(self) -> list[str]:
        return [r.code for r in self.reasons]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pd": self.pd,
            "score": self.score,
            "reasons": [r.to_dict() for r in self.reasons],
            "limit_band": self.limit_band.to_dict(),
        }


@dataclass(frozen=True)
class PdModel:
    binnings: tuple[FeatureBinning, ...]
    coefficients: tuple[float, ...]
    intercept: float
    calibration_slope: float
    calibration_shift: float
    scale: ScoreScale = field(default_factory=ScoreScale)
    limit_bands: tuple[LimitBandRule, ...] = DEFAULT_LIMIT_BANDS
    metadata: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        """The features the model uses (those the training kept), in order."""
        return [b.feature for b in self.binnings]

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))

    # --- scoring ---------------------------------------------------------------------------------------------

    def _points(self, columns: Mapping[str, np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(logit, bin indices [n x features], points [n x features]); one code path for one row and many."""
        factor = self.scale.factor
        logit = np.full(n, self.calibration_slope * self.intercept + self.calibration_shift, dtype=float)
        indices = np.empty((n, len(self.binnings)), dtype=np.int64)
        points = np.empty((n, len(self.binnings)), dtype=float)
        for j, (binning, coef) in enumerate(zip(self.binnings, self.coefficients, strict=True)):
            idx = binning.assign(columns[binning.feature])
            woe = np.asarray([b.woe for b in binning.bins], dtype=float)[idx]
            term = self.calibration_slope * coef * woe
            logit += term
            indices[:, j] = idx
            points[:, j] = -factor * term
        return logit, indices, points

    def _best_points(self) -> list[float]:
        factor = self.scale.factor
        best = []
        for binning, coef in zip(self.binnings, self.coefficients, strict=True):
            observed = [b.woe for b in binning.bins if b.count > 0] or [0.0]
            best.append(-factor * self.calibration_slope * coef * min(observed))
        return best

    def _results(
        self, columns: Mapping[str, np.ndarray], n: int, incomes: Sequence[float | None], max_reasons: int
    ) -> list[CreditScore]:
        logit, indices, points = self._points(columns, n)
        pds = 1.0 / (1.0 + np.exp(-logit))
        scores = self.scale.offset - self.scale.factor * logit
        best = self._best_points()
        out = []
        for i in range(n):
            lost = [(best[j] - points[i, j], j) for j in range(len(self.binnings))]
            adverse = sorted((x for x in lost if x[0] > COEF_EPS), key=lambda x: (-x[0], x[1]))[:max_reasons]
            reasons = tuple(
                Reason(
                    code=(b := self.binnings[j].bins[int(indices[i, j])]).code,
                    feature=self.binnings[j].feature,
                    bin=b.label,
                    points_lost=float(amount),
                )
                for amount, j in adverse
            )
            pd_value = float(min(max(pds[i], PD_FLOOR), 1.0 - PD_FLOOR))
            out.append(CreditScore(pd_value, float(scores[i]), reasons, limit_band(pd_value, incomes[i],
                                                                                    self.limit_bands)))
        return out

    def score(self, record: Mapping[str, Any], *, income: float | None = None, max_reasons: int = 4) -> CreditScore:
        """One applicant. A feature absent from the record is missing (its MISSING bin); other keys are ignored.
        `income` (monthly) turns the limit band's multiple into a maximum limit."""
        columns = {b.feature: np.asarray([record.get(b.feature)], dtype=object) for b in self.binnings}
        return self._results(columns, 1, [income], max_reasons)[0]

    def score_many(
        self, frame: pd.DataFrame, *, income_column: str | None = None, max_reasons: int = 4
    ) -> list[CreditScore]:
        n = len(frame)
        columns = {
            b.feature: (frame[b.feature].to_numpy(dtype=object) if b.feature in frame.columns
                        else np.full(n, None, dtype=object))
            for b in self.binnings
        }
        if income_column is None:
            incomes: list[float | None] = [None] * n
        else:
            if income_column not in frame.columns:
                raise CreditDataError("income_column", "UNKNOWN_COLUMN", f"no column {income_column!r}")
            incomes = [None if pd.isna(v) else float(v) for v in frame[income_column].to_numpy(dtype=object)]
        return self._results(columns, n, incomes, max_reasons)

    def score_frame(
        self, frame: pd.DataFrame, *, income_column: str | None = None, max_reasons: int = 4
    ) -> pd.DataFrame:
        """Many applicants, the same numbers as `score` row by row: columns pd, score, reason_codes,
        limit_band, max_limit, declined; the frame's index."""
        results = self.score_many(frame, income_column=income_column, max_reasons=max_reasons)
        return pd.DataFrame(
            {
                "pd": [r.pd for r in results],
                "score": [r.score for r in results],
                "reason_codes": [r.reason_codes for r in results],
                "limit_band": [r.limit_band.band for r in results],
                "max_limit": [r.limit_band.max_limit for r in results],
                "declined": [r.limit_band.declined for r in results],
            },
            index=frame.index,
        )

    def scorecard(self) -> list[dict[str, Any]]:
        """The points table a person can read: one row per feature bin, plus the base points."""
        factor = self.scale.factor
        rows: list[dict[str, Any]] = [
            {"feature": "(base)", "bin": "", "code": "", "points": self.scale.offset - factor * (
                self.calibration_slope * self.intercept + self.calibration_shift)}
        ]
        for binning, coef in zip(self.binnings, self.coefficients, strict=True):
            for b in binning.bins:
                rows.append({"feature": binning.feature, "bin": b.label, "code": b.code,
                             "points": -factor * self.calibration_slope * coef * b.woe})
        return rows

    # --- serialisation ---------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "metadata": self.metadata,
            "scale": {"base_score": self.scale.base_score, "base_odds": self.scale.base_odds, "pdo": self.scale.pdo},
            "intercept": self.intercept,
            "calibration": {"method": "platt", "slope": self.calibration_slope, "shift": self.calibration_shift},
            "features": [
                {"coefficient": coef, **binning.to_dict()}
                for binning, coef in zip(self.binnings, self.coefficients, strict=True)
            ],
            "limit_bands": [
                {"band": r.band, "max_pd": r.max_pd, "income_multiple": r.income_multiple} for r in self.limit_bands
            ],
            "metrics": self.metrics,
        }

    def to_json(self) -> str:
        """Plain JSON (no pickle): floats are written so that `from_json` restores them bit for bit."""
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> PdModel:
        try:
            data = json.loads(text)
        except (ValueError, TypeError) as exc:
            raise CreditModelFormatError("not valid JSON") from exc
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CreditModelFormatError(f"not a {FORMAT} model")
        try:
            features = data["features"]
            cal = data["calibration"]
            if cal.get("method") != "platt":
                raise ValueError("unknown calibration method")
            scale = data["scale"]
            return cls(
                binnings=tuple(FeatureBinning.from_dict(f) for f in features),
                coefficients=tuple(float(f["coefficient"]) for f in features),
                intercept=float(data["intercept"]),
                calibration_slope=float(cal["slope"]),
                calibration_shift=float(cal["shift"]),
                scale=ScoreScale(float(scale["base_score"]), float(scale["base_odds"]), float(scale["pdo"])).check(),
                limit_bands=check_bands(
                    [LimitBandRule(str(b["band"]), float(b["max_pd"]), float(b["income_multiple"]))
                     for b in data["limit_bands"]],
                    field="model",
                ),
                metadata=dict(data["metadata"]),
                metrics=dict(data["metrics"]),
            )
        except CreditModelFormatError:
            raise
        except CreditDataError as exc:
            raise CreditModelFormatError(exc.description) from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CreditModelFormatError(f"malformed model: {type(exc).__name__}") from exc


# --- training ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Params:
    max_bins: int
    min_bin_share: float
    min_iv: float
    regularization: float


def _labels(frame: pd.DataFrame, label: str) -> np.ndarray:
    if label not in frame.columns:
        raise CreditDataError("label", "UNKNOWN_LABEL", f"no column {label!r} in the training data")
    raw = frame[label]
    if bool(raw.isna().any()):
        raise CreditDataError("label", "INVALID_LABEL", "the label has missing values")
    if raw.dtype == bool:
        y = raw.to_numpy(dtype=np.int64)
    else:
        try:
            y_float = pd.to_numeric(raw, errors="raise").to_numpy(dtype=float)
        except (ValueError, TypeError) as exc:
            raise CreditDataError("label", "INVALID_LABEL", "the label must be boolean (or 0/1)") from exc
        if not np.isin(y_float, (0.0, 1.0)).all():
            raise CreditDataError("label", "INVALID_LABEL", "the label must be boolean (or 0/1)")
        y = y_float.astype(np.int64)
    if len(np.unique(y)) < 2:
        raise CreditDataError("label", "SINGLE_CLASS_LABEL", "the label has one class only: need both outcomes")
    return y


def _fit_core(
    frame: pd.DataFrame, y: np.ndarray, specs: Sequence[tuple[str, bool]], params: _Params
) -> tuple[list[FeatureBinning], list[float], float]:
    """Bins, then a logistic regression on the WoE values; features with a non-positive coefficient (a sign
    flipped by collinearity, which would break monotonicity) are dropped one at a time and the fit repeated."""
    min_count = max(1, math.ceil(params.min_bin_share * len(y)))
    binnings = []
    for feature, categorical in specs:
        values = frame[feature].to_numpy(dtype=object)
        if categorical:
            binnings.append(fit_categorical(feature, values, y, min_count=min_count))
        else:
            binnings.append(fit_numeric(feature, values, y, max_bins=params.max_bins, min_count=min_count))
    kept = [b for b in binnings if b.iv >= params.min_iv and len([x for x in b.bins if x.count]) > 1]
    woe = {b.feature: b.woe_of(frame[b.feature].to_numpy(dtype=object)) for b in kept}
    while kept:
        x = np.column_stack([woe[b.feature] for b in kept])
        lr = LogisticRegression(C=params.regularization, max_iter=1000)
        lr.fit(x, y)
        coefs = lr.coef_[0]
        worst = int(np.argmin(coefs))
        if coefs[worst] > COEF_EPS:
            return kept, [float(c) for c in coefs], float(lr.intercept_[0])
        del kept[worst]
    raise CreditDataError("features", "NO_PREDICTIVE_FEATURES", "no feature separates defaults from non-defaults")


def _raw(binnings: Sequence[FeatureBinning], coefs: Sequence[float], intercept: float, frame: pd.DataFrame
         ) -> np.ndarray:
    raw = np.full(len(frame), intercept, dtype=float)
    for b, c in zip(binnings, coefs, strict=True):
        raw += c * b.woe_of(frame[b.feature].to_numpy(dtype=object))
    return raw


def _platt(raw: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    lr = LogisticRegression(C=1e6, max_iter=1000)
    lr.fit(raw.reshape(-1, 1), y)
    return float(lr.coef_[0][0]), float(lr.intercept_[0])


def train_pd_model(
    frame: pd.DataFrame,
    label: str,
    *,
    features: list[str] | None = None,
    categorical: list[str] | None = None,
    version: str = "1",
    training_window: Mapping[str, str] | None = None,
    scale: ScoreScale | None = None,
    limit_bands: Sequence[LimitBandRule] = DEFAULT_LIMIT_BANDS,
    folds: int = 5,
    max_bins: int = 10,
    min_bin_share: float = 0.05,
    min_iv: float = 0.02,
    regularization: float = 1.0,
    random_state: int = 0,
    created_at: datetime | None = None,
) -> PdModel:
    """Train a calibrated PD scorecard on `frame`, where `label` is True (or 1) for a default.

    features: the columns to use (default: all but the label); categorical: those to bin by category (default:
    the non-numeric ones among the features; a column listed here must be a feature). Metrics are
    cross-validated on `folds` stratified folds; the Platt calibration is fitted on the out-of-fold scores and
    the final bins and coefficients on all rows. Every problem with the inputs raises CreditDataError naming
    the field (label, features, categorical, frame, folds, ...).
    """
    if not isinstance(frame, pd.DataFrame) or frame.empty:
        raise CreditDataError("frame", "EMPTY_TRAINING_SET", "the training data has no rows")
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise CreditDataError("folds", "INVALID_FOLDS", "folds must be a whole number of at least 2")
    if not 0.0 <= min_bin_share < 0.5:
        raise CreditDataError("min_bin_share", "INVALID_PARAMETER", "min_bin_share must be in [0, 0.5)")
    if isinstance(max_bins, bool) or not isinstance(max_bins, int) or max_bins < 2:
        raise CreditDataError("max_bins", "INVALID_PARAMETER", "max_bins must be a whole number of at least 2")
    if not regularization > 0:
        raise CreditDataError("regularization", "INVALID_PARAMETER", "regularization must be positive")
    scale = (scale or ScoreScale()).check()
    bands = check_bands(limit_bands)
    y = _labels(frame, label)
    chosen = list(features) if features is not None else [c for c in frame.columns if c != label]
    if not chosen:
        raise CreditDataError("features", "NO_FEATURES", "at least one feature is required")
    unknown = [f for f in chosen if f not in frame.columns]
    if unknown:
        raise CreditDataError("features", "UNKNOWN_FEATURE", f"no column {unknown[0]!r} in the training data")
    if label in chosen:
        raise CreditDataError("features", "LABEL_AS_FEATURE", "the label cannot be a feature")
    if len(set(chosen)) != len(chosen):
        raise CreditDataError("features", "DUPLICATE_FEATURE", "a feature is listed twice")
    if categorical is None:
        cats = {f for f in chosen if not pd.api.types.is_numeric_dtype(frame[f]) or frame[f].dtype == bool}
    else:
        outside = [c for c in categorical if c not in chosen]
        if outside:
            raise CreditDataError("categorical", "UNKNOWN_FEATURE", f"{outside[0]!r} is not one of the features")
        cats = set(categorical)
    specs = [(f, f in cats) for f in chosen]
    for f, is_cat in specs:
        if not is_cat:
            try:
                as_float(frame[f].to_numpy(dtype=object), f)
            except CreditDataError as exc:
                raise CreditDataError(
                    "categorical", "NON_NUMERIC_FEATURE", f"feature {f!r} is not numeric: declare it categorical"
                ) from exc
    n_bad = int(y.sum())
    if min(n_bad, len(y) - n_bad) < folds:
        raise CreditDataError("label", "TOO_FEW_EVENTS", f"each class needs at least {folds} rows (one per fold)")
    params = _Params(max_bins, min_bin_share, min_iv, regularization)

    # out-of-fold raw scores: every row scored by a model (bins included) that never saw it
    data = frame.reset_index(drop=True)
    fold_of = np.empty(len(y), dtype=np.int64)
    oof = np.empty(len(y), dtype=float)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=random_state)
    for k, (train_idx, test_idx) in enumerate(splitter.split(np.zeros(len(y)), y)):
        fold_of[test_idx] = k
        b, c, i0 = _fit_core(data.iloc[train_idx], y[train_idx], specs, params)
        oof[test_idx] = _raw(b, c, i0, data.iloc[test_idx])
    slope, shift = _platt(oof, y)
    if not slope > 0:
        raise CreditDataError("features", "NO_PREDICTIVE_SIGNAL", "held-out scores do not rank defaults above others")
    # cross-fitted calibration for honest metrics: fold k's PDs come from a Platt map fitted without fold k
    oof_pd = np.empty(len(y), dtype=float)
    for k in range(folds):
        mask = fold_of == k
        a, s = _platt(oof[~mask], y[~mask])
        oof_pd[mask] = 1.0 / (1.0 + np.exp(-(a * oof[mask] + s)))

    binnings, coefs, intercept = _fit_core(data, y, specs, params)
    metrics = pd_metrics(y, oof_pd)
    metrics["folds"] = folds
    metadata: dict[str, Any] = {
        "version": version,
        "created_at": (created_at or datetime.now(UTC)).isoformat(),
        "label": label,
        "candidate_features": chosen,
        "categorical": sorted(cats),
        "features": [b.feature for b in binnings],
        "training_window": dict(training_window) if training_window is not None else None,
        "rows": len(y),
        "defaults": n_bad,
        "params": {
            "folds": folds,
            "max_bins": max_bins,
            "min_bin_share": min_bin_share,
            "min_iv": min_iv,
            "regularization": regularization,
            "random_state": random_state,
        },
    }
    return PdModel(
        binnings=tuple(binnings),
        coefficients=tuple(coefs),
        intercept=intercept,
        calibration_slope=slope,
        calibration_shift=shift,
        scale=scale,
        limit_bands=bands,
        metadata=metadata,
        metrics=metrics,
    )
