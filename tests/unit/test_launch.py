"""Pure parts of the batch launch: deterministic assignment, the vectorised heuristic, option values, blobs."""

from datetime import date

import numpy as np
import pytest

from lodestar.common.v1 import common_pb2 as c
from services.campaign.domain import CustomerSnapshot, Offer
from services.campaign.launch import PartitionResult, assign, heuristic_probabilities, option_values
from services.campaign.scoring import HeuristicPropensityModel


def test_assignment_is_deterministic_and_follows_the_shares():
    ids = [f"cust-{i:06d}" for i in range(20_000)]
    groups = assign("spring", ids, 0.2, [0.5, 0.3])
    assert np.array_equal(groups, assign("spring", list(reversed(ids)), 0.2, [0.5, 0.3])[::-1])
    shares = [(groups == g).mean() for g in (-1, 0, 1)]
    assert shares == pytest.approx([0.2, 0.5, 0.3], abs=0.015)
    # Another campaign shuffles customers independently.
    other = assign("autumn", ids, 0.2, [0.5, 0.3])
    assert 0.1 < ((groups == -1) & (other == -1)).sum() / (groups == -1).sum() < 0.3


def test_no_control_share_means_no_control_and_an_empty_audience_is_fine():
    groups = assign("x", [f"c{i}" for i in range(1000)], 0.0, [1.0])
    assert set(groups.tolist()) == {0}
    assert assign("x", [], 0.1, [0.9]).shape == (0,)


@pytest.mark.parametrize("product", [c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_TYPE_WEALTH, c.PRODUCT_TYPE_CONSUMER_LOAN,
                                     c.PRODUCT_TYPE_CREDIT_CARD])
def test_vectorised_heuristic_equals_the_per_customer_one(product):
    offer = Offer("o", "t", product, c.PRODUCT_RISK_LEVEL_R2, 100.0, 1.0)
    incomes = [None, 0, 500, 4000, 25_000, 900_000]
    tolerances = ["C1", None, "C3", "C5", "x", "C4"]
    got = heuristic_probabilities(offer, np.array([np.nan if v is None else v for v in incomes], dtype=float),
                                  np.array([np.nan if t in (None, "x") else int(t[1]) for t in tolerances]))
    model = HeuristicPropensityModel()
    want = [model.score(CustomerSnapshot("c", None, "", "", {k: v for k, v in (("income", i), ("risk_tolerance", t))
                                                          if v is not None}), offer, date(2026, 1, 1))
            for i, t in zip(incomes, tolerances, strict=True)]
    assert got == pytest.approx(want, rel=1e-12)


def test_option_values_are_nan_where_risk_did_not_allow():
    offers = [Offer("a", "t", c.PRODUCT_TYPE_DEPOSIT, 1, 100.0, 1.0),
              Offer("b", "t", c.PRODUCT_TYPE_WEALTH, 1, 10.0, 2.0)]
    p = np.array([[0.1, 0.5], [0.2, 0.05]])
    allowed = {c.CHANNEL_SMS: np.array([[True, True], [False, True]]),
               c.CHANNEL_EMAIL: np.array([[True, False], [True, True]])}
    values = option_values(p, offers, [c.CHANNEL_SMS, c.CHANNEL_EMAIL], allowed)
    expected = np.array([[9.0, 9.0, 3.0, np.nan], [np.nan, 19.0, -1.5, -1.5]])
    assert np.allclose(values, expected, equal_nan=True)


def test_partition_results_round_trip_without_pickle():
    result = PartitionResult(np.array(["a", "b"]), np.array([-1, 0], dtype=np.int16), np.array(["b"]),
                             np.array([[1.5, np.nan]]), np.array([[0.2]]))
    back = PartitionResult.from_blob(result.to_blob())
    assert back.member_ids.tolist() == ["a", "b"] and back.groups.tolist() == [-1, 0]
    assert back.candidate_ids.tolist() == ["b"]
    assert np.allclose(back.values, result.values, equal_nan=True)


def test_cli_parses_launch_commands_and_names():
    from lodestar_cli.commands.launches import _name
    from lodestar_cli.main import build_parser

    args = build_parser().parse_args(["campaigns", "launch", "spring", "--actor", "ops-1", "--json"])
    assert (args.campaign_id, args.actor, args.json, args.handler.__name__) == ("spring", "ops-1", True, "cmd_launch")
    args = build_parser().parse_args(["launches", "get", "spring", "--watch"])
    assert (args.launch, args.watch, args.handler.__name__) == ("spring", True, "cmd_get")
    assert _name("spring") == "campaigns/spring"
    assert _name("0123456789abcdef0123456789abcdef") == "launches/0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(("name", "value"), [
    ("CAMPAIGN_LAUNCH_CONCURRENCY", "0"), ("CAMPAIGN_LAUNCH_CONCURRENCY", "9"), ("CAMPAIGN_LAUNCH_CONCURRENCY", "2.5"),
    ("CAMPAIGN_LAUNCH_PARTITION_SIZE", "10001"),
])
def test_bad_launch_settings_stop_the_service_naming_the_variable(name, value):
    from services.campaign.app import DEFINITION
    from services.platform.config import ConfigError

    with pytest.raises(ConfigError, match=name):
        DEFINITION.settings_from_env({name: value})
    assert DEFINITION.settings_from_env({name: "3" if "CONCURRENCY" in name else "100"}).extra[name]
