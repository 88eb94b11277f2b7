"""Use cases of cross-sell, churn and bounded pricing, and their hook into Decide (docs/recommendations.md).

Owns its transactions; imports no grpc. Profile is reached through `FactsSource` (customer ids, point-in-time
features) and computed tags are written through `TagWriter` (profile's TagService in production, a fake in
tests). CPU-bound training runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from opentelemetry import trace
from sqlalchemy import func, select

from lodestar.common.v1 import common_pb2
from services.campaign import churn, modeling, pricing, recommend
from services.campaign.db import (
    CampaignUnitOfWork,
    ChurnModelRow,
    CrossSellModelRow,
    HistoryRow,
    ModelVersionRow,
    OfferRow,
    PriceBandRow,
)
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import CREDIT_PRODUCTS, CustomerSnapshot, Disclosure, RankedOffer, Reason
from services.platform.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN

log = logging.getLogger("lodestar.campaign")

MODEL_CACHE_SECONDS = 30.0
CROSS_SELL_TOP = 3
MAX_SCORES_LISTED = 1000


class FactsSource(Protocol):
    async def require_customer(self, customer_id: str) -> None: ...

    async def customer_ids(self) -> list[str]: ...

    async def features(self, customer_id: str, as_of: datetime | None = None
                       ) -> tuple[dict[str, float], list[str]]: ...

    async def features_many(self, customer_ids: Sequence[str], as_of: datetime | None = None
                            ) -> dict[str, tuple[dict[str, float], list[str]]]: ...


class TagWriter(Protocol):
    async def write(self, tags: Mapping[str, Mapping[str, str]]) -> int: ...


class PdSource(Protocol):
    """A customer's probability of default from risk, when one is available (None otherwise)."""

    async def pd(self, customer: CustomerSnapshot) -> float | None: ...


def product_of(product_type: int) -> str:
    """PRODUCT_TYPE_CREDIT_CARD -> "credit_card", the name profile uses in products_held."""
    return common_pb2.ProductType.Name(product_type).removeprefix("PRODUCT_TYPE_").lower()  # type: ignore[arg-type]


@dataclass(frozen=True)
class RecommenderInfo:
    version: int
    metrics: recommend.Evaluation
    create_time: datetime


@dataclass(frozen=True)
class ProductRecommendations:
    customer_id: str
    version: int
    items: list[recommend.Recommendation]


@dataclass(frozen=True)
class ChurnModelInfo:
    version: int
    features: list[str]
    cutoff_time: datetime
    horizon_days: int
    metrics: modeling.Metrics
    algorithm: str
    create_time: datetime


@dataclass(frozen=True)
class ChurnScoring:
    version: int
    # customer id, probability, tier: every customer asked for; scoring everyone, the first MAX_SCORES_LISTED
    scores: list[tuple[str, float, str]]
    tags_written: int
    counts: dict[str, int]  # tier -> customers, over everyone scored


def _recommender_info(row: CrossSellModelRow) -> RecommenderInfo:
    return RecommenderInfo(row.version, recommend.Evaluation(**row.metrics), row.create_time)


# The churn model's id in the shared model registry (model_versions).
CHURN_MODEL_ID = "churn"


def _churn_info(row: ChurnModelRow) -> ChurnModelInfo:
    return ChurnModelInfo(row.version, list(row.features), row.cutoff_time, row.horizon_days,
                          modeling.metrics_from_json(row.metrics), row.algorithm, row.create_time)


RECOMMENDER_CODEC = Codec(
    encode=lambda i: json.dumps([i.version, i.metrics.__dict__, i.create_time.isoformat()]).encode(),
    decode=lambda raw: (lambda d: RecommenderInfo(d[0], recommend.Evaluation(**d[1]),
                                                  datetime.fromisoformat(d[2])))(json.loads(raw)),
)
CHURN_CODEC = Codec(
    encode=lambda i: json.dumps([i.version, i.features, i.cutoff_time.isoformat(), i.horizon_days,
                                 modeling.metrics_to_json(i.metrics), i.algorithm,
                                 i.create_time.isoformat()]).encode(),
    decode=lambda raw: (lambda d: ChurnModelInfo(d[0], d[1], datetime.fromisoformat(d[2]), d[3],
                                                 modeling.metrics_from_json(d[4]), d[5],
                                                 datetime.fromisoformat(d[6])))(json.loads(raw)),
)
BAND_CODEC = Codec(encode=lambda b: json.dumps(b.to_json()).encode(),
                   decode=lambda raw: pricing.PriceBand.from_json(json.loads(raw)))


