"""The gateway's database: models, repositories, unit of work."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    case,
    delete,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from services.gateway.domain import (
    DEFAULT_QUOTA,
    LEAD_CONVERTED,
    ApiKeyRecord,
    ClientCertificate,
    Lead,
    Money,
    Partner,
    PartnerPolicy,
    Quota,
)
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
    # Set by a rotation: the old key works until then (API_KEY_EXPIRED after).
    expire_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    revoke_time: Mapped[datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class PartnerClientCertRow(Base):
    """At most one mTLS client certificate per partner; a fingerprint belongs to at most one partner."""

    __tablename__ = "partner_client_certs"

    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), primary_key=True)
    # Lower-case hex SHA-256 of the DER certificate.
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    subject_cn: Mapped[str] = mapped_column(String(255))
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


class PartnerScopeRow(Base):
    __tablename__ = "partner_scopes"

    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), primary_key=True)
    scope: Mapped[str] = mapped_column(String(64), primary_key=True)


class PartnerOfferRow(Base):
    """The offers a partner may present; the single offer id "*" admits every offer."""

    __tablename__ = "partner_offers"

    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), primary_key=True)
    offer_id: Mapped[str] = mapped_column(String(128), primary_key=True)


class PartnerQuotaRow(Base):
    """A partner's limits and the shared state of its token bucket and daily counter, updated atomically in SQL
    so that every gateway replica draws from the same bucket."""

    __tablename__ = "partner_quotas"

    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), primary_key=True)
    rate_per_second: Mapped[float] = mapped_column(Float)
    burst: Mapped[int] = mapped_column(Integer)
    daily_quota: Mapped[int] = mapped_column(BigInteger)
    tokens: Mapped[float] = mapped_column(Float)
    # Unix time (seconds) of the last refill.
    refilled_at: Mapped[float] = mapped_column(Float)
    # The UTC day (YYYY-MM-DD) day_count counts.
    quota_day: Mapped[str] = mapped_column(String(10))
    day_count: Mapped[int] = mapped_column(BigInteger)


class PresentedOfferRow(Base):
    """An offer GetOffers showed a partner for a customer: what SubmitLead checks a lead against."""

    __tablename__ = "presented_offers"
    __table_args__ = (Index("ix_presented_offers_partner_id_decision_ref", "partner_id", "decision_ref"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    partner_id: Mapped[str] = mapped_column(String(128))
    decision_ref: Mapped[str] = mapped_column(String(200))
    customer_ref: Mapped[str] = mapped_column(String(32))
    offer_id: Mapped[str] = mapped_column(String(128))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class LeadRow(Base):
    """A partner's lead. `forwarded` stays false until campaign's responses intake consumes it."""

    __tablename__ = "leads"

    lead_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), index=True)
    customer_ref: Mapped[str] = mapped_column(String(32))
    # The bank's id, for campaign; never returned to the partner.
    customer_id: Mapped[str] = mapped_column(String(128))
    offer_id: Mapped[str] = mapped_column(String(128))
    decision_ref: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    forwarded: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class EngagementRow(Base):
    """A partner's report that the customer viewed or clicked a presented offer; forwarded like leads."""

    __tablename__ = "engagements"

    engagement_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(128), ForeignKey("partners.partner_id"), index=True)
    customer_ref: Mapped[str] = mapped_column(String(32))
    # The bank's id, for campaign; never returned to the partner.
    customer_id: Mapped[str] = mapped_column(String(128))
    offer_id: Mapped[str] = mapped_column(String(128))
    decision_ref: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    event_time: Mapped[datetime] = mapped_column(UtcDateTime())
    forwarded: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ConversionRow(Base):
    """A lead's conversion (at most one per lead). `forwarded` as for leads."""

    __tablename__ = "conversions"

    lead_id: Mapped[str] = mapped_column(String(32), ForeignKey("leads.lead_id"), primary_key=True)
    partner_id: Mapped[str] = mapped_column(String(128))
    currency_code: Mapped[str] = mapped_column(String(3))
    revenue_units: Mapped[int] = mapped_column(BigInteger)
    revenue_nanos: Mapped[int] = mapped_column(Integer)
    conversion_time: Mapped[datetime] = mapped_column(UtcDateTime())
    forwarded: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime(), default=utcnow)


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

    async def list_after(self, after: str | None, limit: int) -> list[Partner]:
        query = select(PartnerRow).order_by(PartnerRow.partner_id).limit(limit)
        if after is not None:
            query = query.where(PartnerRow.partner_id > after)
        return [_partner(row) for row in await self.session.scalars(query)]


