"""The issue-10 hook in Decide: pricing within the approved band and cross-sell evidence, with fake profile and
risk and a real (SQLite) unit of work; the price band's use cases."""

from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select

from lodestar.common.v1 import common_pb2 as c
from services.campaign import pricing
from services.campaign.app import DEFINITION
from services.campaign.db import CampaignUnitOfWork, DecisionRow, PriceBandRow
from services.campaign.domain import CustomerSnapshot, DecisionContext, Disclosure, Offer, ScreenResult, Verdict
from services.campaign.personalisation import PersonalisationService
from services.campaign.recommend import CATEGORY_PREFIX as CAT
from services.campaign.service import CampaignService
from services.platform import migrations
from services.platform.db import Database
from services.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
BAND = pricing.PriceBand(0.06, 0.12, 0.01, True, 50.0)


def customer(**attributes):
    return CustomerSnapshot("c-1", date(1988, 4, 2), "CN-31", "Asia/Shanghai",
                            {"income": "15000", "risk_tolerance": "C4", **attributes})


class FakeProfile:
    def __init__(self, snapshot):
        self.snapshot = snapshot

    async def get_customer(self, customer_id):
        return self.snapshot


class AllowAll:
    async def screen(self, customer, offers, channel, contact_time):
        return ScreenResult({o.offer_id: Verdict(o.offer_id, "ALLOW", ()) for o in offers}, "p-1")


class Facts:
    """Profile's facts for the recommender: 60 customers, travel spenders hold credit cards."""

    async def require_customer(self, customer_id):
        if customer_id != "c-1":
            raise NotFound("customer", f"customers/{customer_id}")

    async def customer_ids(self):
        return [f"x-{i}" for i in range(60)]

    async def features(self, customer_id, as_of=None):
        i = int(customer_id.split("-")[1]) if customer_id.startswith("x-") else 0
        if i % 2 == 0:
            return {"spend_category_travel_365d": 100.0}, (["credit_card"] if i % 10 else [])
        return {"spend_category_groceries_365d": 50.0}, ["deposit"]

    async def features_many(self, customer_ids, as_of=None):
        return {cid: await self.features(cid, as_of) for cid in customer_ids}


class FailingPd:
    async def pd(self, customer):
        raise Unavailable("DEPENDENCY_UNAVAILABLE", "the risk service is unavailable; retry later")


class FixedPd:
    def __init__(self, pd):
        self.value = pd

    async def pd(self, customer):
        return self.value


@pytest.fixture
async def database(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path}/campaign.db"
    migrations.upgrade(url, DEFINITION.migrations)
    db = Database.from_url(url)
    yield db
    await db.dispose()


async def seed(db):
    async with CampaignUnitOfWork(db) as uow:
        await uow.offers.add(Offer("loan", "Loan", c.PRODUCT_TYPE_CONSUMER_LOAN, c.PRODUCT_RISK_LEVEL_R2, 900.0, 1.0,
                                   [Disclosure("apr", "APR from 6%"), Disclosure("risk", "Borrow responsibly")]))
        await uow.offers.add(Offer("card", "Card", c.PRODUCT_TYPE_CREDIT_CARD, c.PRODUCT_RISK_LEVEL_R2, 400.0, 1.0))
        await uow.offers.add(Offer("deposit", "Deposit", c.PRODUCT_TYPE_DEPOSIT, c.PRODUCT_RISK_LEVEL_R1, 1.0, 1.0))
        await uow.commit()


def services(database, snapshot, pd=None):
    personalisation = PersonalisationService(lambda: CampaignUnitOfWork(database), Facts(),
                                             pd_source=FixedPd(pd) if pd is not None else None)
    campaign = CampaignService(lambda: CampaignUnitOfWork(database), FakeProfile(snapshot), AllowAll())
    campaign.personalisation = personalisation
    return campaign, personalisation


async def test_band_validation_and_unknown_offer_change_nothing(database):
    await seed(database)
    _, personalisation = services(database, customer())
    with pytest.raises(InvalidArgument) as inverted:
        await personalisation.set_price_band("loan", pricing.PriceBand(0.12, 0.06))
    assert inverted.value.reason == "PRICE_BAND_INVERTED"
    with pytest.raises(NotFound) as unknown:
        await personalisation.set_price_band("nope", BAND)
    assert unknown.value.reason == "OFFER_NOT_FOUND"
    with pytest.raises(FailedPrecondition) as deposit:
        await personalisation.set_price_band("deposit", BAND)
    assert deposit.value.reason == "PRICE_BAND_NOT_APPLICABLE"
    with pytest.raises(NotFound) as none:
        await personalisation.get_price_band("loan")
    assert none.value.reason == "PRICE_BAND_NOT_FOUND"
    async with CampaignUnitOfWork(database) as uow:
        assert list(await uow.session.scalars(select(PriceBandRow))) == []
    assert await personalisation.set_price_band("loan", BAND) == BAND
    assert (await personalisation.get_price_band("loan")) == (BAND, {})


