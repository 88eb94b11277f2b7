"""The profile service's database: models, repository, unit of work."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import JSON, Date, Integer, String, delete, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.platform.db import IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow
from services.profile.domain import Attribute, Customer


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


class ProfileUnitOfWork(UnitOfWork):
    customers: CustomerRepository

    def _enter_repositories(self) -> None:
        self.customers = CustomerRepository(self.session)
