"""The data-subject request orchestrator (services/risk/dsr.py) on a real risk database with fake service targets:
the ledger before any step, steps in order with receipts, resumption from the failed step, leases after a
crash, the proof digest, rejection of unknown customers, idempotent starts."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from lodestar.common.v1 import data_subject_pb2 as dpb
from services.platform import migrations
from services.platform.db import Database
from services.platform.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from services.platform.masking import customer_token
from services.risk import audit, dsr
from services.risk.app import DEFINITION
from services.risk.data_subject import RiskDataSubject, customer_hash
from services.risk.db import AuditEntryRow, DataSubjectRequestRow, DataSubjectStepRow, RiskUnitOfWork

CUSTOMER = "unit-dsr-0042"
KEY = b"unit-test-key"


class FakeTarget:
    """A service's DataSubjectService: records calls, holds `records` for the customer, fails on demand."""

    def __init__(self, name: str, records: int = 2) -> None:
        self.name = name
        self.records = records
        self.calls: list[tuple[str, str, str]] = []
        self.fail_next = 0

    async def export(self, customer_id: str, request_id: str, *,
                     counts_only: bool = False) -> dpb.ExportCustomerDataResponse:
        self.calls.append(("count" if counts_only else "export", customer_id, request_id))
        held = self.records if customer_id == CUSTOMER else 0
        sections = [dpb.DataSection(name=f"{self.name}_rows", record_count=held,
                                    json_document="" if counts_only else json.dumps([{"n": i} for i in range(held)]))
                    ] if held else []
        return dpb.ExportCustomerDataResponse(service=self.name, sections=sections, digest=f"{self.name}-digest")

    async def erase(self, customer_id: str, request_id: str) -> dpb.ErasureReceipt:
        self.calls.append(("erase", customer_id, request_id))
        if self.fail_next:
            self.fail_next -= 1
            raise Unavailable("DEPENDENCY_UNAVAILABLE", f"the {self.name} service is unavailable; retry later")
        receipt = dpb.ErasureReceipt(service=self.name, request_id=request_id, tables=[
            dpb.TableReceipt(table=f"{self.name}_rows", rows_deleted=self.records)])
        receipt.digest = hashlib.sha256(f"{self.name}:{request_id}".encode()).hexdigest()
        return receipt


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def database(database_url: Callable[[str], str]) -> Any:
    url = database_url("risk")
    migrations.upgrade(url, DEFINITION.migrations)
    db = Database.from_url(url)
    yield db
    await db.dispose()


def build(database: Database, targets: dict[str, Any], clock: Clock, worker: str) -> dsr.DsrService:
    return dsr.DsrService(lambda: RiskUnitOfWork(database), targets, dsr.DsrSettings(hash_key=KEY),
                          clock=clock, worker_id=worker)


def fakes() -> dict[str, Any]:
    return {name: FakeTarget(name) for name in ("profile", "campaign", "gateway", "risk")}


async def rows(database: Database, model: Any) -> list[Any]:
    async with RiskUnitOfWork(database) as uow:
        out = list(await uow.session.scalars(select(model)))
        uow.session.expunge_all()
        return out


async def test_erasure_runs_every_step_in_order_and_proves_it(database: Database) -> None:
    targets, clock = fakes(), Clock()
    service = build(database, targets, clock, "w1")
    view, already = await service.start(dsr.ERASURE, CUSTOMER, "officer-7", "ticket 99")
    assert not already and view.row.state == dsr.PENDING
    # The ledger row and a step per service are committed before anything is erased.
    assert [s.service for s in view.steps] == list(dsr.STEPS)
    assert all(call[0] == "count" for t in targets.values() for call in t.calls)
    assert await service.step() is True
    done = await service.get(view.row.request_id)
    assert done.row.state == dsr.SUCCEEDED
    assert done.row.customer_id is None  # cleared once done: only the keyed hash and the token remain
    assert done.row.customer_hash == customer_hash(KEY, CUSTOMER)
    assert done.row.customer_token == customer_token(CUSTOMER)
    assert [s.done for s in done.steps] == [True] * 4
    expected = [hashlib.sha256(f"{s}:{view.row.request_id}".encode()).hexdigest() for s in dsr.STEPS]
    assert [s.digest for s in done.steps] == expected
    assert done.row.proof_digest == hashlib.sha256("".join(expected).encode()).hexdigest()
    for name in dsr.STEPS:
        assert [c for c in targets[name].calls if c[0] == "erase"] == [("erase", CUSTOMER, view.row.request_id)]
    kinds = [(e.kind, e.subject) for e in await rows(database, AuditEntryRow)]
    assert kinds == [("DSR_ERASURE_REQUESTED", customer_token(CUSTOMER)),
                     ("DSR_ERASURE_COMPLETED", customer_token(CUSTOMER))]
    assert (await rows(database, AuditEntryRow))[-1].payload_hash == done.row.proof_digest
    async with RiskUnitOfWork(database) as uow:
        entries = await uow.audit.entries(0, 100)
        assert audit.verify(entries, await uow.audit.head()).intact
    # Nothing more to do.
    assert await service.step() is False


