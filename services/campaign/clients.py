"""Typed clients of the services campaign calls: profile (customer facts) and risk (screening).

They return the campaign's own domain objects, so the service layer never sees protobuf or gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from lodestar.common.v1 import common_pb2
from lodestar.profile.v1 import (
    customer_pb2,
    profile_service_pb2,
    profile_service_pb2_grpc,
    segment_service_pb2,
    segment_service_pb2_grpc,
)
from lodestar.risk.v1 import contact_policy_pb2, content_pb2, risk_service_pb2_grpc, screening_pb2
from services.campaign.domain import CustomerSnapshot, Offer, ScreenResult, Verdict
from services.campaign.scoring import tolerance_level
from services.platform.clients import ServiceClient, call_timeout, translate_rpc_error
from services.platform.errors import NotFound

_TOLERANCE = {
    1: common_pb2.RISK_TOLERANCE_C1, 2: common_pb2.RISK_TOLERANCE_C2, 3: common_pb2.RISK_TOLERANCE_C3,
    4: common_pb2.RISK_TOLERANCE_C4, 5: common_pb2.RISK_TOLERANCE_C5,
}


def _snapshot(customer: customer_pb2.Customer) -> CustomerSnapshot:
    attributes = {}
    for name, value in customer.attributes.items():
        kind = value.WhichOneof("kind")
        if kind:
            attributes[name] = getattr(value, kind)
    return CustomerSnapshot(
        customer_id=customer.customer_id,
        birth_date=date.fromisoformat(customer.birth_date) if customer.birth_date else None,
        region=customer.region, time_zone=customer.time_zone, attributes=attributes,
    )


class ProfileClient(ServiceClient):
    service_names = ("lodestar.profile.v1.ProfileService",)

    def __init__(self, address: str, **kwargs: object) -> None:
        super().__init__("profile", address, profile_service_pb2_grpc.ProfileServiceStub, **kwargs)  # type: ignore[arg-type]

    async def get_customer(self, customer_id: str) -> CustomerSnapshot:
        response = await self.call(
            self.stub.GetCustomer, profile_service_pb2.GetCustomerRequest(name=f"customers/{customer_id}")
        )
        return _snapshot(response.customer)


    async def get_customers(self, customer_ids: Sequence[str]) -> dict[str, CustomerSnapshot]:
        """Many customers: one GetCustomer each (16 at a time) for a few, a scan of ListCustomers for many.
        Customers profile does not know are left out."""
        wanted = set(customer_ids)
        found: dict[str, CustomerSnapshot] = {}
        if len(wanted) <= 200:
            gate = asyncio.Semaphore(16)

            async def one(customer_id: str) -> None:
                async with gate:
                    try:
                        found[customer_id] = await self.get_customer(customer_id)
                    except NotFound:
                        pass

            await asyncio.gather(*(one(c) for c in wanted))
            return found
        token = ""  # nosec B105 - an empty page token (the first page), not a password
        while True:
            page = await self.call(self.stub.ListCustomers, profile_service_pb2.ListCustomersRequest(
                page_size=1000, page_token=token), timeout=30.0)
            for customer in page.customers:
                if customer.customer_id in wanted:
                    found[customer.customer_id] = _snapshot(customer)
            token = page.next_page_token
            if not token:
                return found


class RiskClient(ServiceClient):
    service_names = ("lodestar.risk.v1.RiskService",)

    def __init__(self, address: str, **kwargs: object) -> None:
        super().__init__("risk", address, risk_service_pb2_grpc.RiskServiceStub, **kwargs)  # type: ignore[arg-type]

    async def screen(self, customer: CustomerSnapshot, offers: list[Offer], channel: int,
                     contact_time: datetime) -> ScreenResult:
        level = tolerance_level(customer.attributes.get("risk_tolerance"))
        facts = screening_pb2.CustomerFacts(
            birth_date=customer.birth_date.isoformat() if customer.birth_date else "",
            time_zone=customer.time_zone, region=customer.region,
            risk_tolerance=_TOLERANCE.get(level or 0, common_pb2.RISK_TOLERANCE_UNSPECIFIED),
            in_collections=customer.attributes.get("in_collections") is True,
            vulnerable=customer.attributes.get("vulnerable") is True,
        )
        when = timestamp_pb2.Timestamp()
        when.FromDatetime(contact_time)
        request = screening_pb2.ScreenRequest(
            customer_id=customer.customer_id, facts=facts, channel=channel,  # type: ignore[arg-type]
            contact_time=when,
            offers=[screening_pb2.OfferSubject(offer_id=o.offer_id, product_type=o.product_type,  # type: ignore[arg-type]
                                               risk_level=o.risk_level) for o in offers],  # type: ignore[arg-type]
        )
        response = await self.call(self.stub.Screen, request)
        verdicts = {
            v.offer_id: Verdict(
                offer_id=v.offer_id,
                verdict=screening_pb2.Verdict.Name(v.verdict).removeprefix("VERDICT_"),
                reasons=tuple(screening_pb2.ReasonCode.Name(r).removeprefix("REASON_CODE_") for r in v.reasons),
            )
            for v in response.verdicts
        }
        return ScreenResult(verdicts=verdicts, policy_version=response.policy_version)

    async def screen_batch(self, offers: Sequence[Offer], channel: int, contact_time: datetime,
                           items: Sequence[BatchScreenItem]) -> dict[str, dict[str, str]]:
        """ScreenBatch for a launch partition: customer id -> offer id -> verdict."""
        return await screen_batches(self, offers, channel, contact_time, items)

    async def check_content(self, text: str, product_type: int) -> list[tuple[str, str, int, int]]:
        """Risk's content rules: (kind, rule_id, start, end) per violation."""
        response = await self.call(self.stub.CheckContent, content_pb2.CheckContentRequest(
            text=text, product_type=product_type))  # type: ignore[arg-type]
        return [(content_pb2.ViolationKind.Name(v.kind).removeprefix("VIOLATION_KIND_"), v.rule_id, v.start, v.end)
                for v in response.violations]


