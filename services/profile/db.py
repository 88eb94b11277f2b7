"""The profile service's database: models, repository, unit of work."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from itertools import repeat
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    Float,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    delete,
    event,
    select,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.platform.db import Database, IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow
from services.profile.domain import (
    Attribute,
    AttributeSpec,
    BatchResult,
    Customer,
    ImportStatus,
    RowError,
)
from services.profile.pii import DataKey, Keyring, PiiCipher, PiiKeyError, plaintext


class Base(DeclarativeBase):
    metadata = new_metadata()


class CustomerRow(Base):
    __tablename__ = "customers"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    full_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(320), default="")
    phone: Mapped[str] = mapped_column(String(32), default="")
    birth_date: Mapped[date | None] = mapped_column(Date, nullable=True)
    region: Mapped[str] = mapped_column(String(16), default="", index=True)
    time_zone: Mapped[str] = mapped_column(String(64), default="")
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # PII attribute values, encrypted (services/profile/pii.py): {name: "<data-key-id>.<base64>"}; never in
    # `attributes`, so segment SQL, features and tags never see them.
    pii: Mapped[dict[str, str] | None] = mapped_column(JSON, nullable=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdempotencyKey(IdempotencyKeyMixin, Base):
    pass


class AttributeDefinitionRow(Base):
    """The attribute registry (services/profile/registry.py has the rules)."""

    __tablename__ = "attribute_definitions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    type: Mapped[str] = mapped_column(String(16))
    pii: Mapped[bool] = mapped_column(Boolean, default=False)
    allowed_values: Mapped[list[str]] = mapped_column(JSON, default=list)
    min_value: Mapped[str] = mapped_column(String(64), default="")
    max_value: Mapped[str] = mapped_column(String(64), default="")
    description: Mapped[str] = mapped_column(String(1000), default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ImportBatchRow(Base):
    """One committed batch of a bulk import, written in the batch's own transaction: resumption skips it."""

    __tablename__ = "import_batches"

    import_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    batch_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    row_count: Mapped[int] = mapped_column(Integer)
    imported: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    # [[row_number, column, reason, description], ...]: never a value of a PII attribute.
    errors: Mapped[list[Any]] = mapped_column(JSON, default=list)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


