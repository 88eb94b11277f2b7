"""Data-subject requests (access and erasure) across the four services, driven by risk.

Start (StartAccessRequest / StartErasureRequest):
1. a retried request id answers the request it started; an erasure of a customer already erased, or being
   erased, answers that request (`already_requested`);
2. the ledger row (dsr_requests), one step per service (dsr_steps) and a `DSR_<KIND>_REQUESTED` audit entry are
   committed BEFORE anything is read or destroyed;
3. each service counts what it holds (`ExportCustomerData(counts_only)`); nothing anywhere: the request is
   REJECTED with CUSTOMER_NOT_FOUND (recorded) and the caller gets NOT_FOUND CUSTOMER_NOT_FOUND.

Work (every risk replica runs `step` in a background loop, app.py): a request is claimed with a lease (a
conditional UPDATE of claimed_by / lease_until, like campaign's launch partitions); its steps run in order —
profile, campaign, gateway (over their DataSubjectService), then risk itself — and each step's receipt (erasure)
or export (access) is stored in the transaction that marks the step done, conditional on still holding the claim. A
failed step releases the claim with a back-off (status_message and the step's last_error say why, without
personal data); a crashed worker's lease expires and another worker (or the restarted one) resumes from the
first step not done. A step is never repeated once done; a step redone after a crash between the service's
commit and ours replays the service's stored receipt (EraseCustomerData is idempotent by request id).

Finish: erasure — proof_digest = sha256 over the steps' receipt digests, a `DSR_ERASURE_COMPLETED` audit entry
with that digest; access — one zip (a JSON per service + manifest.json with each file's sha256), proof_digest =
the zip's sha256, the per-step exports cleared, a `DSR_ACCESS_COMPLETED` audit entry. Either way the customer id
is cleared from the ledger; what remains is its keyed hash (to find the erasure again) and its log token.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import os
import secrets
import socket
import zipfile
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import grpc
import sqlalchemy.exc
from opentelemetry import trace
from sqlalchemy import or_, select, update

from lodestar.common.v1 import data_subject_pb2
from lodestar.risk.v1 import data_subject_request_pb2 as pb
from lodestar.risk.v1 import data_subject_request_pb2_grpc as pbg
from services.platform.config import ConfigError, env_float, env_int
from services.platform.db import utcnow
from services.platform.errors import DomainError, FailedPrecondition, InvalidArgument, NotFound
from services.platform.masking import customer_token
from services.platform.telemetry import ATTR_CUSTOMER_TOKEN
from services.platform.timestamps import to_timestamp
from services.platform.validation import check_id, parse_name
from services.risk import audit
from services.risk.data_subject import DEVELOPMENT_HASH_KEY, HASH_KEY_SETTING, RiskDataSubject, customer_hash
from services.risk.db import DataSubjectRequestRow, DataSubjectStepRow, RiskUnitOfWork

log = logging.getLogger("lodestar.risk.dsr")

ACCESS, ERASURE = "ACCESS", "ERASURE"
PENDING, RUNNING, SUCCEEDED, REJECTED = "PENDING", "RUNNING", "SUCCEEDED", "REJECTED"
# The order steps run in: profile first (the system of record: once it has erased, no new decision, launch or
# partner offer can be made about the customer), risk last (its proof closes the request).
STEPS = ("profile", "campaign", "gateway", "risk")
COLLECTION = "dataSubjectRequests"
ARCHIVE_CHUNK = 1024 * 1024
MAX_ACTOR, MAX_REASON = 128, 512
PURGE_INTERVAL = timedelta(hours=1)

POLL_SECONDS = "RISK_DSR_POLL_SECONDS"
LEASE_SECONDS = "RISK_DSR_LEASE_SECONDS"
RETRY_SECONDS = "RISK_DSR_RETRY_SECONDS"
STEP_PAUSE_SECONDS = "RISK_DSR_STEP_PAUSE_SECONDS"
HASH_KEY = HASH_KEY_SETTING
ARCHIVE_DAYS = "RISK_DSR_ARCHIVE_DAYS"
GATEWAY_ADMIN_TOKEN = "GATEWAY_ADMIN_TOKEN"  # noqa: S105  # nosec B105 - the variable's name
DSR_SETTINGS = (POLL_SECONDS, LEASE_SECONDS, RETRY_SECONDS, STEP_PAUSE_SECONDS, HASH_KEY, GATEWAY_ADMIN_TOKEN,
                ARCHIVE_DAYS)


@dataclass(frozen=True)
class DsrSettings:
    poll_seconds: float = 1.0
    lease_seconds: float = 60.0
    retry_seconds: float = 5.0
    step_pause_seconds: float = 0.0
    hash_key: bytes = DEVELOPMENT_HASH_KEY.encode()
    gateway_admin_token: str = ""
    # An access archive (personal data) is deleted this long after the request succeeded.
    archive_days: int = 30


def settings_from(extra: Mapping[str, str]) -> DsrSettings:
    """Raises ConfigError naming the variable."""
    values = {name: env_float(extra, name, default, minimum=minimum) for name, default, minimum in (
        (POLL_SECONDS, 1.0, 0.05), (LEASE_SECONDS, 60.0, 1.0), (RETRY_SECONDS, 5.0, 0.0),
        (STEP_PAUSE_SECONDS, 0.0, 0.0))}
    for name, value in values.items():
        if value > 3600:
            raise ConfigError(f"{name} must be at most 3600 seconds, got {value}")
    return DsrSettings(values[POLL_SECONDS], values[LEASE_SECONDS], values[RETRY_SECONDS],
                       values[STEP_PAUSE_SECONDS],
                       (extra.get(HASH_KEY, "").strip() or DEVELOPMENT_HASH_KEY).encode(),
                       extra.get(GATEWAY_ADMIN_TOKEN, "").strip(),
                       env_int(extra, ARCHIVE_DAYS, 30, minimum=1, maximum=3650))


class Target(Protocol):
    """One service's data-subject half: services.risk.clients.DataSubjectClient, or LocalTarget for risk."""

    async def export(self, customer_id: str, request_id: str, *,
                     counts_only: bool = False) -> data_subject_pb2.ExportCustomerDataResponse: ...

    async def erase(self, customer_id: str, request_id: str) -> data_subject_pb2.ErasureReceipt: ...


