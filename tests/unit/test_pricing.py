"""Bounded personalised pricing: band validation, the grid, the choice within the band, PD narrowing, fitting."""

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.campaign import pricing
from services.campaign.pricing import PriceBand, PriceResponse
from services.platform.errors import InvalidArgument

BAND = PriceBand(0.06, 0.12, 0.01, True, 50.0)


def test_min_above_max_is_price_band_inverted():
    with pytest.raises(InvalidArgument) as raised:
        pricing.validate_band(PriceBand(0.12, 0.06))
    assert raised.value.reason == "PRICE_BAND_INVERTED"
    assert [v.field for v in raised.value.violations] == ["band.rate_min"]


@pytest.mark.parametrize(("band", "field"), [
    (PriceBand(-0.01, 0.1), "band.rate_min"), (PriceBand(0.05, 1.5), "band.rate_max"),
    (PriceBand(0.05, 0.1, -0.01), "band.rate_step"), (PriceBand(0.05, 0.1, 0.2), "band.rate_step"),
    (PriceBand(0.0, 0.5, 0.0001), "band.rate_step"), (PriceBand(0.05, 0.1, 0.01, True, -1), "band.fee_amount"),
    (PriceBand(math.nan, 0.1), "band.rate_min"),
])
def test_invalid_bands_name_the_field(band, field):
    with pytest.raises(InvalidArgument) as raised:
        pricing.validate_band(band)
    assert raised.value.reason == "INVALID_PRICE_BAND"
    assert field in [v.field for v in raised.value.violations]


def test_grid_covers_the_band_on_its_step_and_includes_the_maximum():
    assert pricing.grid(BAND) == pytest.approx([0.06, 0.07, 0.08, 0.09, 0.10, 0.11, 0.12])
    assert pricing.grid(PriceBand(0.06, 0.125, 0.02)) == pytest.approx([0.06, 0.08, 0.10, 0.12, 0.125])
    assert pricing.grid(PriceBand(0.06, 0.12)) == [0.06, 0.12]
    assert pricing.grid(PriceBand(0.08, 0.08, 0.01)) == [0.08]


def choose(response, band=BAND, pd=None, propensity=0.2):
    return pricing.choose_terms(band, response, propensity=propensity, conversion_value=600.0, contact_cost=1.0,
                                pd=pd)


def test_a_price_sensitive_segment_gets_a_lower_rate_than_an_insensitive_one():
    sensitive = choose(PriceResponse("young", 2.0, -60.0, 0.0, 400))
    insensitive = choose(PriceResponse("affluent", 0.0, -1.0, 0.0, 400))
    assert insensitive.rate == pytest.approx(0.12)
    assert sensitive.rate < insensitive.rate
    assert "segment young" in sensitive.explanation and "400 contacts" in sensitive.explanation


def test_the_choice_maximises_expected_value_over_the_grid():
    response = PriceResponse("s", 1.0, -30.0, 0.8, 100)
    terms = choose(response)
    reference = response.acceptance(0.12, False)
    best = max((min(1.0, 0.2 * response.acceptance(r, w) / reference) * (600 * r / 0.12 - (50 if w else 0)) - 1,
                r, w) for r in pricing.grid(BAND) for w in (False, True))
    assert terms.expected_value == pytest.approx(best[0], abs=1e-6)
    assert (terms.rate, terms.fee_waived) == (pytest.approx(best[1]), best[2])


def test_no_waiver_when_the_band_does_not_allow_it():
    response = PriceResponse("s", 0.0, -1.0, 5.0, 100)  # a waiver would help a lot
    assert choose(response).fee_waived is True
    assert choose(response, band=PriceBand(0.06, 0.12, 0.01, False, 50.0)).fee_waived is False


def test_pd_raises_the_floor_and_forbids_the_waiver():
    band, note = pricing.narrow_by_pd(BAND, 0.12)
    assert band.rate_min == pytest.approx(0.06 + 0.12 * pricing.LGD)
    assert band.rate_max == 0.12 and band.fee_waiver_allowed is False
    assert "raised the floor" in note and "fee waiver" in note
    terms = choose(PriceResponse("young", 2.0, -60.0, 5.0, 400), pd=0.12)
    assert terms.rate >= band.rate_min - 1e-12 and not terms.fee_waived
    assert pricing.narrow_by_pd(BAND, 0.9)[0].rate_min == 0.12  # capped at the band's maximum
    assert pricing.narrow_by_pd(BAND, None) == (BAND, "")


@settings(max_examples=200, deadline=None)
@given(lo=st.floats(0, 0.5), width=st.floats(0, 0.4), step=st.floats(0, 0.1), slope=st.floats(-200, 0),
       intercept=st.floats(-5, 5), fee=st.floats(-3, 3), pd=st.one_of(st.none(), st.floats(0, 1)),
       propensity=st.floats(0, 1), waiver=st.booleans())
def test_never_outside_the_band(lo, width, step, slope, intercept, fee, pd, propensity, waiver):
    band = PriceBand(lo, min(0.99, lo + width), step if step * pricing.MAX_GRID_POINTS >= width else 0.0, waiver, 20)
    terms = pricing.choose_terms(band, PriceResponse("s", intercept, slope, fee, 10), propensity=propensity,
                                 conversion_value=300, contact_cost=1, pd=pd)
    assert band.rate_min - 1e-12 <= terms.rate <= band.rate_max + 1e-12
    assert terms.effective_band.rate_min - 1e-12 <= terms.rate
    assert band.fee_waiver_allowed or not terms.fee_waived
    assert 0 <= terms.acceptance_probability <= 1


def test_fit_recovers_price_sensitivity_per_segment_and_falls_back():
    rng = random.Random(5)
    observations = []
    for segment, slope in (("young", -40.0), ("affluent", -5.0)):
        for _ in range(1500):
            rate = rng.choice([0.06, 0.08, 0.10, 0.12])
            p = 1 / (1 + math.exp(-(2.0 + slope * rate)))
            observations.append(pricing.PriceObservation(segment, rate, False, rng.random() < p))
    observations += [pricing.PriceObservation("tiny", 0.1, False, True)] * 5
    fitted = pricing.fit_price_response(observations)
    assert set(fitted) == {"*", "young", "affluent"}  # "tiny" has too few contacts
    assert fitted["young"].slope < fitted["affluent"].slope < 0
    assert fitted["young"].slope == pytest.approx(-40, abs=12)
    assert pricing.response_for(fitted, "tiny") is fitted["*"]
    assert pricing.response_for({}, "young") is pricing.DEFAULT_RESPONSE


def test_disclosures_show_the_chosen_terms():
    terms = pricing.ChosenTerms(0.0875, True, BAND, 0.1, 5.0, "")
    assert pricing.disclosure_texts(terms, BAND) == [("apr", "Annualised rate: 8.75%"), ("fee", "Fee: waived")]
    terms = pricing.ChosenTerms(0.0875, False, BAND, 0.1, 5.0, "")
    assert pricing.disclosure_texts(terms, BAND)[1] == ("fee", "Fee: 50.00")
