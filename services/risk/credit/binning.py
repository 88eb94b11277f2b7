"""Weight-of-evidence binning: the explainable first half of the scorecard.

A numeric feature is cut at quantiles, then adjacent bins are merged until every bin holds at least
`min_bin_share` of the rows and the bins' (smoothed) log-odds of default are strictly monotone in the value, in
the direction of the feature's rank correlation with default: so a worse value can never lower the PD. A
categorical feature gets one bin per category seen in at least `min_bin_share` of the rows; rarer categories,
and categories never seen in training, share an OTHER bin. Every feature has a MISSING bin. A bin's weight of
evidence is ``ln((bad_i + 0.5) / (good_i + 0.5)) - ln(bad / good)``: positive = riskier than average; a bin with
fewer than the minimum rows (OTHER or MISSING) is neutral (0).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from services.risk.credit.errors import CreditDataError

Kind = Literal["numeric", "categorical"]
SMOOTHING = 0.5
OTHER = "OTHER"
MISSING = "MISSING"


def code_stem(feature: str) -> str:
    """'checking_account' -> 'CHECKING_ACCOUNT': the stem of a feature's reason codes."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", feature).strip("_").upper()
    return stem or "FEATURE"


def category_key(value: Any) -> str | None:
    """The category a raw value falls in; None when missing. 3, 3.0 and '3' are the same category."""
    if value is None:
        return None
    if isinstance(value, float | np.floating):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if value is pd.NaT or (not isinstance(value, str) and bool(pd.isna(value))):
        return None
    return str(value)


def as_float(values: np.ndarray, feature: str) -> np.ndarray:
    """Numeric values of a feature, NaN for missing; a value that is not a number is an error on the feature."""
    series = pd.Series(values, dtype=object)
    numbers = pd.to_numeric(series, errors="coerce")
    invalid = numbers.isna() & ~series.isna()
    if bool(invalid.any()):
        raise CreditDataError(feature, "NON_NUMERIC_VALUE", "a numeric feature has a value that is not a number")
    return numbers.to_numpy(dtype=float)


@dataclass(frozen=True)
class Bin:
    label: str  # human-readable: '< 200', '[200, 1000)', 'A14', 'OTHER', 'MISSING'
    code: str  # reason code when this bin is adverse: CHECKING_ACCOUNT_LOW, PURPOSE_A46, AGE_MISSING
    woe: float
    count: int
    bad: int

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "code": self.code, "woe": self.woe, "count": self.count, "bad": self.bad}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Bin:
        return cls(str(data["label"]), str(data["code"]), float(data["woe"]), int(data["count"]), int(data["bad"]))