async def test_a_failed_step_is_retried_from_that_step_only(database: Database) -> None:
    targets, clock = fakes(), Clock()
    targets["gateway"].fail_next = 1
    service = build(database, targets, clock, "w1")
    view, _ = await service.start(dsr.ERASURE, CUSTOMER, "officer-7", "")
    await service.step()
    waiting = await service.get(view.row.request_id)
    assert waiting.row.state == dsr.RUNNING
    assert [s.done for s in waiting.steps] == [True, True, False, False]
    gateway = waiting.steps[2]
    assert gateway.attempts == 1 and gateway.last_error.startswith("DEPENDENCY_UNAVAILABLE")
    assert waiting.row.status_message.startswith("waiting to retry gateway: DEPENDENCY_UNAVAILABLE")
    assert CUSTOMER not in waiting.row.status_message
    # Backed off: not claimable before RISK_DSR_RETRY_SECONDS (5 s by default).
    assert await service.step() is False
    clock.now += timedelta(seconds=6)
    assert await service.step() is True
    done = await service.get(view.row.request_id)
    assert done.row.state == dsr.SUCCEEDED
    erases = {name: sum(1 for c in t.calls if c[0] == "erase") for name, t in targets.items()}
    assert erases == {"profile": 1, "campaign": 1, "gateway": 2, "risk": 1}


async def test_a_crashed_worker_s_request_is_resumed_after_its_lease(database: Database) -> None:
    targets, clock = fakes(), Clock()
    crashed = build(database, targets, clock, "crashed")
    view, _ = await crashed.start(dsr.ERASURE, CUSTOMER, "officer-7", "")
    request_id = view.row.request_id
    # The first worker claims it and stores the first receipt, then dies (no release).
    assert await crashed._claim() == request_id
    receipt = await targets["profile"].erase(CUSTOMER, request_id)
    assert await crashed._store_step(request_id, "profile", receipt=receipt)
    other = build(database, targets, clock, "other")
    assert await other.step() is False  # the lease still holds
    clock.now += timedelta(seconds=61)
    assert await other.step() is True
    done = await other.get(request_id)
    assert done.row.state == dsr.SUCCEEDED
    assert [s.attempts for s in done.steps] == [1, 1, 1, 1]
    assert sum(1 for c in targets["profile"].calls if c[0] == "erase") == 1  # never redone
    # The crashed worker, back, cannot write over it.
    assert await crashed._store_step(request_id, "campaign", receipt=receipt) is False


async def test_an_erasure_already_requested_is_answered_again(database: Database) -> None:
    service = build(database, fakes(), Clock(), "w1")
    first, _ = await service.start(dsr.ERASURE, CUSTOMER, "officer-7", "")
    await service.step()
    again, already = await service.start(dsr.ERASURE, CUSTOMER, "officer-8", "")
    assert already and again.row.request_id == first.row.request_id
    assert len(await rows(database, DataSubjectRequestRow)) == 1