# --- batch launch: the audience export and batch screening ---------------------------------------------------


@dataclass
class AudienceBatch:
    """One batch of an audience export: ids ascending and, per requested field, its values (None if absent)."""

    customer_ids: list[str]
    columns: dict[str, list[Any]]
    resume_token: str
    as_of: datetime


def _column_values(column: segment_service_pb2.AudienceColumn) -> list[Any]:
    if column.type == segment_service_pb2.AUDIENCE_VALUE_TYPE_NUMBER:
        raw: Sequence[Any] = column.number_values
    elif column.type == segment_service_pb2.AUDIENCE_VALUE_TYPE_BOOL:
        raw = column.bool_values
    else:
        raw = column.string_values
    present = column.present
    return [v if (not present or p) else None for v, p in zip(raw, present or [True] * len(raw), strict=False)]


class SegmentClient(ServiceClient):
    """Profile's SegmentService: the audience export of a batch launch (server streaming, resumable)."""

    service_names = ("lodestar.profile.v1.SegmentService",)

    def __init__(self, address: str, **kwargs: object) -> None:
        super().__init__("profile", address, segment_service_pb2_grpc.SegmentServiceStub, **kwargs)  # type: ignore[arg-type]

    async def export_audience(self, segment: str, fields: Sequence[str], *, batch_size: int = 5000,
                              as_of: datetime | None = None, resume_token: str = "",
                              timeout: float = 600.0) -> AsyncIterator[AudienceBatch]:
        """Streams the segment's members after `resume_token`; errors are the platform's domain errors."""
        request = segment_service_pb2.ExportAudienceRequest(segment=segment, fields=list(fields),
                                                            batch_size=batch_size, resume_token=resume_token)
        if as_of is not None and not resume_token:
            request.as_of.FromDatetime(as_of)
        call = self.stub.ExportAudience(request, timeout=call_timeout(timeout))
        try:
            async for response in call:
                yield AudienceBatch(
                    list(response.customer_ids), {c.field: _column_values(c) for c in response.columns},
                    response.resume_token, response.as_of.ToDatetime(tzinfo=UTC))
        except grpc.aio.AioRpcError as error:
            raise translate_rpc_error(error, self.dependency) from None
        finally:
            call.cancel()


@dataclass(frozen=True)
class BatchScreenItem:
    customer_id: str
    facts: screening_pb2.CustomerFacts


