"""TrainCreditModel with an event-based label (TrainCreditModelRequest.event_label): risk reads the customers'
events from profile's event feed (ListEventsSince) and labels a row a default when the event happened in the
window after the cut-off. Real profile and risk servers on port 0, real databases."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from lodestar.profile.v1 import event_service_pb2 as ev
from lodestar.profile.v1 import event_service_pb2_grpc as evg
from lodestar.risk.v1 import credit_pb2, risk_service_pb2_grpc
from services.profile.app import DEFINITION as PROFILE
from services.risk.app import DEFINITION as RISK
from services.risk.db import CreditModelRow
from tests.helpers import expect_error
from tests.integration.test_risk_service import ts

TODAY = datetime.now(UTC).date()
CUTOFF = TODAY - timedelta(days=200)
START = datetime(CUTOFF.year, CUTOFF.month, CUTOFF.day, tzinfo=UTC) + timedelta(days=1)  # window (START, +90d]
WINDOW = 90


@dataclass
class Stack:
    risk: Any
    stub: risk_service_pb2_grpc.RiskServiceStub
    events: evg.EventServiceStub

    async def models(self) -> int:
        async with self.risk.runtime.database.sessionmaker() as session:
            return int(await session.scalar(select(func.count()).select_from(CreditModelRow)) or 0)


@pytest.fixture
async def stack(start: Callable[..., Any]) -> AsyncIterator[Stack]:
    profile = await start(PROFILE)
    risk = await start(RISK, PROFILE_SERVICE_ADDR=profile.address)
    async with grpc.aio.insecure_channel(risk.address) as rc, grpc.aio.insecure_channel(profile.address) as pc:
        yield Stack(risk, risk_service_pb2_grpc.RiskServiceStub(rc), evg.EventServiceStub(pc))


def repayment(event_id: str, customer: str, at: datetime, days_late: int) -> ev.Event:
    return ev.Event(event_id=event_id, customer_id=customer, occurred_at=ts(at),
                    repayment=ev.Repayment(amount="500", days_late=days_late, product="consumer_loan"))


def population(n: int = 200, seed: int = 5) -> tuple[list[credit_pb2.CreditTrainingRow], set[str], list[ev.Event]]:
    """Rows (defaulted unset), the customers who default (a repayment >= 90 days late in the window) and the
    events: defaults in the window, plus events that must not count (before the cut-off, after the window, or
    less than 90 days late)."""
    rng = random.Random(seed)
    rows, bad, events = [], set(), []
    for i in range(n):
        customer = f"cust-{i:03d}"
        utilisation = rng.random()
        checking = rng.choice(["A11", "A12", "A13"])
        logit = -3.0 + 5.0 * utilisation + {"A11": 1.0, "A12": 0.0, "A13": -1.0}[checking]
        rows.append(credit_pb2.CreditTrainingRow(customer_id=customer, features={
            "utilisation": f"{utilisation:.4f}", "checking": checking}))
        if rng.random() < 1 / (1 + math.exp(-logit)):
            bad.add(customer)
            events.append(repayment(f"e-{i}-in", customer, START + timedelta(days=rng.randint(1, WINDOW - 1)), 120))
        events.append(repayment(f"e-{i}-before", customer, START - timedelta(days=rng.randint(1, 60)), 150))
        events.append(repayment(f"e-{i}-after", customer, START + timedelta(days=WINDOW + 5), 150))
        if i % 4 == 0:
            events.append(repayment(f"e-{i}-mild", customer, START + timedelta(days=10), 10))
    return rows, bad, events


async def ingest(stack: Stack, events: list[ev.Event]) -> None:
    for i in range(0, len(events), 1000):
        await stack.events.IngestEvents(ev.IngestEventsRequest(events=events[i:i + 1000]))
    # the feed shows events only once they have settled (services/profile/event_feed.py, 2 s)
    await asyncio.sleep(2.2)


def label(**kwargs: Any) -> credit_pb2.CreditEventLabel:
    kwargs.setdefault("event_type", "repayment_late")
    kwargs.setdefault("cutoff_date", CUTOFF.isoformat())
    kwargs.setdefault("window_days", WINDOW)
    return credit_pb2.CreditEventLabel(**kwargs)


async def test_defaults_are_the_events_in_the_window_after_the_cutoff(stack: Stack) -> None:
    rows, bad, events = population()
    await ingest(stack, events)
    model = (await stack.stub.TrainCreditModel(credit_pb2.TrainCreditModelRequest(
        rows=rows, features=["utilisation", "checking"], event_label=label()))).model
    assert model.rows == 200
    assert model.default_rate == pytest.approx(len(bad) / 200)
    assert dict(model.training_window) == {"label_event_type": "repayment_late", "cutoff": CUTOFF.isoformat(),
                                           "window_days": "90"}
    assert model.auc > 0.6
    # a lower lateness threshold also counts the mildly late repayments in the window
    mild = {f"cust-{i:03d}" for i in range(0, 200, 4)}
    looser = (await stack.stub.TrainCreditModel(credit_pb2.TrainCreditModelRequest(
        rows=rows, features=["utilisation", "checking"], event_label=label(min_days_late=5)))).model
    assert looser.default_rate == pytest.approx(len(bad | mild) / 200)


INVALID_LABELS: list[tuple[dict[str, Any], str, str]] = [
    ({"window_days": 0}, "event_label.window_days", "INVALID_WINDOW"),
    ({"window_days": 3651}, "event_label.window_days", "INVALID_WINDOW"),
    ({"window_days": 365}, "event_label.window_days", "WINDOW_NOT_OBSERVED"),
    ({"event_type": "dpd90"}, "event_label.event_type", "UNKNOWN_EVENT_TYPE"),
    ({"cutoff_date": "2025-13-01"}, "event_label.cutoff_date", "INVALID_CUTOFF"),
    ({"cutoff_date": ""}, "event_label.cutoff_date", "INVALID_CUTOFF"),
    ({"event_type": "transaction", "min_days_late": 30}, "event_label.min_days_late", "INVALID_ARGUMENT"),
]


async def test_an_invalid_label_is_rejected_and_nothing_is_trained(stack: Stack) -> None:
    rows, _, _ = population(20)
    for kwargs, field, reason in INVALID_LABELS:
        error = await expect_error(stack.stub.TrainCreditModel(credit_pb2.TrainCreditModelRequest(
            rows=rows, event_label=label(**kwargs))), grpc.StatusCode.INVALID_ARGUMENT, reason)
        assert [f for f, _ in error.field_violations] == [field], kwargs
    assert await stack.models() == 0


async def test_rows_labelled_both_ways_are_refused(stack: Stack) -> None:
    rows, _, _ = population(20)
    rows[3].defaulted = True
    error = await expect_error(stack.stub.TrainCreditModel(credit_pb2.TrainCreditModelRequest(
        rows=rows, event_label=label())), grpc.StatusCode.INVALID_ARGUMENT, "LABEL_CONFLICT")
    assert [f for f, _ in error.field_violations] == ["rows[3].defaulted"]


async def test_profile_down_is_unavailable(start: Callable[..., Any]) -> None:
    risk = await start(RISK, PROFILE_SERVICE_ADDR="127.0.0.1:1")
    rows, _, _ = population(20)
    async with grpc.aio.insecure_channel(risk.address) as channel:
        stub = risk_service_pb2_grpc.RiskServiceStub(channel)
        await expect_error(stub.TrainCreditModel(credit_pb2.TrainCreditModelRequest(rows=rows, event_label=label())),
                           grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE")


def test_cutoff_is_a_past_date() -> None:
    assert CUTOFF < date.today()
