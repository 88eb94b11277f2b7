"""The campaign service's use cases. Owns the transactions; raises domain errors; imports no grpc."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

import numpy as np
import pandas as pd
from opentelemetry import trace
from sqlalchemy import select

from services.campaign import modeling
from services.campaign.bandit import ThompsonArms
from services.campaign.db import CampaignUnitOfWork, DecisionRow, ModelVersionRow
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
    Verdict,
    offer_from_json,
    offer_to_json,
)
from services.campaign.holdout import REASON as HOLDOUT_REASON
from services.campaign.holdout import GlobalHoldout
from services.campaign.learning import FeatureSource, features_as_of
from services.campaign.modeling import Example, TrainedModel, build_frame
from services.campaign.scoring import HeuristicPropensityModel, age_at
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


class AfterRankingHook(Protocol):
    """Issue 10 (personalisation.py): annotates ranked offers in place with cross-sell evidence and the terms
    chosen within an approved price band; never changes which offers rank or their order."""

    async def after_ranking(self, customer: CustomerSnapshot, ranked: list[RankedOffer],
                            candidates: list[dict[str, Any]]) -> None: ...


@dataclass(frozen=True)
class OfferScore:
    """The probability that drives an offer's value: P(convert | contact) for a propensity model, the
    incremental probability for an uplift model; and which model gave it."""

    probability: float
    model_version: str
    basis: str  # "uplift" | "propensity"
    # The customer attributes the model read (stored in the decision's feature snapshot).
    features: tuple[str, ...] = ()
    # The profile behaviour features the model read that the customer had at the decision time, with their
    # values (stored in the snapshot too: re-evaluation must not recompute them from a profile that moved on).
    feature_values: tuple[tuple[str, float], ...] = ()


# The customer attributes the heuristic reads (scoring.py).
HEURISTIC_ATTRIBUTES = ("income", "risk_tolerance")
# The policy version of a decision for a member of the global holdout (risk is not asked).
HOLDOUT_POLICY = "global-holdout"
# Decide ranks by the arg-max of expected value: the logged action is chosen with probability 1.
DETERMINISTIC_ACTION_PROBABILITY = 1.0


@dataclass(frozen=True)
class DecisionRecordView:
    """A stored decision, as GetDecision returns it: the customer only as its token."""

    decision_id: str
    customer_token: str
    channel: int
    partner_id: str
    placement: str
    decision_time: datetime
    max_offers: int | None
    candidates: list[dict[str, Any]]
    model_version: str
    policy_version: str
    snapshot: dict[str, Any] | None
    snapshot_hash: str | None
    action_probability: float | None
    create_time: datetime


@dataclass(frozen=True)
class DecisionDifference:
    offer_id: str
    field: str
    recorded: str
    recomputed: str


@dataclass(frozen=True)
class DecisionExplanation:
    record: DecisionRecordView
    reproduced: bool
    difference: DecisionDifference | None
    recomputed: list[dict[str, Any]]


def feature_snapshot(customer: CustomerSnapshot, decision_time: datetime,
                     scores: dict[str, OfferScore]) -> dict[str, Any]:
    """What re-evaluating a decision needs of the customer: the attributes the scoring read, region, time zone,
    and the age at the decision time — not the birth date (personal data stays in profile) — plus the decision
    time exactly as requested (its offset decides the calendar date the scorers see); and, when a model read
    profile's behaviour features, their values at the decision time ("features"; absent otherwise)."""
    used = sorted({name for score in scores.values() for name in score.features})
    snapshot: dict[str, Any] = {
        "attributes": {name: customer.attributes[name] for name in used if name in customer.attributes},
        "region": customer.region, "time_zone": customer.time_zone,
        "age": age_at(customer.birth_date, decision_time.date()), "decision_time": decision_time.isoformat(),
    }
    features = dict(sorted({pair for score in scores.values() for pair in score.feature_values}))
    if features:
        snapshot["features"] = features
    return snapshot