class LocalTarget:
    def __init__(self, local: RiskDataSubject) -> None:
        self.local = local

    async def export(self, customer_id: str, request_id: str, *,
                     counts_only: bool = False) -> data_subject_pb2.ExportCustomerDataResponse:
        return await self.local.export(customer_id, counts_only)

    async def erase(self, customer_id: str, request_id: str) -> data_subject_pb2.ErasureReceipt:
        return await self.local.erase(customer_id, request_id)


@dataclass(frozen=True)
class RequestView:
    row: DataSubjectRequestRow
    steps: list[DataSubjectStepRow]


def request_name(request_id: str) -> str:
    return f"{COLLECTION}/{request_id}"


class DsrService:
    def __init__(self, uow_factory: Callable[[], RiskUnitOfWork], targets: Mapping[str, Target],
                 settings: DsrSettings, *, clock: Callable[[], datetime] = utcnow,
                 tracer: trace.Tracer | None = None, worker_id: str | None = None) -> None:
        self.uow_factory = uow_factory
        self.targets = dict(targets)
        self.settings = settings
        self.clock = clock
        self.tracer = tracer or trace.get_tracer("lodestar.risk.dsr")
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.lease = timedelta(seconds=settings.lease_seconds)
        self.retry = timedelta(seconds=settings.retry_seconds)
        self._next_purge: datetime | None = None

    # --- start ----------------------------------------------------------------------------------------------

    async def start(self, kind: str, customer_id: str, actor: str, reason: str,
                    client_request_id: str = "") -> tuple[RequestView, bool]:
        for attempt in (1, 2):
            try:
                return await self._start(kind, customer_id, actor, reason, client_request_id)
            except sqlalchemy.exc.IntegrityError:
                if attempt == 2:
                    raise
                # A concurrent start with the same request id won the race: answer its request.
        raise AssertionError("unreachable")

    async def _start(self, kind: str, customer_id: str, actor: str, reason: str,
                     client_request_id: str) -> tuple[RequestView, bool]:
        digest = customer_hash(self.settings.hash_key, customer_id)
        token = customer_token(customer_id)
        now = self.clock()
        # Held by the start itself until the counting is done, so that no worker begins a request that may yet be
        # rejected (a start that dies here leaves the lease to expire; the request then runs).
        starter = f"{self.worker_id}:start"
        async with self.uow_factory() as uow:
            if client_request_id:
                row = await uow.session.scalar(select(DataSubjectRequestRow).where(
                    DataSubjectRequestRow.client_request_id == client_request_id))
                if row is not None:
                    if row.kind != kind or row.customer_hash != digest:
                        raise InvalidArgument.field("request_id", "was already used with a different request",
                                                    reason="REQUEST_ID_REUSED")
                    view = await self._view(uow, row)
                    if row.state == REJECTED and row.rejection_reason == "CUSTOMER_NOT_FOUND":
                        raise NotFound("customer", "", reason="CUSTOMER_NOT_FOUND")
                    return view, False
            if kind == ERASURE:
                existing = await uow.session.scalar(
                    select(DataSubjectRequestRow).where(DataSubjectRequestRow.customer_hash == digest,
                                                        DataSubjectRequestRow.kind == ERASURE,
                                                        DataSubjectRequestRow.state != REJECTED)
                    .order_by(DataSubjectRequestRow.create_time).limit(1))
                if existing is not None:
                    return await self._view(uow, existing), True
            request_id = "dsr_" + secrets.token_hex(12)
            row = DataSubjectRequestRow(
                request_id=request_id, client_request_id=client_request_id or None, kind=kind, state=PENDING,
                customer_id=customer_id, customer_hash=digest, customer_token=token, actor=actor, reason=reason,
                rejection_reason="", status_message="", proof_digest="", archive=None, archive_size=0,
                claimed_by=starter, lease_until=now + self.lease, create_time=now, update_time=now)
            uow.session.add(row)
            for position, service in enumerate(STEPS):
                uow.session.add(DataSubjectStepRow(request_id=request_id, service=service, position=position,
                                                   done=False, digest="", record_count=0, attempts=0,
                                                   last_error=""))
            summary = {"request": request_name(request_id), "kind": kind}
            await uow.audit.append(now, [(f"DSR_{kind}_REQUESTED", actor, token, summary,
                                          audit.payload_hash({**summary, "reason": reason}))])
            await uow.commit()
        log.info("data-subject request recorded", extra={"request": request_name(request_id), "kind": kind,
                                                          "customer_token": token})
        try:
            counts = await self._inventory(customer_id, request_id)
        except DomainError as error:
            await self._reject(request_id, "INVENTORY_FAILED", f"counting failed: {error.reason}")
            raise
        if not any(counts.values()):
            await self._reject(request_id, "CUSTOMER_NOT_FOUND", "no service holds data about this customer")
            raise NotFound("customer", "", reason="CUSTOMER_NOT_FOUND")
        async with self.uow_factory() as uow:
            await uow.session.execute(
                update(DataSubjectRequestRow)
                .where(DataSubjectRequestRow.request_id == request_id, DataSubjectRequestRow.claimed_by == starter)
                .values(claimed_by=None, lease_until=None).execution_options(synchronize_session=False))
            await uow.commit()
        return await self.get(request_id), False

    async def _inventory(self, customer_id: str, request_id: str) -> dict[str, int]:
        answers = await asyncio.gather(*(self.targets[s].export(customer_id, request_id, counts_only=True)
                                         for s in STEPS))
        return {s: sum(section.record_count for section in a.sections) for s, a in zip(STEPS, answers, strict=True)}

    async def _reject(self, request_id: str, reason: str, message: str) -> None:
        now = self.clock()
        async with self.uow_factory() as uow:
            row = await uow.session.get(DataSubjectRequestRow, request_id)
            assert row is not None
            row.state, row.rejection_reason, row.status_message = REJECTED, reason, message
            row.customer_id, row.done_time, row.update_time = None, now, now
            row.claimed_by, row.lease_until = None, None
            summary = {"request": request_name(request_id), "kind": row.kind, "reason": reason}
            await uow.audit.append(now, [(f"DSR_{row.kind}_REJECTED", "risk", row.customer_token, summary,
                                          audit.payload_hash(summary))])
            await uow.commit()
        log.info("data-subject request rejected", extra={"request": request_name(request_id), "reason": reason})

    # --- read -----------------------------------------------------------------------------------------------

    async def _steps(self, uow: RiskUnitOfWork, request_id: str) -> list[DataSubjectStepRow]:
        return list(await uow.session.scalars(select(DataSubjectStepRow).where(
            DataSubjectStepRow.request_id == request_id).order_by(DataSubjectStepRow.position)))

    async def _view(self, uow: RiskUnitOfWork, row: DataSubjectRequestRow) -> RequestView:
        """The row and its steps, detached from the session so that they stay readable after the unit of work
        ends (its closing rollback would expire them)."""
        view = RequestView(row, await self._steps(uow, row.request_id))
        uow.session.expunge_all()
        return view

    async def get(self, request_id: str) -> RequestView:
        async with self.uow_factory() as uow:
            row = await uow.session.get(DataSubjectRequestRow, request_id)
            if row is None:
                raise NotFound("data subject request", request_name(request_id),
                               reason="DATA_SUBJECT_REQUEST_NOT_FOUND")
            return await self._view(uow, row)

    async def archive(self, request_id: str) -> bytes:
        view = await self.get(request_id)
        if view.row.kind != ACCESS:
            raise FailedPrecondition("NOT_AN_ACCESS_REQUEST", "only an access request has an archive")
        if view.row.state != SUCCEEDED:
            raise FailedPrecondition("ARCHIVE_NOT_READY", "the access request has not finished")
        if view.row.archive is None:
            raise FailedPrecondition("ARCHIVE_EXPIRED", f"access archives are deleted "
                                                        f"{self.settings.archive_days} days after they are built")
        return view.row.archive

    # --- work -----------------------------------------------------------------------------------------------

    def _free(self, now: datetime) -> Any:
        return or_(DataSubjectRequestRow.lease_until.is_(None), DataSubjectRequestRow.lease_until < now,
                   DataSubjectRequestRow.claimed_by == self.worker_id)

    async def _claim(self) -> str | None:
        now = self.clock()
        async with self.uow_factory() as uow:
            candidates = list(await uow.session.scalars(
                select(DataSubjectRequestRow.request_id)
                .where(DataSubjectRequestRow.state.in_((PENDING, RUNNING)), self._free(now))
                .order_by(DataSubjectRequestRow.create_time).limit(5)))
            for request_id in candidates:
                result = await uow.session.execute(
                    update(DataSubjectRequestRow)
                    .where(DataSubjectRequestRow.request_id == request_id,
                           DataSubjectRequestRow.state.in_((PENDING, RUNNING)), self._free(now))
                    .values(claimed_by=self.worker_id, lease_until=now + self.lease)
                    .execution_options(synchronize_session=False))
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    await uow.commit()
                    return request_id
        return None

    async def step(self) -> bool:
        """Claims one request and carries it as far as it goes. False when there was nothing to take."""
        request_id = await self._claim()
        if request_id is None:
            now = self.clock()
            if self._next_purge is None or now >= self._next_purge:  # an idle worker, at most hourly
                self._next_purge = now + PURGE_INTERVAL
                await self.purge_archives()
            return False
        try:
            await self._process(request_id)
        except Exception:
            log.warning("data-subject request step failed unexpectedly",
                        extra={"request": request_name(request_id)}, exc_info=True)
            await self._release(request_id, None, "INTERNAL: failed unexpectedly; retrying")
        return True

    async def purge_archives(self) -> int:
        """Deletes the access archives older than RISK_DSR_ARCHIVE_DAYS (their digest and size stay)."""
        now = self.clock()
        async with self.uow_factory() as uow:
            result = await uow.session.execute(
                update(DataSubjectRequestRow)
                .where(DataSubjectRequestRow.kind == ACCESS, DataSubjectRequestRow.state == SUCCEEDED,
                       DataSubjectRequestRow.archive.is_not(None),
                       DataSubjectRequestRow.done_time < now - timedelta(days=self.settings.archive_days))
                .values(archive=None, update_time=now, status_message="archive deleted (retention)")
                .execution_options(synchronize_session=False))
            await uow.commit()
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def _process(self, request_id: str) -> None:
        view = await self.get(request_id)
        row = view.row
        customer_id = row.customer_id
        assert customer_id is not None, "a running request keeps its customer id"
        with self.tracer.start_as_current_span(f"DataSubjectRequest {row.kind.lower()}") as span:
            span.set_attribute(ATTR_CUSTOMER_TOKEN, row.customer_token)
            for step in view.steps:
                if step.done:
                    continue
                target = self.targets[step.service]
                try:
                    if row.kind == ERASURE:
                        receipt = await target.erase(customer_id, request_id)
                        stored = await self._store_step(request_id, step.service, receipt=receipt)
                    else:
                        export = await target.export(customer_id, request_id)
                        stored = await self._store_step(request_id, step.service, export=export)
                except DomainError as error:
                    log.warning("data-subject request waits", extra={
                        "request": request_name(request_id), "step": step.service, "reason": error.reason})
                    await self._release(request_id, step.service, f"{error.reason}: {error.message}")
                    return
                if not stored:
                    return  # the claim was lost: whoever holds it now carries on
                if self.settings.step_pause_seconds:
                    await asyncio.sleep(self.settings.step_pause_seconds)
            await self._finish(request_id)

    async def _hold_claim(self, uow: RiskUnitOfWork, request_id: str, now: datetime, **values: Any) -> bool:
        result = await uow.session.execute(
            update(DataSubjectRequestRow)
            .where(DataSubjectRequestRow.request_id == request_id, DataSubjectRequestRow.claimed_by == self.worker_id,
                   DataSubjectRequestRow.state.in_((PENDING, RUNNING)))
            .values(update_time=now, **values).execution_options(synchronize_session=False))
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    async def _store_step(self, request_id: str, service: str, *,
                          receipt: data_subject_pb2.ErasureReceipt | None = None,
                          export: data_subject_pb2.ExportCustomerDataResponse | None = None) -> bool:
        now = self.clock()
        async with self.uow_factory() as uow:
            if not await self._hold_claim(uow, request_id, now, state=RUNNING, lease_until=now + self.lease,
                                          status_message=""):
                return False
            values: dict[str, Any] = {"done": True, "done_time": now, "last_error": "",
                                      "attempts": DataSubjectStepRow.attempts + 1}
            if receipt is not None:
                values.update(receipt=receipt.SerializeToString(), digest=receipt.digest,
                              record_count=sum(t.rows_deleted + t.rows_pseudonymised for t in receipt.tables))
            if export is not None:
                values.update(export=export.SerializeToString(), digest=export.digest,
                              record_count=sum(s.record_count for s in export.sections))
            await uow.session.execute(update(DataSubjectStepRow).where(
                DataSubjectStepRow.request_id == request_id, DataSubjectStepRow.service == service).values(**values))
            await uow.commit()
        log.info("data-subject request step done", extra={"request": request_name(request_id), "step": service})
        return True

    async def _release(self, request_id: str, service: str | None, message: str) -> None:
        now = self.clock()
        async with self.uow_factory() as uow:
            if service is not None:
                await uow.session.execute(update(DataSubjectStepRow).where(
                    DataSubjectStepRow.request_id == request_id, DataSubjectStepRow.service == service)
                    .values(attempts=DataSubjectStepRow.attempts + 1, last_error=message[:1000]))
            text = f"waiting to retry {service}: {message}" if service else message
            if await self._hold_claim(uow, request_id, now, claimed_by=None, lease_until=now + self.retry,
                                      status_message=text[:1000]):
                await uow.commit()

    async def _finish(self, request_id: str) -> None:
        now = self.clock()
        async with self.uow_factory() as uow:
            row = await uow.session.get(DataSubjectRequestRow, request_id)
            assert row is not None
            steps = await self._steps(uow, request_id)
            values: dict[str, Any] = {}
            if row.kind == ERASURE:
                proof = hashlib.sha256("".join(s.digest for s in steps).encode()).hexdigest()
                summary: dict[str, Any] = {"request": request_name(request_id),
                                           "receipts": {s.service: s.digest for s in steps}}
            else:
                archive = build_archive(row, steps, now)
                proof = hashlib.sha256(archive).hexdigest()
                values.update(archive=archive, archive_size=len(archive))
                summary = {"request": request_name(request_id), "archive_sha256": proof,
                           "records": {s.service: s.record_count for s in steps}}
            if not await self._hold_claim(uow, request_id, now, state=SUCCEEDED, proof_digest=proof,
                                          customer_id=None, done_time=now, claimed_by=None, lease_until=None,
                                          status_message="", **values):
                return
            if row.kind == ACCESS:
                await uow.session.execute(update(DataSubjectStepRow).where(
                    DataSubjectStepRow.request_id == request_id).values(export=None))
            await uow.audit.append(now, [(f"DSR_{row.kind}_COMPLETED", "risk", row.customer_token, summary, proof)])
            await uow.commit()
        log.info("data-subject request succeeded", extra={"request": request_name(request_id), "kind": row.kind})