class PolicyRepository:
    """Scopes, offer allow-list and quota limits of a partner."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def scopes(self, partner_id: str) -> set[str]:
        return set(await self.session.scalars(
            select(PartnerScopeRow.scope).where(PartnerScopeRow.partner_id == partner_id)))

    async def offer_ids(self, partner_id: str) -> set[str]:
        return set(await self.session.scalars(
            select(PartnerOfferRow.offer_id).where(PartnerOfferRow.partner_id == partner_id)))

    async def get(self, partner_id: str) -> PartnerPolicy:
        row = await self.session.get(PartnerQuotaRow, partner_id)
        quota = DEFAULT_QUOTA if row is None else Quota(row.rate_per_second, row.burst, row.daily_quota)
        return PartnerPolicy(partner_id=partner_id, scopes=tuple(sorted(await self.scopes(partner_id))),
                             offer_ids=tuple(sorted(await self.offer_ids(partner_id))), quota=quota)

    async def set_scopes(self, partner_id: str, scopes: set[str]) -> None:
        await self.session.execute(delete(PartnerScopeRow).where(PartnerScopeRow.partner_id == partner_id))
        self.session.add_all(PartnerScopeRow(partner_id=partner_id, scope=scope) for scope in sorted(scopes))
        await self.session.flush()

    async def set_offers(self, partner_id: str, offer_ids: set[str]) -> None:
        await self.session.execute(delete(PartnerOfferRow).where(PartnerOfferRow.partner_id == partner_id))
        self.session.add_all(PartnerOfferRow(partner_id=partner_id, offer_id=o) for o in sorted(offer_ids))
        await self.session.flush()

    async def set_quota(self, partner_id: str, quota: Quota, now: float, today: str) -> None:
        """New limits; the bucket starts full again (at the new burst), the day's count is kept."""
        row = await self.session.get(PartnerQuotaRow, partner_id)
        if row is None:
            self.session.add(new_quota_row(partner_id, quota, now, today))
        else:
            row.rate_per_second, row.burst, row.daily_quota = quota.rate_per_second, quota.burst, quota.daily_quota
            row.tokens, row.refilled_at = float(quota.burst), now
        await self.session.flush()


def new_quota_row(partner_id: str, quota: Quota, now: float, today: str) -> PartnerQuotaRow:
    return PartnerQuotaRow(partner_id=partner_id, rate_per_second=quota.rate_per_second, burst=quota.burst,
                           daily_quota=quota.daily_quota, tokens=float(quota.burst), refilled_at=now,
                           quota_day=today, day_count=0)