def snapshot_hash(snapshot: dict[str, Any]) -> str:
    """sha256 of the snapshot's canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _nones(column: np.ndarray) -> np.ndarray:
    """True where an object array holds None (NaN is a value)."""
    return np.asarray(np.equal(column, np.array([None], dtype=object)), dtype=bool)


def _json_texts(values: Sequence[Any]) -> np.ndarray:
    """json.dumps of every value as an object array (None stays None), computed once per distinct value where
    that is exact: a column of one type (floats without NaN or infinities)."""
    column = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values.astype(object)
    kind = pd.api.types.infer_dtype(column, skipna=True)
    if kind == "floating":
        numbers = column.astype(float)  # None -> NaN
        present = ~_nones(column)
        if bool(np.isfinite(numbers[present]).all()):
            out = np.full(len(column), None, dtype=object)
            out[present] = list(map(float.__repr__, numbers[present].tolist()))  # json's float text
            return out
    elif kind in ("string", "integer", "boolean", "empty"):
        codes, uniques = pd.factorize(column, use_na_sentinel=True)
        texts = np.array([*(json.dumps(u) for u in uniques.tolist()), None], dtype=object)
        if int((codes < 0).sum()) == int(_nones(column).sum()):  # no NaN taken for None
            return np.asarray(texts[codes], dtype=object)
    return np.array([None if v is None else json.dumps(v) for v in column.tolist()], dtype=object)


def _json_members(columns: Mapping[str, Sequence[Any]], n: int) -> list[str]:
    """Per row, the members `"name":value` of the object {name: columns[name][i] where not None}, in sorted
    name order and comma-separated (the text between the braces of its canonical JSON)."""
    inner = np.full(n, "", dtype=object)
    for name in sorted(columns):
        texts = _json_texts(columns[name])
        present = ~_nones(texts)
        part = np.full(n, "", dtype=object)
        part[present] = "," + json.dumps(name) + ":" + texts[present]
        inner = inner + part
    return [text[1:] for text in inner.tolist()]


def snapshot_hashes(attributes: Mapping[str, Sequence[Any]], regions: Sequence[str], time_zones: Sequence[str],
                    ages: Sequence[int], decision_time: str,
                    features: Mapping[str, Sequence[float | None]] | None = None) -> list[bytes]:
    """snapshot_hash of every row of a columnar snapshot batch (a launch partition), as raw sha256 digests:
    row i is {"attributes": {name: attributes[name][i] where not None}, "region": regions[i],
    "time_zone": time_zones[i], "age": ages[i] (negative: None), "decision_time": decision_time} and, when the
    row has any, "features": {name: features[name][i] where not None} (as feature_snapshot). The canonical
    JSON is assembled column by column from per-value texts instead of json.dumps per row (a property test
    checks it is byte for byte the same)."""
    n = len(regions)
    inner = _json_members(attributes, n)
    behaviour = [f',"features":{{{text}}}' if text else "" for text in _json_members(features, n)] if features \
        else [""] * n
    region_texts = _json_texts([r or "" for r in regions]).tolist()
    zone_texts = _json_texts([z or "" for z in time_zones]).tolist()
    whole = np.asarray(ages, dtype=np.int64).reshape(n)
    codes, uniques = pd.factorize(whole)
    age_texts = np.array([str(a) if a >= 0 else "null" for a in uniques.tolist()], dtype=object)[codes].tolist()
    head = hashlib.sha256(b'{"age":')
    when = json.dumps(decision_time)
    digests = []
    for a, i, f, r, z in zip(age_texts, inner, behaviour, region_texts, zone_texts, strict=True):
        digest = head.copy()
        digest.update(f'{a},"attributes":{{{i}}},"decision_time":{when}{f},"region":{r},"time_zone":{z}}}'.encode())
        digests.append(digest.digest())
    return digests


def birth_date_for_age(age: int, on: date) -> date:
    """A birth date giving exactly `age` on `on` (what the scorers compute from), for re-evaluation."""
    try:
        return on.replace(year=on.year - age)
    except ValueError:  # 29 February
        return on.replace(year=on.year - age, day=28)


# Stored candidate keys compared by re-evaluation, in order, with their names in the contract.
_COMPARED = (("offer_id", "offer_id"), ("verdict", "verdict"), ("reasons", "risk_reasons"),
             ("model_version", "model_version"), ("basis", "basis"), ("propensity", "probability"),
             ("conversion_value", "conversion_value"), ("contact_cost", "contact_cost"),
             ("expected_value", "expected_value"), ("rank", "rank"))


def first_difference(recorded: list[dict[str, Any]], recomputed: list[dict[str, Any]]) -> DecisionDifference | None:
    """The first candidate field where a re-evaluation differs from the record (floats to 1e-9)."""
    for old, new in zip(recorded, recomputed, strict=False):
        offer_id = str(old.get("offer_id", ""))
        for key, name in _COMPARED:
            a, b = old.get(key), new.get(key)
            same = (math.isclose(float(a), float(b), rel_tol=0.0, abs_tol=1e-9)
                    if isinstance(a, (int, float)) and isinstance(b, (int, float))
                    and not isinstance(a, bool) and not isinstance(b, bool) else a == b)
            if not same:
                return DecisionDifference(offer_id, name, _text(a), _text(b))
    if len(recorded) != len(recomputed):
        return DecisionDifference("", "candidates", str(len(recorded)), str(len(recomputed)))
    return None


def _text(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


class CampaignService:
    # Cross-sell and pricing after ranking (issue 10; personalisation_app.py sets it).
    personalisation: AfterRankingHook | None = None

    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], profile: CustomerSource,
                 risk: Screener, model: HeuristicPropensityModel | None = None,
                 metrics: ServiceMetrics | None = None, champions: ChampionSource | None = None,
                 features: FeatureSource | None = None) -> None:
        self.uow_factory = uow_factory
        self.profile = profile
        # Profile's behaviour features, asked only when a champion model reads some (learning.py).
        self.features = features
        self.risk = risk
        self.model = model or HeuristicPropensityModel()
        self.metrics = metrics or service_metrics()
        self.champions = champions
        # The persistent global holdout (holdout.py); app.py sets the configured share.
        self.holdout = GlobalHoldout(0.0)
        # Thompson sampling of arms in Decide (bandit.py; response_handlers.wire_responses sets it).
        self.arms: ThompsonArms | None = None

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
        held_out = self.holdout.contains(customer_id)  # the global holdout is never contacted (holdout.py)
        screen = (await self.risk.screen(customer, offers, context.channel, context.decision_time)
                  if offers and not held_out else ScreenResult({}, ""))
        if held_out:
            screen = ScreenResult({o.offer_id: Verdict(o.offer_id, "HOLDOUT", (HOLDOUT_REASON,)) for o in offers},
                                  HOLDOUT_POLICY)
        allowed = [o for o in offers if (v := screen.verdicts.get(o.offer_id)) is not None and v.verdict == "ALLOW"]
        scores = await self._score(customer, allowed, context)
        ranked, suppressed, candidates = self._rank(offers, screen, scores, max_offers)
        if self.personalisation is not None:  # issue 10 hook: cross-sell evidence, then pricing in the band
            await self.personalisation.after_ranking(customer, ranked, candidates)
        decision = Decision(
            decision_id=uuid.uuid4().hex, offers=ranked, suppressed=suppressed,
            policy_version=screen.policy_version,
            model_version=",".join(sorted({s.model_version for s in scores.values()})) or self.model.version,
        )
        action_probability = await self._choose_arm(customer_id, decision, context)  # bandit.py
        snapshot = feature_snapshot(customer, context.decision_time, scores)
        async with self.uow_factory() as uow:
            uow.decisions.add(DecisionRow(
                decision_id=decision.decision_id, customer_id=customer_id, channel=context.channel,
                partner_id=context.partner_id, placement=context.placement, decision_time=context.decision_time,
                model_version=decision.model_version, policy_version=decision.policy_version,
                candidates=candidates, snapshot=snapshot, snapshot_hash=snapshot_hash(snapshot),
                max_offers=max_offers, action_probability=action_probability,
            ))
            await uow.commit()
        span.set_attribute(ATTR_OFFERS_CONSIDERED, len(offers))
        span.set_attribute(ATTR_OFFERS_RANKED, len(ranked))
        span.set_attribute(ATTR_POLICY_VERSION, decision.policy_version)
        span.set_attribute(ATTR_MODEL_VERSION, decision.model_version)
        return decision

    async def _choose_arm(self, customer_id: str, decision: Decision, context: DecisionContext) -> float:
        """When a running campaign choosing arms by Thompson sampling presents a ranked offer on this channel:
        the customer's arm (reason ARM_SELECTED on that offer), and the probability it was picked with — the
        decision's action probability; else the ranking's own, deterministic 1 (bandit.py)."""
        if self.arms is None or not decision.offers:
            return DETERMINISTIC_ACTION_PROBABILITY
        choice = await self.arms.choose_for_decision(customer_id, [r.offer.offer_id for r in decision.offers],
                                                     context.channel, decision.decision_id, context.decision_time)
        if choice is None:
            return DETERMINISTIC_ACTION_PROBABILITY
        for ranked in decision.offers:
            if ranked.offer.offer_id == choice.offer_id:
                ranked.reasons.append(Reason("ARM_SELECTED", f"arm {choice.arm_id} of campaigns/{choice.campaign_id}"
                                                             f" by Thompson sampling (p={choice.probability:.3f})"))
        return choice.probability

    async def _score(self, customer: CustomerSnapshot, offers: list[Offer],
                     context: DecisionContext) -> dict[str, OfferScore]:
        """Per offer: its champion uplift model, else its champion propensity model, else the heuristic."""
        scores: dict[str, OfferScore] = {}
        started = time.perf_counter()
        behaviour: dict[str, float] | None = None  # fetched once, and only for a model that reads features
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
                wanted = modeling.event_features(trained.spec)
                if wanted and behaviour is None:
                    # as of the decision time, the definitions the model was trained with
                    (behaviour,) = await features_as_of(self.features, [(customer.customer_id,
                                                                         context.decision_time)])
                used = {n: behaviour[n] for n in wanted if n in behaviour} if wanted and behaviour else {}
                frame = build_frame([Example(customer.attributes, customer.birth_date, customer.region,
                                             context.decision_time, {}, features=used)], trained.spec)
                probability = float(trained.score(frame)[0])
                scores[offer.offer_id] = OfferScore(probability, version, basis, tuple(
                    c.removeprefix("attr.") for c in trained.spec.columns if c.startswith("attr.")),
                    tuple(sorted(used.items())))
            else:
                probability = self.model.score(customer, offer, context.decision_time.date())
                scores[offer.offer_id] = OfferScore(probability, self.model.version, "propensity",
                                                    HEURISTIC_ATTRIBUTES)
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
                reasons = [Reason(code, "a member of the global holdout: never contacted") if code == HOLDOUT_REASON
                           else Reason(f"RISK_{code}", f"risk screening: {code.lower().replace('_', ' ')}")
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

    # --- decision records: get and re-evaluate ------------------------------------------------------------

    async def get_decision(self, decision_id: str) -> DecisionRecordView:
        if ":" in decision_id:  # "{launch_id}:{customer_id}": a batch launch's record (batch_decisions.py)
            from services.campaign.batch_decisions import get_batch_decision

            view: DecisionRecordView = await get_batch_decision(self.uow_factory, decision_id)
            trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, view.customer_token)
            return view
        async with self.uow_factory() as uow:
            row = await uow.decisions.get(decision_id)
            if row is None:
                raise NotFound("decision", f"decisions/{decision_id}")
            view = DecisionRecordView(
                decision_id=row.decision_id, customer_token=customer_token(row.customer_id), channel=row.channel,
                partner_id=row.partner_id, placement=row.placement, decision_time=row.decision_time,
                max_offers=row.max_offers, candidates=[dict(c) for c in row.candidates or []],
                model_version=row.model_version, policy_version=row.policy_version,
                snapshot=dict(row.snapshot) if row.snapshot is not None else None, snapshot_hash=row.snapshot_hash,
                action_probability=row.action_probability, create_time=row.create_time,
            )
        trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, view.customer_token)
        return view

    async def explain_decision(self, decision_id: str) -> DecisionExplanation:
        """Re-computes the ranking from the stored snapshot with the recorded model versions (loaded by name from
        the registry; the heuristic by its version) and the recorded risk verdicts, against the catalog's offers,
        and compares every candidate's terms, verdict, model version and rank with the record."""
        if ":" in decision_id:  # a batch launch's record (batch_decisions.py)
            from services.campaign.batch_decisions import explain_batch_decision

            explained: DecisionExplanation = await explain_batch_decision(self, decision_id)
            return explained
        record = await self.get_decision(decision_id)

        def differs(offer_id: str, field: str, recorded: str, recomputed: str) -> DecisionExplanation:
            return DecisionExplanation(record, False, DecisionDifference(offer_id, field, recorded, recomputed), [])

        snapshot = record.snapshot
        if snapshot is None or record.max_offers is None:
            return differs("", "snapshot", "absent", "recorded before decision snapshots were stored")
        if snapshot_hash(snapshot) != record.snapshot_hash:
            return differs("", "snapshot_hash", record.snapshot_hash or "-", snapshot_hash(snapshot))
        decision_time = datetime.fromisoformat(snapshot["decision_time"])
        age = snapshot.get("age")
        customer = CustomerSnapshot(
            customer_id="", birth_date=birth_date_for_age(age, decision_time.date()) if age is not None else None,
            region=snapshot.get("region", ""), time_zone=snapshot.get("time_zone", ""),
            attributes=dict(snapshot.get("attributes") or {}))
        offers: list[Offer] = []
        async with self.uow_factory() as uow:
            for candidate in record.candidates:
                offer = await uow.offers.get(str(candidate["offer_id"]))
                if offer is None:
                    return differs(str(candidate["offer_id"]), "offer", "in the catalog", "not in the catalog")
                offers.append(offer)
        verdicts = {str(c["offer_id"]): Verdict(str(c["offer_id"]), str(c["verdict"]), tuple(c.get("reasons") or ()))
                    for c in record.candidates if c.get("verdict") != "MISSING"}
        scores: dict[str, OfferScore] = {}
        models: dict[str, modeling.TrainedModel | None] = {}
        for offer, candidate in zip(offers, record.candidates, strict=True):
            if candidate.get("verdict") != "ALLOW":
                continue
            version, basis = str(candidate.get("model_version", "")), str(candidate.get("basis", "propensity"))
            if version == self.model.version:
                probability = self.model.score(customer, offer, decision_time.date())
            else:
                if version not in models:
                    models[version] = await self._load_model_version(version)
                trained = models[version]
                if trained is None:
                    return differs(offer.offer_id, "model_version", version, "not in the model registry")
                frame = modeling.build_frame([modeling.Example(
                    customer.attributes, customer.birth_date, customer.region, decision_time, {},
                    features=dict(snapshot.get("features") or {}))], trained.spec)
                probability = float(trained.score(frame)[0])
            scores[offer.offer_id] = OfferScore(probability, version, basis)
        _, _, recomputed = self._rank(offers, ScreenResult(verdicts, record.policy_version), scores,
                                      record.max_offers)
        difference = first_difference(record.candidates, recomputed)
        return DecisionExplanation(record, difference is None, difference, recomputed)

    async def _load_model_version(self, name: str) -> modeling.TrainedModel | None:
        """'models/{model_id}/versions/{n}' from the registry, whatever its status now; None when absent."""
        parts = name.split("/")
        if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions" or not parts[3].isdigit():
            return None
        async with self.uow_factory() as uow:
            row = await uow.session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model_id == parts[1], ModelVersionRow.version == int(parts[3])))
            if row is None:
                return None
            return modeling.TrainedModel.from_artifact(row.artifact, modeling.metrics_from_json(row.metrics))
