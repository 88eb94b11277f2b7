"""Churn: the point-in-time label, tiers, training into the churn registry, batch scoring and the tag writer
(a fake), with a real SQLite unit of work."""

import random
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from services.campaign import churn, modeling
from services.campaign.app import DEFINITION
from services.campaign.db import CampaignUnitOfWork, ChurnModelRow
from services.campaign.personalisation import PersonalisationService
from services.platform import migrations
from services.platform.db import Database
from services.platform.errors import FailedPrecondition, InvalidArgument, NotFound

NOW = datetime(2026, 6, 1, tzinfo=UTC)
CUTOFF = NOW - timedelta(days=120)
H = 90


def test_label_is_no_debit_transaction_in_the_horizon_after_the_cutoff():
    assert churn.churned({}, 90) is True  # nothing in the last 365 days at cut-off + horizon
    assert churn.churned({"recency_days": 90.0}, 90) is True  # the last one was at (or before) the cut-off
    assert churn.churned({"recency_days": 89.0}, 90) is False  # one after the cut-off
    assert churn.is_active({"recency_days": 0.0}) and not churn.is_active({"frequency_90d": 0.0})


@pytest.mark.parametrize(("p", "tier"), [(0.0, "low"), (0.299, "low"), (0.3, "medium"), (0.599, "medium"),
                                         (0.6, "high"), (1.0, "high")])
def test_tiers(p, tier):
    assert churn.risk_tier(p) == tier