async def screen_batches(risk: RiskClient, offers: Sequence[Offer], channel: int, contact_time: datetime,
                         items: Sequence[BatchScreenItem], *, chunk: int = 10_000,
                         timeout: float = 120.0) -> dict[str, dict[str, str]]:
    """Every item screened for every offer on one channel through ScreenBatch (one stream, up to 10,000 items per
    message): customer id -> offer id -> "ALLOW" | "DENY" | "HOLD"."""
    subjects = [screening_pb2.OfferSubject(offer_id=o.offer_id, product_type=o.product_type,  # type: ignore[arg-type]
                                           risk_level=o.risk_level) for o in offers]  # type: ignore[arg-type]
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(contact_time)

    def requests() -> Iterator[screening_pb2.ScreenBatchRequest]:
        for start in range(0, len(items), chunk):
            yield screening_pb2.ScreenBatchRequest(
                batch_id=str(start // chunk), offers=subjects,
                items=[screening_pb2.ScreenBatchItem(customer_id=i.customer_id, facts=i.facts,
                                                     channel=channel, contact_time=when)  # type: ignore[arg-type]
                       for i in items[start:start + chunk]])

    out: dict[str, dict[str, str]] = {}
    if not items:
        return out
    names = {v: screening_pb2.Verdict.Name(v).removeprefix("VERDICT_") for v in screening_pb2.Verdict.values()}
    call = risk.stub.ScreenBatch(requests(), timeout=call_timeout(timeout))
    try:
        async for response in call:
            for result in response.results:
                out[result.customer_id] = {v.offer_id: names.get(v.verdict, "UNSPECIFIED") for v in result.verdicts}
    except grpc.aio.AioRpcError as error:
        raise translate_rpc_error(error, risk.dependency) from None
    return out


def customer_facts(region: str, time_zone: str, attributes: dict[str, Any]) -> screening_pb2.CustomerFacts:
    """What risk needs of an exported member (the export carries no birth date: see docs/campaign.md)."""
    level = tolerance_level(attributes.get("risk_tolerance"))
    return screening_pb2.CustomerFacts(
        time_zone=time_zone or "", region=region or "",
        risk_tolerance=_TOLERANCE.get(level or 0, common_pb2.RISK_TOLERANCE_UNSPECIFIED),
        in_collections=attributes.get("in_collections") is True,
        vulnerable=attributes.get("vulnerable") is True)


# --- delivery (dispatch.py): the customer's contact points and risk's contact reservations ---------------------


@dataclass(frozen=True)
class CustomerContact:
    """What a message to one customer needs: the snapshot risk screens plus the contact points and the name.
    Personal data: never logged (dispatch.py logs masking.customer_token only)."""

    snapshot: CustomerSnapshot
    full_name: str
    email: str
    phone: str


@dataclass(frozen=True)
class ReservationResult:
    granted: bool
    state: str  # RESERVED, CONFIRMED, RELEASED, EXPIRED ("" when not granted)
    exceeded_caps: tuple[str, ...] = ()


async def get_contact(profile: ProfileClient, customer_id: str) -> CustomerContact:
    """GetCustomer with the contact points kept (NOT_FOUND when profile does not know the customer)."""
    response = await profile.call(
        profile.stub.GetCustomer, profile_service_pb2.GetCustomerRequest(name=f"customers/{customer_id}"))
    customer = response.customer
    return CustomerContact(_snapshot(customer), customer.full_name, customer.email, customer.phone)


async def reserve_contact(risk: RiskClient, delivery_key: str, customer_id: str, channel: int,
                          contact_time: datetime) -> ReservationResult:
    """ReserveContact: idempotent per delivery key (a second call returns the first reservation)."""
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(contact_time)
    response = await risk.call(risk.stub.ReserveContact, contact_policy_pb2.ReserveContactRequest(
        delivery_key=delivery_key, customer_id=customer_id, channel=channel, contact_time=when))  # type: ignore[arg-type]
    state = ""
    if response.HasField("reservation"):
        state = contact_policy_pb2.ReservationState.Name(response.reservation.state).removeprefix(
            "RESERVATION_STATE_")
    return ReservationResult(response.granted, state, tuple(response.exceeded_caps))


async def confirm_contact(risk: RiskClient, delivery_key: str) -> None:
    await risk.call(risk.stub.ConfirmContact, contact_policy_pb2.ConfirmContactRequest(delivery_key=delivery_key))


async def release_contact(risk: RiskClient, delivery_key: str) -> None:
    await risk.call(risk.stub.ReleaseContact, contact_policy_pb2.ReleaseContactRequest(delivery_key=delivery_key))