def _responses_to_json(responses: Mapping[str, pricing.PriceResponse]) -> dict[str, list[float]]:
    return {s: [r.intercept, r.slope, r.fee_coefficient, r.contacts] for s, r in sorted(responses.items())}


def _responses_from_json(data: Mapping[str, Any]) -> dict[str, pricing.PriceResponse]:
    return {s: pricing.PriceResponse(s, float(a), float(b), float(f), int(n)) for s, (a, b, f, n) in data.items()}


RESPONSE_CODEC = Codec(encode=lambda r: json.dumps(_responses_to_json(r)).encode(),
                       decode=lambda raw: _responses_from_json(json.loads(raw)))


def _band(row: PriceBandRow) -> pricing.PriceBand:
    return pricing.PriceBand(row.rate_min, row.rate_max, row.rate_step, row.fee_waiver_allowed, row.fee_amount)


class PersonalisationService:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], facts: FactsSource,
                 tags: TagWriter | None = None, pd_source: PdSource | None = None,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.uow_factory = uow_factory
        self.facts = facts
        self.tags = tags
        self.pd_source = pd_source
        self.clock = clock
        self._recommender: tuple[float, recommend.Recommender | None, int] | None = None

    # --- cross-sell ---------------------------------------------------------------------------------------

    async def train_recommender(self, *, min_support: float, min_confidence: float, test_fraction: float,
                                k: int = 3, key: IdempotencyKey | None = None) -> RecommenderInfo:
        ids = await self.facts.customer_ids()
        facts = await self.facts.features_many(ids)
        baskets = [recommend.basket_from_features(products, features) for features, products in facts.values()]
        try:
            model, evaluation = await asyncio.to_thread(
                recommend.evaluate, baskets, k=k, test_fraction=test_fraction, min_support=min_support,
                min_confidence=min_confidence)
        except recommend.RecommenderError as error:
            raise FailedPrecondition("TRAINING_NOT_POSSIBLE", str(error)) from None

        async def store(uow: CampaignUnitOfWork) -> RecommenderInfo:
            latest = await uow.session.scalar(select(func.max(CrossSellModelRow.version)))
            row = CrossSellModelRow(version=(latest or 0) + 1, metrics=dict(evaluation.__dict__),
                                    artifact=model.to_artifact(), create_time=self.clock())
            uow.session.add(row)
            await uow.session.flush()
            return _recommender_info(row)

        info = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, RECOMMENDER_CODEC, store)
        self._recommender = None
        return info

    async def latest_recommender(self) -> tuple[recommend.Recommender, int] | None:
        cached = self._recommender
        if cached and time.monotonic() - cached[0] < MODEL_CACHE_SECONDS:
            return (cached[1], cached[2]) if cached[1] is not None else None
        async with self.uow_factory() as uow:
            row = await uow.session.scalar(select(CrossSellModelRow).order_by(CrossSellModelRow.version.desc())
                                           .limit(1))
            loaded = (recommend.Recommender.from_artifact(row.artifact), row.version) if row else None
        self._recommender = (time.monotonic(), *(loaded or (None, 0)))
        return loaded

    async def recommend(self, customer_id: str, k: int) -> ProductRecommendations:
        trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
        await self.facts.require_customer(customer_id)
        latest = await self.latest_recommender()
        if latest is None:
            raise FailedPrecondition("NO_RECOMMENDER", "no recommender has been trained; run TrainRecommender")
        model, version = latest
        features, products = await self.facts.features(customer_id)
        basket = recommend.basket_from_features(products, features)
        return ProductRecommendations(customer_id, version, model.recommend(basket, k))

    # --- churn --------------------------------------------------------------------------------------------

    async def train_churn(self, *, cutoff: datetime, horizon_days: int, folds: int,
                          key: IdempotencyKey | None = None) -> ChurnModelInfo:
        if cutoff + timedelta(days=horizon_days) > self.clock():
            raise InvalidArgument.field("cutoff_time", "cutoff_time + horizon_days must not be in the future",
                                        reason="CUTOFF_TOO_RECENT")
        ids = await self.facts.customer_ids()
        before = await self.facts.features_many(ids, cutoff)
        active = [c for c in ids if churn.is_active(before[c][0])]
        after = await self.facts.features_many(active, cutoff + timedelta(days=horizon_days))
        examples = [churn.ChurnExample(before[c][0], churn.churned(after[c][0], horizon_days)) for c in active]
        try:
            trained = await asyncio.to_thread(churn.train, examples, folds)
        except modeling.TrainingError as error:
            raise FailedPrecondition("TRAINING_NOT_POSSIBLE", str(error)) from None

        async def store(uow: CampaignUnitOfWork) -> ChurnModelInfo:
            latest = await uow.session.scalar(select(func.max(ChurnModelRow.version)))
            row = ChurnModelRow(version=(latest or 0) + 1, features=trained.spec.columns, cutoff_time=cutoff,
                                horizon_days=horizon_days, metrics=modeling.metrics_to_json(trained.metrics),
                                algorithm=modeling.ALGORITHM, artifact=trained.to_artifact(),
                                create_time=self.clock())
            uow.session.add(row)
            # In the shared model registry too (ListModelVersions, PromoteModelVersion), as model "churn".
            uow.session.add(ModelVersionRow(
                model_id=CHURN_MODEL_ID, version=row.version, kind="churn", offer_id="", features=row.features,
                window_start=None, window_end=cutoff + timedelta(days=horizon_days), metrics=row.metrics,
                status="CHALLENGER", algorithm=row.algorithm, artifact=row.artifact, create_time=row.create_time))
            await uow.session.flush()
            return _churn_info(row)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CHURN_CODEC, store)

    async def score_churn(self, customer_ids: Sequence[str], version: int | None,
                          write_tags: bool) -> ChurnScoring:
        if write_tags and self.tags is None:
            raise FailedPrecondition("TAG_WRITER_UNAVAILABLE", "no tag writer is configured")
        async with self.uow_factory() as uow:
            if version is None:  # the champion of the registry's "churn" model, else the latest version
                version = await uow.session.scalar(select(ModelVersionRow.version).where(
                    ModelVersionRow.model_id == CHURN_MODEL_ID, ModelVersionRow.status == "CHAMPION"))
            query = select(ChurnModelRow)
            query = (query.where(ChurnModelRow.version == version) if version is not None
                     else query.order_by(ChurnModelRow.version.desc()).limit(1))
            row = await uow.session.scalar(query)
            if row is None:
                if version is not None:
                    raise NotFound("churn model", f"churnModels/{version}", reason="CHURN_MODEL_NOT_FOUND")
                raise FailedPrecondition("NO_CHURN_MODEL", "no churn model has been trained; run TrainChurnModel")
            info, artifact = _churn_info(row), row.artifact
        model = modeling.TrainedModel.from_artifact(artifact, info.metrics)
        if customer_ids:
            await asyncio.gather(*(self.facts.require_customer(c) for c in customer_ids))
            ids = list(dict.fromkeys(customer_ids))
        else:
            ids = await self.facts.customer_ids()
        facts = await self.facts.features_many(ids)
        rows = [facts[c][0] for c in ids]
        probabilities = await asyncio.to_thread(churn.score, model, rows)
        scores = [(c, round(p, 6), churn.risk_tier(p)) for c, p in zip(ids, probabilities, strict=True)]
        written = 0
        if write_tags and self.tags is not None and scores:
            written = await self.tags.write({c: {churn.TAG_NAME: tier} for c, _, tier in scores})
        counts = {tier: sum(1 for _, _, t in scores if t == tier) for tier in ("low", "medium", "high")}
        return ChurnScoring(info.version, scores if customer_ids else scores[:MAX_SCORES_LISTED], written, counts)

    # --- pricing ------------------------------------------------------------------------------------------

    async def set_price_band(self, offer_id: str, band: pricing.PriceBand,
                             key: IdempotencyKey | None = None) -> pricing.PriceBand:
        pricing.validate_band(band)

        async def save(uow: CampaignUnitOfWork) -> pricing.PriceBand:
            offer = await uow.session.get(OfferRow, offer_id)
            if offer is None:
                raise NotFound("offer", f"offers/{offer_id}")
            if offer.product_type not in CREDIT_PRODUCTS:  # the value model is interest the customer pays
                raise FailedPrecondition("PRICE_BAND_NOT_APPLICABLE", "price bands apply to credit products only "
                                         "(credit card, consumer loan, instalment)", metadata={"offer_id": offer_id})
            row = await uow.session.get(PriceBandRow, offer_id)
            if row is None:
                row = PriceBandRow(offer_id=offer_id, response={})
                uow.session.add(row)
            row.rate_min, row.rate_max, row.rate_step = band.rate_min, band.rate_max, band.rate_step
            row.fee_waiver_allowed, row.fee_amount = band.fee_waiver_allowed, band.fee_amount
            row.update_time = self.clock()
            await uow.session.flush()
            return band

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, BAND_CODEC, save)

    async def get_price_band(self, offer_id: str) -> tuple[pricing.PriceBand, dict[str, pricing.PriceResponse]]:
        async with self.uow_factory() as uow:
            row = await uow.session.get(PriceBandRow, offer_id)
            if row is None:
                if await uow.session.get(OfferRow, offer_id) is None:
                    raise NotFound("offer", f"offers/{offer_id}")
                raise NotFound("price band", f"offers/{offer_id}/priceBand", reason="PRICE_BAND_NOT_FOUND")
            return _band(row), _responses_from_json(row.response or {})

    async def fit_price_response(self, offer_id: str,
                                 key: IdempotencyKey | None = None) -> dict[str, pricing.PriceResponse]:
        """From the offer's history whose context carries `rate` (and optionally `fee_waived`,
        `price_segment`): treated contacts only."""
        await self.get_price_band(offer_id)
        async with self.uow_factory() as uow:
            rows = (await uow.session.execute(select(HistoryRow.context, HistoryRow.converted).where(
                HistoryRow.offer_id == offer_id, HistoryRow.treated.is_(True)))).all()
        observations = []
        for context, converted in rows:
            try:
                rate = float((context or {}).get("rate", ""))
            except ValueError:
                continue
            observations.append(pricing.PriceObservation(
                str((context or {}).get("price_segment", "")), rate,
                str((context or {}).get("fee_waived", "")).lower() in ("1", "true", "yes"), bool(converted)))
        fitted = await asyncio.to_thread(pricing.fit_price_response, observations)
        if not fitted:
            raise FailedPrecondition(
                "TRAINING_NOT_POSSIBLE", f"{len(observations)} priced contacts with both outcomes are too few (at "
                f"least {pricing.MIN_CONTACTS} needed)", metadata={"offer_id": offer_id})

        async def save(uow: CampaignUnitOfWork) -> dict[str, pricing.PriceResponse]:
            row = await uow.session.get(PriceBandRow, offer_id)
            if row is None:
                raise NotFound("price band", f"offers/{offer_id}/priceBand", reason="PRICE_BAND_NOT_FOUND")
            row.response = _responses_to_json(fitted)
            row.update_time = self.clock()
            await uow.session.flush()
            return fitted

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, RESPONSE_CODEC, save)

    # --- the Decide hook: after ranking, cross-sell evidence then pricing -----------------------------------

    async def after_ranking(self, customer: CustomerSnapshot, ranked: list[RankedOffer],
                            candidates: list[dict[str, Any]]) -> None:
        """Annotates the ranked offers in place: never changes which offers rank or their order (the ranking
        stays reproducible by ExplainDecision); adds the cross-sell evidence and the chosen price terms to the
        reasons, the disclosures and the decision record's candidates."""
        if not ranked:
            return
        by_offer = {str(c.get("offer_id")): c for c in candidates}
        await self._cross_sell(customer, ranked, by_offer)
        await self._price(customer, ranked, by_offer)

    async def _cross_sell(self, customer: CustomerSnapshot, ranked: list[RankedOffer],
                          by_offer: dict[str, dict[str, Any]]) -> None:
        latest = await self.latest_recommender()
        if latest is None:
            return
        model, version = latest
        held = str(customer.attributes.get("products_held") or "")
        basket = frozenset(recommend.PRODUCT_PREFIX + p.strip() for p in held.split(",") if p.strip())
        top = {r.product: (rank, r) for rank, r in enumerate(model.recommend(basket, CROSS_SELL_TOP), start=1)}
        for item in ranked:
            found = top.get(product_of(item.offer.product_type))
            if found is None:
                continue
            rank, rec = found
            evidence = (f"rule {' & '.join(rec.rules[0].antecedent)} => {rec.rules[0].consequent} "
                        f"(confidence {rec.rules[0].confidence:.2f}, lift {rec.rules[0].lift:.2f})" if rec.rules
                        else "similar to " + ", ".join(f"{i} ({s:.2f})" for i, s in rec.similar_items)
                        if rec.similar_items else "popular among customers")
            item.reasons.append(Reason("CROSS_SELL", f"cross-sell recommendation #{rank} (score {rec.score:.3f}, "
                                                     f"recommenders/{version}): {evidence}"))
            record = by_offer.get(item.offer.offer_id)
            if record is not None:
                record["cross_sell"] = {"recommender": f"recommenders/{version}", "rank": rank,
                                        "score": rec.score, "evidence": evidence}

    async def _price(self, customer: CustomerSnapshot, ranked: list[RankedOffer],
                     by_offer: dict[str, dict[str, Any]]) -> None:
        async with self.uow_factory() as uow:
            rows = {r.offer_id: (_band(r), _responses_from_json(r.response or {})) for r in await uow.session.scalars(
                select(PriceBandRow).where(PriceBandRow.offer_id.in_([i.offer.offer_id for i in ranked])))}
        if not rows:
            return
        pd, pd_failed = None, ""
        if self.pd_source is not None:
            try:
                pd = await self.pd_source.pd(customer)
            except DomainError as error:  # fail safe: no personalised price without risk's view
                pd_failed = error.reason
                log.warning("pricing: risk PD unavailable (%s); standard terms", error.reason)
        segment = customer.attributes.get(pricing.SEGMENT_ATTRIBUTE)
        for item in ranked:
            if item.offer.offer_id not in rows:
                continue
            band, responses = rows[item.offer.offer_id]
            response = pricing.response_for(responses, str(segment) if segment is not None else None)
            if pd_failed:
                terms = pricing.standard_terms(band, response, propensity=item.propensity,
                                               conversion_value=item.offer.conversion_value,
                                               contact_cost=item.offer.contact_cost, why=f"risk PD unavailable "
                                               f"({pd_failed})")
            else:
                terms = pricing.choose_terms(band, response, propensity=item.propensity,
                                             conversion_value=item.offer.conversion_value,
                                             contact_cost=item.offer.contact_cost, pd=pd)
            shown = [Disclosure(kind, text) for kind, text in pricing.disclosure_texts(terms, band)]
            replaced = {d.kind for d in shown}
            item.offer = replace(item.offer, disclosures=shown + [
                d for d in item.offer.disclosures if d.kind.lower() not in replaced])
            item.reasons.append(Reason("PERSONALISED_PRICE", terms.explanation))
            item.chosen_terms = terms.to_json()
            record = by_offer.get(item.offer.offer_id)
            if record is not None:
                record["pricing"] = {**terms.to_json(), "segment": response.segment, "pd": pd}