def synthetic(n=240, seed=2):
    """Customers whose spend fell against the previous quarter (or who went quiet) mostly churn."""
    rng = random.Random(seed)
    before, after = {}, {}
    for i in range(n):
        cid = f"c-{i:04d}"
        if i % 20 == 0:  # never active before the cut-off: outside the population
            before[cid], after[cid] = {"frequency_90d": 0.0}, {}
            continue
        previous = rng.randint(5, 30)
        falling = rng.random() < 0.4
        now = rng.randint(0, previous // 3) if falling else rng.randint(previous, previous + 10)
        recency = rng.randint(20, 80) if falling else rng.randint(0, 10)
        before[cid] = {"recency_days": float(recency), "frequency_90d": float(now),
                       "frequency_prev_90d": float(previous), "monetary_90d": now * 120.0}
        gone = rng.random() < (0.85 if falling else 0.1)
        after[cid] = {"recency_days": float(H + 5)} if gone else {"recency_days": 2.0}
    return before, after


class FakeFacts:
    def __init__(self, before, after, known=None):
        self.before, self.after = before, after
        self.known = set(known if known is not None else before)
        self.calls = []

    async def require_customer(self, customer_id):
        if customer_id not in self.known:
            raise NotFound("customer", f"customers/{customer_id}")

    async def customer_ids(self):
        return sorted(self.known)

    async def features(self, customer_id, as_of=None):
        self.calls.append(as_of)
        source = self.after if as_of == CUTOFF + timedelta(days=H) else self.before
        return dict(source.get(customer_id, {})), []

    async def features_many(self, customer_ids, as_of=None):
        return {c: await self.features(c, as_of) for c in customer_ids}


class FakeTags:
    def __init__(self):
        self.written = []

    async def write(self, tags):
        self.written.append(dict(tags))
        return sum(len(v) for v in tags.values())


@pytest.fixture
async def database(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/campaign.db"
    migrations.upgrade(url, DEFINITION.migrations)
    db = Database.from_url(url)
    yield db
    await db.dispose()


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(modeling, "ROUNDS", 40)


async def test_train_stores_a_version_with_metrics_and_scoring_writes_tags(database, fast):
    before, after = synthetic()
    facts, tags = FakeFacts(before, after), FakeTags()
    service = PersonalisationService(lambda: CampaignUnitOfWork(database), facts, tags, clock=lambda: NOW)
    info = await service.train_churn(cutoff=CUTOFF, horizon_days=H, folds=3)
    assert info.version == 1 and info.horizon_days == H and info.cutoff_time == CUTOFF
    assert info.metrics.training_rows == 228  # the 12 customers inactive at the cut-off are not in the population
    assert info.metrics.auc > 0.75 and len(info.metrics.lift_by_decile) == 10
    assert info.features == ["frequency_90d", "frequency_prev_90d", "monetary_90d", "recency_days"]
    # Point in time: features only at the cut-off and the label's as-of, never later.
    assert set(facts.calls) == {CUTOFF, CUTOFF + timedelta(days=H)}
    async with CampaignUnitOfWork(database) as uow:
        assert await uow.session.scalar(select(func.count()).select_from(ChurnModelRow)) == 1

    result = await service.score_churn([], None, write_tags=True)
    assert result.version == 1 and len(result.scores) == 240
    by_id = {c: (p, t) for c, p, t in result.scores}
    assert by_id["c-0000"] == (1.0, "high")  # already inactive
    falling = [c for c, f in before.items() if f.get("frequency_90d", 0) * 3 <= f.get("frequency_prev_90d", 0)
               and "recency_days" in f]
    assert sum(by_id[c][1] == "high" for c in falling) > 0.6 * len(falling)
    assert tags.written == [{c: {"churn_risk": t} for c, _, t in result.scores}]
    assert result.tags_written == 240


async def test_scoring_named_customers_checks_they_exist_and_writes_nothing_without_asking(database, fast):
    before, after = synthetic()
    tags = FakeTags()
    service = PersonalisationService(lambda: CampaignUnitOfWork(database), FakeFacts(before, after), tags,
                                     clock=lambda: NOW)
    with pytest.raises(FailedPrecondition) as raised:
        await service.score_churn(["c-0001"], None, write_tags=False)
    assert raised.value.reason == "NO_CHURN_MODEL"
    await service.train_churn(cutoff=CUTOFF, horizon_days=H, folds=3)
    with pytest.raises(NotFound):
        await service.score_churn(["c-0001", "nobody"], None, write_tags=True)
    with pytest.raises(NotFound) as missing:
        await service.score_churn(["c-0001"], 7, write_tags=False)
    assert missing.value.reason == "CHURN_MODEL_NOT_FOUND"
    result = await service.score_churn(["c-0001", "c-0002"], 1, write_tags=False)
    assert [c for c, _, _ in result.scores] == ["c-0001", "c-0002"] and result.tags_written == 0
    assert tags.written == []


async def test_a_cutoff_whose_horizon_is_not_over_is_refused_and_nothing_is_stored(database):
    service = PersonalisationService(lambda: CampaignUnitOfWork(database), FakeFacts({}, {}), FakeTags(),
                                     clock=lambda: NOW)
    with pytest.raises(InvalidArgument) as raised:
        await service.train_churn(cutoff=NOW - timedelta(days=30), horizon_days=H, folds=3)
    assert raised.value.reason == "CUTOFF_TOO_RECENT"
    with pytest.raises(FailedPrecondition) as few:
        await service.train_churn(cutoff=CUTOFF, horizon_days=H, folds=3)
    assert few.value.reason == "TRAINING_NOT_POSSIBLE"
    async with CampaignUnitOfWork(database) as uow:
        assert await uow.session.scalar(select(func.count()).select_from(ChurnModelRow)) == 0


def test_winback_preset_targets_high_churn_risk_with_a_randomised_control():
    preset = churn.winback_preset("wb", ["loan"], [1])
    assert (preset.segment_id, preset.condition) == ("churn-risk-high", 'tag.churn_risk = "high"')
    assert preset.control_share == 0.1 and preset.offer_ids == ("loan",) and "uplift" in preset.description
    with pytest.raises(ValueError, match="control"):
        churn.winback_preset("wb", ["loan"], [1], control_share=0.0)
    with pytest.raises(ValueError, match="offer"):
        churn.winback_preset("wb", [], [1])


async def test_scoring_everyone_lists_the_first_scores_but_counts_and_tags_all(database, fast, monkeypatch):
    import services.campaign.personalisation as personalisation

    monkeypatch.setattr(personalisation, "MAX_SCORES_LISTED", 100)
    before, after = synthetic()
    tags = FakeTags()
    service = PersonalisationService(lambda: CampaignUnitOfWork(database), FakeFacts(before, after), tags,
                                     clock=lambda: NOW)
    await service.train_churn(cutoff=CUTOFF, horizon_days=H, folds=3)
    result = await service.score_churn([], None, write_tags=True)
    assert [c for c, _, _ in result.scores] == sorted(before)[:100]
    assert sum(result.counts.values()) == 240 and result.tags_written == 240 and len(tags.written[0]) == 240