def build_archive(row: DataSubjectRequestRow, steps: Sequence[DataSubjectStepRow], now: datetime) -> bytes:
    """One zip: `<service>.json` per service (its sections, parsed) and `manifest.json` (each file's sha256)."""
    stamp = row.create_time.timetuple()[:6]
    files: list[tuple[str, bytes]] = []
    manifest_files = []
    for step in steps:
        export = data_subject_pb2.ExportCustomerDataResponse.FromString(step.export or b"")
        document = {"service": step.service, "export_time": export.export_time.ToJsonString(),
                    "sections": {s.name: json.loads(s.json_document) if s.json_document else [] for s in
                                 export.sections}}
        data = json.dumps(document, ensure_ascii=False, indent=2, sort_keys=True).encode()
        files.append((f"{step.service}.json", data))
        manifest_files.append({"name": f"{step.service}.json", "sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data), "records": sum(s.record_count for s in export.sections),
                               "service_digest": export.digest})
    manifest = {"request": request_name(row.request_id), "kind": row.kind, "customer_token": row.customer_token,
                "requested": row.create_time.isoformat(), "built": now.isoformat(), "files": manifest_files}
    files.append(("manifest.json", json.dumps(manifest, indent=2, sort_keys=True).encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in files:
            info = zipfile.ZipInfo(name, date_time=stamp)  # type: ignore[arg-type]
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()


# --- gRPC ---------------------------------------------------------------------------------------------------

_KIND = {ACCESS: pb.DATA_SUBJECT_REQUEST_KIND_ACCESS, ERASURE: pb.DATA_SUBJECT_REQUEST_KIND_ERASURE}
_STATE = {PENDING: pb.DATA_SUBJECT_REQUEST_STATE_PENDING, RUNNING: pb.DATA_SUBJECT_REQUEST_STATE_RUNNING,
          SUCCEEDED: pb.DATA_SUBJECT_REQUEST_STATE_SUCCEEDED, REJECTED: pb.DATA_SUBJECT_REQUEST_STATE_REJECTED}


def to_proto(view: RequestView) -> pb.DataSubjectRequest:
    row = view.row
    out = pb.DataSubjectRequest(
        name=request_name(row.request_id), kind=_KIND[row.kind], state=_STATE[row.state],
        customer_token=row.customer_token, actor=row.actor, reason=row.reason, proof_digest=row.proof_digest,
        archive_size=row.archive_size, status_message=row.status_message, rejection_reason=row.rejection_reason,
        create_time=to_timestamp(row.create_time), update_time=to_timestamp(row.update_time),
        done_time=to_timestamp(row.done_time))
    for step in view.steps:
        item = out.steps.add(service=step.service, done=step.done, digest=step.digest,
                             record_count=step.record_count, attempts=step.attempts, last_error=step.last_error)
        if step.receipt:
            item.receipt.ParseFromString(step.receipt)
        if step.done_time is not None:
            item.done_time.FromDatetime(step.done_time)
    return out


def _check_start(customer_id: str, actor: str, reason: str, request_id: str) -> None:
    check_id(customer_id, "customer_id")
    trace.get_current_span().set_attribute(ATTR_CUSTOMER_TOKEN, customer_token(customer_id))
    if not actor.strip():
        raise InvalidArgument.field("actor", "is required: who asks, on the customer's behalf",
                                    reason="REQUIRED_FIELD_MISSING")
    if len(actor) > MAX_ACTOR:
        raise InvalidArgument.field("actor", f"must be at most {MAX_ACTOR} characters")
    if len(reason) > MAX_REASON:
        raise InvalidArgument.field("reason", f"must be at most {MAX_REASON} characters")
    if request_id:
        check_id(request_id, "request_id")


class DataSubjectRequestHandlers(pbg.DataSubjectRequestServiceServicer):
    def __init__(self, service: DsrService) -> None:
        self.service = service

    async def StartAccessRequest(self, request: pb.StartAccessRequestRequest,
                                 context: grpc.aio.ServicerContext) -> pb.StartAccessRequestResponse:
        _check_start(request.customer_id, request.actor, request.reason, request.request_id)
        view, _ = await self.service.start(ACCESS, request.customer_id, request.actor, request.reason,
                                           request.request_id)
        return pb.StartAccessRequestResponse(request=to_proto(view))

    async def StartErasureRequest(self, request: pb.StartErasureRequestRequest,
                                  context: grpc.aio.ServicerContext) -> pb.StartErasureRequestResponse:
        _check_start(request.customer_id, request.actor, request.reason, request.request_id)
        view, already = await self.service.start(ERASURE, request.customer_id, request.actor, request.reason,
                                                 request.request_id)
        return pb.StartErasureRequestResponse(request=to_proto(view), already_requested=already)

    async def GetDataSubjectRequest(self, request: pb.GetDataSubjectRequestRequest,
                                    context: grpc.aio.ServicerContext) -> pb.GetDataSubjectRequestResponse:
        request_id = parse_name(request.name, COLLECTION)
        return pb.GetDataSubjectRequestResponse(request=to_proto(await self.service.get(request_id)))

    async def GetAccessArchive(self, request: pb.GetAccessArchiveRequest,
                               context: grpc.aio.ServicerContext) -> AsyncIterator[pb.GetAccessArchiveResponse]:
        request_id = parse_name(request.name, COLLECTION)
        data = await self.service.archive(request_id)
        digest = hashlib.sha256(data).hexdigest()
        for offset in range(0, len(data), ARCHIVE_CHUNK):
            yield pb.GetAccessArchiveResponse(chunk=data[offset:offset + ARCHIVE_CHUNK], offset=offset,
                                              total_size=len(data), sha256=digest)
