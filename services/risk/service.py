"""The risk service's use cases. Owns the transactions; raises domain errors; imports no grpc.

Every screening decision and every administrative change (consent, do-not-contact, complaint) appends to the
hash-chained audit log in its own transaction. Contact state (consent, do-not-contact, complaints, counted
reservations) is loaded for a whole request in a few set-based queries.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import sqlalchemy.exc

from services.platform.db import utcnow
from services.platform.errors import FailedPrecondition, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.risk import audit, rules
from services.risk.db import IdempotencyKey as IdempotencyKeyRow
from services.risk.db import RiskUnitOfWork, reservation_to_domain
from services.risk.domain import (
    AuditVerification,
    BatchItem,
    Channel,
    ConsentPage,
    ConsentRecord,
    ContactPolicy,
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
    dnc_from_json,
    dnc_to_json,
    time_from_json,
    time_to_json,
)

log = logging.getLogger("lodestar.risk")

CONSENT_CODEC = Codec(encode=consent_to_json, decode=consent_from_json)
DNC_CODEC = Codec(encode=dnc_to_json, decode=dnc_from_json)
TIME_CODEC = Codec(encode=time_to_json, decode=time_from_json)
VERIFY_PAGE = 5000


def _verdict_json(verdicts: Sequence[OfferVerdict]) -> list[dict[str, object]]:
    return [{"offer_id": v.offer_id, "verdict": v.verdict.value, "reasons": [r.value for r in v.reasons]}
            for v in verdicts]


class RiskService:
    def __init__(self, uow_factory: Callable[[], RiskUnitOfWork], *,
                 quiet_hours: QuietHours = rules.DEFAULT_QUIET_HOURS,
                 policy: ContactPolicy | None = None,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.uow_factory = uow_factory
        self.quiet_hours = quiet_hours
        self.policy = policy if policy is not None else ContactPolicy()
        self.clock = clock

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
            states = await uow.states.load(
                [item.customer_id for item in items], now=now, earliest=min(times) - longest,
                latest=max(times) + longest, with_contacts=bool(self.policy.caps),
            )
            rows = []
            digest_items = []
            # Customers whose screening signatures are equal get equal verdicts: screen each signature once.
            memo: dict[tuple[object, ...], tuple[ScreeningResult, list[dict[str, object]]]] = {}
            for item in items:
                state = states[item.customer_id]
                signature = (rules.screening_signature(item.channel, item.contact_time, item.facts, state,
                                                       self.policy), item.offers)
                cached = memo.get(signature)
                if cached is None:
                    request = ScreeningRequest(item.customer_id, item.channel, item.contact_time, item.facts,
                                               tuple(offers[i] for i in item.offers))
                    result = rules.screen(request, state.consents, self.quiet_hours, state=state,
                                          policy=self.policy)
                    cached = memo[signature] = (result, _verdict_json(result.verdicts))
                result, verdicts = cached
                results.append(result)
                rows.append({
                    "customer_id": item.customer_id, "channel": item.channel.value,
                    "contact_time": item.contact_time, "policy_version": result.policy_version,
                    "verdicts": verdicts, "create_time": now,
                })
                digest_items.append([customer_token(item.customer_id), item.channel.value,
                                     item.contact_time.isoformat(), verdicts])
            await uow.decisions.add_many(rows)
            denied = sum(v.verdict == Verdict.DENY for r in results for v in r.verdicts)
            held = sum(v.verdict == Verdict.HOLD for r in results for v in r.verdicts)
            subject = (customer_token(items[0].customer_id) if len(items) == 1 else f"batch:{len(items)}")
            summary = {"customers": len(items), "screenings": sum(len(r.verdicts) for r in results),
                       "denied": denied, "held": held, "policy_version": rules.POLICY_VERSION}
            await uow.audit.append(now, [(kind, "risk", subject, summary, audit.payload_hash(digest_items))])
            await uow.commit()
        return results

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
