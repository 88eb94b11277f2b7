"""The PD scorecard of services/risk/credit: monotone, calibrated, on the PDO scale, explained, serialisable."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from services.risk.credit import (
    CREDIT_DECLINED,
    CreditDataError,
    CreditModelFormatError,
    LimitBandRule,
    PdModel,
    ScoreScale,
    limit_band,
    train_pd_model,
)

CHECKING_EFFECT = {"low": 1.2, "none": 0.4, "high": -0.8}


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """Default risk rises with utilisation, falls with income, and depends on the checking account."""
    rng = np.random.default_rng(seed)
    utilisation = rng.uniform(0.0, 1.0, n)
    income = rng.lognormal(math.log(3000), 0.5, n)
    checking = rng.choice(list(CHECKING_EFFECT), n, p=[0.4, 0.3, 0.3])
    noise = rng.normal(size=n)
    logit = -3.2 + 3.0 * utilisation - 0.8 * np.log(income / 3000) + np.array([CHECKING_EFFECT[c] for c in checking])
    defaulted = rng.uniform(size=n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {"utilisation": utilisation, "income": income, "checking_account": checking, "noise": noise,
         "defaulted": defaulted}
    )


@pytest.fixture(scope="module")
def model() -> PdModel:
    return train_pd_model(synthetic(3000, seed=1), "defaulted", version="7",
                          training_window={"cutoff": "2025-01-01", "window_days": "365"})


BASE = {"utilisation": 0.5, "income": 3000.0, "checking_account": "none"}


def test_categorical_is_inferred_and_directions_follow_the_data(model: PdModel) -> None:
    assert {"utilisation", "income", "checking_account"} <= set(model.features)
    kinds = {b.feature: (b.kind, b.direction) for b in model.binnings}
    assert kinds["utilisation"] == ("numeric", 1)
    assert kinds["income"] == ("numeric", -1)
    assert kinds["checking_account"][0] == "categorical"
    assert all(c > 0 for c in model.coefficients)
    assert model.metadata["categorical"] == ["checking_account"]


def test_a_worse_attribute_never_lowers_the_pd(model: PdModel) -> None:
    by_utilisation = [model.score({**BASE, "utilisation": u}).pd for u in np.linspace(0, 1, 101)]
    assert all(b >= a for a, b in itertools.pairwise(by_utilisation))
    assert by_utilisation[-1] > 2 * by_utilisation[0]
    by_income = [model.score({**BASE, "income": x}).pd for x in np.linspace(500, 12000, 60)]
    assert all(b <= a for a, b in itertools.pairwise(by_income))
    assert by_income[0] > by_income[-1]
    low, high = (model.score({**BASE, "checking_account": c}).pd for c in ("low", "high"))
    assert low > high


def test_cross_validated_metrics_and_calibration(model: PdModel) -> None:
    m = model.metrics
    assert m["folds"] == 5 and m["rows"] == 3000
    assert 0.70 < m["auc"] < 0.95
    assert 0.3 < m["ks"] < 1.0
    base_rate = m["default_rate"]
    assert m["brier"] < base_rate * (1 - base_rate)  # better than predicting the base rate
    assert abs(m["mean_pd"] - base_rate) < 0.02
    table = m["calibration"]
    assert len(table) == 10 and sum(r["count"] for r in table) == 3000
    assert table[0]["default_rate"] < table[-1]["default_rate"]
    assert all(abs(r["mean_pd"] - r["default_rate"]) < 0.12 for r in table)
    # on fresh data from the same process, predicted and observed default rates agree
    holdout = synthetic(4000, seed=99)
    pds = model.score_frame(holdout)["pd"].to_numpy()
    assert abs(pds.mean() - holdout["defaulted"].mean()) < 0.03
    top = pds >= np.quantile(pds, 0.8)
    assert abs(pds[top].mean() - holdout["defaulted"].to_numpy()[top].mean()) < 0.06


def test_score_scale_doubling_the_odds_adds_pdo_points() -> None:
    scale = ScoreScale()
    assert scale.score_for_odds(50.0) == pytest.approx(600.0, abs=1e-9)
    assert scale.score_for_odds(100.0) - scale.score_for_odds(50.0) == pytest.approx(20.0, abs=1e-9)
    assert scale.score_for_odds(12.5) == pytest.approx(560.0, abs=1e-9)
    custom = ScoreScale(base_score=500.0, base_odds=20.0, pdo=40.0)
    assert custom.score_for_odds(40.0) - custom.score_for_odds(20.0) == pytest.approx(40.0, abs=1e-9)
    assert custom.score_for_pd(1 / 21) == pytest.approx(500.0, abs=1e-9)  # PD 1/21 = odds 20:1
    with pytest.raises(CreditDataError) as info:
        ScoreScale(pdo=0).check()
    assert info.value.field == "scale"


def test_model_scores_sit_on_the_scale_and_are_sums_of_points(model: PdModel) -> None:
    a = model.score({**BASE, "utilisation": 0.1})
    b = model.score({**BASE, "utilisation": 0.9})
    odds = lambda s: (1 - s.pd) / s.pd  # noqa: E731
    assert a.score - b.score == pytest.approx(20.0 * math.log2(odds(a) / odds(b)), abs=1e-6)
    assert a.score == pytest.approx(ScoreScale().score_for_pd(a.pd), abs=1e-6)
    card = model.scorecard()
    points = card[0]["points"]
    for binning in model.binnings:
        idx = int(binning.assign(np.asarray([{**BASE, "utilisation": 0.1}[binning.feature]], dtype=object))[0])
        points += next(r["points"] for r in card if r["feature"] == binning.feature
                       and r["bin"] == binning.bins[idx].label)
    assert points == pytest.approx(a.score, abs=1e-9)


def test_reason_codes_are_the_top_adverse_factors_in_order(model: PdModel) -> None:
    worst = model.score({"utilisation": 0.99, "income": 600.0, "checking_account": "low"})
    codes = worst.reason_codes
    assert {"UTILISATION_HIGH", "INCOME_LOW", "CHECKING_ACCOUNT_LOW"} <= set(codes)
    lost = [r.points_lost for r in worst.reasons]
    assert lost == sorted(lost, reverse=True) and all(x > 0 for x in lost)
    # the order is the order of points lost against each feature's best bin, from the scorecard
    card = model.scorecard()
    best = {f: max(r["points"] for r in card if r["feature"] == f) for f in model.features}
    for reason in worst.reasons:
        mine = next(r["points"] for r in card if r["feature"] == reason.feature and r["bin"] == reason.bin)
        assert reason.points_lost == pytest.approx(best[reason.feature] - mine, abs=1e-9)
    assert len(model.score({"utilisation": 0.99, "income": 600.0, "checking_account": "low"},
                           max_reasons=1).reasons) == 1
    # only utilisation is bad: it is the first (and only) reason
    mild = model.score({"utilisation": 0.99, "income": 20000.0, "checking_account": "high"})
    assert mild.reason_codes[0] == "UTILISATION_HIGH"
    assert "CHECKING_ACCOUNT_HIGH" not in mild.reason_codes and "INCOME_HIGH" not in mild.reason_codes
    # the best applicant has nothing adverse to explain
    best_case = model.score({"utilisation": 0.0, "income": 50000.0, "checking_account": "high",
                             "noise": 0.0})
    assert best_case.reasons == ()


def test_missing_and_unseen_values(model: PdModel) -> None:
    """Absent, None and never-seen values fall in the neutral MISSING / OTHER bins (weight of evidence 0)."""
    unknown = model.score({"checking_account": "never-seen", "income": None})
    assert 0 < unknown.pd < 1
    assert {(r.feature, r.bin, r.code) for r in unknown.reasons} == {
        ("utilisation", "MISSING", "UTILISATION_MISSING"),
        ("income", "MISSING", "INCOME_MISSING"),
        ("checking_account", "OTHER", "CHECKING_ACCOUNT_OTHER"),
    }
    neutral = ScoreScale().score_for_pd(1 / (1 + math.exp(-(model.calibration_slope * model.intercept
                                                             + model.calibration_shift))))
    assert unknown.score == pytest.approx(neutral, abs=1e-6)
    with pytest.raises(CreditDataError) as info:
        model.score({**BASE, "income": "a lot"})
    assert (info.value.field, info.value.reason) == ("income", "NON_NUMERIC_VALUE")
    assert "a lot" not in str(info.value)


def test_score_and_score_frame_give_the_same_numbers(model: PdModel) -> None:
    frame = synthetic(200, seed=5).drop(columns="defaulted")
    frame.loc[3, "income"] = np.nan
    frame.loc[4, "checking_account"] = "unheard-of"
    frame["monthly_income"] = frame["income"].fillna(0)
    table = model.score_frame(frame, income_column="monthly_income")
    assert list(table.columns) == ["pd", "score", "reason_codes", "limit_band", "max_limit", "declined"]
    for i, row in frame.iterrows():
        one = model.score(row.to_dict(), income=row["monthly_income"])
        assert one.pd == table.at[i, "pd"]
        assert one.score == table.at[i, "score"]
        assert one.reason_codes == table.at[i, "reason_codes"]
        assert one.limit_band.band == table.at[i, "limit_band"]
        assert one.limit_band.max_limit == table.at[i, "max_limit"]


def test_json_round_trip_gives_identical_scores(model: PdModel) -> None:
    text = model.to_json()
    data = json.loads(text)
    assert data["format"] == "lodestar.risk.credit.pd-scorecard/1"
    assert data["metadata"]["version"] == "7"
    assert data["metadata"]["training_window"] == {"cutoff": "2025-01-01", "window_days": "365"}
    assert data["metadata"]["features"] == model.features
    assert {"auc", "ks", "brier", "calibration"} <= set(data["metrics"])
    assert data["calibration"]["method"] == "platt"
    restored = PdModel.from_json(text)
    assert restored.to_json() == text
    frame = synthetic(300, seed=8)
    pd.testing.assert_frame_equal(restored.score_frame(frame), model.score_frame(frame))
    assert restored.score(BASE) == model.score(BASE)


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", json.dumps({"format": "other/1"}),
     json.dumps({"format": "lodestar.risk.credit.pd-scorecard/1", "features": []})],
)
def test_a_malformed_model_is_a_format_error(text: str) -> None:
    with pytest.raises(CreditModelFormatError) as info:
        PdModel.from_json(text)
    assert isinstance(info.value, ValueError)
    assert (info.value.field, info.value.reason) == ("model", "INVALID_MODEL_FORMAT")


def test_a_tampered_model_is_refused(model: PdModel) -> None:
    data = json.loads(model.to_json())
    data["features"][0]["bins"].pop()
    with pytest.raises(CreditModelFormatError):
        PdModel.from_json(json.dumps(data))


def test_limit_bands_follow_the_pd() -> None:
    assert limit_band(0.01, income=4000.0).band == "A"
    assert limit_band(0.01, income=4000.0).max_limit == 32000.0
    assert limit_band(0.02).band == "B"  # the upper bound of a band is exclusive
    assert limit_band(0.07, income=1000.0).max_limit == 3000.0
    assert limit_band(0.1499).band == "D"
    declined = limit_band(0.15, income=4000.0)
    assert (declined.band, declined.declined, declined.reason, declined.max_limit) == (
        "DECLINED", True, CREDIT_DECLINED, 0.0)
    assert limit_band(0.9).reason == CREDIT_DECLINED
    custom = (LimitBandRule("LOW", 0.3, 2.0),)
    assert limit_band(0.2, bands=custom).band == "LOW"
    with pytest.raises(CreditDataError) as info:
        limit_band(0.01, income=-1.0)
    assert info.value.field == "income"


def test_the_model_declines_risky_applicants(model: PdModel) -> None:
    risky = model.score({"utilisation": 0.99, "income": 600.0, "checking_account": "low"}, income=600.0)
    assert risky.pd >= 0.15
    assert risky.limit_band.declined and risky.limit_band.reason == CREDIT_DECLINED
    safe = model.score({"utilisation": 0.01, "income": 20000.0, "checking_account": "high"}, income=20000.0)
    assert not safe.limit_band.declined
    assert safe.limit_band.max_limit == safe.limit_band.income_multiple * 20000.0


@pytest.mark.parametrize(
    "bands",
    [[], [LimitBandRule("A", 0.1, 1.0), LimitBandRule("B", 0.05, 1.0)],
     [LimitBandRule("A", 0.05, 1.0), LimitBandRule("B", 0.1, 2.0)], [LimitBandRule("DECLINED", 0.1, 1.0)]],
)
def test_invalid_limit_bands_are_refused(bands: list[LimitBandRule]) -> None:
    with pytest.raises(CreditDataError) as info:
        train_pd_model(synthetic(200, seed=2), "defaulted", limit_bands=bands)
    assert (info.value.field, info.value.reason) == ("limit_bands", "INVALID_LIMIT_BANDS")


def _reject(frame: pd.DataFrame, **kwargs: object) -> CreditDataError:
    with pytest.raises(CreditDataError) as info:
        train_pd_model(frame, kwargs.pop("label", "defaulted"), **kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)
    return info.value


def test_bad_training_input_names_the_field() -> None:
    data = synthetic(300, seed=3)
    cases = [
        (_reject(data.iloc[0:0]), ("frame", "EMPTY_TRAINING_SET")),
        (_reject(data.assign(defaulted=False)), ("label", "SINGLE_CLASS_LABEL")),
        (_reject(data, label="paid_back"), ("label", "UNKNOWN_LABEL")),
        (_reject(data.assign(defaulted=data["defaulted"].map({True: "yes", False: "no"}))),
         ("label", "INVALID_LABEL")),
        (_reject(data.assign(defaulted=data["defaulted"].astype(float).where(data.index != 5))),
         ("label", "INVALID_LABEL")),
        (_reject(data, features=["utilisation", "shoe_size"]), ("features", "UNKNOWN_FEATURE")),
        (_reject(data, features=["utilisation", "defaulted"]), ("features", "LABEL_AS_FEATURE")),
        (_reject(data, features=[]), ("features", "NO_FEATURES")),
        (_reject(data, features=["utilisation"], categorical=["checking_account"]),
         ("categorical", "UNKNOWN_FEATURE")),
        (_reject(data, features=["utilisation", "checking_account"], categorical=[]),
         ("categorical", "NON_NUMERIC_FEATURE")),
        (_reject(data.assign(defaulted=data.index < 3)), ("label", "TOO_FEW_EVENTS")),
        (_reject(data, folds=1), ("folds", "INVALID_FOLDS")),
        (_reject(data, features=["noise"], min_iv=5.0), ("features", "NO_PREDICTIVE_FEATURES")),
    ]
    for error, (field, reason) in cases:
        assert (error.field, error.reason) == (field, reason), error
        assert error.description


def test_integer_labels_and_explicit_feature_lists() -> None:
    data = synthetic(800, seed=4)
    data["defaulted"] = data["defaulted"].astype(int)
    model = train_pd_model(data, "defaulted", features=["utilisation", "checking_account"],
                           categorical=["checking_account"], folds=3)
    assert model.features == ["utilisation", "checking_account"]
    assert model.metrics["folds"] == 3
    assert model.metadata["candidate_features"] == ["utilisation", "checking_account"]
