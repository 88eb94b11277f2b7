"""The learning loop's use cases: import campaign history, train model versions, promote a champion, score.

Owns its transactions; imports no grpc. Training is CPU-bound and runs in a worker thread so the server keeps
answering. Customer facts come from the profile service: its current attributes (see modeling.py on
point-in-time limits) and its behaviour features as of each history row's contact time (EventService.
BatchGetFeatures: only events that had occurred and been recorded by then, so nothing after the contact leaks into
the row). Scoring asks for the same features as of the scoring time, and only when the model reads any.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import func, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from services.campaign import modeling
from services.campaign.db import CampaignUnitOfWork, HistoryRow, ModelVersionRow
from services.campaign.db import IdempotencyKey as IdempotencyKeyRow
from services.campaign.domain import CustomerSnapshot
from services.platform.errors import FailedPrecondition, NotFound
from services.platform.idempotency import Codec, IdempotencyKey, run_idempotent

CHAMPION_CACHE_SECONDS = 30.0
# Deadline of each BatchGetFeatures call (1000 points) when training and scoring in bulk.
FEATURE_FETCH_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class HistoryEntry:
    customer_id: str
    campaign_ref: str
    offer_id: str
    arm: str
    treated: bool
    contact_time: datetime
    channel: int
    responded: bool
    converted: bool
    revenue: float
    context: dict[str, str]


@dataclass(frozen=True)
class ImportOutcome:
    imported: int
    duplicates: int


@dataclass
class ModelVersionInfo:
    model_id: str
    version: int
    kind: str
    offer_id: str
    features: list[str]
    window_start: datetime | None
    window_end: datetime | None
    metrics: modeling.Metrics
    status: str
    algorithm: str
    create_time: datetime


class CustomerDirectory(Protocol):
    async def get_customers(self, customer_ids: Sequence[str]) -> dict[str, CustomerSnapshot]: ...


class FeatureSource(Protocol):
    """Profile's behaviour features, point in time (clients.ProfileClient.features_at)."""

    async def features_at(self, points: Sequence[tuple[str, datetime]], *, timeout: float | None = None
                          ) -> list[dict[str, float] | None]: ...


async def features_as_of(source: FeatureSource | None, points: Sequence[tuple[str, datetime]], *,
                         timeout: float | None = None) -> list[dict[str, float]]:
    """The features of each (customer, time) point ({} where profile knew nothing of the customer then, or without
    a source). A time after now is asked as of now: nothing later can be known yet."""
    if source is None or not points:
        return [{} for _ in points]
    now = datetime.now(UTC)
    got = await source.features_at([(c, min(when, now)) for c, when in points], timeout=timeout)
    return [features or {} for features in got]


def model_id_for(kind: str, offer_id: str) -> str:
    return f"{kind}-{offer_id}"


def _info(row: ModelVersionRow) -> ModelVersionInfo:
    return ModelVersionInfo(row.model_id, row.version, row.kind, row.offer_id, list(row.features), row.window_start,
                            row.window_end, modeling.metrics_from_json(row.metrics), row.status, row.algorithm,
                            row.create_time)


def _info_to_json(info: ModelVersionInfo) -> bytes:
    return json.dumps({**info.__dict__, "metrics": modeling.metrics_to_json(info.metrics),
                       "window_start": info.window_start.isoformat() if info.window_start else None,
                       "window_end": info.window_end.isoformat() if info.window_end else None,
                       "create_time": info.create_time.isoformat()}).encode()


def _info_from_json(raw: bytes) -> ModelVersionInfo:
    data = json.loads(raw)

    def when(value: str | None) -> datetime | None:
        return datetime.fromisoformat(value) if value else None

    data.update(metrics=modeling.metrics_from_json(data["metrics"]), window_start=when(data["window_start"]),
                window_end=when(data["window_end"]), create_time=datetime.fromisoformat(data["create_time"]))
    return ModelVersionInfo(**data)


MODEL_CODEC = Codec(encode=_info_to_json, decode=_info_from_json)
IMPORT_CODEC = Codec(encode=lambda o: json.dumps([o.imported, o.duplicates]).encode(),
                     decode=lambda raw: ImportOutcome(*json.loads(raw)))


