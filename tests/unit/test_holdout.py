"""The global holdout: a pure, stable function of the customer id with a fixed salt."""

import hashlib

import numpy as np
import pytest

from services.campaign.holdout import DEFAULT_SHARE, HOLDOUT_SALT, GlobalHoldout, parse_share, position
from services.campaign.launch import assign

IDS = [f"cust-{i:06d}" for i in range(20_000)]


def test_position_is_the_documented_hash():
    digest = hashlib.sha256(b"lodestar-global-holdout-v1:cust-000001").digest()
    assert position("cust-000001") == int.from_bytes(digest[:8], "big") / 2.0 ** 64
    assert HOLDOUT_SALT == "lodestar-global-holdout-v1"


def test_the_share_is_respected_and_membership_is_stable():
    holdout = GlobalHoldout()
    mask = holdout.mask(IDS)
    assert DEFAULT_SHARE == 0.02
    assert 0.017 < mask.mean() < 0.023  # 20,000 draws: 3 standard deviations is about 0.003
    assert [holdout.contains(c) for c in IDS[:500]] == list(mask[:500])
    assert np.array_equal(GlobalHoldout().mask(IDS), mask)  # another replica, another day: the same members


def test_raising_the_share_only_adds_members():
    small, large = GlobalHoldout(0.01).mask(IDS), GlobalHoldout(0.05).mask(IDS)
    assert small.sum() < large.sum() and not np.any(small & ~large)


def test_a_zero_share_holds_out_nobody():
    assert not GlobalHoldout(0.0).mask(IDS).any() and not GlobalHoldout(0.0).contains(IDS[0])
    assert GlobalHoldout().mask([]).shape == (0,)


def test_membership_is_independent_of_a_campaign_s_own_assignment():
    held = GlobalHoldout(0.1).mask(IDS)
    control = assign("spring", IDS, 0.1, [0.9]) == -1
    # Independent hashes: the holdout's share of the campaign's control group is the holdout's share overall.
    assert abs(held[control].mean() - held.mean()) < 0.025
    assert abs(control[held].mean() - control.mean()) < 0.025


@pytest.mark.parametrize("raw", ["-0.1", "0.6", "abc"])
def test_bad_settings_are_refused(raw):
    with pytest.raises(ValueError):
        parse_share(raw)


def test_settings_parse():
    assert parse_share(None) == parse_share("") == DEFAULT_SHARE
    assert parse_share("0") == 0.0 and parse_share("0.1") == 0.1
