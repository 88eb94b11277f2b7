"""Bounded personalised pricing (docs/recommendations.md): choose the rate and fee waiver within an offer's
approved price band that maximise expected value, given the customer's price sensitivity learned from history.

Pure: no database, no gRPC.

- Price response: P(accept | rate r, fee waived w) = sigmoid(intercept + slope x r + fee_coefficient x w), one
  logistic regression per customer segment (the `price_segment` attribute) plus "*" over everyone, fitted on
  the offer's campaign history whose context carries the offered `rate` (and `fee_waived`). A segment needs
  MIN_CONTACTS contacts with both outcomes; otherwise "*" applies, else DEFAULT_RESPONSE. The slope is
  constrained to be <= 0 (acceptance never rises with the price).
- Value: the offer's conversion_value is its value at the band's upper rate; at rate r it is
  conversion_value x r / rate_max (interest income proportional to the rate); a waived fee costs fee_amount.
- Probability: the propensity of the offer (its model's, at the standard terms = rate_max, fee charged) scaled
  by the price response relative to those terms: p(r, w) = min(1, propensity x P(r, w) / P(rate_max, 0)).
- Choice: every grid point rate_min + k x rate_step (and rate_max), times fee waiver {no, yes if allowed}; the
  highest p x (value - waived fee) - contact_cost wins, ties to the lower rate, then to no waiver. Never a
  rate outside the (possibly narrowed) band.
- Risk narrowing: with a probability of default PD, the floor rises to rate_min + PD x LGD (capped at rate_max)
  and a fee waiver is not offered when PD >= NO_WAIVER_PD.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from services.platform.errors import FieldViolation, InvalidArgument

MIN_CONTACTS = 30
MAX_GRID_POINTS = 500
LGD = 0.45
NO_WAIVER_PD = 0.10
ALL_SEGMENTS = "*"
SEGMENT_ATTRIBUTE = "price_segment"


@dataclass(frozen=True)
class PriceBand:
    rate_min: float
    rate_max: float
    rate_step: float = 0.0
    fee_waiver_allowed: bool = False
    fee_amount: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PriceBand:
        return cls(float(data["rate_min"]), float(data["rate_max"]), float(data["rate_step"]),
                   bool(data["fee_waiver_allowed"]), float(data["fee_amount"]))


def validate_band(band: PriceBand, field: str = "band") -> PriceBand:
    """INVALID_ARGUMENT naming the field: PRICE_BAND_INVERTED when rate_min > rate_max, else INVALID_PRICE_BAND."""
    values = {"rate_min": band.rate_min, "rate_max": band.rate_max, "rate_step": band.rate_step,
              "fee_amount": band.fee_amount}
    violations = [FieldViolation(f"{field}.{name}", "must be a finite number")
                  for name, value in values.items() if not math.isfinite(value)]
    if violations:
        raise InvalidArgument(violations, reason="INVALID_PRICE_BAND")
    if band.rate_min > band.rate_max:
        raise InvalidArgument.field(f"{field}.rate_min", "must not be above rate_max", reason="PRICE_BAND_INVERTED")
    for name in ("rate_min", "rate_max"):
        if not 0 <= values[name] < 1:
            violations.append(FieldViolation(f"{field}.{name}", "must be a yearly rate in [0, 1), e.g. 0.089"))
    if band.rate_step < 0 or (band.rate_step > 0 and band.rate_step > band.rate_max - band.rate_min > 0):
        violations.append(FieldViolation(f"{field}.rate_step", "must be 0 or a positive step within the band"))
    elif band.rate_step > 0 and (band.rate_max - band.rate_min) / band.rate_step > MAX_GRID_POINTS:
        violations.append(FieldViolation(f"{field}.rate_step", f"gives more than {MAX_GRID_POINTS} grid points"))
    if band.fee_amount < 0:
        violations.append(FieldViolation(f"{field}.fee_amount", "must not be negative"))
    if violations:
        raise InvalidArgument(violations, reason="INVALID_PRICE_BAND")
    return band


@dataclass(frozen=True)
class PriceResponse:
    segment: str
    intercept: float
    slope: float
    fee_coefficient: float
    contacts: int

    def acceptance(self, rate: float, fee_waived: bool) -> float:
        z = self.intercept + self.slope * rate + self.fee_coefficient * float(fee_waived)
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


# The prior when history says nothing: acceptance falls by about 5 % (relative) per percentage point of rate
# near 10 %, and a fee waiver helps a little.
DEFAULT_RESPONSE = PriceResponse("default", 0.0, -5.0, 0.2, 0)


@dataclass(frozen=True)
class PriceObservation:
    segment: str
    rate: float
    fee_waived: bool
    converted: bool


def fit_price_response(observations: Sequence[PriceObservation]) -> dict[str, PriceResponse]:
    """One logistic regression per segment with enough contacts and both outcomes, plus "*" over all."""
    from sklearn.linear_model import LogisticRegression

    groups: dict[str, list[PriceObservation]] = {ALL_SEGMENTS: list(observations)}
    for o in observations:
        if o.segment and o.segment != ALL_SEGMENTS:
            groups.setdefault(o.segment, []).append(o)
    fitted: dict[str, PriceResponse] = {}
    for segment, rows in sorted(groups.items()):
        labels = np.array([o.converted for o in rows], dtype=int)
        if len(rows) < MIN_CONTACTS or labels.min(initial=1) == labels.max(initial=0):
            continue
        # Rates in percentage points keep the (lightly regularised) coefficients on one scale.
        x = np.array([[o.rate * 100.0, float(o.fee_waived)] for o in rows])
        model = LogisticRegression(C=10.0, max_iter=200).fit(x, labels)
        slope = min(0.0, float(model.coef_[0][0]) * 100.0)
        fitted[segment] = PriceResponse(segment, round(float(model.intercept_[0]), 6), round(slope, 6),
                                        round(float(model.coef_[0][1]), 6), len(rows))
    return fitted


def response_for(segments: Mapping[str, PriceResponse], segment: str | None) -> PriceResponse:
    if segment and segment in segments:
        return segments[segment]
    return segments.get(ALL_SEGMENTS, DEFAULT_RESPONSE)


def narrow_by_pd(band: PriceBand, pd: float | None) -> tuple[PriceBand, str]:
    """Risk's narrowing: a floor of rate_min + PD x LGD (within the band), no waiver at PD >= NO_WAIVER_PD."""
    if pd is None:
        return band, ""
    floor = min(band.rate_max, band.rate_min + pd * LGD)
    narrowed = replace(band, rate_min=max(band.rate_min, floor),
                       fee_waiver_allowed=band.fee_waiver_allowed and pd < NO_WAIVER_PD)
    notes = []
    if narrowed.rate_min > band.rate_min:
        notes.append(f"PD {pd:.3f} raised the floor to {narrowed.rate_min:.4f}")
    if band.fee_waiver_allowed and not narrowed.fee_waiver_allowed:
        notes.append(f"PD {pd:.3f} >= {NO_WAIVER_PD} forbids the fee waiver")
    return narrowed, "; ".join(notes)


