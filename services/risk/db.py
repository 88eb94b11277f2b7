"""The risk service's database: models, repositories, unit of work.

consent_records is an append-only ledger; the consent in force for (customer, channel, purpose) is its latest
record, found through ix_consent_records_latest. screening_decisions keeps one audit row per Screen call,
written in the call's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from services.platform.db import IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow
from services.risk.audit import GENESIS, AuditEntry, chain
from services.risk.domain import (
    Channel,
    ConsentAction,
    ConsentPurpose,
    ConsentRecord,
    ContactState,
    CountedContact,
    CreditModelInfo,
    CreditModelStatus,
    DoNotContactAction,
    DoNotContactEntry,
    HistoryPosition,
    Reservation,
    ReservationState,
    ScreeningRequest,
    ScreeningResult,
)
from services.risk.fraud import KeyKind, Neighbour


class Base(DeclarativeBase):
    metadata = new_metadata()


class ConsentRecordRow(Base):
    __tablename__ = "consent_records"
    __table_args__ = (
        # The latest record per customer x channel x purpose (Screen).
        Index("ix_consent_records_latest", "customer_id", "channel", "purpose", "record_time"),
        # A customer's history, newest first (ListConsentHistory).
        Index("ix_consent_records_history", "customer_id", "record_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    purpose: Mapped[str] = mapped_column(String(32))
    action: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64), default="")
    record_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class ScreeningDecisionRow(Base):
    __tablename__ = "screening_decisions"
    __table_args__ = (Index("ix_screening_decisions_customer", "customer_id", "create_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    contact_time: Mapped[datetime] = mapped_column(UtcDateTime())
    policy_version: Mapped[str] = mapped_column(String(32))
    # [{"offer_id": ..., "verdict": "DENY", "reasons": ["CONSENT_MISSING", ...]}, ...] in request order.
    verdicts: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EncodedJson(TypeDecorator[str]):
    """A JSON column written from text encoded beforehand: ScreenBatch encodes the verdicts of each screening
    signature once and writes that text for every customer who shares it (no per-row json.dumps). Reading is
    through the ORM model's JSON type, so the values read back are the same lists of dicts."""

    impl = JSON
    cache_ok = True

    def bind_processor(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            from psycopg.types.json import Json  # the psycopg 3 dialect's JSON adapter, with the text as is

            return lambda value: Json(value, dumps=str)
        return None  # SQLite stores JSON as the text itself


# The decision table as Core sees it for the batch insert: the same table and columns as ScreeningDecisionRow,
# verdicts pre-encoded. Its own MetaData, so migrations and drift checks only ever see the model above.
DECISIONS_ENCODED = Table(
    "screening_decisions", MetaData(),
    Column("id", Integer, primary_key=True), Column("customer_id", String(128)), Column("channel", String(16)),
    Column("contact_time", UtcDateTime()), Column("policy_version", String(32)), Column("verdicts", EncodedJson()),
    Column("create_time", UtcDateTime()),
)


class IdempotencyKey(IdempotencyKeyMixin, Base):
    pass


class DoNotContactRow(Base):
    """Append-only: the latest entry of a customer (ADD or REMOVE) is in force."""

    __tablename__ = "do_not_contact_entries"
    __table_args__ = (Index("ix_do_not_contact_entries_latest", "customer_id", "record_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(16))
    source: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(256))
    record_time: Mapped[datetime] = mapped_column(UtcDateTime())


class ComplaintRow(Base):
    __tablename__ = "complaints"
    __table_args__ = (Index("ix_complaints_customer", "customer_id", "record_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str | None] = mapped_column(String(16), nullable=True)
    source: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(64))
    category: Mapped[str] = mapped_column(String(64))
    record_time: Mapped[datetime] = mapped_column(UtcDateTime())


class ContactLockRow(Base):
    """One row per customer, locked (UPDATE) by ReserveContact so that reservations of a customer serialise."""

    __tablename__ = "contact_locks"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class ReservationRow(Base):
    __tablename__ = "contact_reservations"
    __table_args__ = (Index("ix_contact_reservations_customer", "customer_id", "contact_time"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_key: Mapped[str] = mapped_column(String(128), unique=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    channel: Mapped[str] = mapped_column(String(16))
    contact_time: Mapped[datetime] = mapped_column(UtcDateTime())
    state: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AuditEntryRow(Base):
    """The hash-chained audit log (see audit.py). Append-only: nothing updates or deletes it."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    entry_time: Mapped[datetime] = mapped_column(UtcDateTime())
    kind: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(128))
    summary: Mapped[str] = mapped_column(Text)
    payload_hash: Mapped[str] = mapped_column(String(64))
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHeadRow(Base):
    """The single row (id 1) holding the last seq and hash: the append lock, and an anchor for verification."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class CreditModelRow(Base):
    """The credit model registry: one row per trained PD scorecard version, its metrics and its JSON artefact.
    At most one row has status CHAMPION (promotions serialise on the audit head lock)."""

    __tablename__ = "credit_models"
    __table_args__ = (Index("ix_credit_models_status", "status"),)

    version: Mapped[str] = mapped_column(String(32), primary_key=True)
    # Numeric order of versions ("10" after "9").
    ordinal: Mapped[int] = mapped_column(Integer, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    features: Mapped[list[str]] = mapped_column(JSON)
    candidate_features: Mapped[list[str]] = mapped_column(JSON)
    training_window: Mapped[dict[str, str]] = mapped_column(JSON)
    rows: Mapped[int] = mapped_column(Integer)
    default_rate: Mapped[float] = mapped_column(Float)
    auc: Mapped[float] = mapped_column(Float)
    ks: Mapped[float] = mapped_column(Float)
    brier: Mapped[float] = mapped_column(Float)
    decline_pd: Mapped[float] = mapped_column(Float)
    # PdModel.to_json(): plain JSON, restores the model bit for bit.
    artefact: Mapped[str] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    promote_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class FraudEventRow(Base):
    """One checked activity event (fraud.py). Device ids, phone hashes and IP addresses only as keyed hashes."""

    __tablename__ = "fraud_events"
    __table_args__ = (
        Index("ix_fraud_events_device", "device_key", "event_time"),
        Index("ix_fraud_events_phone", "phone_key", "event_time"),
        Index("ix_fraud_events_ip", "ip_key", "event_time"),
        Index("ix_fraud_events_customer", "customer_id", "event_time"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    partner_id: Mapped[str] = mapped_column(String(128))
    customer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    phone_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    ip_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_time: Mapped[datetime] = mapped_column(UtcDateTime())
    # fraud.FEATURES, computed when recorded: the anomaly model's training rows.
    features: Mapped[list[float]] = mapped_column(JSON)
    decision: Mapped[str] = mapped_column(String(16))
    # Denied or flagged: the customer is screened FRAUD_SUSPECTED for RISK_FRAUD_FLAG_DAYS.
    suspected: Mapped[bool] = mapped_column(Boolean)
    anomaly_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class FraudLockRow(Base):
    """One row per key (kind + stored value), locked by CheckActivity so that checks sharing a key serialise."""

    __tablename__ = "fraud_locks"

    lock_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


IN_CHUNK = 2000


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(values), IN_CHUNK):
        yield values[i:i + IN_CHUNK]


async def _insert_ignore(session: AsyncSession, model: type[Base], values: Mapping[str, Any]) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on SQLite and PostgreSQL."""
    dialect = session.bind.dialect.name
    stmt = (postgresql.insert(model) if dialect == "postgresql" else sqlite.insert(model)).values(**values)
    await session.execute(stmt.on_conflict_do_nothing())


def _to_domain(row: ConsentRecordRow) -> ConsentRecord:
    return ConsentRecord(
        customer_id=row.customer_id, channel=Channel(row.channel), purpose=ConsentPurpose(row.purpose),
        action=ConsentAction(row.action), source=row.source, actor=row.actor, record_time=row.record_time,
        expire_time=row.expire_time, record_id=row.id,
    )


_NEWEST_FIRST = (ConsentRecordRow.record_time.desc(), ConsentRecordRow.id.desc())


class ConsentRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def latest(
        self, customer_id: str, channel: Channel, purpose: ConsentPurpose
    ) -> ConsentRecord | None:
        """The record in force for (customer, channel, purpose): one indexed query."""
        row = await self.session.scalar(
            select(ConsentRecordRow)
            .where(
                ConsentRecordRow.customer_id == customer_id,
                ConsentRecordRow.channel == channel.value,
                ConsentRecordRow.purpose == purpose.value,
            )
            .order_by(*_NEWEST_FIRST)
            .limit(1)
        )
        return _to_domain(row) if row else None

    async def history(
        self, customer_id: str, *, channel: Channel | None, after: HistoryPosition | None, limit: int
    ) -> list[ConsentRecord]:
        query = select(ConsentRecordRow).where(ConsentRecordRow.customer_id == customer_id)
        if channel is not None:
            query = query.where(ConsentRecordRow.channel == channel.value)
        if after is not None:
            query = query.where(
                or_(
                    ConsentRecordRow.record_time < after.record_time,
                    and_(
                        ConsentRecordRow.record_time == after.record_time,
                        ConsentRecordRow.id < after.record_id,
                    ),
                )
            )
        rows = await self.session.scalars(query.order_by(*_NEWEST_FIRST).limit(limit))
        return [_to_domain(row) for row in rows]

    async def add(self, record: ConsentRecord) -> ConsentRecord:
        row = ConsentRecordRow(
            customer_id=record.customer_id, channel=record.channel.value, purpose=record.purpose.value,
            action=record.action.value, source=record.source, actor=record.actor,
            record_time=record.record_time or utcnow(), expire_time=record.expire_time,
        )
        self.session.add(row)
        await self.session.flush()
        return _to_domain(row)


class ScreeningDecisionRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_many(self, rows: list[dict[str, Any]]) -> None:
        """One executemany insert of many decision rows (dicts of ScreeningDecisionRow's columns)."""
        if rows:
            await self.session.execute(insert(ScreeningDecisionRow), rows)

    async def add_encoded(self, rows: list[dict[str, Any]]) -> None:
        """One Core executemany of decision rows whose `verdicts` is JSON text already (DECISIONS_ENCODED)."""
        if rows:
            await self.session.execute(DECISIONS_ENCODED.insert(), rows)

    def add(self, request: ScreeningRequest, result: ScreeningResult) -> None:
        self.session.add(
            ScreeningDecisionRow(
                customer_id=request.customer_id, channel=request.channel.value,
                contact_time=request.contact_time, policy_version=result.policy_version,
                verdicts=[
                    {"offer_id": v.offer_id, "verdict": v.verdict.value,
                     "reasons": [r.value for r in v.reasons]}
                    for v in result.verdicts
                ],
                create_time=utcnow(),
            )
        )


class ContactStateRepository:
    """Loads what the contact-policy rules need for many customers in a few set-based queries."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def load(self, customer_ids: Sequence[str], *, now: datetime, earliest: datetime, latest: datetime,
                   with_contacts: bool = True, kept: Mapping[str, str] | None = None) -> dict[str, ContactState]:
        """State per customer: latest consent per (channel, purpose), do-not-contact, last complaint, and the
        confirmed or active (unexpired) reservations with contact_time in [earliest, latest]. Customers risk
        holds nothing about are absent (their state is an empty ContactState: see NO_STATE).

        `kept` (`dsr:<hmac>` -> customer id, data_subject.kept_ids): do-not-contact entries and complaints kept
        under an erased customer's keyed hash count as the customer's own (the latest entry of either wins), in
        the same queries (the hashed ids join the chunk's ids)."""
        states: dict[str, ContactState] = {}
        ids = list(dict.fromkeys(customer_ids))
        dialect = self.session.bind.dialect.name
        hashed: dict[str, list[str]] = {}
        for kept_id, customer_id in (kept or {}).items():
            hashed.setdefault(customer_id, []).append(kept_id)
        for chunk in _chunks(ids):
            # the chunk's ids, then their keyed hashes; owner maps every one of them to the customer it stands for
            owner = {customer_id: customer_id for customer_id in chunk}
            owner.update({k: customer_id for customer_id in chunk for k in hashed.get(customer_id, ())})
            policy_ids = list(owner) if hashed else list(chunk)
            ranked = select(
                ConsentRecordRow,
                func.row_number().over(
                    partition_by=(ConsentRecordRow.customer_id, ConsentRecordRow.channel, ConsentRecordRow.purpose),
                    order_by=(ConsentRecordRow.record_time.desc(), ConsentRecordRow.id.desc()),
                ).label("rank"),
            ).where(_among(ConsentRecordRow.customer_id, chunk, dialect)).subquery()
            latest_consents = select(ranked).where(ranked.c.rank == 1)
            for row in (await self.session.execute(latest_consents)).mappings():
                record = ConsentRecord(
                    customer_id=row["customer_id"], channel=Channel(row["channel"]),
                    purpose=ConsentPurpose(row["purpose"]), action=ConsentAction(row["action"]),
                    source=row["source"], actor=row["actor"], record_time=row["record_time"],
                    expire_time=row["expire_time"], record_id=row["id"],
                )
                _state(states, record.customer_id).consents[(record.channel, record.purpose)] = record
            dnc_ranked = select(
                DoNotContactRow.customer_id, DoNotContactRow.action, DoNotContactRow.record_time, DoNotContactRow.id,
                func.row_number().over(
                    partition_by=DoNotContactRow.customer_id,
                    order_by=(DoNotContactRow.record_time.desc(), DoNotContactRow.id.desc()),
                ).label("rank"),
            ).where(_among(DoNotContactRow.customer_id, policy_ids, dialect)).subquery()
            newest: dict[str, tuple[datetime, int, str]] = {}
            for stored_id, action, record_time, entry_id in await self.session.execute(
                select(dnc_ranked.c.customer_id, dnc_ranked.c.action, dnc_ranked.c.record_time, dnc_ranked.c.id)
                .where(dnc_ranked.c.rank == 1)
            ):
                customer_id = owner[stored_id]
                if customer_id not in newest or (record_time, entry_id) > newest[customer_id][:2]:
                    newest[customer_id] = (record_time, entry_id, action)
            for customer_id, (_, _, action) in newest.items():
                _state(states, customer_id).do_not_contact = action == DoNotContactAction.ADD.value
            complaints = await self.session.execute(
                select(ComplaintRow.customer_id, func.max(ComplaintRow.record_time))
                .where(_among(ComplaintRow.customer_id, policy_ids, dialect)).group_by(ComplaintRow.customer_id)
            )
            for stored_id, last in complaints:
                state = _state(states, owner[stored_id])
                if state.last_complaint is None or last > state.last_complaint:
                    state.last_complaint = last
            if with_contacts:
                for customer_id, channel, contact_time in await self.session.execute(
                    _counted(now).where(
                        _among(ReservationRow.customer_id, chunk, dialect),
                        ReservationRow.contact_time >= earliest, ReservationRow.contact_time <= latest,
                    )
                ):
                    _state(states, customer_id).contacts.append(CountedContact(Channel(channel), contact_time))
        return states


def _among(column: Any, ids: Sequence[str], dialect: str) -> Any:
    """`column IN ids` with the ids as ONE bound value: an array on PostgreSQL (= ANY), a JSON array read by
    json_each on SQLite. A plain IN renders and binds one parameter per id, which costs more than the query
    itself for thousands of ids per ScreenBatch message."""
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=postgresql.ARRAY(String)))
    if dialect == "sqlite":
        values = func.json_each(bindparam(None, json.dumps(list(ids)), type_=Text)).table_valued("value")
        return column.in_(select(values.c.value))
    return column.in_(ids)


def _state(states: dict[str, ContactState], customer_id: str) -> ContactState:
    state = states.get(customer_id)
    if state is None:
        state = states[customer_id] = ContactState()
    return state


def _counted(now: datetime) -> Any:
    """Reservations that count towards the caps: confirmed, or reserved and not yet expired."""
    return select(ReservationRow.customer_id, ReservationRow.channel, ReservationRow.contact_time).where(
        or_(
            ReservationRow.state == ReservationState.CONFIRMED.value,
            and_(ReservationRow.state == ReservationState.RESERVED.value, ReservationRow.expire_time > now),
        )
    )


def reservation_to_domain(row: ReservationRow, now: datetime) -> Reservation:
    state = ReservationState(row.state)
    if state == ReservationState.RESERVED and row.expire_time <= now:
        state = ReservationState.EXPIRED
    return Reservation(row.delivery_key, row.customer_id, Channel(row.channel), row.contact_time, state,
                       row.create_time, row.expire_time)


class ReservationRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock_customer(self, customer_id: str) -> None:
        """Serialises every reservation of this customer until the transaction ends: a row lock on PostgreSQL
        (UPDATE), the database write lock on SQLite (the first write of the transaction)."""
        await _insert_ignore(self.session, ContactLockRow, {"customer_id": customer_id, "version": 0})
        await self.session.execute(
            update(ContactLockRow).where(ContactLockRow.customer_id == customer_id)
            .values(version=ContactLockRow.version + 1)
        )

    async def by_key(self, delivery_key: str, *, for_update: bool = False) -> ReservationRow | None:
        query = select(ReservationRow).where(ReservationRow.delivery_key == delivery_key)
        if for_update:
            query = query.with_for_update()
        return await self.session.scalar(query)

    async def counted(self, customer_id: str, now: datetime, earliest: datetime,
                      latest: datetime) -> list[CountedContact]:
        rows = await self.session.execute(
            _counted(now).where(
                ReservationRow.customer_id == customer_id,
                ReservationRow.contact_time >= earliest, ReservationRow.contact_time <= latest,
            )
        )
        return [CountedContact(Channel(channel), contact_time) for _, channel, contact_time in rows]

    async def add(self, delivery_key: str, customer_id: str, channel: Channel, contact_time: datetime,
                  now: datetime, ttl: timedelta) -> ReservationRow:
        row = ReservationRow(
            delivery_key=delivery_key, customer_id=customer_id, channel=channel.value, contact_time=contact_time,
            state=ReservationState.RESERVED.value, create_time=now, expire_time=now + ttl, update_time=now,
        )
        self.session.add(row)
        await self.session.flush()
        return row


class PolicyRepository:
    """Do-not-contact entries and complaints."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add_do_not_contact(self, entry: DoNotContactEntry) -> None:
        self.session.add(DoNotContactRow(
            customer_id=entry.customer_id, action=entry.action.value, source=entry.source, actor=entry.actor,
            reason=entry.reason, record_time=entry.record_time,
        ))
        await self.session.flush()

    async def add_complaint(self, customer_id: str, channel: Channel | None, source: str, actor: str,
                            category: str, record_time: datetime) -> None:
        self.session.add(ComplaintRow(
            customer_id=customer_id, channel=channel.value if channel else None, source=source, actor=actor,
            category=category, record_time=record_time,
        ))
        await self.session.flush()


class AuditRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def append(self, entry_time: datetime,
                     items: Sequence[tuple[str, str, str, Mapping[str, Any], str]]) -> list[AuditEntry]:
        """Appends entries (kind, actor, subject, summary, payload_hash) after the head, holding the head row
        locked until the transaction ends, so that concurrent appends form one chain."""
        await _insert_ignore(self.session, AuditHeadRow, {"id": 1, "seq": 0, "hash": GENESIS})
        head = await self.session.scalar(select(AuditHeadRow).where(AuditHeadRow.id == 1).with_for_update())
        assert head is not None
        entries = chain(head.seq, head.hash, entry_time, items)
        if entries:
            await self.session.execute(insert(AuditEntryRow), [
                {"seq": e.seq, "entry_time": e.entry_time, "kind": e.kind, "actor": e.actor, "subject": e.subject,
                 "summary": e.summary, "payload_hash": e.payload_hash, "prev_hash": e.prev_hash, "hash": e.hash}
                for e in entries
            ])
            await self.session.execute(
                update(AuditHeadRow).where(AuditHeadRow.id == 1).values(seq=entries[-1].seq, hash=entries[-1].hash)
            )
        return entries

    async def head(self) -> tuple[int, str] | None:
        row = (await self.session.execute(select(AuditHeadRow.seq, AuditHeadRow.hash)
                                          .where(AuditHeadRow.id == 1))).first()
        return (int(row[0]), str(row[1])) if row else None

    async def entries(self, after_seq: int, limit: int) -> list[AuditEntry]:
        rows = await self.session.scalars(
            select(AuditEntryRow).where(AuditEntryRow.seq > after_seq).order_by(AuditEntryRow.seq).limit(limit)
        )
        return [AuditEntry(r.seq, r.entry_time, r.kind, r.actor, r.subject, r.summary, r.payload_hash,
                           r.prev_hash, r.hash) for r in rows]


def credit_model_to_domain(row: CreditModelRow) -> CreditModelInfo:
    return CreditModelInfo(
        version=row.version, status=CreditModelStatus(row.status), features=tuple(row.features),
        candidate_features=tuple(row.candidate_features), training_window=dict(row.training_window or {}),
        rows=row.rows, default_rate=row.default_rate, auc=row.auc, ks=row.ks, brier=row.brier,
        decline_pd=row.decline_pd, create_time=row.create_time, promote_time=row.promote_time,
    )


class CreditModelRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def next_ordinal(self) -> int:
        return int(await self.session.scalar(select(func.max(CreditModelRow.ordinal))) or 0) + 1

    async def add(self, row: CreditModelRow) -> CreditModelRow:
        self.session.add(row)
        await self.session.flush()
        return row

    async def get(self, version: str) -> CreditModelRow | None:
        return await self.session.scalar(select(CreditModelRow).where(CreditModelRow.version == version))

    async def champion_version(self) -> str | None:
        return await self.session.scalar(
            select(CreditModelRow.version).where(CreditModelRow.status == CreditModelStatus.CHAMPION.value)
            .order_by(CreditModelRow.ordinal.desc()).limit(1))

    async def artefact(self, version: str) -> str | None:
        return await self.session.scalar(select(CreditModelRow.artefact).where(CreditModelRow.version == version))

    async def page(self, before_ordinal: int | None, limit: int) -> list[CreditModelRow]:
        query = select(CreditModelRow)
        if before_ordinal is not None:
            query = query.where(CreditModelRow.ordinal < before_ordinal)
        return list(await self.session.scalars(query.order_by(CreditModelRow.ordinal.desc()).limit(limit)))

    async def demote_champions(self) -> None:
        await self.session.execute(
            update(CreditModelRow).where(CreditModelRow.status == CreditModelStatus.CHAMPION.value)
            .values(status=CreditModelStatus.CHALLENGER.value))


_KEY_COLUMNS = {KeyKind.DEVICE: FraudEventRow.device_key, KeyKind.PHONE: FraudEventRow.phone_key,
                KeyKind.IP: FraudEventRow.ip_key, KeyKind.CUSTOMER: FraudEventRow.customer_id}


class FraudRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def lock(self, keys: Mapping[KeyKind, str]) -> None:
        """Serialises every check sharing one of these keys until the transaction ends (in a fixed order, so two
        checks never wait on each other): row locks on PostgreSQL, the write lock on SQLite."""
        for lock_key in sorted(f"{kind.value}:{value}" for kind, value in keys.items()):
            await _insert_ignore(self.session, FraudLockRow, {"lock_key": lock_key, "version": 0})
            await self.session.execute(
                update(FraudLockRow).where(FraudLockRow.lock_key == lock_key)
                .values(version=FraudLockRow.version + 1))

    async def neighbours(self, keys: Mapping[KeyKind, str], at: datetime,
                         window: timedelta) -> dict[KeyKind, list[Neighbour]]:
        """Recorded events sharing each key with event time strictly within `window` of `at`."""
        out: dict[KeyKind, list[Neighbour]] = {}
        for kind, value in keys.items():
            rows = await self.session.execute(
                select(FraudEventRow.event_time, FraudEventRow.customer_id).where(
                    _KEY_COLUMNS[kind] == value, FraudEventRow.event_time > at - window,
                    FraudEventRow.event_time < at + window))
            out[kind] = [Neighbour(t, c) for t, c in rows]
        return out

    async def add(self, row: FraudEventRow) -> FraudEventRow:
        self.session.add(row)
        await self.session.flush()
        return row

    async def count(self) -> int:
        return int(await self.session.scalar(select(func.count()).select_from(FraudEventRow)) or 0)

    async def training_rows(self, first: int, limit: int) -> list[list[float]]:
        """The features of the most recent `limit` events among the first `first` recorded (by id)."""
        ids = select(FraudEventRow.id).order_by(FraudEventRow.id).limit(first).subquery()
        rows = await self.session.scalars(
            select(FraudEventRow.features).where(FraudEventRow.id.in_(select(ids.c.id)))
            .order_by(FraudEventRow.id.desc()).limit(limit))
        return [list(r) for r in rows]

    async def suspected_customers(self, customer_ids: Sequence[str], since: datetime) -> set[str]:
        """The customers among `customer_ids` with a denied or flagged event after `since`."""
        found: set[str] = set()
        ids = list(dict.fromkeys(customer_ids))
        dialect = self.session.bind.dialect.name
        for chunk in _chunks(ids):
            rows = await self.session.scalars(
                select(FraudEventRow.customer_id).distinct().where(
                    _among(FraudEventRow.customer_id, chunk, dialect), FraudEventRow.suspected.is_(True),
                    FraudEventRow.event_time > since))
            found.update(r for r in rows if r)
        return found


class RiskUnitOfWork(UnitOfWork):
    consents: ConsentRepository
    decisions: ScreeningDecisionRepository
    states: ContactStateRepository
    reservations: ReservationRepository
    policy: PolicyRepository
    audit: AuditRepository
    credit_models: CreditModelRepository
    fraud: FraudRepository

    def _enter_repositories(self) -> None:
        self.credit_models = CreditModelRepository(self.session)
        self.consents = ConsentRepository(self.session)
        self.decisions = ScreeningDecisionRepository(self.session)
        self.states = ContactStateRepository(self.session)
        self.reservations = ReservationRepository(self.session)
        self.policy = PolicyRepository(self.session)
        self.audit = AuditRepository(self.session)
        self.fraud = FraudRepository(self.session)


# --- anti-money-laundering monitoring (services/risk/aml.py, docs/aml.md) ------------------------------------

AML_ACTIVE_STATES = ("OPEN", "INVESTIGATING")  # new alerts join such a case
AML_BLOCKING_STATES = ("OPEN", "INVESTIGATING", "REPORTED")  # Screen: AML_CASE_OPEN


class AmlTransactionRow(Base):
    """Transactions fed to MonitorTransactions: each customer's history for the rules. The counterparty only as
    a keyed hash."""

    __tablename__ = "aml_transactions"
    __table_args__ = (Index("ix_aml_transactions_customer", "customer_id", "occurred_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(String(128), unique=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    occurred_at: Mapped[datetime] = mapped_column(UtcDateTime())
    amount: Mapped[float] = mapped_column(Float)
    currency: Mapped[str] = mapped_column(String(3))
    direction: Mapped[str] = mapped_column(String(3))
    country: Mapped[str] = mapped_column(String(2))
    counterparty_key: Mapped[str] = mapped_column(String(64))
    channel: Mapped[str] = mapped_column(String(32))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AmlCaseRow(Base):
    __tablename__ = "aml_cases"
    __table_args__ = (Index("ix_aml_cases_customer", "customer_id", "state"), Index("ix_aml_cases_state", "state"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    state: Mapped[str] = mapped_column(String(16))
    alert_count: Mapped[int] = mapped_column(Integer)
    rules: Mapped[list[str]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AmlAlertRow(Base):
    __tablename__ = "aml_alerts"
    __table_args__ = (Index("ix_aml_alerts_customer", "customer_id", "rule", "window_end"),
                      Index("ix_aml_alerts_case", "case_id"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    case_id: Mapped[int] = mapped_column(ForeignKey("aml_cases.id"))
    rule: Mapped[str] = mapped_column(String(32))
    reasons: Mapped[list[str]] = mapped_column(JSON)
    detail: Mapped[str] = mapped_column(String(256))
    amount: Mapped[float] = mapped_column(Float)
    anomaly_score: Mapped[float] = mapped_column(Float)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime())
    window_end: Mapped[datetime] = mapped_column(UtcDateTime())
    transaction_ids: Mapped[list[str]] = mapped_column(JSON)
    rules_version: Mapped[str] = mapped_column(String(16))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AmlRuleSetRow(Base):
    """Every SetAmlRules as a new version; the highest is in force (none: the defaults)."""

    __tablename__ = "aml_rule_sets"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    rules: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())


class AmlRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def _dialect(self) -> str:
        return self.session.bind.dialect.name

    async def existing_transactions(self, transaction_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        for chunk in _chunks(list(transaction_ids)):
            found.update(await self.session.scalars(select(AmlTransactionRow.transaction_id).where(
                _among(AmlTransactionRow.transaction_id, chunk, self._dialect))))
        return found

    async def add_transactions(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            await self.session.execute(insert(AmlTransactionRow), rows)

    async def history(self, customer_ids: Sequence[str], since: datetime) -> list[Any]:
        """Stored transactions of these customers that occurred after `since`."""
        out: list[Any] = []
        columns = (AmlTransactionRow.transaction_id, AmlTransactionRow.customer_id, AmlTransactionRow.occurred_at,
                   AmlTransactionRow.amount, AmlTransactionRow.direction, AmlTransactionRow.country,
                   AmlTransactionRow.counterparty_key)
        for chunk in _chunks(list(customer_ids)):
            out.extend(await self.session.execute(select(*columns).where(
                _among(AmlTransactionRow.customer_id, chunk, self._dialect),
                AmlTransactionRow.occurred_at > since)))
        return out

    async def last_alert_ends(self, customer_ids: Sequence[str]) -> dict[tuple[str, str], datetime]:
        """(customer, rule) -> the latest window_end of its alerts."""
        out: dict[tuple[str, str], datetime] = {}
        for chunk in _chunks(list(customer_ids)):
            rows = await self.session.execute(
                select(AmlAlertRow.customer_id, AmlAlertRow.rule, func.max(AmlAlertRow.window_end))
                .where(_among(AmlAlertRow.customer_id, chunk, self._dialect))
                .group_by(AmlAlertRow.customer_id, AmlAlertRow.rule))
            for customer_id, rule, end in rows:
                if end is not None:
                    out[(customer_id, rule)] = end
        return out

    async def active_cases(self, customer_ids: Sequence[str]) -> dict[str, AmlCaseRow]:
        """The open or investigating case of each customer (the newest, if several)."""
        out: dict[str, AmlCaseRow] = {}
        for chunk in _chunks(list(customer_ids)):
            rows = await self.session.scalars(select(AmlCaseRow).where(
                _among(AmlCaseRow.customer_id, chunk, self._dialect),
                AmlCaseRow.state.in_(AML_ACTIVE_STATES)).order_by(AmlCaseRow.id))
            out.update({row.customer_id: row for row in rows})
        return out

    async def blocked_customers(self, customer_ids: Sequence[str]) -> set[str]:
        """The customers among `customer_ids` with a case open, investigating or reported."""
        any_case = await self.session.scalar(
            select(AmlCaseRow.id).where(AmlCaseRow.state.in_(AML_BLOCKING_STATES)).limit(1))
        if any_case is None:
            return set()
        found: set[str] = set()
        for chunk in _chunks(list(dict.fromkeys(customer_ids))):
            found.update(await self.session.scalars(select(AmlCaseRow.customer_id).distinct().where(
                _among(AmlCaseRow.customer_id, chunk, self._dialect),
                AmlCaseRow.state.in_(AML_BLOCKING_STATES))))
        return found

    async def add_case(self, row: AmlCaseRow) -> AmlCaseRow:
        self.session.add(row)
        await self.session.flush()
        return row

    async def add_alerts(self, rows: list[AmlAlertRow]) -> list[AmlAlertRow]:
        self.session.add_all(rows)
        await self.session.flush()
        return rows

    async def case(self, case_id: int, *, for_update: bool = False) -> AmlCaseRow | None:
        query = select(AmlCaseRow).where(AmlCaseRow.id == case_id)
        return await self.session.scalar(query.with_for_update() if for_update else query)

    async def alerts_page(self, *, customer_id: str | None, rule: str | None, case_id: int | None,
                          before_id: int | None, limit: int) -> list[AmlAlertRow]:
        query = select(AmlAlertRow)
        if customer_id is not None:
            query = query.where(AmlAlertRow.customer_id == customer_id)
        if rule is not None:
            query = query.where(AmlAlertRow.rule == rule)
        if case_id is not None:
            query = query.where(AmlAlertRow.case_id == case_id)
        if before_id is not None:
            query = query.where(AmlAlertRow.id < before_id)
        return list(await self.session.scalars(query.order_by(AmlAlertRow.id.desc()).limit(limit)))

    async def cases_page(self, *, state: str | None, customer_id: str | None, before_id: int | None,
                         limit: int) -> list[AmlCaseRow]:
        query = select(AmlCaseRow)
        if state is not None:
            query = query.where(AmlCaseRow.state == state)
        if customer_id is not None:
            query = query.where(AmlCaseRow.customer_id == customer_id)
        if before_id is not None:
            query = query.where(AmlCaseRow.id < before_id)
        return list(await self.session.scalars(query.order_by(AmlCaseRow.id.desc()).limit(limit)))

    async def latest_rules(self) -> AmlRuleSetRow | None:
        return await self.session.scalar(select(AmlRuleSetRow).order_by(AmlRuleSetRow.version.desc()).limit(1))

    async def add_rules(self, row: AmlRuleSetRow) -> AmlRuleSetRow:
        self.session.add(row)
        await self.session.flush()
        return row


# --- data-subject requests (services/risk/dsr.py, docs/data-subject-requests.md) ----------------------------


class DataSubjectRequestRow(Base):
    """The ledger of access and erasure requests: written (and committed) before anything is read or destroyed.
    `customer_id` is kept only while the request runs (a resumed step needs it) and cleared when it ends;
    `customer_hash` (a keyed hash) finds a customer's erasure afterwards without holding the id."""

    __tablename__ = "dsr_requests"
    __table_args__ = (Index("ix_dsr_requests_customer_hash", "customer_hash", "kind"),
                      Index("ix_dsr_requests_state", "state"))

    request_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # The caller's AIP-155 request id: a retried Start returns the same request.
    client_request_id: Mapped[str | None] = mapped_column(String(128), unique=True, nullable=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    customer_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    customer_hash: Mapped[str] = mapped_column(String(64))
    customer_token: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(String(512), default="")
    rejection_reason: Mapped[str] = mapped_column(String(64), default="")
    status_message: Mapped[str] = mapped_column(Text, default="")
    # Erasure: sha256 over the steps' receipt digests; access: the archive's sha256.
    proof_digest: Mapped[str] = mapped_column(String(64), default="")
    # Access: the zip (JSON per service + manifest); personal data, served by GetAccessArchive.
    archive: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    archive_size: Mapped[int] = mapped_column(BigInteger, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime())
    update_time: Mapped[datetime] = mapped_column(UtcDateTime())
    done_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


# At most one open (PENDING or RUNNING) erasure per customer (revision 0008): two first StartErasureRequest calls
# racing past the "already requested?" read both insert; the loser's commit fails and its start answers the
# winner's request (dsr.DsrService.start retries once on IntegrityError).
OPEN_ERASURE = "kind = 'ERASURE' AND state IN ('PENDING', 'RUNNING')"
Index("ix_dsr_requests_open_erasure", DataSubjectRequestRow.customer_hash, unique=True,
      sqlite_where=text(OPEN_ERASURE), postgresql_where=text(OPEN_ERASURE))


class DataSubjectStepRow(Base):
    """One service's part of a request, in order; `done` with its receipt (erasure) or export (access)."""

    __tablename__ = "dsr_steps"

    request_id: Mapped[str] = mapped_column(ForeignKey("dsr_requests.request_id", ondelete="CASCADE"),
                                            primary_key=True)
    service: Mapped[str] = mapped_column(String(16), primary_key=True)
    position: Mapped[int] = mapped_column(Integer)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    # Erasure: the service's ErasureReceipt (serialised proto): the proof kept.
    receipt: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    # Access: the service's ExportCustomerDataResponse until the archive is built, then cleared.
    export: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    digest: Mapped[str] = mapped_column(String(64), default="")
    record_count: Mapped[int] = mapped_column(BigInteger, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    done_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