async def test_unknown_customer_is_not_found_and_the_attempt_is_recorded(database: Database) -> None:
    service = build(database, fakes(), Clock(), "w1")
    with pytest.raises(NotFound) as raised:
        await service.start(dsr.ERASURE, "nobody-0001", "officer-7", "")
    assert raised.value.reason == "CUSTOMER_NOT_FOUND"
    assert "nobody-0001" not in raised.value.message
    [row] = await rows(database, DataSubjectRequestRow)
    assert (row.state, row.rejection_reason, row.customer_id) == (dsr.REJECTED, "CUSTOMER_NOT_FOUND", None)
    assert [e.kind for e in await rows(database, AuditEntryRow)] == ["DSR_ERASURE_REQUESTED",
                                                                      "DSR_ERASURE_REJECTED"]
    assert await service.step() is False  # nothing erased


async def test_the_request_id_makes_start_idempotent(database: Database) -> None:
    service = build(database, fakes(), Clock(), "w1")
    first, _ = await service.start(dsr.ACCESS, CUSTOMER, "officer-7", "", "req-1")
    second, _ = await service.start(dsr.ACCESS, CUSTOMER, "officer-7", "", "req-1")
    assert second.row.request_id == first.row.request_id
    with pytest.raises(InvalidArgument) as raised:
        await service.start(dsr.ERASURE, CUSTOMER, "officer-7", "", "req-1")
    assert raised.value.reason == "REQUEST_ID_REUSED"


async def test_access_builds_one_zip_with_a_manifest_of_digests(database: Database) -> None:
    service = build(database, fakes(), Clock(), "w1")
    view, _ = await service.start(dsr.ACCESS, CUSTOMER, "officer-7", "")
    await service.step()
    data = await service.archive(view.row.request_id)
    done = await service.get(view.row.request_id)
    assert done.row.proof_digest == hashlib.sha256(data).hexdigest() and done.row.archive_size == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert sorted(archive.namelist()) == ["campaign.json", "gateway.json", "manifest.json", "profile.json",
                                              "risk.json"]
        manifest = json.loads(archive.read("manifest.json"))
        for entry in manifest["files"]:
            assert hashlib.sha256(archive.read(entry["name"])).hexdigest() == entry["sha256"]
            assert entry["records"] == 2
        assert json.loads(archive.read("profile.json"))["sections"]["profile_rows"] == [{"n": 0}, {"n": 1}]
    assert manifest["customer_token"] == customer_token(CUSTOMER) and CUSTOMER not in json.dumps(manifest)
    # The per-service exports are not kept beside the archive.
    assert all(step.export is None for step in await rows(database, DataSubjectStepRow))


async def test_access_archives_are_deleted_after_their_retention(database: Database) -> None:
    clock = Clock()
    service = build(database, fakes(), clock, "w1")
    view, _ = await service.start(dsr.ACCESS, CUSTOMER, "officer-7", "")
    await service.step()
    clock.now += timedelta(days=29)
    assert await service.purge_archives() == 0
    assert await service.archive(view.row.request_id)
    clock.now += timedelta(days=2)
    assert await service.step() is False  # an idle worker purges
    with pytest.raises(FailedPrecondition) as raised:
        await service.archive(view.row.request_id)
    assert raised.value.reason == "ARCHIVE_EXPIRED"
    kept = (await service.get(view.row.request_id)).row
    assert kept.archive_size > 0 and len(kept.proof_digest) == 64  # what was delivered stays provable


