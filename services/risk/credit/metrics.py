"""Discrimination and calibration metrics of a PD model: AUC, KS, Brier score, calibration table."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss, roc_auc_score, roc_curve


def ks_statistic(y: np.ndarray, score: np.ndarray) -> float:
    """Kolmogorov-Smirnov: the largest gap between the bads' and the goods' cumulative score distributions."""
    fpr, tpr, _ = roc_curve(y, score)
    return float(np.max(tpr - fpr))


def calibration_table(y: np.ndarray, pd_values: np.ndarray, n_bins: int = 10) -> list[dict[str, Any]]:
    """Rows grouped by predicted PD into (up to) `n_bins` quantile bins: predicted mean vs observed default rate."""
    order = np.argsort(pd_values, kind="stable")
    rows: list[dict[str, Any]] = []
    for i, chunk in enumerate(np.array_split(order, min(n_bins, len(order)))):
        if len(chunk) == 0:
            continue
        rows.append(
            {
                "bin": i,
                "count": len(chunk),
                "pd_min": float(pd_values[chunk].min()),
                "pd_max": float(pd_values[chunk].max()),
                "mean_pd": float(pd_values[chunk].mean()),
                "default_rate": float(y[chunk].mean()),
            }
        )
    return rows


def pd_metrics(y: np.ndarray, pd_values: np.ndarray, n_bins: int = 10) -> dict[str, Any]:
    return {
        "auc": float(roc_auc_score(y, pd_values)),
        "ks": ks_statistic(y, pd_values),
        "brier": float(brier_score_loss(y, pd_values)),
        "default_rate": float(y.mean()),
        "mean_pd": float(pd_values.mean()),
        "rows": len(y),
        "calibration": calibration_table(y, pd_values, n_bins),
    }