@dataclass(frozen=True)
class FeatureBinning:
    """The bins of one feature. Numeric: len(edges)+1 ranges then MISSING; range i is
    [edges[i-1], edges[i]). Categorical: one bin per category in `categories` order, then OTHER, then MISSING."""

    feature: str
    kind: Kind
    bins: tuple[Bin, ...]
    edges: tuple[float, ...] = ()
    categories: tuple[str, ...] = ()
    direction: int = 1  # numeric: +1 risk rises with the value, -1 it falls
    iv: float = 0.0

    @property
    def missing_index(self) -> int:
        return len(self.bins) - 1

    def assign(self, values: np.ndarray) -> np.ndarray:
        """The bin index of each raw value (object array), vectorised."""
        if self.kind == "numeric":
            x = as_float(values, self.feature)
            idx = np.searchsorted(np.asarray(self.edges, dtype=float), x, side="right")
            return np.where(np.isnan(x), self.missing_index, idx).astype(np.int64)
        lookup = {c: i for i, c in enumerate(self.categories)}
        other = len(self.categories)
        keys = [category_key(v) for v in values]
        return np.fromiter(
            (self.missing_index if k is None else lookup.get(k, other) for k in keys), dtype=np.int64, count=len(keys)
        )

    def woe_of(self, values: np.ndarray) -> np.ndarray:
        return np.asarray([b.woe for b in self.bins], dtype=float)[self.assign(values)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "kind": self.kind,
            "direction": self.direction,
            "iv": self.iv,
            "edges": list(self.edges),
            "categories": list(self.categories),
            "bins": [b.to_dict() for b in self.bins],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureBinning:
        kind = data["kind"]
        if kind not in ("numeric", "categorical"):
            raise ValueError(f"unknown binning kind {kind!r}")
        binning = cls(
            feature=str(data["feature"]),
            kind=kind,
            bins=tuple(Bin.from_dict(b) for b in data["bins"]),
            edges=tuple(float(e) for e in data["edges"]),
            categories=tuple(str(c) for c in data["categories"]),
            direction=int(data["direction"]),
            iv=float(data["iv"]),
        )
        expected = len(binning.edges) + 2 if kind == "numeric" else len(binning.categories) + 2
        if len(binning.bins) != expected:
            raise ValueError(f"feature {binning.feature!r}: {len(binning.bins)} bins, expected {expected}")
        return binning


def _woe(bad: int, good: int, total_bad: int, total_good: int) -> float:
    return math.log((bad + SMOOTHING) / (good + SMOOTHING)) - math.log(total_bad / total_good)


def _iv(bins: list[Bin], total_bad: int, total_good: int) -> float:
    return float(sum((b.bad / total_bad - (b.count - b.bad) / total_good) * b.woe for b in bins))


def _fmt(x: float) -> str:
    return f"{x:.6g}"


def fit_numeric(feature: str, values: np.ndarray, y: np.ndarray, *, max_bins: int, min_count: int) -> FeatureBinning:
    x = as_float(values, feature)
    total_bad = int(y.sum())
    total_good = len(y) - total_bad
    present = ~np.isnan(x)
    xs, ys = x[present], y[present]
    direction = 1
    edges: list[float] = []
    if len(xs):
        if np.unique(xs).size > 1 and np.unique(ys).size > 1:
            rho = spearmanr(xs, ys).statistic
            direction = -1 if (rho is not None and not math.isnan(rho) and rho < 0) else 1
        qs = np.quantile(xs, np.linspace(0.0, 1.0, max_bins + 1)[1:-1])
        edges = [float(e) for e in np.unique(qs) if e > xs.min()]
    # one group per range: [count, bad]; merging group i and i+1 removes edges[i]
    idx = np.searchsorted(np.asarray(edges, dtype=float), xs, side="right")
    groups = [[int((idx == i).sum()), int(ys[idx == i].sum())] for i in range(len(edges) + 1)]

    def log_odds(g: list[int]) -> float:
        return math.log((g[1] + SMOOTHING) / (g[0] - g[1] + SMOOTHING))

    def merge(i: int) -> None:  # group i with group i+1
        groups[i] = [groups[i][0] + groups[i + 1][0], groups[i][1] + groups[i + 1][1]]
        del groups[i + 1]
        del edges[i]

    while len(groups) > 1:
        small = [i for i, g in enumerate(groups) if g[0] < min_count]
        if small:
            i = min(small, key=lambda j: groups[j][0])
            if i == 0:
                merge(0)
            elif i == len(groups) - 1:
                merge(i - 1)
            else:  # with the neighbour whose risk is closer
                left = abs(log_odds(groups[i]) - log_odds(groups[i - 1]))
                right = abs(log_odds(groups[i]) - log_odds(groups[i + 1]))
                merge(i - 1 if left <= right else i)
            continue
        violation = next(
            (i for i in range(len(groups) - 1) if direction * (log_odds(groups[i + 1]) - log_odds(groups[i])) <= 0),
            None,
        )
        if violation is None:
            break
        merge(violation)

    stem = code_stem(feature)
    bins: list[Bin] = []
    last = len(groups) - 1
    for i, (count, bad) in enumerate(groups):
        if len(groups) == 1:
            label = "all values"
        elif i == 0:
            label = f"< {_fmt(edges[0])}"
        elif i == last:
            label = f">= {_fmt(edges[-1])}"
        else:
            label = f"[{_fmt(edges[i - 1])}, {_fmt(edges[i])})"
        # every bin but the safest lies on the risky side of it: HIGH when risk rises with the value
        if direction > 0:
            suffix = "LOW" if i == 0 else "HIGH"
        else:
            suffix = "HIGH" if i == last else "LOW"
        woe = _woe(bad, count - bad, total_bad, total_good) if count else 0.0
        bins.append(Bin(label, f"{stem}_{suffix}", woe, count, bad))
    n_missing = int((~present).sum())
    bad_missing = int(y[~present].sum())
    missing_woe = _woe(bad_missing, n_missing - bad_missing, total_bad, total_good) if n_missing >= min_count else 0.0
    bins.append(Bin(MISSING, f"{stem}_{MISSING}", missing_woe, n_missing, bad_missing))
    return FeatureBinning(
        feature, "numeric", tuple(bins), edges=tuple(edges), direction=direction,
        iv=_iv(bins, total_bad, total_good),
    )


def fit_categorical(feature: str, values: np.ndarray, y: np.ndarray, *, min_count: int) -> FeatureBinning:
    total_bad = int(y.sum())
    total_good = len(y) - total_bad
    keys = pd.Series([category_key(v) for v in values], dtype=object)
    counts = keys.value_counts(dropna=True)
    kept = sorted(str(k) for k, n in counts.items() if n >= min_count)
    kept_set = set(kept)
    stem = code_stem(feature)
    bins: list[Bin] = []
    for category in kept:
        mask = (keys == category).to_numpy()
        count, bad = int(mask.sum()), int(y[mask].sum())
        bins.append(Bin(category, f"{stem}_{code_stem(category)}", _woe(bad, count - bad, total_bad, total_good),
                        count, bad))
    missing = keys.isna().to_numpy()
    other = ~missing & ~keys.isin(kept_set).to_numpy()
    for label, mask in ((OTHER, other), (MISSING, missing)):
        count, bad = int(mask.sum()), int(y[mask].sum())
        woe = _woe(bad, count - bad, total_bad, total_good) if count >= min_count else 0.0
        bins.append(Bin(label, f"{stem}_{label}", woe, count, bad))
    return FeatureBinning(feature, "categorical", tuple(bins), categories=tuple(kept),
                          iv=_iv(bins, total_bad, total_good))