class QuotaRepository:
    """The token bucket and daily counter, consumed with one conditional UPDATE: the refill is computed in SQL
    from the row's own values, and the row is written only when a token is there and the day's quota is not
    used up. Concurrent callers (any replica) serialise on the row (PostgreSQL re-checks the WHERE clause on
    the latest row version under READ COMMITTED; SQLite has one writer at a time), so none can overdraw it."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def try_consume(self, partner_id: str, now: float, today: str) -> bool:
        q = PartnerQuotaRow
        now_ = literal(now, Float)
        elapsed = case((now_ > q.refilled_at, now_ - q.refilled_at), else_=literal(0.0, Float))
        grown = q.tokens + elapsed * q.rate_per_second
        refilled = case((grown > q.burst, q.burst * literal(1.0, Float)), else_=grown)
        new_day = q.quota_day != literal(today, String)
        result = await self.session.execute(
            update(q)
            .where(q.partner_id == partner_id, refilled >= 1, or_(new_day, q.day_count < q.daily_quota))
            .values(
                tokens=refilled - 1,
                refilled_at=case((now_ > q.refilled_at, now_), else_=q.refilled_at),
                quota_day=literal(today, String),
                day_count=case((new_day, literal(1, BigInteger)), else_=q.day_count + 1),
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def get(self, partner_id: str) -> PartnerQuotaRow | None:
        return await self.session.get(PartnerQuotaRow, partner_id)

    def add_default(self, partner_id: str, now: float, today: str) -> None:
        self.session.add(new_quota_row(partner_id, DEFAULT_QUOTA, now, today))


class LeadRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def record_presented(self, partner_id: str, decision_ref: str, customer_ref: str,
                               offer_ids: list[str], now: datetime) -> None:
        self.session.add_all(
            PresentedOfferRow(partner_id=partner_id, decision_ref=decision_ref, customer_ref=customer_ref,
                              offer_id=offer_id, create_time=now)
            for offer_id in offer_ids
        )
        await self.session.flush()

    async def decision_known(self, partner_id: str, decision_ref: str, customer_ref: str) -> bool:
        found = await self.session.scalar(
            select(PresentedOfferRow.id).where(
                PresentedOfferRow.partner_id == partner_id, PresentedOfferRow.decision_ref == decision_ref,
                PresentedOfferRow.customer_ref == customer_ref,
            ).limit(1))
        return found is not None

    async def was_presented(self, partner_id: str, decision_ref: str, customer_ref: str, offer_id: str) -> bool:
        found = await self.session.scalar(
            select(PresentedOfferRow.id).where(
                PresentedOfferRow.partner_id == partner_id, PresentedOfferRow.decision_ref == decision_ref,
                PresentedOfferRow.customer_ref == customer_ref, PresentedOfferRow.offer_id == offer_id,
            ).limit(1))
        return found is not None

    async def add(self, row: LeadRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def get_row(self, partner_id: str, lead_id: str) -> LeadRow | None:
        """Only among this partner's leads: another partner's lead is simply not found."""
        return await self.session.scalar(
            select(LeadRow).where(LeadRow.lead_id == lead_id, LeadRow.partner_id == partner_id))

    async def conversion(self, lead_id: str) -> ConversionRow | None:
        return await self.session.get(ConversionRow, lead_id)

    async def add_conversion(self, row: ConversionRow) -> None:
        self.session.add(row)
        await self.session.flush()

    async def get(self, partner_id: str, lead_id: str) -> Lead | None:
        row = await self.get_row(partner_id, lead_id)
        if row is None:
            return None
        return lead_from_rows(row, await self.conversion(lead_id))


def lead_from_rows(row: LeadRow, conversion: ConversionRow | None) -> Lead:
    return Lead(
        lead_id=row.lead_id, customer_ref=row.customer_ref, offer_id=row.offer_id, decision_ref=row.decision_ref,
        status=LEAD_CONVERTED if conversion is not None else row.status, create_time=row.create_time,
        update_time=row.update_time,
        revenue=None if conversion is None else Money(conversion.currency_code, conversion.revenue_units,
                                                      conversion.revenue_nanos),
        conversion_time=None if conversion is None else conversion.conversion_time,
    )


class ApiKeyRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        row = await self.session.get(ApiKeyRow, key_id)
        if row is None:
            return None
        return _key(row)

    async def list_for(self, partner_id: str) -> list[ApiKeyRecord]:
        rows = await self.session.scalars(
            select(ApiKeyRow).where(ApiKeyRow.partner_id == partner_id).order_by(ApiKeyRow.create_time,
                                                                                  ApiKeyRow.key_id))
        return [_key(row) for row in rows]

    async def set_expiry(self, key_id: str, expire_time: datetime) -> None:
        await self.session.execute(update(ApiKeyRow).where(ApiKeyRow.key_id == key_id)
                                   .values(expire_time=expire_time))

    async def add(self, key_id: str, partner_id: str, secret_hash: str) -> None:
        self.session.add(ApiKeyRow(key_id=key_id, partner_id=partner_id, secret_hash=secret_hash, revoked=False,
                                   create_time=utcnow()))
        await self.session.flush()

    async def revoke(self, key_id: str, when: datetime | None = None) -> bool:
        """Revokes a key (the first revocation time is kept)."""
        when = when or utcnow()
        result = await self.session.execute(
            update(ApiKeyRow).where(ApiKeyRow.key_id == key_id)
            .values(revoked=True, revoke_time=case((ApiKeyRow.revoke_time.is_(None), when),
                                                   else_=ApiKeyRow.revoke_time)))
        return bool(result.rowcount)  # type: ignore[attr-defined]


def _key(row: ApiKeyRow) -> ApiKeyRecord:
    return ApiKeyRecord(key_id=row.key_id, partner_id=row.partner_id, secret_hash=row.secret_hash,
                        revoked=row.revoked, create_time=row.create_time, expire_time=row.expire_time,
                        revoke_time=row.revoke_time)


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


def _cert(row: PartnerClientCertRow) -> ClientCertificate:
    return ClientCertificate(partner_id=row.partner_id, fingerprint=row.fingerprint,
                             subject_common_name=row.subject_cn, create_time=row.create_time)


class ClientCertRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def by_fingerprint(self, fingerprint: str) -> ClientCertificate | None:
        row = await self.session.scalar(
            select(PartnerClientCertRow).where(PartnerClientCertRow.fingerprint == fingerprint))
        return _cert(row) if row is not None else None

    async def replace(self, partner_id: str, fingerprint: str | None, subject_cn: str) -> ClientCertificate | None:
        """Sets (or, with None, removes) the partner's certificate."""
        await self.session.execute(delete(PartnerClientCertRow).where(PartnerClientCertRow.partner_id == partner_id))
        if fingerprint is None:
            return None
        row = PartnerClientCertRow(partner_id=partner_id, fingerprint=fingerprint, subject_cn=subject_cn,
                                   create_time=utcnow())
        self.session.add(row)
        await self.session.flush()
        return _cert(row)


class GatewayUnitOfWork(UnitOfWork):
    partners: PartnerRepository
    api_keys: ApiKeyRepository
    links: PartnerCustomerRepository
    policies: PolicyRepository
    quotas: QuotaRepository
    leads: LeadRepository
    client_certs: ClientCertRepository

    def _enter_repositories(self) -> None:
        self.partners = PartnerRepository(self.session)
        self.api_keys = ApiKeyRepository(self.session)
        self.links = PartnerCustomerRepository(self.session)
        self.policies = PolicyRepository(self.session)
        self.quotas = QuotaRepository(self.session)
        self.leads = LeadRepository(self.session)
        self.client_certs = ClientCertRepository(self.session)