async def test_risk_keeps_its_records_under_a_keyed_hash(database: Database) -> None:
    from services.risk.db import ConsentRecordRow, ContactLockRow, DoNotContactRow

    now = datetime(2026, 11, 1, tzinfo=UTC)
    async with RiskUnitOfWork(database) as uow:
        uow.session.add_all([
            ConsentRecordRow(customer_id=CUSTOMER, channel="SMS", purpose="MARKETING", action="GRANT", source="app",
                             actor="a", record_time=now),
            ConsentRecordRow(customer_id="someone-else", channel="SMS", purpose="MARKETING", action="GRANT",
                             source="app", actor="a", record_time=now),
            DoNotContactRow(customer_id=CUSTOMER, action="ADD", source="call", actor="a", reason="asked",
                            record_time=now),
            ContactLockRow(customer_id=CUSTOMER, version=3),
        ])
        await uow.commit()
    local = RiskDataSubject(lambda: RiskUnitOfWork(database), KEY)
    exported = await local.export(CUSTOMER)
    assert {s.name: s.record_count for s in exported.sections} == {
        "consent_records": 1, "contact_locks": 1, "do_not_contact_entries": 1}
    receipt = await local.erase(CUSTOMER, "dsr_x")
    tables = {t.table: (t.rows_deleted, t.rows_pseudonymised) for t in receipt.tables}
    assert tables["consent_records"] == (0, 1) and tables["do_not_contact_entries"] == (0, 1)
    assert tables["contact_locks"] == (1, 0)
    kept = "dsr:" + customer_hash(KEY, CUSTOMER)
    assert sorted(r.customer_id for r in await rows(database, ConsentRecordRow)) == sorted([kept, "someone-else"])
    assert [r.customer_id for r in await rows(database, DoNotContactRow)] == [kept]
    assert await rows(database, ContactLockRow) == []
    # Replayed by request id: the same receipt, nothing done twice.
    assert await local.erase(CUSTOMER, "dsr_x") == receipt


async def test_no_worker_takes_a_request_while_its_start_is_still_counting(database: Database) -> None:
    import asyncio

    targets, clock = fakes(), Clock()
    gate, entered = asyncio.Event(), asyncio.Event()
    counting = targets["gateway"].export

    async def slow_count(customer_id: str, request_id: str, *, counts_only: bool = False) -> Any:
        entered.set()  # the ledger row is committed before any service is asked
        await gate.wait()
        return await counting(customer_id, request_id, counts_only=counts_only)

    targets["gateway"].export = slow_count  # type: ignore[method-assign]
    starter = build(database, targets, clock, "starter")
    worker = build(database, targets, clock, "worker")
    task = asyncio.create_task(starter.start(dsr.ERASURE, CUSTOMER, "officer-7", ""))
    await entered.wait()
    assert len(await rows(database, DataSubjectRequestRow)) == 1
    assert await worker.step() is False  # recorded, but held by its start
    assert await starter.step() is False  # the starting replica's own worker too
    gate.set()
    view, _ = await task
    assert view.row.claimed_by is None and view.row.state == dsr.PENDING
    assert await worker.step() is True
    assert (await worker.get(view.row.request_id)).row.state == dsr.SUCCEEDED


# --- follow-ups: one open erasure per customer; screening finds what an erasure kept under the keyed hash ----


class _BlindUnitOfWork(RiskUnitOfWork):
    """Does not see dsr_requests: its "already requested?" reads behave as if they ran just before a concurrent
    start committed (the race, made deterministic)."""

    async def __aenter__(self) -> _BlindUnitOfWork:
        entered = await super().__aenter__()
        real = entered.session.scalar

        async def scalar(statement: Any, *args: Any, **kwargs: Any) -> Any:
            if "dsr_requests" in str(statement):
                return None
            return await real(statement, *args, **kwargs)

        entered.session.scalar = scalar  # type: ignore[method-assign]
        return entered


class _BlindOnce:
    """A unit-of-work factory whose FIRST unit of work is blind (_BlindUnitOfWork)."""

    def __init__(self, database: Database) -> None:
        self.database = database
        self.blinded = 0

    def __call__(self) -> RiskUnitOfWork:
        if self.blinded:
            return RiskUnitOfWork(self.database)
        self.blinded += 1
        return _BlindUnitOfWork(self.database)


async def test_a_racing_second_first_erasure_answers_the_first(database: Database) -> None:
    targets, clock = fakes(), Clock()
    first, already = await build(database, targets, clock, "w1").start(dsr.ERASURE, CUSTOMER, "officer-7", "",
                                                                       "req-a")
    assert not already
    blind = _BlindOnce(database)
    racer = dsr.DsrService(blind, targets, dsr.DsrSettings(hash_key=KEY), clock=clock, worker_id="w2")
    second, already = await racer.start(dsr.ERASURE, CUSTOMER, "officer-8", "", "req-b")
    assert blind.blinded == 1  # the racing start did miss the first request, and inserted its own
    assert already and second.row.request_id == first.row.request_id
    [row] = await rows(database, DataSubjectRequestRow)
    assert row.client_request_id == "req-a"
    # the loser's ledger row, steps and audit entry were rolled back together
    assert len(await rows(database, DataSubjectStepRow)) == len(dsr.STEPS)
    assert [e.kind for e in await rows(database, AuditEntryRow)] == ["DSR_ERASURE_REQUESTED"]
    assert await racer.step() is True
    erases = {name: sum(1 for c in t.calls if c[0] == "erase") for name, t in targets.items()}
    assert erases == dict.fromkeys(dsr.STEPS, 1)  # ran once


