"""The profile service's database: models, repository, unit of work."""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from itertools import repeat
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Date, Integer, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.platform.db import IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow
from services.profile.domain import (
    Attribute,
    AttributeSpec,
    BatchResult,
    Customer,
    ImportStatus,
    RowError,
)


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


def _to_domain(row: CustomerRow) -> Customer:
    return Customer(
        customer_id=row.customer_id,
        full_name=row.full_name,
        email=row.email,
        phone=row.phone,
        birth_date=row.birth_date,
        region=row.region,
        time_zone=row.time_zone,
        attributes={k: Attribute(v["t"], v["v"]) for k, v in (row.attributes or {}).items()},
        version=row.version,
        create_time=row.create_time,
        update_time=row.update_time,
    )


def _attributes_json(attributes: dict[str, Attribute]) -> dict[str, Any]:
    return {k: {"t": a.kind, "v": a.value} for k, a in sorted(attributes.items())}


class CustomerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, customer_id: str) -> Customer | None:
        row = await self.session.get(CustomerRow, customer_id)
        return _to_domain(row) if row else None

    async def list_page(self, *, after_id: str | None, limit: int, region: str | None) -> list[Customer]:
        query = select(CustomerRow).order_by(CustomerRow.customer_id).limit(limit)
        if after_id is not None:
            query = query.where(CustomerRow.customer_id > after_id)
        if region:
            query = query.where(CustomerRow.region == region)
        return [_to_domain(row) for row in await self.session.scalars(query)]

    async def add(self, customer: Customer) -> Customer:
        now = utcnow()
        row = CustomerRow(
            customer_id=customer.customer_id, full_name=customer.full_name, email=customer.email,
            phone=customer.phone, birth_date=customer.birth_date, region=customer.region,
            time_zone=customer.time_zone, attributes=_attributes_json(customer.attributes), version=1,
            create_time=now, update_time=now,
        )
        self.session.add(row)
        await self.session.flush()
        return _to_domain(row)

    async def save(self, customer: Customer) -> Customer:
        """Writes a changed customer, bumping its version."""
        row = await self.session.get(CustomerRow, customer.customer_id)
        assert row is not None
        row.full_name, row.email, row.phone = customer.full_name, customer.email, customer.phone
        row.birth_date, row.region, row.time_zone = customer.birth_date, customer.region, customer.time_zone
        row.attributes = _attributes_json(customer.attributes)
        row.version = row.version + 1
        row.update_time = utcnow()
        await self.session.flush()
        return _to_domain(row)

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

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def committed_batch(self, import_id: str, batch_number: int) -> BatchResult | None:
        row = await self.session.get(ImportBatchRow, (import_id, batch_number))
        if row is None:
            return None
        errors = [RowError(int(e[0]), e[1], e[2], e[3]) for e in row.errors or ()]
        return BatchResult(batch_number, row.imported, row.failed, errors, skipped=True)

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
        now: datetime, columns: frozenset[str],
    ) -> None:
        """Insert or update customers by id, in one DBAPI executemany of a dialect `INSERT ... ON CONFLICT DO
        UPDATE` with positional parameters (no per-row SQLAlchemy bind processing: this is the import's hot path).

        `core` maps core columns (CUSTOMER_COLUMNS) to one value per customer (birth_date as date or None; a
        column not given is empty); `attributes_json` is each customer's attributes as JSON text in the stored
        {"name": {"t", "v"}} shape. On conflict only the core `columns` are overwritten, the attributes are merged
        into the existing ones (the import's win), the version is bumped."""
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
        await connection.exec_driver_sql(_upsert_sql(dialect.name, columns), list(zip(*params, strict=False)))


_INSERT_COLUMNS = ("customer_id", *CUSTOMER_COLUMNS, "attributes", "version", "create_time", "update_time")


@functools.lru_cache(maxsize=64)
def _upsert_sql(dialect: str, columns: frozenset[str]) -> str:
    """The import's upsert as DBAPI text (qmark for SQLite, format for psycopg); values are never in the text."""
    postgres = dialect == "postgresql"
    mark = "%s" if postgres else "?"
    values = [f"CAST({mark} AS JSON)" if postgres and c == "attributes" else mark for c in _INSERT_COLUMNS]
    sets = [f"{c} = excluded.{c}" for c in CUSTOMER_COLUMNS if c in columns]
    if postgres:
        sets.append("attributes = CAST(CAST(customers.attributes AS JSONB) || CAST(excluded.attributes AS JSONB)"
                    " AS JSON)")
    else:
        sets.append("attributes = json_patch(customers.attributes, excluded.attributes)")
    sets += ["version = customers.version + 1", "update_time = excluded.update_time"]
    # Only fixed column names are interpolated (`columns` is filtered through CUSTOMER_COLUMNS).
    return (f"INSERT INTO customers ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join(values)}) "  # noqa: S608  # nosec B608
            f"ON CONFLICT (customer_id) DO UPDATE SET {', '.join(sets)}")


class ProfileUnitOfWork(UnitOfWork):
    customers: CustomerRepository
    attributes: AttributeRepository
    imports: ImportRepository

    def _enter_repositories(self) -> None:
        self.customers = CustomerRepository(self.session)
        self.attributes = AttributeRepository(self.session)
        self.imports = ImportRepository(self.session)
