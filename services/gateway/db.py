"""The gateway's database: models, repositories, unit of work."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String, UniqueConstraint, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.gateway.domain import ApiKeyRecord, Partner
from services.platform.db import IdempotencyKeyMixin, UnitOfWork, UtcDateTime, new_metadata, utcnow


class Base(DeclarativeBase):
    metadata = new_metadata()


class PartnerRow(Base):
    __tablename__ = "partners"

    partner_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    display_name: Mapped[str] = mapped_column(String(100))
    # The per-partner HMAC key of its customer refs: 32 random bytes, hex.
    pseudonym_key: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), index=True)
    # argon2id hash of the secret; the key itself is never stored.
    secret_hash: Mapped[str] = mapped_column(String(255))
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class PartnerCustomerRow(Base):
    """The link between a partner-scoped customer ref and the bank's customer id."""

    __tablename__ = "partner_customers"
    __table_args__ = (UniqueConstraint("partner_id", "customer_id"),)

    # (partner_id, customer_ref) is the primary key, hence unique.
    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), primary_key=True)
    customer_ref: Mapped[str] = mapped_column(String(32), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class IdempotencyKey(IdempotencyKeyMixin, Base):
    pass


def _partner(row: PartnerRow) -> Partner:
    return Partner(partner_id=row.partner_id, display_name=row.display_name, create_time=row.create_time)


class PartnerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, partner_id: str) -> Partner | None:
        row = await self.session.get(PartnerRow, partner_id)
        return _partner(row) if row else None

    async def pseudonym_key(self, partner_id: str) -> str | None:
        return await self.session.scalar(select(PartnerRow.pseudonym_key).where(PartnerRow.partner_id == partner_id))

    async def add(self, partner: Partner, pseudonym_key: str) -> Partner:
        row = PartnerRow(partner_id=partner.partner_id, display_name=partner.display_name,
                         pseudonym_key=pseudonym_key, create_time=utcnow())
        self.session.add(row)
        await self.session.flush()
        return _partner(row)


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        row = await self.session.get(ApiKeyRow, key_id)
        if row is None:
            return None
        return ApiKeyRecord(key_id=row.key_id, partner_id=row.partner_id, secret_hash=row.secret_hash,
                            revoked=row.revoked, create_time=row.create_time)

    async def add(self, key_id: str, partner_id: str, secret_hash: str) -> None:
        self.session.add(ApiKeyRow(key_id=key_id, partner_id=partner_id, secret_hash=secret_hash, revoked=False,
                                   create_time=utcnow()))
        await self.session.flush()

    async def revoke(self, key_id: str) -> bool:
        result = await self.session.execute(update(ApiKeyRow).where(ApiKeyRow.key_id == key_id).values(revoked=True))
        return bool(result.rowcount)  # type: ignore[attr-defined]


class PartnerCustomerRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def customer_id(self, partner_id: str, customer_ref: str) -> str | None:
        """The customer behind a ref, looked up only among this partner's links."""
        return await self.session.scalar(
            select(PartnerCustomerRow.customer_id).where(
                PartnerCustomerRow.partner_id == partner_id, PartnerCustomerRow.customer_ref == customer_ref
            )
        )

    async def customer_ref(self, partner_id: str, customer_id: str) -> str | None:
        return await self.session.scalar(
            select(PartnerCustomerRow.customer_ref).where(
                PartnerCustomerRow.partner_id == partner_id, PartnerCustomerRow.customer_id == customer_id
            )
        )

    async def add(self, partner_id: str, customer_ref: str, customer_id: str) -> None:
        self.session.add(PartnerCustomerRow(partner_id=partner_id, customer_ref=customer_ref,
                                            customer_id=customer_id, create_time=utcnow()))


class GatewayUnitOfWork(UnitOfWork):
    partners: PartnerRepository
    api_keys: ApiKeyRepository
    links: PartnerCustomerRepository

    def _enter_repositories(self) -> None:
        self.partners = PartnerRepository(self.session)
        self.api_keys = ApiKeyRepository(self.session)
        self.links = PartnerCustomerRepository(self.session)
