"""Allocation of offers to customers under a budget, channel capacities and per-customer caps.

The problem: choose x[i, j] in {0, 1} (customer i gets offer j) to maximise the expected incremental value
sum(v[i, j] x[i, j]) subject to
    sum_j x[i, j]                     <= per_customer_cap          for every customer i
    sum_{i, j: channel(j) = k} x[i, j] <= capacity[k]               for every channel k with a capacity
    sum_{i, j} cost[i, j] x[i, j]      <= budget                    when a budget is given
Only pairs with a positive value are candidates (a contact that loses money is never made).

Up to `MILP_MAX_CANDIDATES` candidate pairs it is solved exactly as a mixed-integer program with HiGHS
(scipy.optimize.milp), within `MILP_TIME_LIMIT_SECONDS`: when HiGHS has not proven optimality by then, its best
solution and the greedy's are compared and the better kept (the method says which: "milp", "milp-time-limit",
"greedy"). Above that size a greedy pass is used instead, documented here because its result is
not optimal: candidates are taken in decreasing order of value per unit of the scarcest resource they use
(value / cost when a budget binds, else value), each accepted while its customer, channel and the budget
still have room. On the benchmark shapes (one offer per customer, one or two binding constraints) it is
within a few percent of the optimum; the report says which method ran.

What each constraint costs ("1,000 more SMS slots are worth N"): for every binding constraint the problem is
solved again with that constraint relaxed by `step` units (1,000 contacts, or 10% of the budget) and the gain
in value — and in expected conversions when conversion probabilities are given — is reported. This is the
shadow price measured on the integer problem itself, so it stays meaningful where LP duals are not.

Per customer left out, the reason: INELIGIBLE (no offer was allowed), NOT_PROFITABLE (no allowed offer has a
positive value), or the constraint that cut their best option: CAPACITY:<channel>, BUDGET, or OUTRANKED (it
had room, but the optimum preferred others — only possible when several constraints interact).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import csr_matrix

MILP_MAX_CANDIDATES = 200_000
# HiGHS proves optimality quickly on most launches, but a budget over many customers with equal values (a
# heuristic scorer gives whole groups the same value) can keep it closing the gap for minutes: past this limit its
# best solution so far is compared with the greedy's and the better one kept (method "milp-time-limit" or
# "greedy").
MILP_TIME_LIMIT_SECONDS = 5.0


@dataclass(frozen=True)
class ConstraintCost:
    constraint: str  # "BUDGET" or "CAPACITY:<channel>"
    step: float  # how much it was relaxed by
    value_gain: float
    conversions_gain: float | None


@dataclass
class Allocation:
    # For each customer, the index of the (best) offer chosen, or -1.
    assignment: np.ndarray
    # Every (customer, offer) pair chosen; more than one per customer when per_customer_cap > 1.
    pairs: np.ndarray
    objective: float
    method: str  # "milp" or "greedy"
    spend: float
    contacts_by_channel: dict[str, int]
    binding: list[str]
    constraint_costs: list[ConstraintCost] = field(default_factory=list)
    # For each customer left out, why ("" for those assigned).
    cut_by: list[str] = field(default_factory=list)


class AllocationError(ValueError):
    """Inputs of the wrong shape or meaning; the message names the argument."""


def allocate(
    values: np.ndarray,
    costs: np.ndarray,
    offer_channels: Sequence[str],
    *,
    budget: float | None = None,
    capacity: Mapping[str, int] | None = None,
    per_customer_cap: int = 1,
    conversions: np.ndarray | None = None,
    method: str = "auto",
    price_constraints: bool = True,
) -> Allocation:
    """`values[i, j]`: expected incremental value of offering j to i (NaN where not allowed); `costs[i, j]`
    its cost; `offer_channels[j]` the channel offer j goes through; `conversions[i, j]` optional expected
    conversions, only used to express constraint costs in conversions."""
    values = np.asarray(values, dtype=float)
    costs = np.asarray(costs, dtype=float)
    _check(values, costs, offer_channels, budget, capacity, per_customer_cap, conversions, method)
    capacity = dict(capacity or {})
    orders: dict[bool, np.ndarray] = {}  # the greedy's candidate order, kept for _price
    allocation = _solve(values, costs, offer_channels, budget, capacity, per_customer_cap, method, orders)
    allocation.cut_by = _cut_reasons(values, costs, offer_channels, budget, capacity, allocation)
    if price_constraints:
        allocation.constraint_costs = _price(values, costs, offer_channels, budget, capacity, per_customer_cap,
                                             conversions, allocation, orders, method)
    return allocation


def _check(values: np.ndarray, costs: np.ndarray, offer_channels: Sequence[str], budget: float | None,
           capacity: Mapping[str, int] | None, per_customer_cap: int, conversions: np.ndarray | None,
           method: str) -> None:
    if values.ndim != 2:
        raise AllocationError("values must be a customers x offers matrix")
    if costs.shape != values.shape:
        raise AllocationError(f"costs must have the shape of values {values.shape}, got {costs.shape}")
    if conversions is not None and np.asarray(conversions).shape != values.shape:
        raise AllocationError("conversions must have the shape of values")
    if len(offer_channels) != values.shape[1]:
        raise AllocationError("offer_channels must name one channel per offer")
    if np.any(np.isinf(values)) or np.any(~np.isfinite(costs)) or np.any(costs < 0):
        raise AllocationError("values must be finite or NaN, costs finite and not negative")
    if budget is not None and (not np.isfinite(budget) or budget < 0):
        raise AllocationError("budget must be a finite amount, zero or more")
    for channel, limit in (capacity or {}).items():
        if limit < 0:
            raise AllocationError(f"capacity of {channel} must be zero or more")
    if per_customer_cap < 1:
        raise AllocationError("per_customer_cap must be at least 1")
    if method not in ("auto", "milp", "greedy"):
        raise AllocationError("method must be auto, milp or greedy")


def _candidates(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.nan_to_num(values, nan=0.0) > 0
    rows, cols = np.nonzero(mask)
    return rows, cols


def _solve(values: np.ndarray, costs: np.ndarray, offer_channels: Sequence[str], budget: float | None,
           capacity: dict[str, int], per_customer_cap: int, method: str,
           orders: dict[bool, np.ndarray] | None = None) -> Allocation:
    rows, cols = _candidates(values)
    use_milp = method == "milp" or (method == "auto" and len(rows) <= MILP_MAX_CANDIDATES)
    orders = {} if orders is None else orders
    solved = "greedy"
    if use_milp:
        chosen, optimal = _milp(values, costs, offer_channels, budget, capacity, per_customer_cap, rows, cols)
        solved = "milp"
        if not optimal:  # stopped at the time limit: its best so far, or the greedy's if that is better
            greedy = _greedy(values, costs, offer_channels, budget, capacity, per_customer_cap, rows, cols, orders)
            objective = values[rows, cols]
            better = chosen is None or objective[greedy].sum() > objective[chosen].sum()
            chosen, solved = (greedy, "greedy") if better else (chosen, "milp-time-limit")
        assert chosen is not None
    else:
        chosen = _greedy(values, costs, offer_channels, budget, capacity, per_customer_cap, rows, cols, orders)
    n = values.shape[0]
    assignment = np.full(n, -1, dtype=np.int64)
    if per_customer_cap == 1:
        assignment[rows[chosen]] = cols[chosen]
    else:  # the best chosen offer per customer: write in increasing value, so the best is written last
        order = np.argsort(values[rows[chosen], cols[chosen]], kind="stable")
        assignment[rows[chosen][order]] = cols[chosen][order]
    spend = float(costs[rows[chosen], cols[chosen]].sum())
    channels = np.asarray(offer_channels, dtype=object)[cols[chosen]]
    contacts = {k: int((channels == k).sum()) for k in sorted(set(offer_channels))}
    binding = [f"CAPACITY:{k}" for k, limit in sorted(capacity.items()) if contacts.get(k, 0) >= limit]
    if budget is not None:
        cheapest_left = _cheapest_unchosen(costs, rows, cols, chosen)
        if cheapest_left is not None and spend + cheapest_left > budget + _slack(budget):
            binding.append("BUDGET")
    return Allocation(assignment=assignment, pairs=np.column_stack((rows[chosen], cols[chosen])),
                      objective=float(values[rows[chosen], cols[chosen]].sum()),
                      method=solved, spend=spend, contacts_by_channel=contacts,
                      binding=binding)


def _slack(budget: float | None) -> float:
    """How far a spend may pass the budget by rounding alone: a running sum of 10^5 costs drifts by ~1e-11, so
    without a margin the greedy's block sums and the one-at-a-time loop could part on a cost that exactly fits;
    a billionth of the budget is far above that drift and far below any real cost."""
    return 0.0 if budget is None or not np.isfinite(budget) else 1e-9 * max(1.0, abs(budget))


def _cheapest_unchosen(costs: np.ndarray, rows: np.ndarray, cols: np.ndarray, chosen: np.ndarray) -> float | None:
    left = ~chosen
    return float(costs[rows[left], cols[left]].min()) if left.any() else None


def _milp(values: np.ndarray, costs: np.ndarray, offer_channels: Sequence[str], budget: float | None,
          capacity: dict[str, int], per_customer_cap: int, rows: np.ndarray, cols: np.ndarray
          ) -> tuple[np.ndarray | None, bool]:
    """(the chosen candidates, proven optimal); (None, False) when the time limit came before any solution."""
    count = len(rows)
    if count == 0:
        return np.zeros(0, dtype=bool), True
    constraints = []
    n = values.shape[0]
    per_customer = csr_matrix((np.ones(count), (rows, np.arange(count))), shape=(n, count))
    constraints.append(LinearConstraint(per_customer, -np.inf, per_customer_cap))
    channels = np.asarray(offer_channels, dtype=object)[cols]
    for channel, limit in capacity.items():
        member = (channels == channel).astype(float)
        constraints.append(LinearConstraint(member.reshape(1, -1), -np.inf, limit))
    if budget is not None:
        constraints.append(LinearConstraint(costs[rows, cols].reshape(1, -1), -np.inf, budget))
    result = milp(-values[rows, cols], constraints=constraints, integrality=np.ones(count),
                  bounds=Bounds(0, 1), options={"time_limit": MILP_TIME_LIMIT_SECONDS})
    if result.x is None:  # infeasible cannot happen (x = 0 is feasible); a time-out without a solution can
        return None, False
    return np.asarray(result.x > 0.5), result.status == 0


def _greedy(values: np.ndarray, costs: np.ndarray, offer_channels: Sequence[str], budget: float | None,
            capacity: dict[str, int], per_customer_cap: int, rows: np.ndarray, cols: np.ndarray,
            orders: dict[bool, np.ndarray]) -> np.ndarray:
    """The greedy pass (see the module docstring): candidates best first, each taken while its customer, channel
    and the budget still have room. Vectorised in blocks for one contact per customer (see _greedy_blocks), over
    the candidates that can be taken at all (_undominated); the plain loop over every candidate,
    _greedy_sequential, is the definition and serves higher caps. `orders` keeps the sorted candidates per kind
    of key, for the re-solves that price the constraints."""
    v = values[rows, cols]
    c = costs[rows, cols]
    budget_binds = budget is not None and float(c.sum()) > budget
    names = sorted(set(offer_channels))
    channel_index = {k: i for i, k in enumerate(names)}
    option_channel = np.array([channel_index[k] for k in offer_channels], dtype=np.int64)
    room = np.array([capacity.get(k, np.iinfo(np.int64).max) for k in names], dtype=np.int64)
    left = float("inf") if budget is None else float(budget)
    if budget_binds not in orders:
        key = v / np.maximum(c, 1e-12) if budget_binds else v
        kept = (np.flatnonzero(_undominated(values.shape, rows, cols, c, key, option_channel))
                if per_customer_cap == 1 else np.arange(len(rows)))
        # Best first, ties by customer then option for determinism: candidates come in (row, column) order, and
        # a stable sort keeps it among equal keys.
        orders[budget_binds] = kept[np.argsort(-key[kept], kind="stable")]
    order = orders[budget_binds]
    if per_customer_cap == 1:
        return _greedy_blocks(rows, option_channel[cols], c, order, room, left, values.shape[0])
    return _greedy_sequential(rows, option_channel[cols], c, order, room, left, values.shape[0], per_customer_cap)


def _undominated(shape: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, c: np.ndarray, key: np.ndarray,
                 option_channel: np.ndarray) -> np.ndarray:
    """With one contact per customer, a candidate the customer has a better one for — earlier in the greedy's
    order (a higher key, or the same key and a lower option), on the same channel, costing no more — can never
    be taken: when the greedy reaches it, that better one was taken (the customer is served) or refused for a
    full channel or a budget it could not pay, which this one cannot pay either. Dropping such candidates before
    the sort changes nothing but the time (tests compare with the loop over every candidate)."""
    keys = np.full(shape, -np.inf)
    keys[rows, cols] = key
    prices = np.full(shape, np.inf)
    prices[rows, cols] = c
    present = np.zeros(shape, dtype=bool)
    present[rows, cols] = True
    keep = np.zeros(shape, dtype=bool)
    for channel in np.unique(option_channel):
        options = np.flatnonzero(option_channel == channel)
        order = np.argsort(-keys[:, options], axis=1, kind="stable")  # per customer, the greedy's order
        ranked = np.take_along_axis(prices[:, options], order, axis=1)
        ranked_present = np.take_along_axis(present[:, options], order, axis=1)
        ranked = np.where(ranked_present, ranked, np.inf)
        cheapest_before = np.concatenate([np.full((shape[0], 1), np.inf),
                                          np.minimum.accumulate(ranked, axis=1)[:, :-1]], axis=1)
        kept = np.zeros_like(ranked_present)
        np.put_along_axis(kept, order, ranked_present & (ranked < cheapest_before), axis=1)
        keep[:, options] = kept
    return np.asarray(keep[rows, cols])


def _greedy_sequential(rows: np.ndarray, channels: np.ndarray, c: np.ndarray, order: np.ndarray, room: np.ndarray,
                       left: float, customers: int, per_customer_cap: int) -> np.ndarray:
    room = room.copy()
    slack = _slack(left)
    per_customer = np.zeros(customers, dtype=np.int64)
    chosen = np.zeros(len(rows), dtype=bool)
    for idx in order:
        r, ch, cost = rows[idx], channels[idx], c[idx]
        if per_customer[r] >= per_customer_cap or room[ch] <= 0 or cost > left + slack:
            continue
        chosen[idx] = True
        per_customer[r] += 1
        room[ch] -= 1
        left -= cost
    return chosen


GREEDY_BLOCK = 65_536


def _greedy_blocks(rows: np.ndarray, channels: np.ndarray, c: np.ndarray, order: np.ndarray, room: np.ndarray,
                   left: float, customers: int) -> np.ndarray:
    """Exactly _greedy_sequential with a cap of one, a block of candidates at a time. In a block, drop those that
    cannot fit any more (customer served, channel full, cost above what is left: the state only tightens), keep
    each customer's first candidate, and accept the longest prefix that fits the budget and every channel by
    running sums. The first candidate that does not fit is rejected, as the loop would, and the next block
    starts right after it. Every such stop exhausts a channel or rules out every cost at least as high as the
    rejected one, so there are at most (channels + distinct costs) of them beyond the blocks themselves."""
    room = room.astype(np.int64).copy()
    slack = _slack(left)
    served = np.zeros(customers, dtype=bool)
    chosen = np.zeros(len(rows), dtype=bool)
    position, total = 0, len(order)
    while position < total:
        block = order[position:position + GREEDY_BLOCK]
        fits = ~served[rows[block]] & (room[channels[block]] > 0) & (c[block] <= left + slack)
        live = np.flatnonzero(fits)
        if not len(live):
            position += len(block)
            continue
        members = rows[block[live]]
        _, first = np.unique(members, return_index=True)
        live = live[np.sort(first)]  # each customer's first candidate in the block, in order
        picked = block[live]
        spent = np.cumsum(c[picked])
        over = spent > left + slack
        picked_channels = channels[picked]
        for k in np.unique(picked_channels):
            on_k = picked_channels == k
            over |= on_k & (np.cumsum(on_k) > room[k])
        stop = int(np.argmax(over)) if over.any() else len(picked)
        accepted = picked[:stop]
        chosen[accepted] = True
        served[rows[accepted]] = True
        np.subtract.at(room, channels[accepted], 1)
        left -= float(c[accepted].sum())
        position += len(block) if stop == len(picked) else int(live[stop]) + 1
    return chosen


def _cut_reasons(values: np.ndarray, costs: np.ndarray, offer_channels: Sequence[str], budget: float | None,
                 capacity: dict[str, int], allocation: Allocation) -> list[str]:
    n = values.shape[0]
    if n == 0:
        return []
    allowed = ~np.isnan(values)
    best_values = np.where(allowed, values, -np.inf)
    best = np.argmax(best_values, axis=1)
    best_value = best_values[np.arange(n), best]
    reasons = np.full(n, "OUTRANKED", dtype=object)
    left = None if budget is None else budget - allocation.spend
    if left is not None:
        reasons[costs[np.arange(n), best] > left + _slack(budget)] = "BUDGET"
    channel_of = np.asarray(offer_channels, dtype=object)[best]
    for channel, limit in capacity.items():
        if allocation.contacts_by_channel.get(channel, 0) >= limit:
            reasons[channel_of == channel] = f"CAPACITY:{channel}"
    reasons[best_value <= 0] = "NOT_PROFITABLE"
    reasons[~allowed.any(axis=1)] = "INELIGIBLE"
    reasons[allocation.assignment >= 0] = ""
    return list(reasons)


def _price(values: np.ndarray, costs: np.ndarray, offer_channels: Sequence[str], budget: float | None,
           capacity: dict[str, int], per_customer_cap: int, conversions: np.ndarray | None,
           allocation: Allocation, orders: dict[bool, np.ndarray], method: str
           ) -> list[ConstraintCost]:
    out = []
    base_conversions = _conversions(conversions, allocation)
    for constraint in allocation.binding:
        relaxed_capacity = dict(capacity)
        relaxed_budget = budget
        if constraint == "BUDGET":
            assert budget is not None
            step = max(budget * 0.1, 1.0)
            relaxed_budget = budget + step
        else:
            channel = constraint.split(":", 1)[1]
            step = 1000.0
            relaxed_capacity[channel] = capacity[channel] + int(step)
        again = _solve(values, costs, offer_channels, relaxed_budget, relaxed_capacity, per_customer_cap, method,
                       orders)
        gain_conversions = None
        if base_conversions is not None:
            gain_conversions = _conversions(conversions, again) - base_conversions  # type: ignore[operator]
        out.append(ConstraintCost(constraint, step, again.objective - allocation.objective, gain_conversions))
    return out


def _conversions(conversions: np.ndarray | None, allocation: Allocation) -> float | None:
    if conversions is None:
        return None
    pairs = allocation.pairs
    return float(np.asarray(conversions)[pairs[:, 0], pairs[:, 1]].sum()) if len(pairs) else 0.0
