"""Use cases of behaviour events, features and tags. Owns the transactions; raises domain errors; no grpc.

Point in time: every read takes an `as_of` and sees only events with recorded_at <= as_of and occurred_at <=
as_of. `recorded_at` is this service's clock at ingest, never the client's.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from opentelemetry import trace
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.db import utcnow
from services.platform.errors import InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN, ATTR_FEATURE_CUSTOMERS, ATTR_FEATURE_POINTS
from services.profile.db import CustomerRow, CustomerTagValueRow
from services.profile.db import IdempotencyKey as IdempotencyKeyRow
from services.profile.events_db import CustomerTagRow, EventRepository, EventsUnitOfWork
from services.profile.features import (
    LOOKBACK_DAYS,
    CustomerFacts,
    FeatureSet,
    compute_batch,
    compute_one,
    compute_points,
    records_frame,
)
from services.profile.tags import RULE_VERSION, TagValue, compute_tags

log = logging.getLogger("lodestar.profile.events")

MAX_BATCH = 1000
# (customer_id, as_of) points per BatchGetFeatures request.
MAX_FEATURE_POINTS = 1000
# Up to this many points (a real-time decision asks for one) are computed by the real-time executor, without
# pandas' fixed cost; more by the batch executor. Both give the same values (tests/unit/test_profile_features.py).
REAL_TIME_POINTS = 8
# Tolerated clock skew of a caller's as_of / occurred_at ahead of this service's clock.
FUTURE_SKEW = timedelta(minutes=5)


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    recorded_at: datetime


def _result_to_json(result: IngestResult) -> bytes:
    return json.dumps({"accepted": result.accepted, "duplicates": result.duplicates,
                       "recorded_at": result.recorded_at.isoformat()}).encode()


def _result_from_json(raw: bytes) -> IngestResult:
    data = json.loads(raw)
    return IngestResult(data["accepted"], data["duplicates"], datetime.fromisoformat(data["recorded_at"]))


INGEST_CODEC = Codec(encode=_result_to_json, decode=_result_from_json)


@dataclass(frozen=True)
class StoredTag:
    name: str
    value: str
    source: str
    rule_version: str
    as_of: datetime
    computed_at: datetime


@dataclass(frozen=True)
class PointFeatures:
    """The features of one (customer, as_of) point; found is False where get_features is NOT_FOUND."""

    customer_id: str
    as_of: datetime
    found: bool
    features: FeatureSet


def first_known(candidates: Iterable[tuple[datetime, datetime]], as_of: datetime) -> datetime | None:
    """The first event known at as_of, from EventRepository.first_occurred_by_recording's pairs."""
    return min((first for recorded, first in candidates if recorded <= as_of and first <= as_of), default=None)


async def batch_inputs(session: AsyncSession, customer_ids: Sequence[str], as_of: datetime
                       ) -> tuple[list[tuple[Any, ...]], dict[str, CustomerFacts], dict[str, datetime]]:
    """What compute_batch needs for these customers as of one time (set-based, 500 ids a query): their
    records, facts and first events. Shared by features_batch and the audience export (segments.py)."""
    facts = await customer_facts(session, customer_ids)
    events = EventRepository(session)
    records = await events.known_at(customer_ids, as_of, as_of - timedelta(days=LOOKBACK_DAYS))
    first = await events.first_occurred(customer_ids, as_of)
    return records, facts, first


def facts_of(customer_id: str, row: CustomerRow | None) -> CustomerFacts:
    if row is None:
        return CustomerFacts(customer_id, exists=False)
    return _facts(customer_id, row.time_zone, row.region, row.birth_date, row.attributes)


def _facts(customer_id: str, time_zone: str, region: str, birth_date: date | None,
           stored: dict[str, Any] | None) -> CustomerFacts:
    attributes = {name: value.get("v") for name, value in (stored or {}).items() if isinstance(value, dict)}
    return CustomerFacts(customer_id, time_zone, region, birth_date, attributes)


