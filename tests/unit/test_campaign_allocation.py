"""The allocation optimiser against brute-force optima on small problems whose optimum is known."""

import itertools

import numpy as np
import pytest

from services.campaign.allocation import AllocationError, allocate

NAN = float("nan")


def brute_force(values, costs, channels, budget, capacity):
    """The exact optimum by enumerating every choice (one offer or none per customer)."""
    n, m = values.shape
    best = 0.0
    for choice in itertools.product(range(-1, m), repeat=n):
        total, spend, used = 0.0, 0.0, dict.fromkeys(channels, 0)
        ok = True
        for i, j in enumerate(choice):
            if j < 0:
                continue
            if np.isnan(values[i, j]) or values[i, j] <= 0:
                ok = False
                break
            total += values[i, j]
            spend += costs[i, j]
            used[channels[j]] += 1
        if not ok or (budget is not None and spend > budget + 1e-9):
            continue
        if any(used[k] > limit for k, limit in capacity.items()):
            continue
        best = max(best, total)
    return best


def feasible(result, values, costs, channels, budget, capacity):
    pairs = result.pairs
    assert len(set(pairs[:, 0])) == len(pairs)  # one offer per customer
    assert all(values[i, j] > 0 for i, j in pairs)
    spend = sum(costs[i, j] for i, j in pairs)
    assert budget is None or spend <= budget + 1e-9
    for channel, limit in capacity.items():
        assert sum(1 for _, j in pairs if channels[j] == channel) <= limit
    assert result.spend == pytest.approx(spend)


def test_known_optimum_where_greedy_by_value_is_wrong():
    # Customer 0 is the best single pick for SMS, but giving SMS to 1 and 2 and email to 0 is worth more.
    values = np.array([[10.0, 9.0], [8.0, NAN], [7.0, NAN]])
    costs = np.ones_like(values)
    channels = ["sms", "email"]
    result = allocate(values, costs, channels, capacity={"sms": 2}, method="milp")
    assert result.objective == pytest.approx(24.0)  # 9 + 8 + 7
    assert list(result.assignment) == [1, 0, 0]
    assert result.binding == ["CAPACITY:sms"]


@pytest.mark.parametrize("seed", range(12))
def test_milp_matches_brute_force_on_random_problems(seed):
    rng = np.random.default_rng(seed)
    n, m = 6, 3
    values = rng.normal(5, 4, size=(n, m))
    values[rng.random((n, m)) < 0.2] = NAN
    costs = rng.uniform(0.5, 3.0, size=(n, m))
    channels = ["sms", "email", "sms"]
    budget = float(rng.uniform(3, 10))
    capacity = {"sms": int(rng.integers(1, 4)), "email": int(rng.integers(1, 4))}
    optimum = brute_force(values, costs, channels, budget, capacity)
    exact = allocate(values, costs, channels, budget=budget, capacity=capacity, method="milp",
                     price_constraints=False)
    assert exact.objective == pytest.approx(optimum, abs=1e-6)
    feasible(exact, values, costs, channels, budget, capacity)
    greedy = allocate(values, costs, channels, budget=budget, capacity=capacity, method="greedy",
                      price_constraints=False)
    feasible(greedy, values, costs, channels, budget, capacity)
    assert greedy.objective <= optimum + 1e-9


def test_constraint_cost_is_the_gain_from_relaxing_it():
    # 3,000 customers all wanting SMS worth 2.0 each (plus conversions 0.1 each), 1,000 SMS slots.
    n = 3000
    values = np.full((n, 1), 2.0)
    conversions = np.full((n, 1), 0.1)
    result = allocate(values, np.zeros((n, 1)), ["sms"], capacity={"sms": 1000}, conversions=conversions)
    assert result.objective == pytest.approx(2000.0)
    [cost] = result.constraint_costs
    assert cost.constraint == "CAPACITY:sms" and cost.step == 1000
    assert cost.value_gain == pytest.approx(2000.0)  # 1,000 more slots are worth 1,000 x 2.0
    assert cost.conversions_gain == pytest.approx(100.0)  # ... and 100 conversions
    assert result.cut_by.count("CAPACITY:sms") == 2000


def test_budget_binding_and_cut_reasons():
    values = np.array([[5.0, NAN], [4.0, NAN], [NAN, NAN], [-1.0, NAN], [3.0, NAN]])
    costs = np.array([[2.0, 0], [2.0, 0], [1.0, 0], [1.0, 0], [2.0, 0]])
    result = allocate(values, costs, ["email", "sms"], budget=4.0)
    assert list(result.assignment) == [0, 0, -1, -1, -1]
    assert result.binding == ["BUDGET"]
    assert result.cut_by == ["", "", "INELIGIBLE", "NOT_PROFITABLE", "BUDGET"]
    [cost] = result.constraint_costs
    assert cost.constraint == "BUDGET" and cost.value_gain == pytest.approx(0.0)  # +0.4 buys nothing (cost 2)


def test_per_customer_cap_above_one():
    values = np.array([[3.0, 2.0, 1.0]])
    result = allocate(values, np.zeros_like(values), ["sms", "email", "push"], per_customer_cap=2)
    assert sorted(result.pairs[:, 1].tolist()) == [0, 1]
    assert result.assignment[0] == 0 and result.objective == pytest.approx(5.0)