async def test_concurrent_first_erasures_record_one_request(database: Database) -> None:
    import asyncio

    targets, clock = fakes(), Clock()
    a, b = build(database, targets, clock, "a"), build(database, targets, clock, "b")
    (one, first_already), (two, second_already) = await asyncio.gather(
        a.start(dsr.ERASURE, CUSTOMER, "officer-7", "", "req-1"), b.start(dsr.ERASURE, CUSTOMER, "officer-8", "",
                                                                          "req-2"))
    assert one.row.request_id == two.row.request_id and sorted([first_already, second_already]) == [False, True]
    assert len(await rows(database, DataSubjectRequestRow)) == 1


async def test_the_database_holds_one_open_erasure_per_customer(database: Database) -> None:
    import sqlalchemy.exc

    now = Clock().now

    def row(request_id: str, kind: str, state: str, digest: str = "h" * 64) -> DataSubjectRequestRow:
        return DataSubjectRequestRow(request_id=request_id, kind=kind, state=state, customer_hash=digest,
                                     customer_token="t", actor="a", create_time=now, update_time=now)

    async with RiskUnitOfWork(database) as uow:
        # an access request, a rejected and a finished erasure of the same customer coexist with an open one
        uow.session.add_all([row("dsr_1", dsr.ERASURE, dsr.PENDING), row("dsr_2", dsr.ACCESS, dsr.PENDING),
                             row("dsr_3", dsr.ERASURE, dsr.REJECTED), row("dsr_4", dsr.ERASURE, dsr.SUCCEEDED),
                             row("dsr_5", dsr.ERASURE, dsr.RUNNING, "g" * 64)])
        await uow.commit()
    for state in (dsr.PENDING, dsr.RUNNING):
        async with RiskUnitOfWork(database) as uow:
            uow.session.add(row(f"dsr_{state}", dsr.ERASURE, state))
            with pytest.raises(sqlalchemy.exc.IntegrityError):
                await uow.commit()


async def _erased_with_kept_entries(database: Database, clock: Clock, *, complaint: bool = True) -> None:
    from services.risk.db import ComplaintRow, DoNotContactRow

    async with RiskUnitOfWork(database) as uow:
        uow.session.add(DoNotContactRow(customer_id=CUSTOMER, action="ADD", source="call", actor="a",
                                        reason="asked", record_time=clock.now - timedelta(days=3)))
        if complaint:
            uow.session.add(ComplaintRow(customer_id=CUSTOMER, channel="SMS", source="call", actor="a",
                                         category="unwanted", record_time=clock.now - timedelta(days=2)))
        await uow.commit()
    await RiskDataSubject(lambda: RiskUnitOfWork(database), KEY).erase(CUSTOMER, "dsr_erased")


def _screening_service(database: Database, clock: Clock, key: bytes = KEY) -> Any:
    from services.risk.service import RiskService

    return RiskService(lambda: RiskUnitOfWork(database), clock=clock, dsr_hash_key=key)


def _item(customer_id: str, clock: Clock) -> Any:
    from services.risk.domain import BatchItem, Channel, CustomerFacts

    # 10:00 in Shanghai: no quiet hours; consent is missing for everyone (no records): CONSENT_MISSING throughout
    return BatchItem(customer_id, Channel.SMS, clock.now + timedelta(hours=-1),
                     CustomerFacts(time_zone="Asia/Shanghai"), (0,))