async def test_decide_prices_within_the_band_shows_the_terms_and_records_why(database):
    await seed(database)
    campaign, personalisation = services(database, customer(price_segment="young"))
    await personalisation.set_price_band("loan", BAND)
    async with CampaignUnitOfWork(database) as uow:  # a fitted, very price-sensitive segment
        row = await uow.session.get(PriceBandRow, "loan")
        row.response = {"young": [2.0, -60.0, 0.0, 400]}
        await uow.commit()
    decision = await campaign.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=3)
    loan = next(r for r in decision.offers if r.offer.offer_id == "loan")
    card = next(r for r in decision.offers if r.offer.offer_id == "card")
    terms = pricing.choose_terms(BAND, pricing.PriceResponse("young", 2.0, -60.0, 0.0, 400),
                                 propensity=loan.propensity, conversion_value=900.0, contact_cost=1.0)
    assert 0.06 <= terms.rate < 0.12
    assert [(d.kind, d.text) for d in loan.offer.disclosures] == [
        ("apr", f"Annualised rate: {terms.rate * 100:.2f}%"), ("fee", "Fee: waived" if terms.fee_waived else
                                                                      "Fee: 50.00"), ("risk", "Borrow responsibly")]
    assert [r.code for r in loan.reasons][-1] == "PERSONALISED_PRICE"
    assert "segment young" in loan.reasons[-1].message
    assert "PERSONALISED_PRICE" not in [r.code for r in card.reasons]  # no band: untouched
    async with CampaignUnitOfWork(database) as uow:
        row = await uow.session.get(DecisionRow, decision.decision_id)
        recorded = {c_["offer_id"]: c_ for c_ in row.candidates}
    assert recorded["loan"]["pricing"]["rate"] == pytest.approx(terms.rate)
    assert recorded["loan"]["pricing"]["segment"] == "young" and recorded["loan"]["pricing"]["pd"] is None
    assert "pricing" not in recorded["card"]
    # The catalog's offer is unchanged: only this decision shows the chosen terms.
    async with CampaignUnitOfWork(database) as uow:
        assert [d.kind for d in (await uow.offers.get("loan")).disclosures] == ["apr", "risk"]
    # Re-evaluation still reproduces the ranking.
    assert (await campaign.explain_decision(decision.decision_id)).reproduced is True


async def test_risk_pd_narrows_the_band(database):
    await seed(database)
    campaign, personalisation = services(database, customer(price_segment="young"), pd=0.12)
    await personalisation.set_price_band("loan", BAND)
    decision = await campaign.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=3)
    async with CampaignUnitOfWork(database) as uow:
        row = await uow.session.get(DecisionRow, decision.decision_id)
        chosen = next(c_ for c_ in row.candidates if c_["offer_id"] == "loan")["pricing"]
    assert chosen["pd"] == 0.12 and chosen["fee_waived"] is False
    assert chosen["effective_band"]["rate_min"] == pytest.approx(0.06 + 0.12 * pricing.LGD)
    assert chosen["rate"] >= 0.06 + 0.12 * pricing.LGD - 1e-12
    assert "raised the floor" in chosen["explanation"]


async def test_cross_sell_evidence_in_decide_and_recommend_products(database):
    await seed(database)
    campaign, personalisation = services(database, customer(products_held="deposit"))
    decision = await campaign.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=3)
    assert all("CROSS_SELL" not in [r.code for r in o.reasons] for o in decision.offers)  # no recommender yet
    info = await personalisation.train_recommender(min_support=0.05, min_confidence=0.1, test_fraction=0.2)
    assert info.version == 1 and info.metrics.k == 3 and info.metrics.test_customers > 0
    decision = await campaign.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=3)
    card = next(r for r in decision.offers if r.offer.offer_id == "card")
    cross = [r for r in card.reasons if r.code == "CROSS_SELL"]
    assert len(cross) == 1 and "recommenders/1" in cross[0].message
    async with CampaignUnitOfWork(database) as uow:
        row = await uow.session.get(DecisionRow, decision.decision_id)
        recorded = next(c_ for c_ in row.candidates if c_["offer_id"] == "card")
    assert recorded["cross_sell"]["recommender"] == "recommenders/1" and recorded["cross_sell"]["rank"] >= 1

    recs = await personalisation.recommend("c-1", 2)  # c-1 in Facts: a travel spender without a card
    assert recs.items[0].product == "credit_card"
    assert recs.items[0].rules[0].antecedent == (CAT + "travel",)
    with pytest.raises(NotFound):
        await personalisation.recommend("stranger", 2)


async def test_without_risks_pd_the_standard_terms_are_shown(database):
    await seed(database)
    campaign, personalisation = services(database, customer(price_segment="young"))
    personalisation.pd_source = FailingPd()
    await personalisation.set_price_band("loan", BAND)
    decision = await campaign.decide("c-1", DecisionContext(c.CHANNEL_SMS, "", "", NOW), max_offers=3)
    loan = next(r for r in decision.offers if r.offer.offer_id == "loan")
    assert [(d.kind, d.text) for d in loan.offer.disclosures][:2] == [("apr", "Annualised rate: 12.00%"),
                                                                      ("fee", "Fee: 50.00")]
    assert "risk PD unavailable (DEPENDENCY_UNAVAILABLE)" in loan.reasons[-1].message