def _to_domain(row: CustomerRow, pii: dict[str, Attribute] | None = None) -> Customer:
    attributes = {k: Attribute(v["t"], v["v"]) for k, v in (row.attributes or {}).items()}
    if pii:
        attributes = dict(sorted({**attributes, **pii}.items()))
    return Customer(
        customer_id=row.customer_id,
        full_name=row.full_name,
        email=row.email,
        phone=row.phone,
        birth_date=row.birth_date,
        region=row.region,
        time_zone=row.time_zone,
        attributes=attributes,
        version=row.version,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _attributes_json(attributes: dict[str, Attribute]) -> dict[str, Any]:
    return {k: {"t": a.kind, "v": a.value} for k, a in sorted(attributes.items())}


class CustomerRepository:
    """Customers. With a keyring, PII attribute values are encrypted on write and decrypted on read; without one
    (the repositories of other units of work), reads leave the PII attributes out and writes of PII refuse."""

    def __init__(self, session: AsyncSession, keyring: Keyring | None = None) -> None:
        self.session = session
        self.keys = CustomerKeyStore(session, keyring)

    async def get(self, customer_id: str) -> Customer | None:
        row = await self.session.get(CustomerRow, customer_id)
        if row is None:
            return None
        return (await self._decrypted([row]))[0]

    async def list_page(self, *, after_id: str | None, limit: int, region: str | None) -> list[Customer]:
        query = select(CustomerRow).order_by(CustomerRow.customer_id).limit(limit)
        if after_id is not None:
            query = query.where(CustomerRow.customer_id > after_id)
        if region:
            query = query.where(CustomerRow.region == region)
        return await self._decrypted(list(await self.session.scalars(query)))

    async def _decrypted(self, rows: Sequence[CustomerRow]) -> list[Customer]:
        with_pii = [r.customer_id for r in rows if r.pii]
        if not with_pii or self.keys.keyring is None:
            return [_to_domain(row) for row in rows]
        keys = await self.keys.data_keys(with_pii)
        out = []
        for row in rows:
            pii: dict[str, Attribute] = {}
            key = keys.get(row.customer_id)
            for name, token in (row.pii or {}).items():
                try:
                    stored = PiiCipher.open(row.customer_id, key, name, token)
                except PiiKeyError:
                    continue  # a crypto-shredded (or replaced) key: the value is gone
                pii[name] = Attribute(stored["t"], stored["v"])
            out.append(_to_domain(row, pii))
        return out

    async def _split(self, customer: Customer, pii_names: frozenset[str]) -> tuple[dict[str, Any], dict[str, str]]:
        """(plain attributes JSON, encrypted PII tokens) of a customer about to be written."""
        plain = {n: a for n, a in customer.attributes.items() if n not in pii_names}
        secret = {n: a for n, a in customer.attributes.items() if n in pii_names}
        tokens: dict[str, str] = {}
        if secret:
            key = (await self.keys.ensure([customer.customer_id]))[customer.customer_id]
            tokens = PiiCipher.seal_many(customer.customer_id, key,
                                         [(n, plaintext(a.kind, a.value)) for n, a in sorted(secret.items())],
                                         os.urandom(12 * len(secret)))
        return _attributes_json(plain), tokens

    async def add(self, customer: Customer, pii_names: frozenset[str] = frozenset()) -> Customer:
        now = utcnow()
        attributes, tokens = await self._split(customer, pii_names)
        row = CustomerRow(
            customer_id=customer.customer_id, full_name=customer.full_name, email=customer.email,
            phone=customer.phone, birth_date=customer.birth_date, region=customer.region,
            time_zone=customer.time_zone, attributes=attributes, pii=tokens or None, version=1,
            create_time=now, update_time=now,
        )
        self.session.add(row)
        await self.session.flush()
        return _to_domain(row, {n: a for n, a in customer.attributes.items() if n in tokens})

    async def save(self, customer: Customer, pii_names: frozenset[str] = frozenset()) -> Customer:
        """Writes a changed customer, bumping its version."""
        row = await self.session.get(CustomerRow, customer.customer_id)
        assert row is not None
        attributes, tokens = await self._split(customer, pii_names)
        row.full_name, row.email, row.phone = customer.full_name, customer.email, customer.phone
        row.birth_date, row.region, row.time_zone = customer.birth_date, customer.region, customer.time_zone
        row.attributes = attributes
        row.pii = tokens or None
        row.version = row.version + 1
        row.update_time = utcnow()
        await self.session.flush()
        return _to_domain(row, {n: a for n, a in customer.attributes.items() if n in tokens})

    async def delete(self, customer_id: str) -> None:
        await self.session.execute(delete(CustomerRow).where(CustomerRow.customer_id == customer_id))


def _spec(row: AttributeDefinitionRow) -> AttributeSpec:
    return AttributeSpec(
        name=row.name, type=row.type,  # type: ignore[arg-type]
        pii=row.pii, allowed_values=tuple(row.allowed_values or ()), min=row.min_value, max=row.max_value,
        description=row.description, update_time=row.update_time,
    )


class AttributeRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def all(self) -> list[AttributeSpec]:
        rows = await self.session.scalars(select(AttributeDefinitionRow).order_by(AttributeDefinitionRow.name))
        return [_spec(row) for row in rows]

    async def list_page(self, *, after_name: str | None, limit: int) -> list[AttributeSpec]:
        query = select(AttributeDefinitionRow).order_by(AttributeDefinitionRow.name).limit(limit)
        if after_name is not None:
            query = query.where(AttributeDefinitionRow.name > after_name)
        return [_spec(row) for row in await self.session.scalars(query)]

    async def upsert(self, specs: list[AttributeSpec]) -> list[AttributeSpec]:
        now = utcnow()
        out = []
        for spec in specs:
            row = await self.session.get(AttributeDefinitionRow, spec.name)
            if row is None:
                row = AttributeDefinitionRow(name=spec.name, create_time=now)
                self.session.add(row)
            row.type, row.pii, row.allowed_values = spec.type, spec.pii, list(spec.allowed_values)
            row.min_value, row.max_value, row.description = spec.min, spec.max, spec.description
            row.update_time = now
            out.append(row)
        await self.session.flush()
        return [_spec(row) for row in out]


CUSTOMER_COLUMNS = ("full_name", "email", "phone", "birth_date", "region", "time_zone")


class ImportRepository:
    """Bulk writes of an import: one DBAPI executemany of a dialect `INSERT ... ON CONFLICT DO UPDATE` per batch."""

    def __init__(self, session: AsyncSession, keys: CustomerKeyStore | None = None) -> None:
        self.session = session
        self.keys = keys if keys is not None else CustomerKeyStore(session, None)

    async def committed_batch(self, import_id: str, batch_number: int) -> BatchResult | None:
        row = await self.session.get(ImportBatchRow, (import_id, batch_number))
        if row is None:
            return None
        errors = [RowError(int(e[0]), e[1], e[2], e[3]) for e in row.errors or ()]
        return BatchResult(batch_number, row.imported, row.failed, errors, skipped=True)

    async def relax_durability(self) -> None:
        """Before the batch's first write: its commit need not wait for the disk (SQLite synchronous=OFF for this
        connection until it goes back to the pool; PostgreSQL synchronous_commit=off for this transaction).

        Safe for an import because the batch and its record in import_batches commit together: a crash of the
        machine may lose the last committed batches, both their rows and their record, never one without the
        other, and running the import again re-imports exactly those (docs/profile-import.md)."""
        connection = await self.session.connection()
        if connection.dialect.name == "postgresql":
            await connection.exec_driver_sql("SET LOCAL synchronous_commit TO off")
            return
        if connection.dialect.name != "sqlite" or await _sqlite_in_transaction(connection):
            return
        raw = await connection.get_raw_connection()
        pool = connection.engine.sync_engine.pool
        if not event.contains(pool, "checkin", _restore_synchronous):
            event.listen(pool, "checkin", _restore_synchronous)
        await connection.exec_driver_sql("PRAGMA synchronous=OFF")
        raw.info[_SYNC_OFF] = True

    async def record_batch(self, import_id: str, result: BatchResult, row_count: int) -> None:
        self.session.add(ImportBatchRow(
            import_id=import_id, batch_number=result.batch_number, row_count=row_count,
            imported=result.imported, failed=result.failed,
            errors=[[e.row_number, e.column, e.reason, e.description] for e in result.errors],
            create_time=utcnow(),
        ))
        await self.session.flush()

    async def status(self, import_id: str) -> ImportStatus | None:
        rows = (await self.session.execute(
            select(ImportBatchRow.batch_number, ImportBatchRow.imported, ImportBatchRow.failed)
            .where(ImportBatchRow.import_id == import_id).order_by(ImportBatchRow.batch_number)
        )).all()
        if not rows:
            return None
        return ImportStatus(import_id, [r[0] for r in rows], sum(r[1] for r in rows), sum(r[2] for r in rows))

    async def upsert_customers(
        self, customer_ids: Sequence[str], core: Mapping[str, Sequence[Any]], attributes_json: Sequence[str],
        now: datetime, columns: frozenset[str], pii_json: Sequence[str | None] | None = None,
        pii_names: tuple[str, ...] = (),
    ) -> None:
        """Insert or update customers by id, in one DBAPI executemany of a dialect `INSERT ... ON CONFLICT DO
        UPDATE` with positional parameters (no per-row SQLAlchemy bind processing: this is the import's hot path).

        `core` maps core columns (CUSTOMER_COLUMNS) to one value per customer (birth_date as date or None; a
        column not given is empty); `attributes_json` is each customer's attributes as JSON text in the stored
        {"name": {"t", "v"}} shape. On conflict only the core `columns` are overwritten, the attributes are merged
        into the existing ones (the import's win), the version is bumped. `pii_json` (when the batch has PII
        attributes) is each customer's encrypted PII values as JSON text ({name: token}, or None), merged alike;
        `pii_names` (its PII attributes) are removed from a stored customer's plain attributes (a value stored in
        clear before the attribute was flagged PII, or before encryption existed, does not outlive the import)."""
        if not customer_ids:
            return
        connection = await self.session.connection()
        dialect = connection.dialect
        table = Base.metadata.tables[CustomerRow.__tablename__]
        n = len(customer_ids)
        params: list[Iterable[Any]] = [customer_ids]
        for name in CUSTOMER_COLUMNS:
            values = core.get(name)
            if values is None:
                params.append(repeat(None if name == "birth_date" else "", n))
            elif name == "birth_date":
                process = table.c.birth_date.type.bind_processor(dialect)
                params.append([v if v is None or process is None else process(v) for v in values])
            else:
                params.append(values)
        stamp_processor = table.c.update_time.type.bind_processor(dialect)
        stamp = stamp_processor(now) if stamp_processor else now
        params += [attributes_json, repeat(1, n), repeat(stamp, n), repeat(stamp, n)]
        if pii_json is not None:
            params.append(pii_json)
        await connection.exec_driver_sql(_upsert_sql(dialect.name, columns, pii_json is not None, pii_names),
                                         list(zip(*params, strict=False)))


_SYNC_OFF = "lodestar.synchronous_off"
_PLAIN_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


async def _sqlite_in_transaction(connection: Any) -> bool:
    """Whether the DBAPI connection is inside a transaction (PRAGMA synchronous may not change there)."""
    raw = await connection.get_raw_connection()
    return bool(getattr(raw.driver_connection, "in_transaction", True))


def _restore_synchronous(dbapi_connection: Any, connection_record: Any) -> None:
    """Pool check-in: a connection an import relaxed gets the platform's synchronous=NORMAL back."""
    if connection_record is not None and connection_record.info.pop(_SYNC_OFF, False):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()


_INSERT_COLUMNS = ("customer_id", *CUSTOMER_COLUMNS, "attributes", "version", "create_time", "update_time")


@functools.lru_cache(maxsize=64)
def _upsert_sql(dialect: str, columns: frozenset[str], pii: bool = False, drop: tuple[str, ...] = ()) -> str:
    """The import's upsert as DBAPI text (qmark for SQLite, format for psycopg); values are never in the text
    (only fixed column names and registered attribute names, lower_snake_case, checked here again)."""
    assert all(_PLAIN_NAME.match(name) for name in drop)
    postgres = dialect == "postgresql"
    mark = "%s" if postgres else "?"
    inserted = (*_INSERT_COLUMNS, "pii") if pii else _INSERT_COLUMNS
    values = [f"CAST({mark} AS JSON)" if postgres and c in ("attributes", "pii") else mark for c in inserted]
    sets = [f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS if c in columns]
    if postgres:
        removed = "".join(f" - '{name}'" for name in drop)
        sets.append(f"attributes = CAST((CAST(customers.attributes AS JSONB){removed}) || CAST(excluded.attributes AS"
                    " JSONB) AS JSON)")
        if pii:
            sets.append("pii = CAST(COALESCE(CAST(customers.pii AS JSONB), '{}'::jsonb)"
                        " || COALESCE(CAST(excluded.pii AS JSONB), '{}'::jsonb) AS JSON)")
    else:
        merged = "json_patch(customers.attributes, excluded.attributes)"
        if drop:
            merged = f"json_remove({merged}, {', '.join(repr('$.' + name) for name in drop)})"
        sets.append(f"attributes = {merged}")
        if pii:
            sets.append("pii = json_patch(COALESCE(customers.pii, '{}'), COALESCE(excluded.pii, '{}'))")
    sets += ["version = customers.version + 1", "update_time = excluded.update_time"]
    # Only fixed column names are interpolated (`columns` is filtered through CUSTOMER_COLUMNS).
    return (f"INSERT INTO customers ({', '.join(inserted)}) VALUES ({', '.join(values)}) "  # noqa: S608  # nosec B608
            f"ON CONFLICT (customer_id) DO UPDATE SET {', '.join(sets)}")


class ProfileUnitOfWork(UnitOfWork):
    customers: CustomerRepository
    attributes: AttributeRepository
    imports: ImportRepository

    def __init__(self, database: Database, keyring: Keyring | None = None) -> None:
        super().__init__(database)
        self.keyring = keyring

    def _enter_repositories(self) -> None:
        self.customers = CustomerRepository(self.session, self.keyring)
        self.attributes = AttributeRepository(self.session)
        self.imports = ImportRepository(self.session, self.customers.keys)



# -- PII encryption at rest (issue 4: services/profile/pii.py, docs/pii.md) -------------------------------------


class CustomerKeyRow(Base):
    """A customer's data key, wrapped under a master key (PROFILE_PII_KEYS). Deleting the row crypto-shreds the
    customer's PII values (pii.destroy_customer_key). Its own table: it is backed up apart from the data."""

    __tablename__ = "customer_keys"
    # One B-tree keyed by customer id on SQLite (a bulk import adds a key per new customer with PII).
    __table_args__ = {"sqlite_with_rowid": False}

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # The id the customer's ciphertexts carry ("<key_id>.<base64>").
    key_id: Mapped[str] = mapped_column(String(16))
    # The master key the data key is wrapped under.
    master_key_id: Mapped[str] = mapped_column(String(32))
    # nonce | AES-GCM(master, data key), bound to the customer id.
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


_KEY_LOOKUP_CHUNK = 2000


class CustomerKeyStore:
    """The customers' data keys, unwrapped on demand (and cached for the unit of work)."""

    def __init__(self, session: AsyncSession, keyring: Keyring | None) -> None:
        self.session = session
        self.keyring = keyring
        self._cache: dict[str, DataKey] = {}

    def _require(self) -> Keyring:
        if self.keyring is None:
            raise PiiKeyError("PII attributes cannot be written without the PII keyring")
        return self.keyring

    async def _stored(self, customer_ids: Sequence[str]) -> list[tuple[str, str, str, bytes]]:
        """(customer_id, key_id, master_key_id, wrapped) of those customers that have a key (driver SQL: no
        per-parameter compilation for thousands of ids)."""
        connection = await self.session.connection()
        mark = "%s" if connection.dialect.name == "postgresql" else "?"
        out = []
        for start in range(0, len(customer_ids), _KEY_LOOKUP_CHUNK):
            chunk = list(customer_ids[start:start + _KEY_LOOKUP_CHUNK])
            result = await connection.exec_driver_sql(
                "SELECT customer_id, key_id, master_key_id, wrapped_key FROM customer_keys "  # noqa: S608  # nosec B608
                f"WHERE customer_id IN ({', '.join([mark] * len(chunk))})", tuple(chunk))
            out += [(r[0], r[1], r[2], bytes(r[3])) for r in result]
        return out

    async def data_keys(self, customer_ids: Sequence[str]) -> dict[str, DataKey]:
        """The data keys of those customers that have one."""
        keyring = self._require()
        wanted = [c for c in dict.fromkeys(customer_ids) if c not in self._cache]
        for customer_id, key_id, master_key_id, wrapped in await self._stored(wanted) if wanted else []:
            raw = keyring.unwrap(customer_id, master_key_id, wrapped)
            self._cache[customer_id] = DataKey(key_id, AESGCM(raw))
        return {c: self._cache[c] for c in customer_ids if c in self._cache}

    async def ensure(self, customer_ids: Sequence[str], *, fresh_first: bool = False) -> dict[str, DataKey]:
        """The data key of every one of those customers, creating the missing ones (INSERT ... ON CONFLICT DO
        NOTHING, then the winner read back: two writers racing on a new customer end with one key).

        `fresh_first` (bulk import, where customers are mostly new): skip the lookup, insert fresh keys for all
        and read back only when some already had one."""
        keyring = self._require()
        keys = {c: self._cache[c] for c in customer_ids if c in self._cache} if fresh_first else (
            await self.data_keys(customer_ids))
        missing = [c for c in dict.fromkeys(customer_ids) if c not in keys]
        if not missing:
            return keys
        fresh = PiiCipher.new_data_keys(missing, keyring)
        connection = await self.session.connection()
        dialect = connection.dialect
        stamp_processor = CustomerKeyRow.__table__.c.create_time.type.bind_processor(dialect)
        now = utcnow()
        stamp = stamp_processor(now) if stamp_processor else now
        mark = "%s" if dialect.name == "postgresql" else "?"
        sql = (f"INSERT INTO customer_keys (customer_id, key_id, master_key_id, wrapped_key, create_time, "  # noqa: S608  # nosec B608
               f"update_time) VALUES ({', '.join([mark] * 6)}) ON CONFLICT (customer_id) DO NOTHING")
        result = await connection.exec_driver_sql(
            sql, [(c, key_id, master, wrapped, stamp, stamp) for c, key_id, master, wrapped, _ in fresh])
        if result.rowcount != len(fresh):
            # Some existed (or another writer created them first): the stored keys win; ours are dropped.
            ours = {c: key_id for c, key_id, _, _, _ in fresh}
            stored = {c: k for c, k, _, _ in await self._stored(missing)}
            fresh = [f for f in fresh if stored.get(f[0]) == ours[f[0]]]
            self._cache.update(await self.data_keys([c for c in missing if stored.get(c) != ours[c]]))
        for c, key_id, _, _, raw in fresh:
            self._cache[c] = DataKey(key_id, AESGCM(raw))
        keys.update((c, self._cache[c]) for c in missing if c in self._cache)
        return keys


# -- tags and features (issue 3: services/profile/tag_rules.py, tag_job.py, feature_store.py) -----------------


# Segment previews and exports list members by customer id: with (region, customer_id) a condition on region
# reads the matching ids already in id order (`ORDER BY customer_id LIMIT n` stops after n index entries, no
# sort of every match, no table lookups). Declared here, beside the table, so the customers model stays as is.
Index("ix_customers_region_customer_id", CustomerRow.__table__.c.region, CustomerRow.__table__.c.customer_id)


class TagDefinitionRow(Base):
    """A user-defined rule tag: customers matching the condition get `tag` = `value` (docs/tags.md)."""

    __tablename__ = "tag_definitions"

    definition_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    tag: Mapped[str] = mapped_column(String(32), index=True)
    # The canonical text of the condition (services/profile/conditions).
    condition_text: Mapped[str] = mapped_column(Text)
    value: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(1000), default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CustomerTagValueRow(Base):
    """Rule tags (written by the tag job) and external tags (SetCustomerTags), beside the built-in tags of
    events_db.CustomerTagRow; a name is of one kind only (built-in names are reserved)."""

    __tablename__ = "customer_tag_values"

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))
    # "rule" or "external"
    kind: Mapped[str] = mapped_column(String(16))
    # rule: the definition id; external: the caller's source, e.g. "campaign"
    source: Mapped[str] = mapped_column(String(128), default="")
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class TagJobRow(Base):
    """A batch tag job; the cursor advances with each committed chunk, so the job resumes after a crash."""

    __tablename__ = "tag_jobs"

    job_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # "running", "succeeded", "failed"
    state: Mapped[str] = mapped_column(String(16))
    as_of: Mapped[datetime] = mapped_column(UtcDateTime())
    chunk_size: Mapped[int] = mapped_column(Integer)
    total_customers: Mapped[int] = mapped_column(BigInteger, default=0)
    processed_customers: Mapped[int] = mapped_column(BigInteger, default=0)
    chunks_done: Mapped[int] = mapped_column(BigInteger, default=0)
    # The last customer id of the last committed chunk (None before the first).
    cursor: Mapped[str | None] = mapped_column(String(128), nullable=True)
    error: Mapped[str] = mapped_column(String(500), default="")
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class CustomerFeatureRow(Base):
    """The feature store: each customer's features (features.py) as of the last refresh, one row per present
    feature, so that `feature.*` conditions compile to SQL (services/profile/feature_store.py)."""

    __tablename__ = "customer_features"
    # Serves `feature.x > v` where only TRUE matters (conditions/sql.py: a semi-join instead of a lookup per customer).
    __table_args__ = (Index("ix_customer_features_name_value", "name", "value"),)

    customer_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[float] = mapped_column(Float)
    as_of: Mapped[datetime] = mapped_column(UtcDateTime())
