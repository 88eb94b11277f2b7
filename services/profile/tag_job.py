"""Use cases of rule tags, external tags and the batch tag job. Owns the transactions; raises domain errors;
imports no grpc. docs/tags.md.

The tag job walks every customer in chunks ordered by customer id. One chunk is one transaction: refresh the
chunk's materialised features (feature_store.py), recompute its built-in tags (tags.py), re-apply every rule
tag definition (tag_rules.py), advance the job's cursor. The cursor moves by a conditional UPDATE (only from the
value this worker read), so a chunk is committed exactly once even if two workers run the same job; a job
stopped by a crash or an error is resumed after its last committed chunk by RunTagJob with the same id.
Nothing here logs or traces a customer id or a tag value.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from opentelemetry import trace
from sqlalchemy import ColumnElement, and_, delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from services.platform.db import UnitOfWork, insert_rows, utcnow
from services.platform.errors import AlreadyExists, FieldViolation, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.profile.conditions import ConditionError, Node, parse_condition, to_text
from services.profile.db import (
    AttributeRepository,
    CustomerRow,
    CustomerTagValueRow,
    TagDefinitionRow,
    TagJobRow,
)
from services.profile.db import IdempotencyKey as IdempotencyKeyRow
from services.profile.events import facts_of
from services.profile.events_db import CustomerTagRow, EventRepository
from services.profile.feature_store import INSERT_CHUNK, replace_features
from services.profile.features import LOOKBACK_DAYS, compute_batch, records_frame
from services.profile.segments import ConditionInput, SegmentsService
from services.profile.tag_rules import KIND_EXTERNAL, KIND_RULE, apply_rule
from services.profile.tags import RULE_VERSION, compute_tags

log = logging.getLogger("lodestar.profile.tags")

MAX_ITEMS = 1000
DEFAULT_CHUNK, MIN_CHUNK, MAX_CHUNK = 1000, 100, 10_000
# RunTagJob works on the job itself this long before handing the rest to a background task: a small job (a few
# thousand customers) is finished when the call returns.
SYNC_SECONDS = 2.0
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
FUTURE_SKEW = timedelta(minutes=5)


# -- domain -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Definition:
    definition_id: str
    tag: str
    condition_text: str
    value: str
    description: str = ""
    create_time: datetime | None = None


@dataclass(frozen=True)
class Job:
    job_id: str
    state: str
    as_of: datetime
    chunk_size: int
    total_customers: int
    processed_customers: int
    chunks_done: int
    error: str
    create_time: datetime
    update_time: datetime


@dataclass(frozen=True)
class SetResult:
    customers: int
    tags: int


def _definition(row: TagDefinitionRow) -> Definition:
    return Definition(row.definition_id, row.tag, row.condition_text, row.value, row.description, row.create_time)


def _job(row: TagJobRow) -> Job:
    return Job(row.job_id, row.state, row.as_of, row.chunk_size, row.total_customers, row.processed_customers,
               row.chunks_done, row.error, row.create_time, row.update_time)


def _definition_to_json(d: Definition) -> bytes:
    data = asdict(d)
    data["create_time"] = d.create_time.isoformat() if d.create_time else None
    return json.dumps(data, sort_keys=True).encode()


def _definition_from_json(raw: bytes) -> Definition:
    data = json.loads(raw)
    data["create_time"] = datetime.fromisoformat(data["create_time"]) if data["create_time"] else None
    return Definition(**data)


DEFINITION_CODEC = Codec(encode=_definition_to_json, decode=_definition_from_json)
SET_CODEC = Codec(encode=lambda r: json.dumps(asdict(r)).encode(),
                  decode=lambda raw: SetResult(**json.loads(raw)))


# -- repository and unit of work ----------------------------------------------------------------------------


class TagStore:
    """Queries of tag definitions, rule/external tag values and tag jobs."""

    def __init__(self, uow: TagsUnitOfWork) -> None:
        self.session = uow.session

    async def definitions(self, *, after_id: str | None = None, limit: int | None = None) -> list[TagDefinitionRow]:
        query = select(TagDefinitionRow).order_by(TagDefinitionRow.definition_id)
        if after_id is not None:
            query = query.where(TagDefinitionRow.definition_id > after_id)
        if limit is not None:
            query = query.limit(limit)
        return list(await self.session.scalars(query))

    async def rule_tag_names(self, names: Sequence[str]) -> set[str]:
        query = select(TagDefinitionRow.tag).where(TagDefinitionRow.tag.in_(list(names))).distinct()
        return set(await self.session.scalars(query))

    async def external_name_used(self, name: str) -> bool:
        query = select(CustomerTagValueRow.customer_id).where(
            CustomerTagValueRow.name == name, CustomerTagValueRow.kind == KIND_EXTERNAL).limit(1)
        return await self.session.scalar(query) is not None

    async def existing_customers(self, customer_ids: Sequence[str]) -> set[str]:
        out: set[str] = set()
        for start in range(0, len(customer_ids), 500):
            chunk = list(customer_ids[start:start + 500])
            out |= set(await self.session.scalars(select(CustomerRow.customer_id)
                                                  .where(CustomerRow.customer_id.in_(chunk))))
        return out

    async def upsert_values(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        dialect = self.session.bind.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        for start in range(0, len(rows), 1000):
            statement = insert(CustomerTagValueRow).values(list(rows[start:start + 1000]))
            statement = statement.on_conflict_do_update(
                index_elements=["customer_id", "name"],
                set_={"value": statement.excluded.value, "kind": statement.excluded.kind,
                      "source": statement.excluded.source, "update_time": statement.excluded.update_time})
            await self.session.execute(statement)

    async def delete_rule_values(self, *, definition_id: str | None = None,
                                 after: str | None = None, last: str | None = None) -> None:
        where: list[ColumnElement[bool]] = [CustomerTagValueRow.kind == KIND_RULE]
        if definition_id is not None:
            where.append(CustomerTagValueRow.source == definition_id)
        if last is not None:
            where.append(CustomerTagValueRow.customer_id <= last)
        if after is not None:
            where.append(CustomerTagValueRow.customer_id > after)
        await self.session.execute(delete(CustomerTagValueRow).where(and_(*where)))

    async def next_chunk(self, after: str | None, limit: int) -> list[CustomerRow]:
        query = select(CustomerRow).order_by(CustomerRow.customer_id).limit(limit)
        if after is not None:
            query = query.where(CustomerRow.customer_id > after)
        return list(await self.session.scalars(query))

    async def count_customers(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(CustomerRow)) or 0)

    async def replace_builtin_tags(self, customer_ids: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
        """Core DELETE then executemany INSERT (no ORM objects: thousands of rows per chunk)."""
        for start in range(0, len(customer_ids), 1000):
            chunk = list(customer_ids[start:start + 1000])
            await self.session.execute(delete(CustomerTagRow).where(CustomerTagRow.customer_id.in_(chunk)))
        await insert_rows(self.session, CustomerTagRow.__table__, rows, chunk=INSERT_CHUNK)  # type: ignore[arg-type]

    async def advance(self, job: TagJobRow, *, cursor: str | None, processed: int, done: bool, now: datetime
                      ) -> bool:
        """Moves the job's cursor from the value read (conditional UPDATE); False if another worker moved it."""
        read = TagJobRow.cursor.is_(None) if job.cursor is None else TagJobRow.cursor == job.cursor
        result = await self.session.execute(
            update(TagJobRow).where(TagJobRow.job_id == job.job_id, TagJobRow.state == RUNNING, read).values(
                cursor=cursor, processed_customers=TagJobRow.processed_customers + processed,
                chunks_done=TagJobRow.chunks_done + (1 if processed else 0), state=SUCCEEDED if done else RUNNING,
                update_time=now).execution_options(synchronize_session=False))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


