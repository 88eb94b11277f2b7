"""The campaign service's use cases. Owns the transactions; raises domain errors; imports no grpc."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from opentelemetry import trace

from services.campaign.db import CampaignUnitOfWork, DecisionRow
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import (
    CustomerSnapshot,
    Decision,
    DecisionContext,
    Offer,
    OfferPage,
    RankedOffer,
    Reason,
    ScreenResult,
    SuppressedOffer,
    offer_from_json,
    offer_to_json,
)
from services.campaign.modeling import Example, TrainedModel, build_frame
from services.campaign.scoring import HeuristicPropensityModel
from services.platform.errors import AlreadyExists, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import (
    ATTR_CUSTOMER_TOKEN,
    ATTR_MODEL_VERSION,
    ATTR_OFFERS_CONSIDERED,
    ATTR_OFFERS_RANKED,
    ATTR_POLICY_VERSION,
    ServiceMetrics,
    service_metrics,
)

log = logging.getLogger("lodestar.campaign")

OFFER_CODEC = Codec(encode=offer_to_json, decode=offer_from_json)


class CustomerSource(Protocol):
    async def get_customer(self, customer_id: str) -> CustomerSnapshot: ...


class Screener(Protocol):
    async def screen(self, customer: CustomerSnapshot, offers: list[Offer], channel: int,
                     contact_time: datetime) -> ScreenResult: ...


class ChampionSource(Protocol):
    async def champion(self, offer_id: str, kind: str = "propensity") -> tuple[TrainedModel, str] | None: ...


@dataclass(frozen=True)
class OfferScore:
    """The probability that drives an offer's value: P(convert | contact) for a propensity model, the
    incremental probability for an uplift model; and which model gave it."""

    probability: float
    model_version: str
    basis: str  # "uplift" | "propensity"


class CampaignService:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], profile: CustomerSource,
                 risk: Screener, model: HeuristicPropensityModel | None = None,
                 metrics: ServiceMetrics | None = None, champions: ChampionSource | None = None) -> None:
        self.uow_factory = uow_factory
        self.profile = profile
        self.risk = risk
        self.model = model or HeuristicPropensityModel()
        self.metrics = metrics or service_metrics()
        self.champions = champions

    # --- offers -------------------------------------------------------------------------------------------

    async def create_offer(self, offer: Offer, key: IdempotencyKey | None) -> Offer:
        async def create(uow: CampaignUnitOfWork) -> Offer:
            if await uow.offers.get(offer.offer_id) is not None:
                raise AlreadyExists("offer", f"offers/{offer.offer_id}")
            return await uow.offers.add(offer)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, OFFER_CODEC, create)

    async def get_offer(self, offer_id: str) -> Offer:
        async with self.uow_factory() as uow:
            offer = await uow.offers.get(offer_id)
        if offer is None:
            raise NotFound("offer", f"offers/{offer_id}")
        return offer

    async def list_offers(self, *, after_id: str | None, page_size: int) -> OfferPage:
        async with self.uow_factory() as uow:
            rows = await uow.offers.list_page(after_id=after_id, limit=page_size + 1)
        more = len(rows) > page_size
        rows = rows[:page_size]
        return OfferPage(rows, rows[-1].offer_id if more and rows else None)

    # --- real-time decision -------------------------------------------------------------------------------

    async def decide(self, customer_id: str, context: DecisionContext, max_offers: int) -> Decision:
        """eligibility (active offers) -> risk screen -> expected value -> ranking -> stored decision record."""
        span = trace.get_current_span()
        span.set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))

        async def active_offers() -> list[Offer]:
            async with self.uow_factory() as uow:
                return await uow.offers.active(context.decision_time)

        customer, offers = await asyncio.gather(self.profile.get_customer(customer_id), active_offers())
        screen = (await self.risk.screen(customer, offers, context.channel, context.decision_time)
                  if offers else ScreenResult({}, ""))
        allowed = [o for o in offers if (v := screen.verdicts.get(o.offer_id)) is not None and v.verdict == "ALLOW"]
        scores = await self._score(customer, allowed, context)
        ranked, suppressed, candidates = self._rank(offers, screen, scores, max_offers)
        decision = Decision(
            decision_id=uuid.uuid4().hex, offers=ranked, suppressed=suppressed,
            policy_version=screen.policy_version,
            model_version=",".join(sorted({s.model_version for s in scores.values()})) or self.model.version,
        )
        async with self.uow_factory() as uow:
            uow.decisions.add(DecisionRow(
                decision_id=decision.decision_id, customer_id=customer_id, channel=context.channel,
                partner_id=context.partner_id, placement=context.placement, decision_time=context.decision_time,
                model_version=decision.model_version, policy_version=decision.policy_version,
                candidates=candidates,
            ))
            await uow.commit()
        span.set_attribute(ATTR_OFFERS_CONSIDERED, len(offers))
        span.set_attribute(ATTR_OFFERS_RANKED, len(ranked))
        span.set_attribute(ATTR_POLICY_VERSION, decision.policy_version)
        span.set_attribute(ATTR_MODEL_VERSION, decision.model_version)
        return decision

    async def _score(self, customer: CustomerSnapshot, offers: list[Offer],
                     context: DecisionContext) -> dict[str, OfferScore]:
        """Per offer: its champion uplift model, else its champion propensity model, else the heuristic."""
        scores: dict[str, OfferScore] = {}
        started = time.perf_counter()
        for offer in offers:
            champion = None
            if self.champions is not None:
                champion = await self.champions.champion(offer.offer_id, "uplift")
                basis = "uplift"
                if champion is None:
                    champion = await self.champions.champion(offer.offer_id, "propensity")
                    basis = "propensity"
            if champion is not None:
                trained, version = champion
                frame = build_frame([Example(customer.attributes, customer.birth_date, customer.region,
                                             context.decision_time, {})], trained.spec)
                probability = float(trained.score(frame)[0])
                scores[offer.offer_id] = OfferScore(probability, version, basis)
            else:
                probability = self.model.score(customer, offer, context.decision_time.date())
                scores[offer.offer_id] = OfferScore(probability, self.model.version, "propensity")
        if scores:
            self.metrics.record_scoring((time.perf_counter() - started) * 1000,
                                        ",".join(sorted({s.model_version for s in scores.values()})))
        return scores

    def _rank(self, offers: list[Offer], screen: ScreenResult, scores: dict[str, OfferScore], max_offers: int
              ) -> tuple[list[RankedOffer], list[SuppressedOffer], list[dict[str, object]]]:
        eligible: list[RankedOffer] = []
        suppressed: list[SuppressedOffer] = []
        candidates: list[dict[str, object]] = []
        for offer in offers:
            verdict = screen.verdicts.get(offer.offer_id)
            record: dict[str, object] = {"offer_id": offer.offer_id}
            if verdict is None or verdict.verdict != "ALLOW":
                # Fail closed: an offer risk did not clear is never shown.
                codes = verdict.reasons if verdict else ("VERDICT_MISSING",)
                reasons = [Reason(f"RISK_{code}", f"risk screening: {code.lower().replace('_', ' ')}")
                           for code in codes]
                suppressed.append(SuppressedOffer(offer.offer_id, reasons))
                record.update(verdict=verdict.verdict if verdict else "MISSING", reasons=list(codes))
                candidates.append(record)
                continue
            score = scores[offer.offer_id]
            propensity = score.probability
            value = propensity * offer.conversion_value - offer.contact_cost
            record.update(verdict="ALLOW", propensity=round(propensity, 6), conversion_value=offer.conversion_value,
                          contact_cost=offer.contact_cost, expected_value=round(value, 6),
                          model_version=score.model_version, basis=score.basis)
            candidates.append(record)
            if value <= 0:
                suppressed.append(SuppressedOffer(offer.offer_id, [
                    Reason("NEGATIVE_EXPECTED_VALUE", "the expected value does not cover the contact cost")]))
                continue
            code, what = (("EXPECTED_INCREMENTAL_VALUE", "incremental probability") if score.basis == "uplift"
                          else ("EXPECTED_VALUE", "propensity"))
            eligible.append(RankedOffer(offer, 0, propensity, value, [
                Reason("ELIGIBLE", "passed risk screening"),
                Reason(code, f"expected value {value:.2f} = {what} {propensity:.3f} ({score.model_version}) x "
                             f"{offer.conversion_value:.2f} - {offer.contact_cost:.2f}"),
            ]))
        eligible.sort(key=lambda r: (-r.expected_value, r.offer.offer_id))
        for rank, item in enumerate(eligible[:max_offers], start=1):
            item.rank = rank
        for item in eligible[max_offers:]:
            suppressed.append(SuppressedOffer(item.offer.offer_id, [
                Reason("BELOW_CUTOFF", f"ranked below the {max_offers} offers requested")]))
        for record in candidates:
            record["rank"] = next((r.rank for r in eligible[:max_offers] if r.offer.offer_id == record["offer_id"]), 0)
        return eligible[:max_offers], suppressed, candidates
