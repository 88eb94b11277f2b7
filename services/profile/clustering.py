"""k-means clustering of customers with a readable profile per cluster. Pure: numpy and scikit-learn, no
database, no gRPC (the service layer loads the data, services/profile/segments.py).

Numeric columns are standardised (missing values take the column mean), categorical ones one-hot encoded
(missing is its own category, "(none)"; scaled by 1/sqrt(2), so that a different category weighs as much
as one standard deviation). Without a given k, k is chosen by the silhouette over 2..10 (on a
subsample of at most 3,000 points for speed). Each cluster is described by its size, its centre in original
units (mean for numbers, most frequent value for categories) and the 3 traits that most set it apart:
numbers by z-score (cluster mean - overall mean) / overall sd, categories by the difference of shares divided
by the overall share's standard deviation sqrt(p (1 - p)).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

MISSING = "(none)"
K_RANGE = range(2, 11)
SILHOUETTE_SAMPLE = 3000
TRAITS = 3
# A different category then weighs as much as 1 sd of a numeric column (|e_i - e_j| = 1).
ONEHOT_WEIGHT = 1 / math.sqrt(2)


@dataclass(frozen=True)
class Column:
    name: str
    numeric: bool
    # numbers (None when missing) or category strings (None when missing)
    values: Sequence[Any]


@dataclass
class Centre:
    field: str
    numeric: bool
    mean: float = 0.0
    top_value: str = ""
    top_share: float = 0.0


@dataclass
class Trait:
    field: str
    value: str
    z_score: float
    cluster_share: float = 0.0
    overall_share: float = 0.0
    description: str = ""


@dataclass
class ClusterProfile:
    number: int
    size: int
    share: float
    centre: list[Centre]
    traits: list[Trait]
    segment: str = ""


@dataclass
class ClusteringResult:
    k: int
    silhouette: float
    clusters: list[ClusterProfile]
    sample_size: int
    silhouette_by_k: dict[int, float] = field(default_factory=dict)
    # cluster index (0-based) of each input row
    labels: list[int] = field(default_factory=list)


class Encoder:
    """Turns columns into the k-means matrix; `transform` applies the same scaling to new rows."""

    def __init__(self, columns: Sequence[Column]) -> None:
        self.columns = list(columns)
        self.means: dict[str, float] = {}
        self.sds: dict[str, float] = {}
        self.categories: dict[str, list[str]] = {}
        for column in self.columns:
            if column.numeric:
                present = np.array([v for v in column.values if v is not None], dtype=float)
                mean = float(present.mean()) if present.size else 0.0
                sd = float(present.std()) if present.size else 0.0
                self.means[column.name], self.sds[column.name] = mean, sd if sd > 0 else 1.0
            else:
                self.categories[column.name] = sorted({MISSING if v is None else str(v) for v in column.values})

    def transform(self, columns: Sequence[Column]) -> np.ndarray:
        parts: list[np.ndarray] = []
        for column in columns:
            if column.numeric:
                mean, sd = self.means[column.name], self.sds[column.name]
                values = np.array([mean if v is None else float(v) for v in column.values], dtype=float)
                parts.append(((values - mean) / sd)[:, None])
            else:
                index = {c: i for i, c in enumerate(self.categories[column.name])}
                onehot = np.zeros((len(column.values), len(index)))
                for row, value in enumerate(column.values):
                    position = index.get(MISSING if value is None else str(value))
                    if position is not None:
                        onehot[row, position] = ONEHOT_WEIGHT
                parts.append(onehot)
        return np.hstack(parts) if parts else np.zeros((0, 0))


def _fit(matrix: np.ndarray, k: int, seed: int) -> KMeans:
    return KMeans(n_clusters=k, n_init=4, random_state=seed).fit(matrix)


def _silhouette(matrix: np.ndarray, labels: np.ndarray, seed: int) -> float:
    if len(set(labels.tolist())) < 2:
        return -1.0
    sample = min(SILHOUETTE_SAMPLE, len(matrix))
    return float(silhouette_score(matrix, labels, sample_size=sample, random_state=seed))


def _fmt(value: float) -> str:
    return f"{value:,.2f}" if abs(value) < 1e6 else f"{value:,.0f}"


def _profile(columns: Sequence[Column], labels: np.ndarray, cluster: int) -> tuple[list[Centre], list[Trait]]:
    mask = labels == cluster
    centre: list[Centre] = []
    traits: list[Trait] = []
    for column in columns:
        if column.numeric:
            all_values = np.array([np.nan if v is None else float(v) for v in column.values], dtype=float)
            overall_mean = float(np.nanmean(all_values)) if np.any(~np.isnan(all_values)) else 0.0
            overall_sd = float(np.nanstd(all_values)) if np.any(~np.isnan(all_values)) else 0.0
            inside = all_values[mask]
            mean = float(np.nanmean(inside)) if np.any(~np.isnan(inside)) else overall_mean
            centre.append(Centre(column.name, True, mean=mean))
            z = (mean - overall_mean) / overall_sd if overall_sd > 0 else 0.0
            direction = "above" if z >= 0 else "below"
            traits.append(Trait(column.name, "", z, description=(
                f"{column.name} {abs(z):.1f} sd {direction} average ({_fmt(mean)} vs {_fmt(overall_mean)})")))
        else:
            values = [MISSING if v is None else str(v) for v in column.values]
            inside_values = [v for v, m in zip(values, mask, strict=True) if m]
            counts = Counter(inside_values)
            overall_counts = Counter(values)
            top, top_count = counts.most_common(1)[0] if counts else (MISSING, 0)
            centre.append(Centre(column.name, False, top_value=top,
                                 top_share=top_count / len(inside_values) if inside_values else 0.0))
            best: Trait | None = None
            for value, total in overall_counts.items():
                p = total / len(values)
                q = counts.get(value, 0) / len(inside_values) if inside_values else 0.0
                sd = math.sqrt(p * (1 - p))
                z = (q - p) / sd if sd > 0 else 0.0
                if best is None or (abs(z), z) > (abs(best.z_score), best.z_score):  # ties: over-represented
                    best = Trait(column.name, value, z, q, p, description=(
                        f"{column.name} = {value}: {q:.0%} of the cluster vs {p:.0%} overall"))
            if best is not None:
                traits.append(best)
    traits.sort(key=lambda t: (-abs(t.z_score), t.field))
    return centre, traits[:TRAITS]


def cluster(columns: Sequence[Column], *, k: int | None = None, seed: int = 7) -> tuple[ClusteringResult, Encoder, Any]:
    """Cluster the rows described by `columns` (all of one length, at least 2 rows per cluster tried).

    Returns the result (labels in input order), the encoder and the fitted model (to assign other rows)."""
    n = len(columns[0].values) if columns else 0
    encoder = Encoder(columns)
    matrix = encoder.transform(columns)
    by_k: dict[int, float] = {}
    if k is None:
        best: tuple[float, int, Any] | None = None
        for candidate in K_RANGE:
            if candidate >= n:
                break
            model = _fit(matrix, candidate, seed)
            score = _silhouette(matrix, model.labels_, seed)
            by_k[candidate] = score
            if best is None or score > best[0] + 1e-9:
                best = (score, candidate, model)
        if best is None:
            raise ValueError("too few customers to cluster")
        silhouette, k, model = best
    else:
        if k >= n:
            raise ValueError("more clusters than customers")
        model = _fit(matrix, k, seed)
        silhouette = _silhouette(matrix, model.labels_, seed)
    labels = np.asarray(model.labels_)
    # Number clusters by size, largest first, so that the output is stable and readable.
    order = sorted(range(k), key=lambda c: (-int(np.sum(labels == c)), c))
    renumber = {old: new for new, old in enumerate(order)}
    labels = np.array([renumber[int(label)] for label in labels])
    model.cluster_centers_ = model.cluster_centers_[order]
    profiles = []
    for number in range(k):
        size = int(np.sum(labels == number))
        centre, traits = _profile(columns, labels, number)
        profiles.append(ClusterProfile(number + 1, size, size / n, centre, traits))
    result = ClusteringResult(k, silhouette, profiles, n, by_k, labels.tolist())
    return result, encoder, model


def assign(encoder: Encoder, model: Any, columns: Sequence[Column]) -> list[int]:
    """The cluster index (0-based, numbered as in the result) of other rows."""
    if not columns or not len(columns[0].values):
        return []
    return [int(x) for x in model.predict(encoder.transform(columns))]
