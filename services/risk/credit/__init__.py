"""Credit risk: a probability-of-default scorecard, pure (no gRPC, no database), serialisable as plain JSON.

    model = train_pd_model(frame, "defaulted", categorical=[...])   # WoE bins + logistic regression + Platt
    model.metrics["auc"], model.metrics["ks"], model.metrics["brier"], model.metrics["calibration"]
    text = model.to_json(); model = PdModel.from_json(text)         # store a version, audit it
    model.score({"income": 5200, ...}, income=5200)  -> CreditScore(pd, score, reasons, limit_band)
    model.score_frame(df)                            -> the same numbers for many
    label_from_events(events, cutoff, window_days=365, event_type="dpd90")   # point-in-time labels

Every bad input raises CreditDataError (a ValueError) with `.field`, `.reason` and `.description`.
See docs/credit-risk.md.
"""

from services.risk.credit.errors import CreditDataError, CreditModelFormatError
from services.risk.credit.labels import label_from_events
from services.risk.credit.limits import (
    CREDIT_DECLINED,
    DEFAULT_LIMIT_BANDS,
    LimitBand,
    LimitBandRule,
    limit_band,
)
from services.risk.credit.metrics import calibration_table, ks_statistic, pd_metrics
from services.risk.credit.model import CreditScore, PdModel, Reason, ScoreScale, train_pd_model

__all__ = [
    "CREDIT_DECLINED",
    "DEFAULT_LIMIT_BANDS",
    "CreditDataError",
    "CreditModelFormatError",
    "CreditScore",
    "LimitBand",
    "LimitBandRule",
    "PdModel",
    "Reason",
    "ScoreScale",
    "calibration_table",
    "ks_statistic",
    "label_from_events",
    "limit_band",
    "pd_metrics",
    "train_pd_model",
]