def test_auto_uses_greedy_above_the_size_limit(monkeypatch):
    import services.campaign.allocation as allocation

    monkeypatch.setattr(allocation, "MILP_MAX_CANDIDATES", 2)
    values = np.array([[3.0], [2.0], [1.0]])
    assert allocate(values, np.zeros_like(values), ["sms"]).method == "greedy"
    monkeypatch.setattr(allocation, "MILP_MAX_CANDIDATES", 3)
    assert allocate(values, np.zeros_like(values), ["sms"]).method == "milp"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"values": np.ones(3)}, "values"),
    ({"costs": np.ones((2, 3))}, "costs"),
    ({"offer_channels": ["sms"]}, "offer_channels"),
    ({"budget": -1.0}, "budget"),
    ({"capacity": {"sms": -1}}, "capacity"),
    ({"per_customer_cap": 0}, "per_customer_cap"),
    ({"costs": -np.ones((2, 2))}, "costs"),
    ({"method": "magic"}, "method"),
])
def test_bad_input_names_the_argument(kwargs, message):
    args = {"values": np.ones((2, 2)), "costs": np.ones((2, 2)), "offer_channels": ["sms", "email"]}
    args.update(kwargs)
    values, costs, channels = args.pop("values"), args.pop("costs"), args.pop("offer_channels")
    with pytest.raises(AllocationError, match=message):
        allocate(values, costs, channels, **args)


@pytest.mark.parametrize("block", [1, 3, 7, 65_536])
@pytest.mark.parametrize("seed", range(100))
def test_block_greedy_is_exactly_the_sequential_greedy(monkeypatch, seed, block):
    """The vectorised greedy (blocks, running sums) picks exactly what the one-candidate-at-a-time loop picks,
    across budgets and capacities that bind mid-block, ties, repeated costs and several channels."""
    import services.campaign.allocation as allocation

    monkeypatch.setattr(allocation, "GREEDY_BLOCK", block)
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 60)), int(rng.integers(1, 5))
    values = np.round(rng.normal(1.0, 2.0, (n, m)), 1)  # rounded: ties happen
    values[rng.random((n, m)) < 0.2] = NAN
    costs = rng.choice([0.5, 1.0, 1.5, 2.0], (n, m)) if seed % 3 else np.round(rng.uniform(0.1, 2, (n, m)), 2)
    channels = [["sms", "email", "push"][j % 3] for j in range(m)]
    budget = None if seed % 4 == 0 else float(rng.uniform(0, n))
    capacity = {} if seed % 5 == 0 else {"sms": int(rng.integers(0, n)), "push": int(rng.integers(0, n // 2 + 1))}
    rows, cols = allocation._candidates(values)
    v, c = values[rows, cols], costs[rows, cols]
    key = v / np.maximum(c, 1e-12) if budget is not None and c.sum() > budget else v
    order = np.lexsort((rows, -key))
    names = sorted(set(channels))
    option_channel = np.array([names.index(k) for k in channels])[cols]
    room = np.array([capacity.get(k, np.iinfo(np.int64).max) for k in names], dtype=np.int64)
    left = float("inf") if budget is None else budget
    expected = allocation._greedy_sequential(rows, option_channel, c, order, room, left, n, 1)
    got = allocation._greedy_blocks(rows, option_channel, c, order, room, left, n)
    assert got.tolist() == expected.tolist()
    result = allocate(values, costs, channels, budget=budget, capacity=capacity, method="greedy")
    assert sorted(map(tuple, result.pairs.tolist())) == sorted(zip(rows[expected].tolist(), cols[expected].tolist()))


def test_cut_reasons_name_the_constraint_of_each_customer_s_best_option():
    values = np.array([[9.0, NAN], [8.0, NAN], [NAN, 7.0], [NAN, 6.0], [NAN, NAN], [-2.0, NAN]])
    costs = np.array([[1.0, 1.0], [1.0, 1.0], [3.0, 3.0], [1.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    result = allocate(values, costs, ["sms", "email"], budget=3.0, capacity={"sms": 1}, method="greedy")
    assert list(result.assignment) == [0, -1, -1, 1, -1, -1]
    assert result.cut_by == ["", "CAPACITY:sms", "BUDGET", "", "INELIGIBLE", "NOT_PROFITABLE"]


def test_a_solver_out_of_time_falls_back_to_the_better_of_its_best_and_the_greedy(monkeypatch):
    import services.campaign.allocation as allocation

    rng = np.random.default_rng(1)
    values = np.round(rng.uniform(0.1, 5, (300, 4)), 0)  # few distinct values: a symmetric, slow-to-prove MILP
    costs = np.tile([0.5, 0.8, 1.0, 0.4], (300, 1))
    channels = ["sms"] * 4
    monkeypatch.setattr(allocation, "MILP_TIME_LIMIT_SECONDS", 1e-9)  # stopped before any solution
    result = allocate(values, costs, channels, budget=60.0, method="milp")
    greedy = allocate(values, costs, channels, budget=60.0, method="greedy")
    assert result.method == "greedy" and result.objective == pytest.approx(greedy.objective)
    feasible(result, values, costs, channels, 60.0, {})
    monkeypatch.setattr(allocation, "MILP_TIME_LIMIT_SECONDS", 30.0)
    exact = allocate(values, costs, channels, budget=60.0, method="milp")
    assert exact.method == "milp" and exact.objective >= greedy.objective - 1e-9
