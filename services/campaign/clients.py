"""Typed clients of the services campaign calls: profile (customer facts) and risk (screening).

They return the campaign's own domain objects, so the service layer never sees protobuf or gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import numpy as np
from google.protobuf import timestamp_pb2

from lodestar.common.v1 import common_pb2
from lodestar.profile.v1 import (
    customer_pb2,
    event_service_pb2,
    event_service_pb2_grpc,
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


# BatchGetFeatures: points per call (profile's limit) and calls in flight at once.
FEATURE_POINTS_PER_CALL = 1000
FEATURE_CALLS_IN_FLIGHT = 4


class ProfileClient(ServiceClient):
    service_names = ("lodestar.profile.v1.ProfileService", "lodestar.profile.v1.EventService")

    def __init__(self, address: str, **kwargs: object) -> None:
        super().__init__("profile", address, profile_service_pb2_grpc.ProfileServiceStub, **kwargs)  # type: ignore[arg-type]
        self.events = event_service_pb2_grpc.EventServiceStub(self.channel)

    async def features_at(self, points: Sequence[tuple[str, datetime]], *, timeout: float | None = None
                          ) -> list[dict[str, float] | None]:
        """Profile's behaviour features of each (customer_id, as_of) point as of its own as_of — only events that
        had occurred and been recorded by then (EventService.BatchGetFeatures) — in the points' order; None
        where profile knew neither the customer nor an event of it at that time. Repeated points are asked
        once; FEATURE_POINTS_PER_CALL a call, FEATURE_CALLS_IN_FLIGHT calls at once, each with its own deadline
        (`timeout`, else the client's default; never beyond what remains of the request being served)."""
        unique = list(dict.fromkeys(points))
        found: dict[tuple[str, datetime], dict[str, float] | None] = {}
        gate = asyncio.Semaphore(FEATURE_CALLS_IN_FLIGHT)

        async def one(chunk: Sequence[tuple[str, datetime]]) -> None:
            request = event_service_pb2.BatchGetFeaturesRequest()
            for customer_id, as_of in chunk:
                request.points.add(customer_id=customer_id).as_of.FromDatetime(as_of)
            async with gate:
                response = await self.call(self.events.BatchGetFeatures, request, timeout=timeout)
            for key, result in zip(chunk, response.results, strict=True):
                found[key] = dict(result.features) if result.found else None

        await asyncio.gather(*(one(unique[i:i + FEATURE_POINTS_PER_CALL])
                               for i in range(0, len(unique), FEATURE_POINTS_PER_CALL)))
        return [found[p] for p in points]

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

    async def screen_subjects(self, offers: Sequence[Offer], channel: int, contact_time: datetime,
                              subjects: ScreeningSubjects) -> ScreenedBatch:
        """ScreenBatch for a launch partition, verdicts and reason codes kept column by column."""
        return await screen_subjects(self, offers, channel, contact_time, subjects)

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


VERDICT_CODES = {"MISSING": 0, "ALLOW": 1, "DENY": 2, "HOLD": 3}
_VERDICT_CODE_OF = {v: VERDICT_CODES.get(screening_pb2.Verdict.Name(v).removeprefix("VERDICT_"), 0)
                    for v in screening_pb2.Verdict.values()}


@dataclass
class ScreeningSubjects:
    """A launch partition's members as risk screens them, column by column (one entry per member). Only an age
    leaves profile: risk gets a birth date half a year before that birthday (proxy_birth_date), so its age
    checks (minors, AGE_UNKNOWN) see the right age and no birth date is ever exported."""

    customer_ids: Sequence[str]
    regions: Sequence[Any]
    time_zones: Sequence[Any]
    attributes: Mapping[str, Sequence[Any]]
    ages: np.ndarray  # whole years at `age_on`, NaN where unknown
    age_on: date

    def __len__(self) -> int:
        return len(self.customer_ids)

    def column(self, name: str) -> Sequence[Any]:
        return self.attributes.get(name) or [None] * len(self)

    def facts(self) -> Iterator[screening_pb2.CustomerFacts]:
        """CustomerFacts of every member, in order (for the ScreenBatch request)."""
        tolerance, collections, vulnerable = (self.column(n) for n in ("risk_tolerance", "in_collections",
                                                                      "vulnerable"))
        for i in range(len(self)):
            birth = proxy_birth_date(self.ages[i], self.age_on)
            yield screening_pb2.CustomerFacts(
                birth_date=birth.isoformat() if birth else "", time_zone=self.time_zones[i] or "",
                region=self.regions[i] or "",
                risk_tolerance=_TOLERANCE.get(tolerance_level(tolerance[i]) or 0,
                                              common_pb2.RISK_TOLERANCE_UNSPECIFIED),
                in_collections=collections[i] is True, vulnerable=vulnerable[i] is True)


@dataclass
class ScreenedBatch:
    """Risk's answer for a partition on one channel: per member and offer a verdict code (VERDICT_CODES) and the
    index of its reason codes in `reason_sets` (comma-joined; index 0 is no reason)."""

    verdicts: np.ndarray  # members x offers, int8
    reasons: np.ndarray  # members x offers, int32
    reason_sets: list[str]
    policy_version: str = ""

    @classmethod
    def from_verdicts(cls, customer_ids: Sequence[str], offers: Sequence[Offer],
                      verdicts: dict[str, dict[str, tuple[str, Sequence[str]] | str]], policy_version: str = ""
                      ) -> ScreenedBatch:
        """From customer -> offer -> verdict name, or (verdict name, reason codes): what fakes answer."""
        sets: dict[str, int] = {"": 0}
        codes = np.zeros((len(customer_ids), len(offers)), dtype=np.int8)
        reasons = np.zeros((len(customer_ids), len(offers)), dtype=np.int32)
        for i, customer in enumerate(customer_ids):
            got = verdicts.get(customer) or {}
            for j, offer in enumerate(offers):
                answer = got.get(offer.offer_id)
                if answer is None:
                    continue
                verdict, why = (answer, ()) if isinstance(answer, str) else answer
                codes[i, j] = VERDICT_CODES.get(verdict, 0)
                reasons[i, j] = sets.setdefault(",".join(why), len(sets))
        return cls(codes, reasons, list(sets), policy_version)


def proxy_birth_date(age: float, on: date) -> date | None:
    """A birth date for an exported whole-year age (None where unknown): `age` years and 182 days before `on`, so
    that any day within about six months of `on` (a contact a little later, another time zone) gives the same
    age. A stand-in for risk and the scorers, never stored."""
    if not np.isfinite(age) or age < 0 or age > 150:
        return None
    years = int(age)
    try:
        anniversary = on.replace(year=on.year - years)
    except ValueError:  # 29 February
        anniversary = on.replace(year=on.year - years, day=28)
    return anniversary - timedelta(days=182)


async def screen_subjects(risk: RiskClient, offers: Sequence[Offer], channel: int, contact_time: datetime,
                          subjects: ScreeningSubjects, *, chunk: int = 10_000, timeout: float = 120.0
                          ) -> ScreenedBatch:
    """Every member screened for every offer on one channel through ScreenBatch (one stream, up to 10,000 members
    per message), the answer kept as arrays."""
    n = len(subjects)
    codes = np.zeros((n, len(offers)), dtype=np.int8)
    reasons = np.zeros((n, len(offers)), dtype=np.int32)
    sets: dict[tuple[int, ...], int] = {(): 0}
    if not n:
        return ScreenedBatch(codes, reasons, [""])
    offer_index = {o.offer_id: j for j, o in enumerate(offers)}
    row_of = {c: i for i, c in enumerate(subjects.customer_ids)}
    subject_messages = [screening_pb2.OfferSubject(offer_id=o.offer_id, product_type=o.product_type,  # type: ignore[arg-type]
                                                   risk_level=o.risk_level) for o in offers]  # type: ignore[arg-type]
    when = timestamp_pb2.Timestamp()
    when.FromDatetime(contact_time)

    def requests() -> Iterator[screening_pb2.ScreenBatchRequest]:
        facts = subjects.facts()
        for start in range(0, n, chunk):
            yield screening_pb2.ScreenBatchRequest(
                batch_id=str(start // chunk), offers=subject_messages,
                items=[screening_pb2.ScreenBatchItem(customer_id=subjects.customer_ids[i], facts=next(facts),
                                                     channel=channel, contact_time=when)  # type: ignore[arg-type]
                       for i in range(start, min(start + chunk, n))])

    policy = ""
    call = risk.stub.ScreenBatch(requests(), timeout=call_timeout(timeout))
    try:
        async for response in call:
            policy = response.policy_version or policy
            for result in response.results:
                i = row_of.get(result.customer_id)
                if i is None:
                    continue
                for verdict in result.verdicts:
                    j = offer_index.get(verdict.offer_id)
                    if j is None:
                        continue
                    codes[i, j] = _VERDICT_CODE_OF.get(verdict.verdict, 0)
                    reasons[i, j] = sets.setdefault(tuple(verdict.reasons), len(sets))
    except grpc.aio.AioRpcError as error:
        raise translate_rpc_error(error, risk.dependency) from None
    names = [",".join(screening_pb2.ReasonCode.Name(r).removeprefix("REASON_CODE_") for r in key)  # type: ignore[arg-type]
             for key in sets]
    return ScreenedBatch(codes, reasons, names, policy)


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