async def test_screen_suppresses_an_erased_customer_who_comes_back(database: Database) -> None:
    from services.risk.domain import Channel, CustomerFacts, OfferSubject, ProductType, Reason, ScreeningRequest

    clock = Clock()
    await _erased_with_kept_entries(database, clock)
    offer = OfferSubject("deposit-1", ProductType.DEPOSIT, 1)
    request = ScreeningRequest(CUSTOMER, Channel.SMS, clock.now, CustomerFacts(time_zone="Asia/Shanghai"),
                               (offer,))
    [verdict] = (await _screening_service(database, clock).screen(request)).verdicts
    assert verdict.reasons == (Reason.CONSENT_MISSING, Reason.DO_NOT_CONTACT, Reason.COOL_OFF)
    # Another key cannot find the kept entries (the key is what links them to the id).
    [other_key] = (await _screening_service(database, clock, b"another-key").screen(request)).verdicts
    assert other_key.reasons == (Reason.CONSENT_MISSING,)
    # A newer entry under the id itself wins over the kept one (the customer asked to be contactable again).
    service = _screening_service(database, clock)
    from services.risk.domain import DoNotContactAction, DoNotContactEntry

    clock.now += timedelta(days=40)  # the complaint's cool-off is over too
    await service.change_do_not_contact(DoNotContactEntry(CUSTOMER, DoNotContactAction.REMOVE, "app", "a"), None)
    later = dataclasses.replace(request, contact_time=clock.now)
    [lifted] = (await service.screen(later)).verdicts
    assert lifted.reasons == (Reason.CONSENT_MISSING,)


async def test_screen_batch_finds_kept_entries_in_one_query_per_batch(database: Database) -> None:
    from sqlalchemy import event

    from services.risk.domain import OfferSubject, ProductType, Reason

    clock = Clock()
    await _erased_with_kept_entries(database, clock, complaint=False)
    others = [f"unit-other-{n:04d}" for n in range(200)]
    items = [_item(c, clock) for c in [*others[:100], CUSTOMER, *others[100:]]]
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        results = await _screening_service(database, clock).screen_batch(
            [OfferSubject("deposit-1", ProductType.DEPOSIT, 1)], items)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    reasons = [r.verdicts[0].reasons for r in results]
    assert reasons[100] == (Reason.CONSENT_MISSING, Reason.DO_NOT_CONTACT)
    assert [n for n, r in enumerate(reasons) if r != (Reason.CONSENT_MISSING,)] == [100]
    assert sum("do_not_contact_entries" in s for s in statements) == 1
    assert sum("complaints" in s for s in statements) == 1


async def test_revision_0008_rejects_open_duplicates_it_finds(database_url: Callable[[str], str]) -> None:
    """Two open erasures of one customer recorded before the index existed: the oldest stays open, the other is
    REJECTED DUPLICATE_REQUEST (its id cleared), then the index is built."""
    from sqlalchemy import insert

    url = database_url("risk")
    migrations.upgrade(url, DEFINITION.migrations, "0007")
    db = Database.from_url(url)
    try:
        now = Clock().now
        async with db.engine.begin() as conn:
            for n, (kind, digest) in enumerate([(dsr.ERASURE, "a"), (dsr.ERASURE, "a"), (dsr.ACCESS, "a"),
                                                (dsr.ERASURE, "b")]):
                at = now + timedelta(seconds=n)
                await conn.execute(insert(DataSubjectRequestRow).values(
                    request_id=f"dsr_{n}", kind=kind, state=dsr.PENDING, customer_id="cust", customer_hash=digest * 64,
                    customer_token="t", actor="a", reason="", rejection_reason="", status_message="",
                    proof_digest="", archive_size=0, create_time=at, update_time=at))
        migrations.upgrade(url, DEFINITION.migrations)
        got = {r.request_id: (r.state, r.rejection_reason, r.customer_id)
               for r in await rows(db, DataSubjectRequestRow)}
        assert got == {"dsr_0": (dsr.PENDING, "", "cust"), "dsr_1": (dsr.REJECTED, "DUPLICATE_REQUEST", None),
                       "dsr_2": (dsr.PENDING, "", "cust"), "dsr_3": (dsr.PENDING, "", "cust")}
    finally:
        await db.dispose()
