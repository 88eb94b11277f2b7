"""The risk service's use cases. Owns the transactions; raises domain errors; imports no grpc.

Every screening decision and every administrative change (consent, do-not-contact, complaint) appends to the
hash-chained audit log in its own transaction. Contact state (consent, do-not-contact, complaints, counted
reservations) is loaded for a whole request in a few set-based queries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import sqlalchemy.exc

from services.platform.db import utcnow
from services.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ServiceMetrics, service_metrics
from services.risk import audit, credit_support, fraud, rules
from services.risk.credit import CreditDataError, CreditScore, PdModel, label_from_events, train_pd_model
from services.risk.data_subject import hash_key_from, kept_ids
from services.risk.db import (
    AmlRepository,
    CreditModelRow,
    FraudEventRow,
    RiskUnitOfWork,
    credit_model_to_domain,
    reservation_to_domain,
)
from services.risk.db import IdempotencyKey as IdempotencyKeyRow
from services.risk.domain import (
    AuditVerification,
    BatchItem,
    Channel,
    ConsentPage,
    ConsentRecord,
    ContactPolicy,
    ContactState,
    CreditLimit,
    CreditModelInfo,
    CreditModelStatus,
    DoNotContactEntry,
    HistoryPosition,
    OfferSubject,
    OfferVerdict,
    QuietHours,
    Reservation,
    ReservationOutcome,
    ReservationState,
    ScreeningRequest,
    ScreeningResult,
    Verdict,
    consent_from_json,
    consent_to_json,
    credit_model_from_json,
    credit_model_to_json,
    dnc_from_json,
    dnc_to_json,
    time_from_json,
    time_to_json,
)

log = logging.getLogger("lodestar.risk")

CONSENT_CODEC = Codec(encode=consent_to_json, decode=consent_from_json)
DNC_CODEC = Codec(encode=dnc_to_json, decode=dnc_from_json)
TIME_CODEC = Codec(encode=time_to_json, decode=time_from_json)
CREDIT_MODEL_CODEC = Codec(encode=credit_model_to_json, decode=credit_model_from_json)
FRAUD_CHECK_CODEC = Codec(encode=lambda c: json.dumps(fraud.check_to_json(c)).encode(),
                          decode=lambda b: fraud.check_from_json(json.loads(b)))
CREDIT_PRODUCT_TYPES = rules.CREDIT_PRODUCTS
VERIFY_PAGE = 5000


def _verdict_json(verdicts: Sequence[OfferVerdict]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for v in verdicts:
        entry: dict[str, object] = {"offer_id": v.offer_id, "verdict": v.verdict.value,
                                    "reasons": [r.value for r in v.reasons]}
        if v.limit_band is not None:
            band = v.limit_band
            entry["credit"] = {"model_version": band.model_version, "pd": band.pd, "score": band.score,
                               "band": band.band, "max_limit": band.max_limit}
        out.append(entry)
    return out


NO_STATE = ContactState()  # what risk holds about a customer it has no rows for; never mutated


# --- event-based credit labels (TrainCreditModelRequest.event_label; docs/credit-risk.md) ----------------------

# label event type -> the profile event kind it is read from
LABEL_EVENT_KINDS = {"repayment_late": "repayment", "repayment": "repayment", "transaction": "transaction",
                     "digital_activity": "digital_activity", "campaign_response": "campaign_response"}
DEFAULT_MIN_DAYS_LATE = 90


@dataclass(frozen=True)
class EventLabel:
    """A row is a default when its customer had `event_type` in (cutoff, cutoff + window_days]."""

    event_type: str
    cutoff: datetime
    window_days: int
    min_days_late: int = DEFAULT_MIN_DAYS_LATE


# (customers, profile event kinds, after, until) -> events with customer_id, kind, occurred_at, days_late
LabelEvents = Callable[[Collection[str], Collection[str], datetime, datetime], Awaitable[Sequence[Any]]]


@dataclass(frozen=True)
class _Screened:
    """One screening outcome of a batch, with its decision-row JSON encoded once and its counts."""

    result: ScreeningResult
    encoded: str
    denied: int
    held: int

    @classmethod
    def of(cls, result: ScreeningResult) -> _Screened:
        return cls(result, json.dumps(_verdict_json(result.verdicts), separators=(",", ":"), ensure_ascii=False),
                   sum(v.verdict == Verdict.DENY for v in result.verdicts),
                   sum(v.verdict == Verdict.HOLD for v in result.verdicts))


def credit_field(field: str, index: int | None) -> str:
    """Where a credit feature of a Screen (index None) or ScreenBatch item sits in the request."""
    path = f"facts.credit_features[{field}]" if field not in ("income",) else "facts.monthly_income"
    return path if index is None else f"items[{index}].{path}"


def _training_field(field: str) -> str:
    """CreditDataError fields named in terms of TrainCreditModelRequest."""
    return {"frame": "rows", "label": "rows.defaulted"}.get(field, field)


def _with_limit(result: ScreeningResult, offers: Sequence[OfferSubject], chosen: tuple[int, ...],
                limit: CreditLimit) -> ScreeningResult:
    verdicts = tuple(
        dataclasses.replace(v, limit_band=limit) if offers[i].product_type in CREDIT_PRODUCT_TYPES else v
        for v, i in zip(result.verdicts, chosen, strict=True)
    )
    return dataclasses.replace(result, verdicts=verdicts)


class RiskService:
    def __init__(self, uow_factory: Callable[[], RiskUnitOfWork], *,
                 quiet_hours: QuietHours = rules.DEFAULT_QUIET_HOURS,
                 policy: ContactPolicy | None = None,
                 clock: Callable[[], datetime] = utcnow, metrics: ServiceMetrics | None = None,
                 fraud_policy: fraud.FraudPolicy | None = None,
                 student_rules: rules.StudentRules | None = None,
                 label_events: LabelEvents | None = None, dsr_hash_key: bytes | None = None) -> None:
        self.uow_factory = uow_factory
        # RISK_DSR_HASH_KEY: an erased customer's do-not-contact entries and complaints are kept under
        # `dsr:<hmac(id)>` (data_subject.py); screening looks them up too, so that a customer re-imported under the
        # same bank id stays suppressed. None = read from the environment (as the service's settings are).
        self.dsr_hash_key = dsr_hash_key if dsr_hash_key is not None else hash_key_from()
        # profile's events, for event-based credit labels (clients.ProfileEventsClient.events)
        self.label_events = label_events
        # RISK_STUDENT_RULES (rules.py rule 9); None = the default restrictions.
        self.student_rules = student_rules if student_rules is not None else rules.parse_student_rules(None)
        # RISK_FRAUD_* (fraud.py): read here from the environment until the service's settings carry them.
        self.fraud_policy = fraud_policy if fraud_policy is not None else fraud.policy_from({})
        self._anomaly_models: dict[int, fraud.AnomalyModel] = {}
        self.metrics = metrics or service_metrics()
        self.quiet_hours = quiet_hours
        self.policy = policy if policy is not None else ContactPolicy()
        self.clock = clock
        # The champion credit model, parsed once per version (another replica may promote: the version is
        # re-read in each transaction that needs it, the artefact only when it changed).
        self._credit_models: dict[str, PdModel] = {}

    # --- screening -------------------------------------------------------------------------------------------

    async def screen(self, request: ScreeningRequest) -> ScreeningResult:
        """Applies the rules, writes the decision row and its audit entry, in one transaction."""
        item = BatchItem(request.customer_id, request.channel, request.contact_time, request.facts,
                         tuple(range(len(request.offers))))
        [result] = await self.screen_batch(request.offers, [item], kind="SCREEN")
        log.info(
            "screened",
            extra={
                "customer_token": customer_token(request.customer_id),
                "channel": request.channel.value,
                "policy_version": result.policy_version,
                "offers": len(result.verdicts),
                "denied": sum(v.verdict == Verdict.DENY for v in result.verdicts),
                "held": sum(v.verdict == Verdict.HOLD for v in result.verdicts),
            },
        )
        return result

    async def screen_batch(self, offers: Sequence[OfferSubject], items: Sequence[BatchItem], *,
                           kind: str = "SCREEN_BATCH") -> list[ScreeningResult]:
        """Screens every item against its offers: state loaded for all customers at once, one decision row per
        customer (one executemany) and one audit entry for the whole call, in one transaction."""
        if not items:
            return []
        now = self.clock()
        longest = self.policy.longest_cap
        times = [item.contact_time for item in items]
        results: list[ScreeningResult] = []
        async with self.uow_factory() as uow:
            customer_ids = list(dict.fromkeys(item.customer_id for item in items))
            states = await uow.states.load(
                customer_ids, now=now, earliest=min(times) - longest,
                latest=max(times) + longest, with_contacts=bool(self.policy.caps),
                kept=kept_ids(self.dsr_hash_key, customer_ids),
            )
            limits = await self._credit_limits(uow, offers, items, single=kind == "SCREEN")
            suspected = await self._fraud_suspected(uow, items, now)
            # rule 10: customers with an active anti-money-laundering case (aml.py)
            aml_blocked = await AmlRepository(uow.session).blocked_customers([item.customer_id for item in items])
            rows: list[dict[str, object]] = []
            digest = hashlib.sha256()
            denied = held = screenings = 0
            times_iso: dict[datetime, str] = {}
            # Customers whose screening signatures are equal get equal verdicts: screen each signature once, and
            # encode its verdicts JSON once (the text is written to every such customer's decision row).
            memo: dict[tuple[object, ...], _Screened] = {}
            for n, item in enumerate(items):
                state = states.get(item.customer_id, NO_STATE)
                limit = limits.get(n)
                declined = limit is not None and limit.declined
                flagged = item.customer_id in suspected
                aml_case = item.customer_id in aml_blocked
                signature = (rules.screening_signature(item.channel, item.contact_time, item.facts, state,
                                                       self.policy), item.offers, declined, flagged, aml_case)
                screened = memo.get(signature)
                if screened is None:
                    request = ScreeningRequest(item.customer_id, item.channel, item.contact_time, item.facts,
                                               tuple(offers[i] for i in item.offers))
                    result = rules.screen(request, state.consents, self.quiet_hours, state=state,
                                          policy=self.policy, credit_declined=declined,
                                          student_rules=self.student_rules, aml_case_open=aml_case)
                    if flagged:
                        result = fraud.mark_suspected(result)
                    screened = memo[signature] = _Screened.of(result)
                if limit is not None:
                    screened = _Screened.of(_with_limit(screened.result, offers, item.offers, limit))
                results.append(screened.result)
                denied += screened.denied
                held += screened.held
                screenings += len(screened.result.verdicts)
                when = times_iso.get(item.contact_time)
                if when is None:
                    when = times_iso[item.contact_time] = item.contact_time.isoformat()
                rows.append({
                    "customer_id": item.customer_id, "channel": item.channel.value,
                    "contact_time": item.contact_time, "policy_version": screened.result.policy_version,
                    "verdicts": screened.encoded, "create_time": now,
                })
                digest.update(f"{customer_token(item.customer_id)}\t{item.channel.value}\t{when}\t"
                              f"{screened.encoded}\n".encode())
            await uow.decisions.add_encoded(rows)
            subject = (customer_token(items[0].customer_id) if len(items) == 1 else f"batch:{len(items)}")
            summary: dict[str, object] = {
                "customers": len(items), "screenings": screenings, "denied": denied, "held": held,
                "policy_version": rules.POLICY_VERSION}
            if limits:
                first = next(iter(limits.values()))
                summary["credit_model_version"] = first.model_version
                summary["credit_scored"] = len(limits)
                summary["credit_declined"] = sum(limit.declined for limit in limits.values())
            await uow.audit.append(now, [(kind, "risk", subject, summary, digest.hexdigest())])
            await uow.commit()
        self._count_refusals(items, results)
        return results

    async def _fraud_suspected(self, uow: RiskUnitOfWork, items: Sequence[BatchItem], now: datetime) -> set[str]:
        """Customers with a denied or flagged fraud check within RISK_FRAUD_FLAG_DAYS before now."""
        if not self.fraud_policy.flag_period:
            return set()
        return await uow.fraud.suspected_customers([item.customer_id for item in items],
                                                   now - self.fraud_policy.flag_period)

    def _count_refusals(self, items: Sequence[BatchItem], results: Sequence[ScreeningResult]) -> None:
        """Screening denials (and holds) by reason and channel, for the dashboard; one record per pair."""
        counts: Counter[tuple[str, str]] = Counter()
        for item, result in zip(items, results, strict=True):
            for verdict in result.verdicts:
                if verdict.verdict != Verdict.ALLOW:
                    for code in verdict.reasons:
                        counts[(str(code), str(item.channel))] += 1
        for (code_name, channel), count in counts.items():
            self.metrics.record_screening_denial(code_name, channel=channel, count=count)

    async def _credit_limits(self, uow: RiskUnitOfWork, offers: Sequence[OfferSubject], items: Sequence[BatchItem],
                             *, single: bool) -> dict[int, CreditLimit]:
        """The champion's limit for every item that carries credit features and is screened for a credit
        product (by item index); empty when there is no champion or nothing to score."""
        credit_offers = {i for i, offer in enumerate(offers) if offer.product_type in CREDIT_PRODUCT_TYPES}
        if not credit_offers:
            return {}
        wanted = [n for n, item in enumerate(items)
                  if item.facts.credit_features and not credit_offers.isdisjoint(item.offers)]
        if not wanted:
            return {}
        champion = await self._champion(uow)
        if champion is None:
            return {}
        version, model = champion
        try:
            scores = credit_support.score_many(
                model, [credit_support.record(dict(items[n].facts.credit_features)) for n in wanted],
                [items[n].facts.monthly_income for n in wanted])
        except CreditDataError as exc:
            index = None if single else wanted[getattr(exc, "index", 0)]
            raise InvalidArgument.field(credit_field(exc.field, index), exc.description,
                                        reason=exc.reason) from exc
        return {n: credit_support.limit_of(score, version) for n, score in zip(wanted, scores, strict=True)}

    async def _champion(self, uow: RiskUnitOfWork) -> tuple[str, PdModel] | None:
        version = await uow.credit_models.champion_version()
        if version is None:
            return None
        return version, await self._model(uow, version)

    async def _model(self, uow: RiskUnitOfWork, version: str) -> PdModel:
        model = self._credit_models.get(version)
        if model is None:
            artefact = await uow.credit_models.artefact(version)
            if artefact is None:
                raise NotFound("creditModel", f"creditModels/{version}", reason="CREDIT_MODEL_NOT_FOUND")
            model = self._credit_models[version] = PdModel.from_json(artefact)
        return model

    # --- credit model registry ---------------------------------------------------------------------------------

    async def train_credit_model(self, rows: Sequence[credit_support.TrainingRow], *, features: Sequence[str],
                                 categorical: Sequence[str], training_window: Mapping[str, str], folds: int,
                                 promote: bool, actor: str, key: IdempotencyKey | None,
                                 label: EventLabel | None = None) -> CreditModelInfo:
        """Trains (in a worker thread), stores the version as challenger (or champion with `promote`), audits it.
        A replay of the same request id returns the stored answer without training again. With `label`, the
        rows' defaults come from the customers' events in the window (read from profile first)."""
        trained: dict[str, PdModel] = {}
        if label is not None:
            rows = await self._label_rows(rows, label)

        async def train(uow: RiskUnitOfWork) -> CreditModelInfo:
            now = self.clock()
            ordinal = await uow.credit_models.next_ordinal()
            version = str(ordinal)
            model = trained.get(version)
            if model is None:
                frame, candidates = credit_support.training_frame(rows, features, categorical)
                model = await asyncio.to_thread(
                    train_pd_model, frame, credit_support.LABEL, features=candidates,
                    categorical=list(categorical) or None, version=version, training_window=dict(training_window),
                    folds=folds, created_at=now)
                trained[version] = model
            metrics = model.metrics
            status = CreditModelStatus.CHAMPION if promote else CreditModelStatus.CHALLENGER
            summary: dict[str, object] = {"version": version, "status": status.value, "rows": len(rows),
                                          "auc": metrics["auc"], "ks": metrics["ks"], "brier": metrics["brier"]}
            # the audit head lock first: promotions and trainings serialise on it
            await uow.audit.append(now, [("CREDIT_MODEL_TRAINED", actor, f"creditModels/{version}", summary,
                                          audit.payload_hash(model.to_dict()))])
            if promote:
                await uow.credit_models.demote_champions()
            row = await uow.credit_models.add(CreditModelRow(
                version=version, ordinal=ordinal, status=status.value, features=model.features,
                candidate_features=list(model.metadata["candidate_features"]),
                training_window=dict(training_window), rows=int(metrics["rows"]),
                default_rate=float(metrics["default_rate"]), auc=float(metrics["auc"]), ks=float(metrics["ks"]),
                brier=float(metrics["brier"]), decline_pd=credit_support.decline_pd(model), artefact=model.to_json(),
                create_time=now, promote_time=now if promote else None,
            ))
            return credit_model_to_domain(row)

        try:
            info = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CREDIT_MODEL_CODEC, train)
        except CreditDataError as exc:
            raise InvalidArgument.field(_training_field(exc.field), exc.description, reason=exc.reason) from exc
        log.info("credit model trained", extra={"model_version": info.version, "rows": info.rows,
                                                "auc": round(info.auc, 4)})
        return info

    async def _label_rows(self, rows: Sequence[credit_support.TrainingRow],
                          label: EventLabel) -> list[credit_support.TrainingRow]:
        """The rows with `defaulted` set from profile's events (credit.labels.label_from_events)."""
        if self.label_events is None:
            raise FailedPrecondition("EVENT_SOURCE_UNAVAILABLE", "event labels need the profile service's events")
        customers = [row.customer_id for row in rows]
        end = label.cutoff + timedelta(days=label.window_days)
        events = await self.label_events(customers, {LABEL_EVENT_KINDS[label.event_type]}, label.cutoff, end)
        kept = [e for e in events if label.event_type != "repayment_late" or e.days_late >= label.min_days_late]
        frame = pd.DataFrame({"customer_id": [e.customer_id for e in kept],
                              "event_type": [label.event_type] * len(kept),
                              "occurred_at": pd.to_datetime([e.occurred_at for e in kept], utc=True)})
        try:
            labels = label_from_events(frame, label.cutoff, label.window_days, label.event_type, customers=customers)
        except CreditDataError as exc:
            raise InvalidArgument.field(f"event_label.{exc.field}", exc.description, reason=exc.reason) from exc
        log.info("credit labels from events", extra={"rows": len(rows), "defaults": int(labels.sum()),
                                                     "event_type": label.event_type})
        return [dataclasses.replace(row, defaulted=bool(labels[row.customer_id])) for row in rows]

    async def list_credit_models(self, before_ordinal: int | None, page_size: int
                                 ) -> tuple[list[CreditModelInfo], int | None]:
        async with self.uow_factory() as uow:
            rows = await uow.credit_models.page(before_ordinal, page_size + 1)
            more = len(rows) > page_size
            rows = rows[:page_size]
            return [credit_model_to_domain(r) for r in rows], (rows[-1].ordinal if more and rows else None)

    async def promote_credit_model(self, version: str, actor: str, key: IdempotencyKey | None) -> CreditModelInfo:
        async def promote(uow: RiskUnitOfWork) -> CreditModelInfo:
            now = self.clock()
            # the audit head lock first: concurrent promotions serialise, so one champion remains
            await uow.audit.append(now, [("CREDIT_MODEL_PROMOTED", actor, f"creditModels/{version}",
                                          {"version": version}, audit.payload_hash({"version": version}))])
            row = await uow.credit_models.get(version)
            if row is None:
                raise NotFound("creditModel", f"creditModels/{version}", reason="CREDIT_MODEL_NOT_FOUND")
            if row.status != CreditModelStatus.CHAMPION.value:
                await uow.credit_models.demote_champions()
                row.status = CreditModelStatus.CHAMPION.value
                row.promote_time = now
                await uow.session.flush()
            return credit_model_to_domain(row)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CREDIT_MODEL_CODEC, promote)

    async def score_credit(self, customer_id: str, features: Mapping[str, str], income: float | None,
                           version: str | None) -> tuple[str, CreditScore]:
        """One applicant, with the champion (or `version`); the decision is audited (CREDIT_SCORE)."""
        async with self.uow_factory() as uow:
            if version is None:
                champion = await self._champion(uow)
                if champion is None:
                    raise FailedPrecondition("NO_CHAMPION_CREDIT_MODEL",
                                             "no credit model is champion: train one and promote it")
                version, model = champion
            else:
                model = await self._model(uow, version)
            try:
                score = model.score(credit_support.record(features), income=income)
            except CreditDataError as exc:
                field = "monthly_income" if exc.field == "income" else f"features[{exc.field}]"
                raise InvalidArgument.field(field, exc.description, reason=exc.reason) from exc
            now = self.clock()
            summary = {"model_version": version, "band": score.limit_band.band,
                       "declined": score.limit_band.declined, "reasons": score.reason_codes}
            await uow.audit.append(now, [("CREDIT_SCORE", "risk", customer_token(customer_id), summary,
                                          audit.payload_hash({**summary, **score.to_dict()}))])
            await uow.commit()
        return version, score

    # --- consent -----------------------------------------------------------------------------------------------

    async def record_consent(self, consent: ConsentRecord, key: IdempotencyKey | None) -> ConsentRecord:
        async def record(uow: RiskUnitOfWork) -> ConsentRecord:
            stored = await uow.consents.add(dataclasses.replace(consent, record_time=self.clock()))
            summary = {"channel": stored.channel.value, "purpose": stored.purpose.value,
                       "action": stored.action.value, "source": stored.source}
            await uow.audit.append(stored.record_time or self.clock(), [(
                "CONSENT", stored.actor, customer_token(stored.customer_id), summary,
                audit.payload_hash({**summary, "actor": stored.actor, "record_id": stored.record_id,
                                    "expire_time": stored.expire_time}),
            )])
            return stored

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CONSENT_CODEC, record)

    async def list_consent_history(
        self, customer_id: str, *, channel: Channel | None, after: HistoryPosition | None, page_size: int
    ) -> ConsentPage:
        async with self.uow_factory() as uow:
            records = await uow.consents.history(
                customer_id, channel=channel, after=after, limit=page_size + 1
            )
        more = len(records) > page_size
        records = records[:page_size]
        last = records[-1] if more and records else None
        position = None
        if last is not None:
            assert last.record_time is not None and last.record_id is not None
            position = HistoryPosition(last.record_time, last.record_id)
        return ConsentPage(records, position)

    # --- do-not-contact and complaints ---------------------------------------------------------------------

    async def change_do_not_contact(self, entry: DoNotContactEntry,
                                    key: IdempotencyKey | None) -> DoNotContactEntry:
        async def change(uow: RiskUnitOfWork) -> DoNotContactEntry:
            stored = dataclasses.replace(entry, record_time=self.clock())
            await uow.policy.add_do_not_contact(stored)
            summary = {"action": stored.action.value, "source": stored.source}
            await uow.audit.append(stored.record_time or self.clock(), [(
                "DO_NOT_CONTACT", stored.actor, customer_token(stored.customer_id), summary,
                audit.payload_hash({**summary, "actor": stored.actor, "reason": stored.reason}),
            )])
            return stored

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, DNC_CODEC, change)

    async def record_complaint(self, customer_id: str, channel: Channel | None, source: str, actor: str,
                               category: str, key: IdempotencyKey | None) -> tuple[datetime, datetime]:
        async def record(uow: RiskUnitOfWork) -> datetime:
            now = self.clock()
            await uow.policy.add_complaint(customer_id, channel, source, actor, category, now)
            summary = {"channel": channel.value if channel else "", "source": source, "category": category}
            await uow.audit.append(now, [("COMPLAINT", actor, customer_token(customer_id), summary,
                                          audit.payload_hash(summary))])
            return now

        recorded = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, TIME_CODEC, record)
        return recorded, recorded + self.policy.cool_off

    # --- reservations ------------------------------------------------------------------------------------------

    async def reserve_contact(self, delivery_key: str, customer_id: str, channel: Channel,
                              contact_time: datetime) -> ReservationOutcome:
        """Reserves a slot unless a cap would be exceeded. The customer's lock row serialises concurrent
        reservations of that customer (on every path: batch, triggered, partner), so caps hold."""
        for attempt in (1, 2):
            now = self.clock()
            async with self.uow_factory() as uow:
                await uow.reservations.lock_customer(customer_id)
                existing = await uow.reservations.by_key(delivery_key)
                if existing is not None:
                    if existing.customer_id != customer_id or existing.channel != channel.value:
                        raise InvalidArgument.field(
                            "delivery_key", "was already used for another customer or channel",
                            reason="DELIVERY_KEY_REUSED")
                    return ReservationOutcome(True, reservation_to_domain(existing, now))
                longest = self.policy.longest_cap
                contacts = await uow.reservations.counted(customer_id, now, contact_time - longest,
                                                          contact_time + longest)
                exceeded = rules.exceeded_caps(channel, contact_time, contacts, self.policy.caps)
                if exceeded:
                    return ReservationOutcome(False, None, tuple(exceeded))
                row = await uow.reservations.add(delivery_key, customer_id, channel, contact_time, now,
                                                 self.policy.reservation_ttl)
                try:
                    await uow.commit()
                except sqlalchemy.exc.IntegrityError:
                    if attempt == 2:
                        raise
                    continue  # the same delivery key reserved concurrently for another customer: re-check
                return ReservationOutcome(True, reservation_to_domain(row, now))
        raise AssertionError("unreachable")

    async def confirm_contact(self, delivery_key: str) -> Reservation:
        return await self._transition(delivery_key, ReservationState.CONFIRMED)

    async def release_contact(self, delivery_key: str) -> Reservation:
        return await self._transition(delivery_key, ReservationState.RELEASED)

    async def _transition(self, delivery_key: str, target: ReservationState) -> Reservation:
        now = self.clock()
        async with self.uow_factory() as uow:
            row = await uow.reservations.by_key(delivery_key, for_update=True)
            if row is None:
                raise NotFound("reservation", delivery_key)
            current = reservation_to_domain(row, now).state
            if current == target:
                return reservation_to_domain(row, now)  # idempotent
            if target == ReservationState.CONFIRMED and current != ReservationState.RESERVED:
                raise FailedPrecondition(f"RESERVATION_{current.value}",
                                         f"a {current.value.lower()} reservation cannot be confirmed",
                                         metadata={"state": current.value})
            if target == ReservationState.RELEASED and current == ReservationState.CONFIRMED:
                raise FailedPrecondition("RESERVATION_CONFIRMED", "a confirmed reservation cannot be released",
                                         metadata={"state": current.value})
            row.state = target.value
            row.update_time = now
            await uow.commit()
            return reservation_to_domain(row, now)

    # --- audit -------------------------------------------------------------------------------------------------

    async def verify_audit_log(self) -> AuditVerification:
        """Reads the log in pages of VERIFY_PAGE (one snapshot per page) and recomputes the chain."""
        async with self.uow_factory() as uow:
            head = await uow.audit.head()

            async def pages() -> list[audit.AuditEntry]:
                out: list[audit.AuditEntry] = []
                after = 0
                while True:
                    page = await uow.audit.entries(after, VERIFY_PAGE)
                    out.extend(page)
                    if len(page) < VERIFY_PAGE:
                        return out
                    after = page[-1].seq

            entries = await pages()
        return audit.verify(entries, head)

    # --- fraud and abuse ---------------------------------------------------------------------------------------

    async def check_activity(self, event: fraud.ActivityEvent, key: IdempotencyKey | None) -> fraud.FraudCheck:
        """Records the event and checks it (fraud.py): the velocity rules under a lock on each of its keys, so
        that two checks sharing a key at its limit never both pass; the anomaly model trained beforehand in its
        own read. The event row, the audit entry and the idempotency key commit together."""
        policy = self.fraud_policy
        model = await self._anomaly_model()
        keys = fraud.event_keys(event, policy.hash_key)

        async def check(uow: RiskUnitOfWork) -> fraud.FraudCheck:
            now = self.clock()
            await uow.fraud.lock(keys)
            window = max([fraud.FEATURE_WINDOW, *(rule.length for rule in policy.rules)])
            neighbours = await uow.fraud.neighbours(keys, event.event_time, window)
            hits = fraud.velocity_hits(event.event_time, neighbours, policy.rules)
            vector = fraud.features(event.event_time, neighbours)
            anomaly = model.assess(vector) if model is not None else fraud.Anomaly()
            decision = fraud.decide(hits, anomaly)
            row = await uow.fraud.add(FraudEventRow(
                kind=event.kind.value, partner_id=event.partner_id, customer_id=event.customer_id or None,
                device_key=keys.get(fraud.KeyKind.DEVICE), phone_key=keys.get(fraud.KeyKind.PHONE),
                ip_key=keys.get(fraud.KeyKind.IP), event_time=event.event_time, features=vector,
                decision=decision.value, suspected=decision != fraud.FraudDecision.ALLOW,
                anomaly_score=anomaly.score if anomaly.scored else None, create_time=now))
            result = fraud.FraudCheck(row.id, decision, tuple(hits), anomaly)
            summary = {"kind": event.kind.value, "partner": event.partner_id, **fraud.check_to_json(result)}
            subject = customer_token(event.customer_id) if event.customer_id else f"fraudChecks/{row.id}"
            await uow.audit.append(now, [("FRAUD_CHECK", "risk", subject, summary, audit.payload_hash(
                {**summary, "keys": sorted(keys.values()), "event_time": event.event_time.isoformat()}))])
            return result

        result = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, FRAUD_CHECK_CODEC, check)
        log.info("fraud checked", extra={
            "customer_token": customer_token(event.customer_id) if event.customer_id else "",
            "fraud_check": f"fraudChecks/{result.check_id}", "decision": result.decision.value,
            "hits": [h.rule_id for h in result.hits], "anomaly_flagged": result.anomaly.flagged})
        return result

    async def _anomaly_model(self) -> fraud.AnomalyModel | None:
        """The model for the current history size (fraud.training_size), trained once per size and cached."""
        policy = self.fraud_policy
        async with self.uow_factory() as uow:
            size = fraud.training_size(await uow.fraud.count(), policy.min_training)
            if not size:
                return None
            model = self._anomaly_models.get(size)
            if model is not None:
                return model
            rows = await uow.fraud.training_rows(size, fraud.MAX_TRAINING)
        model = await asyncio.to_thread(fraud.train_anomaly_model, rows, policy.contamination)
        self._anomaly_models = {size: model}
        return model