async def customer_facts(session: AsyncSession, customer_ids: Sequence[str]) -> dict[str, CustomerFacts]:
    """The facts of these customers (exists=False for those without a record): only the columns features read,
    without loading whole customer entities; 500 ids a query."""
    out = {c: CustomerFacts(c, exists=False) for c in customer_ids}
    columns = (CustomerRow.customer_id, CustomerRow.time_zone, CustomerRow.region, CustomerRow.birth_date,
               CustomerRow.attributes)
    for start in range(0, len(customer_ids), 500):
        chunk = list(customer_ids[start:start + 500])
        for customer_id, *facts in await session.execute(select(*columns).where(CustomerRow.customer_id.in_(chunk))):
            out[customer_id] = _facts(customer_id, *facts)
    return out


class EventsService:
    def __init__(self, uow_factory: Callable[[], EventsUnitOfWork], *, clock: Callable[[], datetime] = utcnow,
                 tracer: trace.Tracer | None = None) -> None:
        self.uow_factory = uow_factory
        self.clock = clock
        self.tracer = tracer or trace.get_tracer(__name__)

    def _as_of(self, as_of: datetime | None) -> datetime:
        now = self.clock()
        if as_of is None:
            return now
        if as_of > now + FUTURE_SKEW:
            raise InvalidArgument.field("as_of", "must not be in the future", reason="AS_OF_IN_FUTURE")
        return as_of

    async def ingest(self, events: Sequence[dict[str, Any]], key: IdempotencyKey | None = None) -> IngestResult:
        """Stores the events not stored yet (by event_id), all with the same recorded_at, in one transaction.
        The rows are validated already (handlers); `recorded_at` in them is ignored. With a request key, a retry
        replays the first response."""
        recorded_at = self.clock()
        unique: dict[str, dict[str, Any]] = {}
        for event in events:
            unique.setdefault(event["event_id"], {**event, "recorded_at": recorded_at})

        async def store(uow: EventsUnitOfWork) -> IngestResult:
            accepted = await uow.events.insert_new(list(unique.values()))
            return IngestResult(accepted, len(events) - accepted, recorded_at)

        with self.tracer.start_as_current_span("EventsService.ingest"):
            result = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, INGEST_CODEC, store)
        log.info("events ingested", extra={"accepted": result.accepted, "duplicates": result.duplicates})
        return result

    async def get_features(self, customer_id: str, as_of: datetime | None = None) -> tuple[FeatureSet, datetime]:
        """One customer, as known at as_of. NOT_FOUND when neither the customer nor any event of it is known."""
        point = self._as_of(as_of)
        trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
        with self.tracer.start_as_current_span("EventsService.compute_features") as span:
            span.set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
            async with self.uow_factory() as uow:
                facts = facts_of(customer_id, await uow.session.get(CustomerRow, customer_id))
                records = await uow.events.known_at([customer_id], point, point - timedelta(days=LOOKBACK_DAYS))
                first = (await uow.events.first_occurred([customer_id], point)).get(customer_id)
            if not facts.exists and first is None:
                raise NotFound("customer", f"customers/{customer_id}")
            return compute_one(records, facts, first, point), point

    async def features_batch(self, customer_ids: Sequence[str], as_of: datetime | None = None
                             ) -> tuple[dict[str, FeatureSet], datetime]:
        """Many customers at once: set-based SQL, then the pandas executor. Same definitions as get_features."""
        features, _, point = await self._features_and_facts(customer_ids, as_of)
        return features, point

    async def _features_and_facts(self, customer_ids: Sequence[str], as_of: datetime | None
                                  ) -> tuple[dict[str, FeatureSet], dict[str, CustomerFacts], datetime]:
        point = self._as_of(as_of)
        ids = list(dict.fromkeys(customer_ids))
        with self.tracer.start_as_current_span("EventsService.compute_features_batch"):
            async with self.uow_factory() as uow:
                records, facts, first = await batch_inputs(uow.session, ids, point)
            return compute_batch(records_frame(records), facts, first, point), facts, point

    async def features_at(self, points: Sequence[tuple[str, datetime | None]]) -> list[PointFeatures]:
        """Many (customer, as_of) points, each answered exactly as get_features answers it (found = False where
        that is NOT_FOUND), in the points' order. One read for all: the customers' records, their events known
        at the latest as_of that occurred after the earliest as_of minus LOOKBACK_DAYS, and the (recorded_at,
        first occurred_at) pairs that give each point its first event; three queries per 500 customers, however
        many points. Then each point keeps only what was recorded and occurred at or before its own as_of:
        features.compute_points in a worker thread, or compute_one per point for a few (REAL_TIME_POINTS)."""
        resolved = [(customer_id, self._as_of(as_of)) for customer_id, as_of in points]
        if not resolved:
            return []
        ids = list(dict.fromkeys(c for c, _ in resolved))
        latest = max(a for _, a in resolved)
        earliest = min(a for _, a in resolved)
        with self.tracer.start_as_current_span("EventsService.compute_features_at") as span:
            span.set_attribute(ATTR_FEATURE_POINTS, len(resolved))
            span.set_attribute(ATTR_FEATURE_CUSTOMERS, len(ids))
            async with self.uow_factory() as uow:
                facts = await customer_facts(uow.session, ids)
                records = await uow.events.known_at(ids, latest, earliest - timedelta(days=LOOKBACK_DAYS))
                firsts = await uow.events.first_occurred_by_recording(ids, latest)
            first_seen = [first_known(firsts.get(c, ()), a) for c, a in resolved]
            if len(resolved) <= REAL_TIME_POINTS:
                computed = [compute_one([r for r in records if r[0] == c], facts[c], first, a)
                            for (c, a), first in zip(resolved, first_seen, strict=True)]
            else:
                computed = await asyncio.to_thread(compute_points, records_frame(records), resolved, facts,
                                                   first_seen)
        return [PointFeatures(c, a, facts[c].exists or first is not None, features)
                for (c, a), first, features in zip(resolved, first_seen, computed, strict=True)]

    async def compute_tags(self, customer_ids: Sequence[str], as_of: datetime | None = None
                           ) -> dict[str, list[StoredTag]]:
        """Computes and stores (replacing the previous ones) the built-in tags of each customer."""
        features, facts, point = await self._features_and_facts(customer_ids, as_of)
        computed_at = self.clock()
        out: dict[str, list[StoredTag]] = {}
        async with self.uow_factory() as uow:
            for customer_id, feature_set in features.items():
                tags = compute_tags(feature_set, facts[customer_id], point)
                await uow.tags.replace(customer_id, [_tag_row(customer_id, t, point, computed_at) for t in tags])
                out[customer_id] = [
                    StoredTag(t.name, t.value, t.source, RULE_VERSION, point, computed_at) for t in tags
                ]
            await uow.commit()
        log.info("tags computed", extra={"customers": len(out)})
        return out

    async def get_tags(self, customer_id: str) -> list[StoredTag]:
        trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
        async with self.uow_factory() as uow:
            rows = await uow.tags.of(customer_id)
            # Rule tags (the tag job) and external tags (SetCustomerTags) live beside the built-in ones.
            others = (await uow.session.scalars(
                select(CustomerTagValueRow).where(CustomerTagValueRow.customer_id == customer_id)
                .order_by(CustomerTagValueRow.name))).all()
            return [StoredTag(r.name, r.value, r.source, r.rule_version, r.as_of, r.computed_at) for r in rows] + [
                StoredTag(r.name, r.value, f"{r.kind}:{r.source}", "", r.update_time, r.update_time) for r in others]


def _tag_row(customer_id: str, tag: TagValue, as_of: datetime, computed_at: datetime) -> CustomerTagRow:
    return CustomerTagRow(customer_id=customer_id, name=tag.name, value=tag.value, source=tag.source,
                          rule_version=RULE_VERSION, as_of=as_of, computed_at=computed_at)
