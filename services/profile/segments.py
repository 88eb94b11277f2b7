"""Segments, audience export and clustering: the use cases. Owns the transactions; raises domain errors; imports
no grpc. Conditions are the language of services/profile/conditions (docs/segments.md), checked against a
catalog built from the attribute registry and compiled to SQL over the real tables (customers, customer_tags,
events). Nothing here logs or traces a customer id or an attribute value."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import ColumnElement, Float, String, case, cast, func, literal, null

from lodestar.profile.v1 import condition_pb2
from services.platform import pagination
from services.platform.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent
from services.platform.validation import ID_PATTERN
from services.profile import clustering
from services.profile.conditions import (
    AttributeInfo,
    Catalog,
    ConditionError,
    Node,
    SqlSchema,
    check,
    compile_sql,
    from_proto,
    parse_condition,
    to_invalid_argument,
    to_text,
)
from services.profile.db import CustomerFeatureRow, CustomerRow, CustomerTagValueRow
from services.profile.db import IdempotencyKey as IdempotencyKeyRow
from services.profile.domain import AttributeSpec
from services.profile.events import FUTURE_SKEW, batch_inputs
from services.profile.events_db import CustomerTagRow, EventRow
from services.profile.feature_store import FEATURE_NAMES
from services.profile.features import CustomerFacts, compute_batch, records_frame
from services.profile.segments_db import SegmentRow, SegmentsUnitOfWork
from services.profile.tags import AGE_BANDS, BUILTIN_TAGS, UNKNOWN

# Condition event names -> the kinds events_db stores; both the short and the stored names are accepted.
EVENT_TYPES = {
    "txn": "transaction", "transaction": "transaction",
    "app": "digital_activity", "digital_activity": "digital_activity",
    "repayment": "repayment",
    "response": "campaign_response", "campaign_response": "campaign_response",
}
# Numeric event columns an aggregate may read, per kind.
_KIND_FIELDS = {"transaction": {"amount"}, "digital_activity": set(), "repayment": {"amount", "days_late"},
                "campaign_response": set()}
CATALOG_EVENTS = {name: _KIND_FIELDS[kind] for name, kind in EVENT_TYPES.items()}
EVENT_FIELDS = {"amount": "amount", "days_late": "days_late"}

# Tags: built-in ones in customer_tags, rule and external ones in customer_tag_values (docs/tags.md; a name is
# of one kind only, so each tag reads one table by its primary key); features: the feature store.
SCHEMA = SqlSchema.from_tables(
    CustomerRow.__table__,  # type: ignore[arg-type]
    tags=CustomerTagValueRow.__table__,  # type: ignore[arg-type]
    named_tags=dict.fromkeys(BUILTIN_TAGS, CustomerTagRow.__table__),  # type: ignore[arg-type]
    features=CustomerFeatureRow.__table__,  # type: ignore[arg-type]
    events=EventRow.__table__,  # type: ignore[arg-type]
    columns={"event_type": "kind"}, event_fields=EVENT_FIELDS, event_types=EVENT_TYPES,
)

DEFAULT_SAMPLE, MAX_SAMPLE = 10, 100
DEFAULT_BATCH, MAX_BATCH = 1000, 10_000
MAX_FIELDS = 100
DEFAULT_CLUSTER_SAMPLE, MAX_CLUSTER_SAMPLE = 10_000, 100_000
CORE_STRING_FIELDS = ("region", "time_zone")
CORE_PII_FIELDS = ("full_name", "email", "phone", "birth_date", "customer_id")
# Computed from birth_date at the export's as_of; birth_date itself stays refused (personal data).
COMPUTED_FIELDS = {"age": "number", "age_band": "string"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_ATTR_TYPE = {"integer": "number", "decimal": "number", "boolean": "bool", "date": "date", "string": "string",
              "enum": "string"}


def _segment_name(segment_id: str) -> str:
    return f"segments/{segment_id}"


def now() -> datetime:
    return datetime.now(UTC)


# -- domain -------------------------------------------------------------------------------------------------


@dataclass
class Segment:
    segment_id: str
    kind: str  # "dynamic" | "static"
    condition_text: str
    display_name: str = ""
    description: str = ""
    member_count: int = 0
    snapshot_time: datetime | None = None
    create_time: datetime | None = None
    update_time: datetime | None = None


def _segment(row: SegmentRow) -> Segment:
    return Segment(row.segment_id, row.kind, row.condition_text, row.display_name, row.description,
                   row.member_count, row.snapshot_time, row.create_time, row.update_time)


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _segment_to_json(segment: Segment) -> bytes:
    data = asdict(segment)
    for key in ("snapshot_time", "create_time", "update_time"):
        data[key] = data[key].isoformat() if data[key] else None
    return json.dumps(data, sort_keys=True).encode()


def _segment_from_json(raw: bytes) -> Segment:
    data = json.loads(raw)
    for key in ("snapshot_time", "create_time", "update_time"):
        data[key] = _time(data[key])
    return Segment(**data)


SEGMENT_CODEC = Codec(encode=_segment_to_json, decode=_segment_from_json)


def _result_to_json(result: clustering.ClusteringResult) -> bytes:
    data = asdict(result)
    data["labels"] = []
    return json.dumps(data).encode()


def _result_from_json(raw: bytes) -> clustering.ClusteringResult:
    data = json.loads(raw)
    clusters = [clustering.ClusterProfile(
        c["number"], c["size"], c["share"], [clustering.Centre(**x) for x in c["centre"]],
        [clustering.Trait(**t) for t in c["traits"]], c["segment"]) for c in data["clusters"]]
    return clustering.ClusteringResult(data["k"], data["silhouette"], clusters, data["sample_size"],
                                       {int(k): v for k, v in data["silhouette_by_k"].items()}, [])


CLUSTER_CODEC = Codec(encode=_result_to_json, decode=_result_from_json)


@dataclass(frozen=True)
class Preview:
    count: int
    sample: list[str]
    condition_text: str
    as_of: datetime


@dataclass(frozen=True)
class FieldSpec:
    """A requested value: core field, attribute or tag, and the type it is exported as."""

    name: str  # as requested
    source: str  # "core" | "attr" | "tag" | "feature" | "computed"
    key: str
    type: str  # "string" | "number" | "bool" | "date"
    registered: bool = True


@dataclass
class ColumnData:
    field: str
    type: str
    values: list[Any]
    present: list[bool]


@dataclass
class ExportBatch:
    customer_ids: list[str]
    columns: list[ColumnData]
    resume_token: str
    batch_number: int
    as_of: datetime


@dataclass
class ConditionInput:
    text: str = ""
    tree: condition_pb2.Condition | None = None
    field_name: str = "condition"


@dataclass
class NewSegment:
    segment_id: str
    kind: str
    condition: ConditionInput
    display_name: str = ""
    description: str = ""
    as_of: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- values of the customers' JSON attributes ---------------------------------------------------------------


def _value(spec: FieldSpec, region: str, time_zone: str, attributes: dict[str, Any] | None,
           tags: dict[tuple[str, str], str], customer_id: str) -> Any:
    if spec.source == "core":
        raw = region if spec.key == "region" else time_zone
        return raw or None
    if spec.source == "tag":
        return tags.get((customer_id, spec.key))
    if spec.source == "feature":  # looked up with the tags (SegmentsService._lookups)
        return tags.get((customer_id, f"feature.{spec.key}"))
    stored = (attributes or {}).get(spec.key)
    if not stored:
        return None
    kind, value = stored.get("t"), stored.get("v")
    if spec.type == "number":
        return float(value) if kind in ("int", "decimal") else None
    if spec.type == "bool":
        return bool(value) if kind == "bool" else None
    if spec.type == "date":
        return str(value) if kind == "date" else None
    if not spec.registered:
        return ("true" if value else "false") if kind == "bool" else str(value)
    return str(value) if kind == "string" else None


_EMPTY = {"string": "", "date": "", "number": 0.0, "bool": False}


def value_expression(spec: FieldSpec) -> ColumnElement[Any]:
    """The field read by the database itself (JSON accessors guarded by the stored kind, as the condition
    compiler does), so that an export parses no JSON in Python: null when the customer has no such value."""
    if spec.source == "core":
        column = CustomerRow.region if spec.key == "region" else CustomerRow.time_zone
        return func.nullif(column, literal("", String()))
    if spec.source == "tag":
        return literal(None, String())  # tags are read by a second query per batch
    if spec.source == "feature":
        # computed per batch at the export's as_of (SegmentsService.export); typed, or PostgreSQL returns text
        return cast(null(), Float())
    if spec.source == "computed":
        # turned into age / age_band in Python (columns_of); birth_date itself is never exported
        return CustomerRow.birth_date.expression
    attributes = CustomerRow.attributes
    kind = attributes[(spec.key, "t")].as_string()
    raw = attributes[(spec.key, "v")]
    if spec.type == "number":
        return case((kind.in_(["int", "decimal"]), cast(raw.as_string(), Float())))
    if spec.type == "bool":
        return case((kind == literal("bool", String()), raw.as_boolean()))
    if spec.type == "date":
        return case((kind == literal("date", String()), raw.as_string()))
    if not spec.registered:
        return raw.as_string()
    return case((kind == literal("string", String()), raw.as_string()))


def _age_value(key: str, birth: Any, day: date) -> Any:
    """age (whole years at `day`) or age_band (tags.AGE_BANDS; "unknown" without a birth date)."""
    if isinstance(birth, str):
        birth = date.fromisoformat(birth)
    if birth is None:
        return UNKNOWN if key == "age_band" else None
    age = day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))
    if key == "age":
        return age
    return next((band for limit, band in AGE_BANDS if age < limit), "65+")


def _attributes(value: Any) -> dict[str, Any]:
    """The attributes column as Core returns it (a dict, or JSON text on some drivers)."""
    if isinstance(value, str):
        loaded: dict[str, Any] = json.loads(value)
        return loaded
    return value or {}


class SegmentsService:
    def __init__(self, uow_factory: Callable[[], SegmentsUnitOfWork], *, allow_pii: bool = False) -> None:
        self.uow_factory = uow_factory
        self.allow_pii = allow_pii

    # -- conditions --------------------------------------------------------------------------------------

    @staticmethod
    def catalog_of(specs: Sequence[AttributeSpec], allow_pii: bool) -> Catalog:
        attributes = {
            s.name: AttributeInfo(s.type, pii=s.pii, allowed_values=tuple(s.allowed_values) if s.type == "enum"
                                  and s.allowed_values else None)
            for s in specs
        }
        # Features: the names the feature store can hold (feature_store.FEATURE_NAMES).
        return Catalog(attributes=attributes or None, features=FEATURE_NAMES, events=CATALOG_EVENTS,
                       allow_pii=allow_pii)

    async def _catalog(self, uow: SegmentsUnitOfWork) -> Catalog:
        return self.catalog_of(await uow.attributes.all(), self.allow_pii)

    @staticmethod
    def parse(condition: ConditionInput, catalog: Catalog) -> Node:
        if condition.text and condition.tree is not None:
            raise InvalidArgument.field(condition.field_name, "give the condition as text or as a tree, not both",
                                        reason="CONDITION_AMBIGUOUS")
        try:
            if condition.text:
                return parse_condition(condition.text, catalog)
            if condition.tree is not None:
                return check(from_proto(condition.tree), catalog)
        except ConditionError as error:
            raise to_invalid_argument(error) from None
        raise InvalidArgument.field(condition.field_name, "is required", reason="REQUIRED_FIELD_MISSING")

    @staticmethod
    def compile(tree: Node, as_of: datetime, catalog: Catalog) -> ColumnElement[bool]:
        try:
            return compile_sql(tree, SCHEMA, as_of=as_of, catalog=catalog)
        except ConditionError as error:
            raise to_invalid_argument(error) from None

    async def _stored_condition(self, uow: SegmentsUnitOfWork, row: SegmentRow, as_of: datetime
                                ) -> ColumnElement[bool]:
        """A stored segment's condition compiled at as_of, checked against today's registry."""
        catalog = await self._catalog(uow)
        try:
            return compile_sql(parse_condition(row.condition_text, catalog), SCHEMA, as_of=as_of, catalog=catalog)
        except ConditionError as error:
            raise FailedPrecondition(
                "SEGMENT_CONDITION_INVALID",
                f"the segment's condition no longer passes the checks ({error.reason}); recreate the segment",
            ) from None

    # -- segments ----------------------------------------------------------------------------------------

    async def preview(self, condition: ConditionInput, as_of: datetime | None, sample_size: int) -> Preview:
        as_of = as_of or now()
        async with self.uow_factory() as uow:
            catalog = await self._catalog(uow)
            tree = self.parse(condition, catalog)
            where = self.compile(tree, as_of, catalog)
            count = await uow.audience.count(where)
            sample = await uow.audience.sample(where, sample_size) if count and sample_size else []
        return Preview(count, sample, to_text(tree), as_of)

    async def create(self, new: NewSegment, key: IdempotencyKey | None) -> Segment:
        async def create(uow: SegmentsUnitOfWork) -> Segment:
            catalog = await self._catalog(uow)
            tree = self.parse(new.condition, catalog)
            if await uow.segments.get(new.segment_id) is not None:
                raise AlreadyExists("segment", _segment_name(new.segment_id))
            at = now()
            row = await uow.segments.add(SegmentRow(
                segment_id=new.segment_id, display_name=new.display_name, description=new.description,
                kind=new.kind, condition_text=to_text(tree), member_count=0, snapshot_time=None,
                create_time=at, update_time=at,
            ))
            if new.kind == "static":
                as_of = new.as_of or at
                row.member_count = await uow.segments.snapshot_condition(
                    new.segment_id, self.compile(tree, as_of, catalog))
                row.snapshot_time = as_of
            await uow.session.flush()
            return _segment(row)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, SEGMENT_CODEC, create)

    async def get(self, segment_id: str) -> Segment:
        async with self.uow_factory() as uow:
            row = await uow.segments.get(segment_id)
            if row is None:
                raise NotFound("segment", _segment_name(segment_id))
            return _segment(row)

    async def list_segments(self, *, after_id: str | None, page_size: int) -> tuple[list[Segment], str | None]:
        async with self.uow_factory() as uow:
            rows = [_segment(r) for r in await uow.segments.list_page(after_id=after_id, limit=page_size + 1)]
        more = len(rows) > page_size
        rows = rows[:page_size]
        return rows, (rows[-1].segment_id if more and rows else None)

    async def delete(self, segment_id: str, key: IdempotencyKey | None) -> None:
        async def delete(uow: SegmentsUnitOfWork) -> Segment:
            row = await uow.segments.get(segment_id)
            if row is None:
                raise NotFound("segment", _segment_name(segment_id))
            await uow.segments.delete(segment_id)
            return Segment(segment_id, "", "")

        await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, SEGMENT_CODEC, delete)

    async def refresh(self, segment_id: str, as_of: datetime | None, key: IdempotencyKey | None) -> Segment:
        async def refresh(uow: SegmentsUnitOfWork) -> Segment:
            row = await uow.segments.get(segment_id)
            if row is None:
                raise NotFound("segment", _segment_name(segment_id))
            if row.kind != "static":
                raise FailedPrecondition("SEGMENT_NOT_STATIC", "only a static segment has a snapshot to refresh")
            if not row.condition_text:
                raise FailedPrecondition("SEGMENT_HAS_NO_CONDITION",
                                         "this segment was saved from a clustering; it has no condition")
            at = as_of or now()
            where = await self._stored_condition(uow, row, at)
            row.member_count = await uow.segments.snapshot_condition(segment_id, where)
            row.snapshot_time, row.update_time = at, now()
            await uow.session.flush()
            return _segment(row)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, SEGMENT_CODEC, refresh)

    # -- fields of export and clustering -----------------------------------------------------------------

    def resolve_fields(self, names: Sequence[str], specs: Sequence[AttributeSpec], *, prefix: str = "fields"
                       ) -> list[FieldSpec]:
        if len(names) > MAX_FIELDS:
            raise InvalidArgument.field(prefix, f"at most {MAX_FIELDS} fields", reason="TOO_MANY_FIELDS")
        registry = {s.name: s for s in specs}
        out: list[FieldSpec] = []
        seen: set[str] = set()
        for index, name in enumerate(names):
            where = f"{prefix}[{index}]"
            if name in seen:
                raise InvalidArgument.field(where, "is given twice", reason="DUPLICATE_FIELD")
            seen.add(name)
            if name in CORE_STRING_FIELDS:
                out.append(FieldSpec(name, "core", name, "string"))
                continue
            if name in COMPUTED_FIELDS:
                out.append(FieldSpec(name, "computed", name, COMPUTED_FIELDS[name]))
                continue
            if name in CORE_PII_FIELDS:
                raise InvalidArgument.field(where, "is personal data and cannot be exported",
                                            reason="FIELD_PII_FORBIDDEN")
            head, dot, rest = name.partition(".")
            if dot and head == "tag" and _NAME.match(rest):
                out.append(FieldSpec(name, "tag", rest, "string"))
                continue
            if dot and head == "feature":
                if rest not in FEATURE_NAMES:
                    raise InvalidArgument.field(where, "is not a feature (docs/features.md)",
                                                reason="UNKNOWN_FIELD")
                out.append(FieldSpec(name, "feature", rest, "number"))
                continue
            key = rest if dot and head == "attr" else name
            if not _NAME.match(key):
                raise InvalidArgument.field(where, "is not a field name (region, time_zone, <attribute>, "
                                                   "attr.<attribute> or tag.<tag>)", reason="INVALID_FIELD")
            spec = registry.get(key)
            if spec is None:
                if registry:
                    raise InvalidArgument.field(where, "is not in the attribute registry", reason="UNKNOWN_FIELD")
                out.append(FieldSpec(name, "attr", key, "string", registered=False))
                continue
            if spec.pii and not self.allow_pii:
                raise InvalidArgument.field(where, "is personal data; policy forbids it in segments",
                                            reason="FIELD_PII_FORBIDDEN")
            out.append(FieldSpec(name, "attr", key, _ATTR_TYPE.get(spec.type, "string")))
        return out

    @staticmethod
    def columns_of(fields: Sequence[FieldSpec], rows: Sequence[tuple[Any, ...]],
                   tags: dict[tuple[str, str], str], as_of: datetime | None = None) -> list[ColumnData]:
        """Rows of values_query (customer_id, then one value per field) as typed columns. `as_of`: the day
        age and age_band are computed at (default now)."""
        out = []
        day = (as_of or now()).astimezone(UTC).date()
        for index, spec in enumerate(fields, start=1):
            values: list[Any]
            if spec.source == "tag":
                values = [tags.get((r[0], spec.key)) for r in rows]
            elif spec.source == "feature":
                values = [tags.get((r[0], f"feature.{spec.key}")) for r in rows]
            elif spec.source == "computed":
                values = [_age_value(spec.key, r[index], day) for r in rows]
            else:
                values = [r[index] for r in rows]
            if spec.type == "number":
                values = [None if v is None else float(v) for v in values]
            elif spec.type == "bool":
                values = [None if v is None else bool(v) for v in values]
            elif not spec.registered:
                values = [None if v is None else str(v) for v in values]
            present = [v is not None for v in values]
            empty = _EMPTY[spec.type]
            out.append(ColumnData(spec.name, spec.type, [empty if v is None else v for v in values], present))
        return out

    # -- audience export ---------------------------------------------------------------------------------

    async def export(self, segment_id: str, field_names: Sequence[str], batch_size: int,
                     as_of: datetime | None, resume_token: str) -> AsyncIterator[ExportBatch]:
        fingerprint = pagination.query_fingerprint(segment=segment_id, fields=list(field_names))
        after_id: str | None = None
        batch_number = 0
        if resume_token:
            try:
                position = pagination.decode_page_token(resume_token, fingerprint)
            except InvalidArgument as error:
                raise InvalidArgument.field(
                    "resume_token", "is not a token of this export (same segment and fields)",
                    reason="INVALID_RESUME_TOKEN") from error
            assert position is not None
            after_id, batch_number = position["after"], int(position["batch"])
            as_of = datetime.fromisoformat(position["as_of"])
        as_of = as_of or now()
        async with self.uow_factory() as uow:
            row = await uow.segments.get(segment_id)
            if row is None:
                raise NotFound("segment", _segment_name(segment_id))
            fields = self.resolve_fields(field_names, await uow.attributes.all())
            static = row.kind == "static"
            where = None if static else await self._stored_condition(uow, row, as_of)
        query = uow.audience.values_query([value_expression(f) for f in fields],
                                          segment_id=segment_id if static else None, where=where)
        tag_names = [f.key for f in fields if f.source == "tag"]
        feature_names = [f.key for f in fields if f.source == "feature"]
        if feature_names and as_of > now() + FUTURE_SKEW:
            raise InvalidArgument.field("as_of", "must not be in the future when features are exported",
                                        reason="AS_OF_IN_FUTURE")
        while True:
            # One short transaction per batch: nothing is held open between batches, nothing accumulates.
            async with self.uow_factory() as uow:
                rows = await uow.audience.page(query, after_id=after_id, limit=batch_size)
                tags: dict[tuple[str, str], Any] = (
                    dict(await uow.audience.tags([r[0] for r in rows], tag_names)) if tag_names else {})
                inputs = (await batch_inputs(uow.session, [r[0] for r in rows], as_of)
                          if feature_names and rows else None)
            if not rows:
                return
            if inputs is not None:
                tags.update(await self._features_at(inputs, feature_names, as_of))
            after_id = rows[-1][0]
            batch_number += 1
            token = pagination.encode_page_token(
                {"after": after_id, "batch": batch_number, "as_of": as_of.isoformat()}, fingerprint)
            yield ExportBatch([r[0] for r in rows], self.columns_of(fields, rows, tags, as_of), token, batch_number,
                              as_of)
            if len(rows) < batch_size:
                return

    @staticmethod
    async def _features_at(inputs: tuple[list[tuple[Any, ...]], dict[str, CustomerFacts], dict[str, datetime]],
                           names: Sequence[str], as_of: datetime) -> dict[tuple[str, str], float]:
        """The requested features of a batch's members computed at as_of by the batch executor (the definitions
        GetFeatures and BatchGetFeatures use), in a worker thread: (customer, "feature.<name>") -> value, only
        for features present (absent: recency_days or tenure_days with nothing to measure, unseen groups)."""
        records, facts, first = inputs
        computed = await asyncio.to_thread(lambda: compute_batch(records_frame(records), facts, first, as_of))
        return {(c, f"feature.{name}"): feature_set.values[name] for c, feature_set in computed.items()
                for name in names if name in feature_set.values}

    # -- clustering --------------------------------------------------------------------------------------

    async def cluster(self, field_names: Sequence[str], k: int | None, sample_size: int, save_prefix: str,
                      key: IdempotencyKey | None) -> clustering.ClusteringResult:
        if not field_names:
            raise InvalidArgument.field("fields", "name at least one field", reason="REQUIRED_FIELD_MISSING")
        if save_prefix and not ID_PATTERN.match(f"{save_prefix}-10"):
            raise InvalidArgument.field("save_segment_prefix", "must make valid segment ids ({prefix}-{n})",
                                        reason="INVALID_ID")
        async with self.uow_factory() as uow:
            fields = self.resolve_fields(field_names, await uow.attributes.all())
            query = uow.audience.members_query(segment_id=None, where=None)
            total = await uow.audience.count_query(query)
            if total > sample_size:
                rows = await uow.audience.random_sample(query, sample_size)
            else:
                rows = await uow.audience.page(query, after_id=None, limit=sample_size)
            rows = [(r[0], r[1], r[2], _attributes(r[3])) for r in rows]
            tags = await self._lookups(uow, [r[0] for r in rows], fields)
        columns = self._cluster_columns(fields, rows, tags)
        if (k is not None and k >= len(rows)) or len(rows) < 3:
            raise FailedPrecondition("TOO_FEW_CUSTOMERS", "too few customers for this number of clusters")
        result, encoder, model = clustering.cluster(columns, k=k)
        if not save_prefix:
            return result
        ids = [f"{save_prefix}-{c.number}" for c in result.clusters]
        members: dict[int, list[str]] = {c: [] for c in range(result.k)}
        if len(rows) == total:
            for row, label in zip(rows, result.labels, strict=True):
                members[label].append(row[0])
        else:  # assign every customer, streaming by keyset pages
            after: str | None = None
            while True:
                async with self.uow_factory() as uow:
                    page = await uow.audience.page(query, after_id=after, limit=DEFAULT_BATCH * 5)
                    page = [(r[0], r[1], r[2], _attributes(r[3])) for r in page]
                    page_tags = await self._lookups(uow, [r[0] for r in page], fields)
                if not page:
                    break
                labels = clustering.assign(encoder, model, self._cluster_columns(fields, page, page_tags, like=columns))
                for row, label in zip(page, labels, strict=True):
                    members[label].append(row[0])
                after = page[-1][0]

        async def save(uow: SegmentsUnitOfWork) -> clustering.ClusteringResult:
            at = now()
            for number, segment_id in enumerate(ids):
                if await uow.segments.get(segment_id) is not None:
                    raise AlreadyExists("segment", _segment_name(segment_id))
                await uow.segments.add(SegmentRow(
                    segment_id=segment_id, display_name=f"cluster {number + 1} of {result.k}",
                    description="k-means over " + ", ".join(field_names), kind="static", condition_text="",
                    member_count=len(members[number]), snapshot_time=at, create_time=at, update_time=at))
                await uow.segments.snapshot_ids(segment_id, members[number])
                result.clusters[number].segment = _segment_name(segment_id)
            return result

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, CLUSTER_CODEC, save)

    @staticmethod
    async def _lookups(uow: SegmentsUnitOfWork, customer_ids: list[str], fields: Sequence[FieldSpec]
                       ) -> dict[tuple[str, str], Any]:
        """Tags by (customer, tag) and stored features by (customer, "feature.<name>") of these customers."""
        out: dict[tuple[str, str], Any] = dict(
            await uow.audience.tags(customer_ids, [f.key for f in fields if f.source == "tag"]))
        features = await uow.audience.features(customer_ids, [f.key for f in fields if f.source == "feature"])
        out.update({(c, f"feature.{name}"): value for (c, name), value in features.items()})
        return out

    @staticmethod
    def _cluster_columns(fields: Sequence[FieldSpec], rows: Sequence[tuple[Any, ...]],
                         tags: dict[tuple[str, str], str], like: Sequence[clustering.Column] | None = None
                         ) -> list[clustering.Column]:
        out = []
        for index, spec in enumerate(fields):
            if spec.source == "computed":
                raise InvalidArgument.field(f"fields[{index}]", "age and age_band cannot be clustered on yet",
                                            reason="FIELD_NOT_CLUSTERABLE")
            if spec.type == "date":
                raise InvalidArgument.field(f"fields[{index}]", "dates cannot be clustered on",
                                            reason="FIELD_NOT_CLUSTERABLE")
            if spec.type == "number":
                out.append(clustering.Column(spec.name, True,
                                             [_value(spec, r[1], r[2], r[3], tags, r[0]) for r in rows]))
                continue
            if not spec.registered:  # no registry: numeric when every stored value is a number
                numeric_spec = FieldSpec(spec.name, "attr", spec.key, "number", registered=False)
                numbers = [_value(numeric_spec, r[1], r[2], r[3], tags, r[0]) for r in rows]
                kinds = {((r[3] or {}).get(spec.key) or {}).get("t") for r in rows} - {None}
                numeric = like[index].numeric if like is not None else bool(kinds) and kinds <= {"int", "decimal"}
                if numeric:
                    out.append(clustering.Column(spec.name, True, numbers))
                    continue
            values = [_value(spec, r[1], r[2], r[3], tags, r[0]) for r in rows]
            out.append(clustering.Column(spec.name, False, [None if v is None else str(v) for v in values]))
        return out
