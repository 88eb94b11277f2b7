"""Between the risk service and the pure credit package: training rows -> a frame, text features -> a record,
a scored applicant -> the limit a verdict carries. Pure code: no I/O, no grpc.

Feature values travel as text (a proto map<string, string>). A training column whose non-empty values all parse
as numbers becomes numeric, unless it is declared categorical; any other column stays text (and is binned by
category when `categorical` is not given). An empty value is missing. Scoring passes the text through: the
model's numeric bins parse it, so a non-number for a numeric feature is NON_NUMERIC_VALUE on that feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from services.risk.credit import CreditDataError, CreditScore, PdModel
from services.risk.domain import CreditLimit

LABEL = "__defaulted__"


@dataclass(frozen=True)
class TrainingRow:
    customer_id: str
    features: Mapping[str, str]
    defaulted: bool


def _numeric(values: list[str | None]) -> list[float] | None:
    out: list[float] = []
    for value in values:
        if value is None:
            out.append(math.nan)
            continue
        try:
            number = float(value)
        except ValueError:
            return None
        if not math.isfinite(number):
            return None
        out.append(number)
    return out


def training_frame(rows: Sequence[TrainingRow], features: Sequence[str], categorical: Sequence[str]
                   ) -> tuple[pd.DataFrame, list[str]]:
    """The frame train_pd_model takes (label column LABEL) and the candidate features (given, else every name
    seen in the rows, sorted). A feature no row carries gets no column (UNKNOWN_FEATURE)."""
    seen = {name for row in rows for name in row.features}
    chosen = list(features) or sorted(seen)
    declared = set(categorical)
    columns: dict[str, object] = {}
    for name in chosen:
        if name not in seen:
            continue  # no row carries it: train_pd_model reports UNKNOWN_FEATURE
        raw = [row.features.get(name) or None for row in rows]
        numbers = None if name in declared else _numeric(raw)
        columns[name] = (np.asarray(numbers, dtype=float) if numbers is not None
                         else np.asarray(raw, dtype=object))
    columns[LABEL] = np.asarray([row.defaulted for row in rows], dtype=bool)
    return pd.DataFrame(columns), chosen


def record(features: Mapping[str, str]) -> dict[str, str | None]:
    return {name: (value or None) for name, value in features.items()}


def limit_of(score: CreditScore, version: str) -> CreditLimit:
    band = score.limit_band
    return CreditLimit(band.band, band.income_multiple, band.max_limit, band.declined, version, score.pd,
                       score.score)


def decline_pd(model: PdModel) -> float:
    """The cut-off: a PD at or above the last band's max_pd is declined."""
    return model.limit_bands[-1].max_pd


def score_many(model: PdModel, records: Sequence[Mapping[str, str | None]], incomes: Sequence[float | None]
               ) -> list[CreditScore]:
    """Scores many applicants at once; on bad input raises CreditDataError with `.index` = the first bad one."""
    frame = pd.DataFrame.from_records(list(records)) if records else pd.DataFrame()
    frame = frame.reindex(range(len(records)))
    income_column = "__monthly_income__"
    frame[income_column] = pd.Series(incomes, dtype=object)
    try:
        return model.score_many(frame.astype(object).where(frame.notna(), None), income_column=income_column)
    except CreditDataError as exc:
        for i, (rec, income) in enumerate(zip(records, incomes, strict=True)):
            try:
                model.score(rec, income=income)
            except CreditDataError as row_exc:
                row_exc.index = i  # type: ignore[attr-defined]
                raise row_exc from exc
        raise
