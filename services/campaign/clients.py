"""Typed clients of the services campaign calls: profile (customer facts) and risk (screening).

They return the campaign's own domain objects, so the service layer never sees protobuf or gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import date, datetime

from google.protobuf import timestamp_pb2

from lodestar.common.v1 import common_pb2
from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc
from lodestar.risk.v1 import content_pb2, risk_service_pb2_grpc, screening_pb2
from services.campaign.domain import CustomerSnapshot, Offer, ScreenResult, Verdict
from services.campaign.scoring import tolerance_level
from services.platform.clients import ServiceClient
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
        token = ""
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

    async def check_content(self, text: str, product_type: int) -> list[tuple[str, str, int, int]]:
        """Risk's content rules: (kind, rule_id, start, end) per violation."""
        response = await self.call(self.stub.CheckContent, content_pb2.CheckContentRequest(
            text=text, product_type=product_type))  # type: ignore[arg-type]
        return [(content_pb2.ViolationKind.Name(v.kind).removeprefix("VIOLATION_KIND_"), v.rule_id, v.start, v.end)
                for v in response.violations]
