"""services.risk.credit_support: text features -> a training frame, batch scoring naming the bad row."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from services.risk.credit import CreditDataError, train_pd_model
from services.risk.credit_support import LABEL, TrainingRow, decline_pd, score_many, training_frame


def rows(n: int = 200) -> list[TrainingRow]:
    out = []
    for i in range(n):
        u = (i * 37 % n) / n
        out.append(TrainingRow(f"c{i}", {"u": f"{u:.3f}", "k": "A" if i % 3 else "B", "blank": ""},
                               defaulted=(i * 37 % n) / n > 0.6 if i % 7 else i % 2 == 0))
    return out


def test_numeric_text_becomes_numbers_unless_declared_categorical() -> None:
    frame, chosen = training_frame(rows(), [], [])
    assert chosen == ["blank", "k", "u"]
    assert frame["u"].dtype == float and not pd.api.types.is_numeric_dtype(frame["k"])
    assert frame["blank"].isna().all() and frame[LABEL].dtype == bool
    frame, _ = training_frame(rows(), ["u"], ["u"])
    assert not pd.api.types.is_numeric_dtype(frame["u"]) and frame["u"][0] == "0.000"


def test_a_feature_no_row_carries_gets_no_column() -> None:
    frame, chosen = training_frame(rows(), ["u", "ghost"], [])
    assert chosen == ["u", "ghost"] and "ghost" not in frame.columns
    with pytest.raises(CreditDataError) as caught:
        train_pd_model(frame, LABEL, features=chosen)
    assert (caught.value.field, caught.value.reason) == ("features", "UNKNOWN_FEATURE")


def test_score_many_matches_score_and_names_the_bad_row() -> None:
    frame, chosen = training_frame(rows(), ["u", "k"], [])
    model = train_pd_model(frame, LABEL, features=chosen)
    assert decline_pd(model) == 0.15
    records: list[dict[str, str | None]] = [{"u": "0.9", "k": "A"}, {"u": None, "k": "B"}, {"k": "A"}]
    scores = score_many(model, records, [1000.0, None, 0.0])
    for record, income, got in zip(records, [1000.0, None, 0.0], scores, strict=True):
        one = model.score(record, income=income)
        assert math.isclose(got.pd, one.pd) and got.limit_band == one.limit_band
    with pytest.raises(CreditDataError) as caught:
        score_many(model, [{"u": "0.1"}, {"u": "lots"}], [None, None])
    assert (caught.value.field, caught.value.reason, caught.value.index) == ("u", "NON_NUMERIC_VALUE", 1)  # type: ignore[attr-defined]
