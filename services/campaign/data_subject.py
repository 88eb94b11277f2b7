"""Data-subject requests, campaign's half (lodestar.common.v1.DataSubjectService; risk drives it).

Campaign holds outcomes that the bank's aggregates are made of (decisions, contacts and responses per campaign,
arm and offer), so erasure does not delete them: every row of every table with a `customer_id` column
(decisions, campaign history, outbox, responses, arm assignments, trigger firings, and any table added later:
found in the models' metadata) gets the customer id replaced by ONE random pseudonym (`erased-<hex>`, stored
nowhere, so it cannot be reversed), and so do the delivery keys that embed the id (`<launch>:<customer>`, in
every table with a `delivery_key` column). What describes the person rather than the outcome is cleared: the
decision snapshot (attributes, region, age) and the history row's context. Launch partitions store every
member's assignment in a compressed blob: the blobs that hold the customer are rewritten with the pseudonym.
Stored idempotent responses holding the customer id are deleted. One transaction, recorded under the request id:
a retry replays the same receipt. Counts per campaign, arm and offer are unchanged by construction.

Messages not yet sent are cancelled first, while the rows still carry the id: outbox rows the dispatcher has not
taken (PENDING) get a delivery row dead-lettered `CUSTOMER_ERASED` (so that per-launch statistics still count them),
and deliveries QUEUED, or SENDING but not yet in flight (a dispatcher is deciding: its in-flight mark is conditional
on the row still being SENDING, so it then loses the claim and never sends) become DEAD `CUSTOMER_ERASED`, their
outbox rows DEAD too. A delivery in flight and SENDING (the provider may be being called right now) is not
touched (docs/data-subject-requests.md, Limits). The receipt counts the cancelled messages (`campaign_deliveries`).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
from sqlalchemy import Table, and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite

from lodestar.common.v1 import data_subject_pb2 as pb
from services.campaign import batch_decisions
from services.campaign.db import Base, BatchDecisionRow, DeliveryRow, IdempotencyKey, LaunchPartitionRow, OutboxRow
from services.campaign.dispatch import DEAD, OUTBOX_PENDING, QUEUED, SENDING
from services.campaign.launch import PartitionResult
from services.platform.data_subject import (
    canonical,
    erase_idempotently,
    export_response,
    scrub_idempotency_keys,
    sealed_receipt,
    table_section,
)
from services.platform.db import Database, UnitOfWork, utcnow

SERVICE = "campaign"
# Columns describing the person, cleared on erasure (the outcome columns stay).
CLEARED: dict[str, dict[str, Any]] = {"decisions": {"snapshot": None}, "campaign_history": {"context": {}}}
ASSIGNMENTS = "launch_assignments"
# The dead-letter reason of a message cancelled because its customer was erased (never sent, never retried).
CUSTOMER_ERASED = "CUSTOMER_ERASED"


def new_pseudonym() -> str:
    return batch_decisions.PSEUDONYM_PREFIX + secrets.token_hex(12)


def customer_tables() -> list[Table]:
    return sorted((t for t in Base.metadata.tables.values() if "customer_id" in t.c), key=lambda t: t.name)


def delivery_key_tables() -> list[Table]:
    return sorted((t for t in Base.metadata.tables.values() if "delivery_key" in t.c), key=lambda t: t.name)


def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _replace_id(ids: np.ndarray, customer_id: str, pseudonym: str) -> tuple[np.ndarray, int]:
    values = [str(v) for v in ids.tolist()]
    hits = sum(1 for v in values if v == customer_id)
    if not hits:
        return ids, 0
    return np.array([pseudonym if v == customer_id else v for v in values], dtype=str), hits


@dataclass
class CampaignDataSubject:
    database: Database

    def _uow(self) -> UnitOfWork:
        return UnitOfWork(self.database)

    async def _partitions(self, uow: UnitOfWork, customer_id: str) -> list[LaunchPartitionRow]:
        """The done partitions whose id range covers the customer (their blob may hold it)."""
        return list(await uow.session.scalars(
            select(LaunchPartitionRow).where(LaunchPartitionRow.results.is_not(None),
                                             LaunchPartitionRow.first_id <= customer_id,
                                             LaunchPartitionRow.last_id >= customer_id)
            .order_by(LaunchPartitionRow.id)))

    async def _assignments(self, uow: UnitOfWork, customer_id: str) -> list[tuple[str, int, PartitionResult]]:
        """(launch, partition number, selection) of every partition that may hold the customer: its decision
        records where written (their id range covers the customer), else an older launch's results blob."""
        found: list[tuple[str, int, PartitionResult]] = []
        for row in await uow.session.scalars(
                select(BatchDecisionRow).where(BatchDecisionRow.number > batch_decisions.ALLOCATION_NUMBER,
                                               BatchDecisionRow.first_id <= customer_id,
                                               BatchDecisionRow.last_id >= customer_id)
                .order_by(BatchDecisionRow.launch_id, BatchDecisionRow.number)):
            found.append((row.launch_id, row.number, PartitionResult.from_decisions(batch_decisions.unpack(
                row.records, snapshot=False))))
        recorded = {(launch_id, number) for launch_id, number, _ in found}
        for partition in await self._partitions(uow, customer_id):
            if (partition.launch_id, partition.number) not in recorded:
                found.append((partition.launch_id, partition.number,
                              PartitionResult.from_blob(partition.results or b"")))
        return found

    async def export(self, customer_id: str, counts_only: bool = False) -> pb.ExportCustomerDataResponse:
        sections = []
        async with self._uow() as uow:
            for table in customer_tables():
                section = await table_section(uow, table, table.c.customer_id == customer_id, counts_only)
                if section is not None:
                    sections.append(section)
            assignments = []
            for launch_id, number, result in await self._assignments(uow, customer_id):
                for member, group in zip(result.member_ids.tolist(), result.groups.tolist(), strict=True):
                    if str(member) == customer_id:
                        assignments.append({"launch_id": launch_id, "partition": number,
                                            "group": "control" if int(group) < 0 else f"arm {int(group)}",
                                            "treated": int(group) >= 0})
            if assignments:
                sections.append(pb.DataSection(name=ASSIGNMENTS, json_document="" if counts_only else canonical(
                    assignments), record_count=len(assignments)))
        return export_response(SERVICE, sections)

    async def _cancel_pending(self, uow: UnitOfWork, customer_id: str) -> int:
        """Dead-letters the customer's messages not yet sent (see the module's docstring); returns how many.
        The outbox first: on PostgreSQL its UPDATE waits for a dispatcher enqueueing those rows (FOR UPDATE), so
        that the deliveries' UPDATE, a later statement, sees what the enqueue committed."""
        now = utcnow()
        taken = (await uow.session.execute(
            update(OutboxRow).where(OutboxRow.customer_id == customer_id, OutboxRow.state == OUTBOX_PENDING)
            .values(state=DEAD)
            .returning(OutboxRow.id, OutboxRow.delivery_key, OutboxRow.launch_id, OutboxRow.channel)
            .execution_options(synchronize_session=False))).all()
        if taken:
            insert = postgresql.insert if uow.session.bind.dialect.name == "postgresql" else sqlite.insert
            await uow.session.execute(insert(DeliveryRow).values([{
                "delivery_key": r.delivery_key, "outbox_id": r.id, "launch_id": r.launch_id or "",
                "channel": r.channel, "state": DEAD, "next_attempt_time": now, "in_flight": False, "attempts": 0,
                "deferrals": 0, "reservation_generation": 0, "last_reason": CUSTOMER_ERASED, "dead_time": now,
                "provider_message_id": "", "delivery_status": "", "ignored_callbacks": 0, "create_time": now,
                "update_time": now} for r in taken]).on_conflict_do_nothing())
        cancelled = (await uow.session.execute(
            update(DeliveryRow)
            .where(DeliveryRow.outbox_id.in_(select(OutboxRow.id).where(OutboxRow.customer_id == customer_id)),
                   or_(DeliveryRow.state == QUEUED,
                       and_(DeliveryRow.state == SENDING, DeliveryRow.in_flight.is_(False))))
            .values(state=DEAD, last_reason=CUSTOMER_ERASED, dead_time=now, claimed_by=None, lease_until=None,
                    update_time=now)
            .returning(DeliveryRow.outbox_id).execution_options(synchronize_session=False))).scalars().all()
        if cancelled:
            await uow.session.execute(update(OutboxRow).where(OutboxRow.id.in_(list(cancelled))).values(state=DEAD)
                                      .execution_options(synchronize_session=False))
        return len(taken) + len(cancelled)

    async def _erase(self, uow: UnitOfWork, customer_id: str, request_id: str) -> pb.ErasureReceipt:
        pseudonym = new_pseudonym()
        tables: list[pb.TableReceipt] = []
        cancelled = await self._cancel_pending(uow, customer_id)
        cancel_note = f"messages cancelled before sending (dead letter {CUSTOMER_ERASED}): {cancelled}"
        for table in delivery_key_tables():
            # Delivery keys embed the customer as "<launch>:<customer>" (or "...:<customer>:..."): rewritten first,
            # while the rows still carry the id.
            column = table.c.delivery_key
            escaped = _like_escape(customer_id)
            result = await uow.session.execute(
                update(table).where(or_(column.like(f"%:{escaped}", escape="\\"),
                                        column.like(f"%:{escaped}:%", escape="\\")))
                .values(delivery_key=_rewrite_key(column, customer_id, pseudonym)))
            count = max(result.rowcount or 0, 0)  # type: ignore[attr-defined]
            if table.name == DeliveryRow.__tablename__:
                # one entry for the dispatcher's table, always: the cancelled messages are counted in its note
                tables.append(pb.TableReceipt(table=table.name, rows_pseudonymised=count,
                                              note=f"delivery keys rewritten; {cancel_note}"))
            elif count and "customer_id" not in table.c:
                tables.append(pb.TableReceipt(table=table.name, rows_pseudonymised=count,
                                              note="delivery keys rewritten"))
        for table in customer_tables():
            values: dict[str, Any] = {"customer_id": pseudonym}
            values.update({k: v for k, v in CLEARED.get(table.name, {}).items() if k in table.c})
            result = await uow.session.execute(
                update(table).where(table.c.customer_id == customer_id).values(**values))
            tables.append(pb.TableReceipt(table=table.name, rows_pseudonymised=max(result.rowcount or 0, 0),  # type: ignore[attr-defined]
                                          note="customer replaced by a one-way pseudonym"))
        rewritten = 0
        for partition in await self._partitions(uow, customer_id):
            stored = PartitionResult.from_blob(partition.results or b"")
            stored.member_ids, hits = _replace_id(stored.member_ids, customer_id, pseudonym)
            stored.candidate_ids, _ = _replace_id(stored.candidate_ids, customer_id, pseudonym)
            first, last = batch_decisions.narrowed_bounds(partition.first_id, partition.last_id, customer_id,
                                                          [str(v) for v in stored.member_ids.tolist()])
            boundary = {k: v for k, v in (("first_id", first), ("last_id", last)) if getattr(partition, k) != v}
            if hits or boundary:
                await uow.session.execute(update(LaunchPartitionRow).where(LaunchPartitionRow.id == partition.id)
                                          .values(results=stored.to_blob(), **boundary))
                rewritten += 1
        tables.append(pb.TableReceipt(table=LaunchPartitionRow.__tablename__, rows_pseudonymised=rewritten,
                                      note="assignments rewritten with the pseudonym"))
        documents = await batch_decisions.erase_customer(uow, customer_id, pseudonym)  # type: ignore[arg-type]
        tables.append(pb.TableReceipt(table=BatchDecisionRow.__tablename__, rows_pseudonymised=documents,
                                      note="batch decision records: id pseudonymised, snapshot values cleared"))
        scrubbed = await scrub_idempotency_keys(uow, IdempotencyKey, [customer_id])
        tables.append(pb.TableReceipt(table=IdempotencyKey.__tablename__, rows_deleted=scrubbed,
                                      note="stored responses holding the customer"))
        return sealed_receipt(SERVICE, request_id, tables)

    async def erase(self, request: pb.EraseCustomerDataRequest) -> pb.ErasureReceipt:
        return await erase_idempotently(self._uow, IdempotencyKey, request,
                                        lambda uow: self._erase(uow, request.customer_id, request.request_id))


def _rewrite_key(column: Any, customer_id: str, pseudonym: str) -> Any:
    return func.replace(column, ":" + customer_id, ":" + pseudonym)