class LearningService:
    def __init__(self, uow_factory: Callable[[], CampaignUnitOfWork], customers: CustomerDirectory,
                 features: FeatureSource | None = None) -> None:
        self.uow_factory = uow_factory
        self.customers = customers
        # Behaviour features joined into training rows as of their contact time (None: attributes only).
        self.features = features
        self._champions: dict[str, tuple[float, modeling.TrainedModel | None, str]] = {}

    # --- history ------------------------------------------------------------------------------------------

    async def import_history(self, entries: Sequence[HistoryEntry], key: IdempotencyKey | None) -> ImportOutcome:
        async def insert(uow: CampaignUnitOfWork) -> ImportOutcome:
            if not entries:
                return ImportOutcome(0, 0)
            existing = set((await uow.session.execute(
                select(HistoryRow.customer_id, HistoryRow.campaign_ref, HistoryRow.offer_id, HistoryRow.contact_time)
                .where(HistoryRow.customer_id.in_({e.customer_id for e in entries}))
            )).tuples())
            fresh = {k: e for e in entries if (k := (e.customer_id, e.campaign_ref, e.offer_id, e.contact_time))
                     not in existing}
            if fresh:
                dialect = uow.session.bind.dialect.name  # type: ignore[union-attr]
                insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
                await uow.session.execute(insert_(HistoryRow).on_conflict_do_nothing(), [
                    {"customer_id": e.customer_id, "campaign_ref": e.campaign_ref, "offer_id": e.offer_id,
                     "arm": e.arm, "treated": e.treated, "contact_time": e.contact_time, "channel": e.channel,
                     "responded": e.responded, "converted": e.converted, "revenue": e.revenue,
                     "context": e.context} for e in fresh.values()])
            return ImportOutcome(len(fresh), len(entries) - len(fresh))

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, IMPORT_CODEC, insert)

    # --- models -------------------------------------------------------------------------------------------

    async def train(self, kind: str, offer_id: str, folds: int, key: IdempotencyKey | None) -> ModelVersionInfo:
        async with self.uow_factory() as uow:
            rows = list(await uow.session.scalars(select(HistoryRow).where(HistoryRow.offer_id == offer_id)
                                                  .order_by(HistoryRow.id)))
            history = [(r.customer_id, r.contact_time, r.context or {}, r.treated, r.converted) for r in rows]
        if not history:
            raise FailedPrecondition("NO_HISTORY", f"no campaign history for offer {offer_id}; import it first",
                                     metadata={"offer_id": offer_id})
        facts = await self.customers.get_customers(sorted({h[0] for h in history}))
        known = [h for h in history if h[0] in facts]
        # The point-in-time join: each row's features as of its own contact time (modeling.py).
        features = await features_as_of(self.features, [(h[0], h[1]) for h in known],
                                        timeout=FEATURE_FETCH_TIMEOUT_SECONDS)
        examples = []
        for (customer_id, when, context, treated, converted), row_features in zip(known, features, strict=True):
            c = facts[customer_id]
            examples.append(modeling.Example(
                attributes=c.attributes, birth_date=c.birth_date, region=c.region, contact_time=when,
                context=context, treated=treated, converted=converted, features=row_features))
        try:
            trained = await asyncio.to_thread(modeling.train, examples, kind, folds)
        except modeling.TrainingError as error:
            raise FailedPrecondition("TRAINING_NOT_POSSIBLE", str(error), metadata={"offer_id": offer_id}) from None
        window = (min(h[1] for h in history), max(h[1] for h in history))
        model_id = model_id_for(kind, offer_id)

        async def store(uow: CampaignUnitOfWork) -> ModelVersionInfo:
            latest = await uow.session.scalar(select(func.max(ModelVersionRow.version))
                                              .where(ModelVersionRow.model_id == model_id))
            row = ModelVersionRow(
                model_id=model_id, version=(latest or 0) + 1, kind=kind, offer_id=offer_id,
                features=trained.spec.columns, window_start=window[0], window_end=window[1],
                metrics=modeling.metrics_to_json(trained.metrics), status="CHALLENGER",
                algorithm=modeling.ALGORITHM, artifact=trained.to_artifact(),
            )
            uow.session.add(row)
            await uow.session.flush()
            return _info(row)

        return await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, MODEL_CODEC, store)

    async def list_versions(self, model_id: str | None, after: tuple[str, int] | None,
                            page_size: int) -> tuple[list[ModelVersionInfo], tuple[str, int] | None]:
        async with self.uow_factory() as uow:
            query = select(ModelVersionRow).order_by(ModelVersionRow.model_id, ModelVersionRow.version)
            if model_id:
                query = query.where(ModelVersionRow.model_id == model_id)
            if after:
                query = query.where(tuple_(ModelVersionRow.model_id, ModelVersionRow.version)
                                    > tuple_(literal(after[0]), literal(after[1])))
            rows = [_info(r) for r in await uow.session.scalars(query.limit(page_size + 1))]
        more = len(rows) > page_size
        rows = rows[:page_size]
        return rows, ((rows[-1].model_id, rows[-1].version) if more and rows else None)

    async def promote(self, model_id: str, version: int, key: IdempotencyKey | None) -> ModelVersionInfo:
        async def promote(uow: CampaignUnitOfWork) -> ModelVersionInfo:
            row = await self._version_row(uow, model_id, version)
            await uow.session.execute(update(ModelVersionRow).where(
                ModelVersionRow.model_id == model_id, ModelVersionRow.status == "CHAMPION",
                ModelVersionRow.version != version).values(status="RETIRED"))
            row.status = "CHAMPION"
            await uow.session.flush()
            return _info(row)

        info = await run_idempotent(self.uow_factory, IdempotencyKeyRow, key, MODEL_CODEC, promote)
        self._champions.pop(model_id, None)
        return info

    async def score(self, model_id: str, version: int | None,
                    customer_ids: Sequence[str]) -> tuple[ModelVersionInfo, list[tuple[str, float]]]:
        async with self.uow_factory() as uow:
            if version is None:
                row = await uow.session.scalar(select(ModelVersionRow).where(
                    ModelVersionRow.model_id == model_id, ModelVersionRow.status == "CHAMPION"))
                if row is None:
                    raise FailedPrecondition("NO_CHAMPION", f"model {model_id} has no champion version; promote one",
                                             metadata={"model_id": model_id})
            else:
                row = await self._version_row(uow, model_id, version)
            info, artifact = _info(row), row.artifact
        trained = modeling.TrainedModel.from_artifact(artifact, info.metrics)
        facts = await self.customers.get_customers(customer_ids)
        now = datetime.now().astimezone()
        known = [cid for cid in customer_ids if cid in facts]
        # The features the model was trained on, same definitions, as of now (none asked when it reads none).
        features = (await features_as_of(self.features, [(c, now) for c in known],
                                         timeout=FEATURE_FETCH_TIMEOUT_SECONDS)
                    if modeling.event_features(trained.spec) else [{} for _ in known])
        frame = modeling.build_frame([modeling.Example(facts[c].attributes, facts[c].birth_date, facts[c].region,
                                                       now, {}, features=f) for c, f in zip(known, features,
                                                                                            strict=True)],
                                     trained.spec)
        scores = (await asyncio.to_thread(trained.score, frame)).tolist() if known else []
        return info, list(zip(known, (float(s) for s in scores), strict=True))

    async def champion(self, offer_id: str, kind: str = "propensity") -> tuple[modeling.TrainedModel, str] | None:
        """The champion model of an offer and its version name, cached for CHAMPION_CACHE_SECONDS."""
        model_id = model_id_for(kind, offer_id)
        cached = self._champions.get(model_id)
        if cached and time.monotonic() - cached[0] < CHAMPION_CACHE_SECONDS:
            return (cached[1], cached[2]) if cached[1] is not None else None
        async with self.uow_factory() as uow:
            row = await uow.session.scalar(select(ModelVersionRow).where(
                ModelVersionRow.model_id == model_id, ModelVersionRow.status == "CHAMPION"))
            loaded: Any = None if row is None else (modeling.TrainedModel.from_artifact(
                row.artifact, modeling.metrics_from_json(row.metrics)), f"models/{model_id}/versions/{row.version}")
        self._champions[model_id] = (time.monotonic(), *(loaded or (None, "")))
        return loaded  # type: ignore[no-any-return]

    async def _version_row(self, uow: CampaignUnitOfWork, model_id: str, version: int) -> ModelVersionRow:
        row = await uow.session.scalar(select(ModelVersionRow).where(
            ModelVersionRow.model_id == model_id, ModelVersionRow.version == version))
        if row is None:
            raise NotFound("model version", f"models/{model_id}/versions/{version}", reason="MODEL_VERSION_NOT_FOUND")
        return row
