"""Decide's ranking with fake profile and risk: no network, a real (SQLite) unit of work."""

from datetime import UTC, date, datetime

import pytest

from lodestar.common.v1 import common_pb2 as c
from services.campaign.db import CampaignUnitOfWork, DecisionRow
from services.campaign.domain import CustomerSnapshot, DecisionContext, Offer, ScreenResult, Verdict
from services.campaign.scoring import HeuristicPropensityModel, age_at, tolerance_level
from services.campaign.service import CampaignService
from services.platform import migrations
from services.platform.db import Database

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
CUSTOMER = CustomerSnapshot("c-1", date(1988, 4, 2), "CN-31", "Asia/Shanghai",
                            {"income": "15000", "risk_tolerance": "C4"})


class FakeProfile:
    async def get_customer(self, customer_id):
        return CUSTOMER


class FakeRisk:
    def __init__(self, verdicts):
        self.verdicts = verdicts
        self.calls = []

    async def screen(self, customer, offers, channel, contact_time):
        self.calls.append(([o.offer_id for o in offers], channel))
        return ScreenResult({k: Verdict(k, *v) for k, v in self.verdicts.items()}, "p-1")


def offer(offer_id, product, value, cost=1.0, **kw):
    return Offer(offer_id, offer_id.title(), product, c.PRODUCT_RISK_LEVEL_R2, value, cost, **kw)


@pytest.fixture
async def database(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/campaign.db"
    from services.campaign.app import DEFINITION

    migrations.upgrade(url, DEFINITION.migrations)
    db = Database.from_url(url)
    yield db
    await db.dispose()


async def seed(db, offers):
    async with CampaignUnitOfWork(db) as uow:
        for o in offers:
            await uow.offers.add(o)
        await uow.commit()


def test_age_and_tolerance_helpers():
    assert age_at(date(2008, 6, 1), date(2026, 6, 1)) == 18
    assert age_at(date(2008, 6, 2), date(2026, 6, 1)) == 17
    assert age_at(None, date(2026, 6, 1)) is None
    assert tolerance_level("C3") == 3 and tolerance_level("C9") is None and tolerance_level(3) is None


def test_heuristic_score_is_deterministic_and_a_probability():
    model = HeuristicPropensityModel()
    o = offer("deposit", c.PRODUCT_TYPE_DEPOSIT, 100)
    p = model.score(CUSTOMER, o, NOW.date())
    assert p == model.score(CUSTOMER, o, NOW.date())
    assert 0 < p < 1
    richer = CustomerSnapshot(**{**CUSTOMER.__dict__, "attributes": {"income": "150000"}})
    assert model.score(richer, o, NOW.date()) > model.score(
        CustomerSnapshot(**{**CUSTOMER.__dict__, "attributes": {"income": "1500"}}), o, NOW.date())


async def test_ranks_by_expected_value_and_suppresses_with_reasons(database):
    await seed(database, [
        offer("card", c.PRODUCT_TYPE_CREDIT_CARD, 400), offer("loan", c.PRODUCT_TYPE_CONSUMER_LOAN, 900),
        offer("deposit", c.PRODUCT_TYPE_DEPOSIT, 50), offer("wealth", c.PRODUCT_TYPE_WEALTH, 2000),
        offer("cheap", c.PRODUCT_TYPE_DEPOSIT, 1.0, cost=5.0),
    ])
    risk = FakeRisk({"card": ("ALLOW", ()), "loan": ("ALLOW", ()), "deposit": ("ALLOW", ()),
                     "wealth": ("DENY", ("UNSUITABLE", "CONSENT_MISSING")), "cheap": ("ALLOW", ())})
    service = CampaignService(lambda: CampaignUnitOfWork(database), FakeProfile(), risk)
    model = service.model
    decision = await service.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=2)

    expected = {}
    for oid, product, value, cost in [("card", c.PRODUCT_TYPE_CREDIT_CARD, 400, 1.0),
                                      ("loan", c.PRODUCT_TYPE_CONSUMER_LOAN, 900, 1.0),
                                      ("deposit", c.PRODUCT_TYPE_DEPOSIT, 50, 1.0)]:
        expected[oid] = model.score(CUSTOMER, offer(oid, product, value), NOW.date()) * value - cost
    best_two = sorted(expected, key=lambda k: -expected[k])[:2]
    assert [r.offer.offer_id for r in decision.offers] == best_two
    assert [r.rank for r in decision.offers] == [1, 2]
    assert decision.offers[0].expected_value == pytest.approx(expected[best_two[0]])
    reasons = {s.offer_id: [r.code for r in s.reasons] for s in decision.suppressed}
    assert reasons["wealth"] == ["RISK_UNSUITABLE", "RISK_CONSENT_MISSING"]
    assert reasons["cheap"] == ["NEGATIVE_EXPECTED_VALUE"]
    third = (set(expected) - set(best_two)).pop()
    assert reasons[third] == ["BELOW_CUTOFF"]
    assert risk.calls == [(["card", "cheap", "deposit", "loan", "wealth"], c.CHANNEL_SMS)]
    assert (decision.policy_version, decision.model_version) == ("p-1", "heuristic-v1")

    async with CampaignUnitOfWork(database) as uow:
        row = await uow.session.get(DecisionRow, decision.decision_id)
        customer_id, policy_version, candidates = row.customer_id, row.policy_version, row.candidates
    assert customer_id == "c-1" and policy_version == "p-1"
    by_offer = {r["offer_id"]: r for r in candidates}
    assert by_offer["wealth"]["verdict"] == "DENY" and by_offer["wealth"]["reasons"] == ["UNSUITABLE",
                                                                                        "CONSENT_MISSING"]
    assert by_offer[best_two[0]]["rank"] == 1
    assert by_offer[best_two[0]]["expected_value"] == pytest.approx(expected[best_two[0]], abs=1e-5)


async def test_offer_missing_from_risk_answer_is_never_shown(database):
    await seed(database, [offer("card", c.PRODUCT_TYPE_CREDIT_CARD, 400)])
    service = CampaignService(lambda: CampaignUnitOfWork(database), FakeProfile(), FakeRisk({}))
    decision = await service.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=3)
    assert decision.offers == []
    assert [r.code for r in decision.suppressed[0].reasons] == ["RISK_VERDICT_MISSING"]


async def test_expired_and_future_offers_are_not_candidates(database):
    await seed(database, [
        offer("old", c.PRODUCT_TYPE_DEPOSIT, 100, valid_until=datetime(2026, 1, 1, tzinfo=UTC)),
        offer("soon", c.PRODUCT_TYPE_DEPOSIT, 100, valid_from=datetime(2026, 12, 1, tzinfo=UTC)),
        offer("now", c.PRODUCT_TYPE_DEPOSIT, 100, valid_from=datetime(2026, 1, 1, tzinfo=UTC)),
    ])
    risk = FakeRisk({"now": ("ALLOW", ())})
    service = CampaignService(lambda: CampaignUnitOfWork(database), FakeProfile(), risk)
    decision = await service.decide("c-1", DecisionContext(c.CHANNEL_IN_APP, "", "", NOW), max_offers=3)
    assert risk.calls[0][0] == ["now"]
    assert [r.offer.offer_id for r in decision.offers] == ["now"]