def grid(band: PriceBand) -> list[float]:
    if band.rate_step <= 0 or band.rate_max == band.rate_min:
        return sorted({band.rate_min, band.rate_max})
    count = math.floor((band.rate_max - band.rate_min) / band.rate_step + 1e-9)
    points = [round(band.rate_min + i * band.rate_step, 10) for i in range(count + 1)]
    return sorted({max(band.rate_min, min(p, band.rate_max)) for p in points} | {band.rate_max})


@dataclass(frozen=True)
class ChosenTerms:
    rate: float
    fee_waived: bool
    effective_band: PriceBand
    acceptance_probability: float
    expected_value: float
    explanation: str

    def to_json(self) -> dict[str, Any]:
        return {"rate": self.rate, "fee_waived": self.fee_waived, "effective_band": self.effective_band.to_json(),
                "acceptance_probability": self.acceptance_probability, "expected_value": self.expected_value,
                "explanation": self.explanation}


def choose_terms(band: PriceBand, response: PriceResponse, *, propensity: float, conversion_value: float,
                 contact_cost: float, pd: float | None = None) -> ChosenTerms:
    effective, risk_note = narrow_by_pd(band, pd)
    reference = response.acceptance(band.rate_max, False)
    best: tuple[float, float, bool, float] | None = None
    for rate in grid(effective):
        for waived in ((False, True) if effective.fee_waiver_allowed else (False,)):
            probability = min(1.0, propensity * response.acceptance(rate, waived) / reference) if reference > 0 \
                else 0.0
            value = conversion_value * (rate / band.rate_max if band.rate_max > 0 else 1.0)
            ev = probability * (value - (band.fee_amount if waived else 0.0)) - contact_cost
            if best is None or ev > best[0] + 1e-12:
                best = (ev, rate, waived, probability)
    if best is None:  # never: a grid always holds rate_min and rate_max
        raise ValueError("empty price grid")
    ev, rate, waived, probability = best
    source = (f"segment {response.segment} price response (slope {response.slope:.2f}, fitted on "
              f"{response.contacts} contacts)" if response.contacts else "the default price response (no history)")
    explanation = (f"rate {rate:.4f}{' with the fee waived' if waived else ''} maximises expected value "
                   f"{ev:.2f} within [{effective.rate_min:.4f}, {effective.rate_max:.4f}] under {source}")
    if risk_note:
        explanation += f"; {risk_note}"
    return ChosenTerms(rate, waived, effective, round(probability, 6), round(ev, 6), explanation)


def standard_terms(band: PriceBand, response: PriceResponse, *, propensity: float, conversion_value: float,
                   contact_cost: float, why: str) -> ChosenTerms:
    """The most conservative terms of the band (its top rate, no waiver), when personalising is not safe."""
    probability = min(1.0, propensity)
    ev = probability * conversion_value - contact_cost
    return ChosenTerms(band.rate_max, False, band, round(probability, 6), round(ev, 6),
                       f"standard terms: rate {band.rate_max:.4f}, no fee waiver ({why})")


def disclosure_texts(terms: ChosenTerms, band: PriceBand) -> list[tuple[str, str]]:
    """(kind, text) of the disclosures showing the chosen terms; they replace the offer's "apr" and "fee" ones."""
    fee = "Fee: waived" if terms.fee_waived else (f"Fee: {band.fee_amount:.2f}" if band.fee_amount else "Fee: none")
    return [("apr", f"Annualised rate: {terms.rate * 100:.2f}%"), ("fee", fee)]