class TagsUnitOfWork(UnitOfWork):
    tags: TagStore
    attributes: AttributeRepository
    events: EventRepository

    def _enter_repositories(self) -> None:
        self.tags = TagStore(self)
        self.attributes = AttributeRepository(self.session)
        self.events = EventRepository(self.session)


# -- the service ----------------------------------------------------------------------------------------------


class TagsService:
    def __init__(self, uow_factory: Callable[[], TagsUnitOfWork], *, allow_pii: bool = False,
                 clock: Callable[[], datetime] = utcnow, tracer: trace.Tracer | None = None,
                 sync_seconds: float = SYNC_SECONDS) -> None:
        self.uow_factory = uow_factory
        self.sync_seconds = sync_seconds
        self.allow_pii = allow_pii
        self.clock = clock
        self.tracer = tracer or trace.get_tracer(__name__)
        self._workers: dict[str, asyncio.Task[Job]] = {}

    # -- external tags ------------------------------------------------------------------------------------

    async def set_customer_tags(self, items: Sequence[tuple[str, Mapping[str, str]]], source: str,
                                key: IdempotencyKey | None) -> SetResult:
        """Items are validated already (handlers: ids, names, values, no repeated customer)."""
        names = sorted({name for _, tags in items for name in tags})

        async def write(uow: TagsUnitOfWork) -> SetResult:
            reserved = await uow.tags.rule_tag_names(names)
            if reserved:
                raise InvalidArgument([
                    FieldViolation(f"items[{i}].tags[{name}]", "is a rule tag's name: only the tag job writes it")
                    for i, (_, tags) in enumerate(items) for name in sorted(tags) if name in reserved
                ], reason="TAG_NAME_RESERVED")
            ids = [customer_id for customer_id, _ in items]
            known = await uow.tags.existing_customers(ids)
            for index, customer_id in enumerate(ids):
                if customer_id not in known:
                    error = NotFound("customer", f"customers/{customer_id}")
                    error.metadata["field"] = f"items[{index}].customer_id"
                    raise error
            now = self.clock()
            rows = [{"customer_id": customer_id, "name": name, "value": value, "kind": KIND_EXTERNAL,
                     "source": source, "update_time": now}
                    for customer_id, tags in items for name, value in sorted(tags.items())]
            await uow.tags.upsert_values(rows)
            return SetResult(len(items), len(rows))

        with self.tracer.start_as_current_span("TagsService.set_customer_tags") as span:
            span.set_attribute("lodestar.tags.customers", len(items))
            result = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, SET_CODEC, write)
        log.info("external tags set", extra={"customers": result.customers, "tags": result.tags, "source": source})
        return result

    # -- rule tag definitions -----------------------------------------------------------------------------

    async def _catalog_and_parse(self, uow: TagsUnitOfWork, text: str, field: str) -> Node:
        catalog = SegmentsService.catalog_of(await uow.attributes.all(), self.allow_pii)
        tree = SegmentsService.parse(ConditionInput(text=text, field_name=field), catalog)
        SegmentsService.compile(tree, self.clock(), catalog)  # everything the job will need compiles
        return tree

    async def create_definition(self, new: Definition, key: IdempotencyKey | None) -> Definition:
        async def create(uow: TagsUnitOfWork) -> Definition:
            tree = await self._catalog_and_parse(uow, new.condition_text, "definition.condition_text")
            if await uow.session.get(TagDefinitionRow, new.definition_id) is not None:
                raise AlreadyExists("tag definition", f"tagDefinitions/{new.definition_id}",
                                    reason="TAG_DEFINITION_ALREADY_EXISTS")
            if await uow.tags.external_name_used(new.tag):
                raise InvalidArgument.field("definition.tag", "is the name of an external tag (SetCustomerTags)",
                                            reason="TAG_NAME_RESERVED")
            row = TagDefinitionRow(definition_id=new.definition_id, tag=new.tag, condition_text=to_text(tree),
                                   value=new.value, description=new.description, create_time=self.clock())
            uow.session.add(row)
            await uow.session.flush()
            return _definition(row)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, DEFINITION_CODEC, create)

    async def list_definitions(self, *, after_id: str | None, page_size: int) -> tuple[list[Definition], str | None]:
        async with self.uow_factory() as uow:
            rows = [_definition(r) for r in await uow.tags.definitions(after_id=after_id, limit=page_size + 1)]
        more = len(rows) > page_size
        rows = rows[:page_size]
        return rows, (rows[-1].definition_id if more and rows else None)

    async def delete_definition(self, definition_id: str, key: IdempotencyKey | None) -> None:
        """Deletes the definition and the tag values it produced."""
        async def delete_(uow: TagsUnitOfWork) -> Definition:
            row = await uow.session.get(TagDefinitionRow, definition_id)
            if row is None:
                raise NotFound("tag definition", f"tagDefinitions/{definition_id}",
                               reason="TAG_DEFINITION_NOT_FOUND")
            await uow.tags.delete_rule_values(definition_id=definition_id)
            await uow.session.delete(row)
            return _definition(row)

        await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, DEFINITION_CODEC, delete_)

    # -- the batch job ------------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job:
        async with self.uow_factory() as uow:
            row = await uow.session.get(TagJobRow, job_id)
            if row is None:
                raise NotFound("tag job", f"tagJobs/{job_id}", reason="TAG_JOB_NOT_FOUND")
            return _job(row)

    async def start_job(self, job_id: str, as_of: datetime | None, chunk_size: int) -> Job:
        """Creates the job, or resumes an unfinished one (a failed job goes back to running)."""
        now = self.clock()
        if as_of is not None and as_of > now + FUTURE_SKEW:
            raise InvalidArgument.field("as_of", "must not be in the future", reason="AS_OF_IN_FUTURE")
        job_id = job_id or f"tj-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"
        async with self.uow_factory() as uow:
            row = await uow.session.get(TagJobRow, job_id)
            if row is None:
                row = TagJobRow(job_id=job_id, state=RUNNING, as_of=as_of or now, chunk_size=chunk_size,
                                total_customers=await uow.tags.count_customers(), processed_customers=0,
                                chunks_done=0, cursor=None, error="", create_time=now, update_time=now)
                uow.session.add(row)
            elif row.state == FAILED:
                row.state, row.error, row.update_time = RUNNING, "", now
            await uow.session.flush()
            job = _job(row)
            await uow.commit()
        log.info("tag job started", extra={"job_id": job_id, "state": job.state})
        return job

    def run_in_background(self, job_id: str) -> None:
        """Runs the job's chunks in a task of this process, unless one is already running here. The task starts
        from an empty context: its chunk spans are roots of their own traces (a job outlives the RPC that started
        it), each linked to the span current here (the RunTagJob server span)."""
        task = self._workers.get(job_id)
        if task is not None and not task.done():
            return
        started_by = trace.get_current_span().get_span_context()
        self._workers[job_id] = asyncio.create_task(self.run_job(job_id, started_by=started_by),
                                                    context=contextvars.Context())

    async def stop(self) -> None:
        tasks = [t for t in self._workers.values() if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def run_job(self, job_id: str, *, max_chunks: int | None = None, budget_seconds: float | None = None,
                      started_by: trace.SpanContext | None = None) -> Job:
        """Processes chunks until the job is finished, or `max_chunks` were committed, or `budget_seconds` have
        passed (checked between chunks); returns the job as it then is."""
        links = [trace.Link(started_by)] if started_by is not None and started_by.is_valid else []
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        trees: dict[str, tuple[TagDefinitionRow, Node]] | None = None
        chunks = 0
        try:
            while (max_chunks is None or chunks < max_chunks) and (deadline is None or time.monotonic() < deadline):
                async with self.uow_factory() as uow:
                    job = await uow.session.get(TagJobRow, job_id)
                    if job is None:
                        raise NotFound("tag job", f"tagJobs/{job_id}", reason="TAG_JOB_NOT_FOUND")
                    if job.state != RUNNING:
                        return _job(job)
                    if trees is None:
                        trees = await self._rule_trees(uow)
                    with self.tracer.start_as_current_span("TagJob.chunk", links=links) as span:
                        span.set_attribute("lodestar.tag_job.id", job_id)
                        span.set_attribute("lodestar.tag_job.chunk", job.chunks_done + 1)
                        moved = await self._chunk(uow, job, trees)
                    if not moved:
                        log.info("tag job advanced by another worker; stopping here", extra={"job_id": job_id})
                        return await self.get_job(job_id)
                    await uow.commit()
                chunks += 1
            return await self.get_job(job_id)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            description = error.message if isinstance(error, ConditionError | InvalidArgument) else (
                f"{type(error).__name__}; resume with RunTagJob")
            log.warning("tag job failed", extra={"job_id": job_id}, exc_info=True)
            async with self.uow_factory() as uow:
                await uow.session.execute(update(TagJobRow).where(TagJobRow.job_id == job_id).values(
                    state=FAILED, error=description[:500], update_time=self.clock()))
                await uow.commit()
            return await self.get_job(job_id)

    async def _rule_trees(self, uow: TagsUnitOfWork) -> dict[str, tuple[TagDefinitionRow, Node]]:
        catalog = SegmentsService.catalog_of(await uow.attributes.all(), self.allow_pii)
        out = {}
        for row in await uow.tags.definitions():
            try:
                out[row.definition_id] = (row, parse_condition(row.condition_text, catalog))
            except ConditionError as error:
                raise InvalidArgument.field(
                    "definition.condition_text",
                    f"the condition of tag definition {row.definition_id} no longer passes the checks "
                    f"({error.reason}); delete and recreate it", reason="TAG_DEFINITION_INVALID") from None
        return out

    async def _chunk(self, uow: TagsUnitOfWork, job: TagJobRow,
                     trees: Mapping[str, tuple[TagDefinitionRow, Node]]) -> bool:
        rows = await uow.tags.next_chunk(job.cursor, job.chunk_size)
        now = self.clock()
        if not rows:
            return await uow.tags.advance(job, cursor=job.cursor, processed=0, done=True, now=now)
        ids = [r.customer_id for r in rows]
        as_of = job.as_of
        facts = {r.customer_id: facts_of(r.customer_id, r) for r in rows}
        records = await uow.events.known_at(ids, as_of, as_of - timedelta(days=LOOKBACK_DAYS))
        first = await uow.events.first_occurred(ids, as_of)
        features = compute_batch(records_frame(records), facts, first, as_of)
        await replace_features(uow.session, ids, features, as_of)
        builtin = [
            {"customer_id": c, "name": t.name, "value": t.value, "source": t.source, "rule_version": RULE_VERSION,
             "as_of": as_of, "computed_at": now}
            for c in ids for t in compute_tags(features[c], facts[c], as_of)
        ]
        await uow.tags.replace_builtin_tags(ids, builtin)
        await uow.tags.delete_rule_values(after=job.cursor, last=ids[-1])
        catalog = SegmentsService.catalog_of(await uow.attributes.all(), self.allow_pii)
        for definition, tree in trees.values():
            where = SegmentsService.compile(tree, as_of, catalog)
            await uow.session.execute(apply_rule(definition, where, after=job.cursor, last=ids[-1], now=now))
        done = len(rows) < job.chunk_size
        return await uow.tags.advance(job, cursor=ids[-1], processed=len(rows), done=done, now=now)
