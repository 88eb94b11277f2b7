"""Use cases of behaviour events, features and tags. Owns the transactions; raises domain errors; no grpc.

Point in time: every read takes an `as_of` and sees only events with recorded_at <= as_of and occurred_at <=
as_of. `recorded_at` is this service's clock at ingest, never the client's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import trace
from sqlalchemy import select

from services.platform.db import utcnow
from services.platform.errors import InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.profile.db import CustomerRow, CustomerTagValueRow
from services.profile.db import IdempotencyKey as IdempotencyKeyRow
from services.profile.events_db import CustomerTagRow, EventsUnitOfWork
from services.profile.features import (
    LOOKBACK_DAYS,
    CustomerFacts,
    FeatureSet,
    compute_batch,
    compute_one,
    records_frame,
)
from services.profile.tags import RULE_VERSION, TagValue, compute_tags

log = logging.getLogger("lodestar.profile.events")

MAX_BATCH = 1000
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


def facts_of(customer_id: str, row: CustomerRow | None) -> CustomerFacts:
    if row is None:
        return CustomerFacts(customer_id, exists=False)
    attributes = {name: value.get("v") for name, value in (row.attributes or {}).items() if isinstance(value, dict)}
    return CustomerFacts(customer_id, row.time_zone, row.region, row.birth_date, attributes)


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
                rows = await uow.customer_rows(ids)
                facts = {c: facts_of(c, rows.get(c)) for c in ids}
                records = await uow.events.known_at(ids, point, point - timedelta(days=LOOKBACK_DAYS))
                first = await uow.events.first_occurred(ids, point)
            return compute_batch(records_frame(records), facts, first, point), facts, point

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
