"""Profile, as cross-sell, churn and pricing need it (customer ids, point-in-time features, the tag writer), and
risk's probability of default for pricing.

Typed wrappers of profile's stubs on one channel (deadlines, retries on UNAVAILABLE, errors translated by the
platform's ServiceClient).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime

from lodestar.profile.v1 import (
    event_service_pb2,
    event_service_pb2_grpc,
    profile_service_pb2,
    profile_service_pb2_grpc,
    tag_service_pb2,
    tag_service_pb2_grpc,
)
from lodestar.risk.v1 import credit_pb2, risk_service_pb2_grpc
from services.campaign.domain import CustomerSnapshot
from services.platform import timestamps
from services.platform.clients import ServiceClient
from services.platform.errors import FailedPrecondition

FEATURE_CONCURRENCY = 16
TAG_BATCH = 1000


class ProfileFacts(ServiceClient):
    service_names = ("lodestar.profile.v1.EventService", "lodestar.profile.v1.ProfileService",
                     "lodestar.profile.v1.TagService")

    def __init__(self, address: str, **kwargs: object) -> None:
        super().__init__("profile", address, event_service_pb2_grpc.EventServiceStub, **kwargs)  # type: ignore[arg-type]
        self.profiles = profile_service_pb2_grpc.ProfileServiceStub(self.channel)
        self.tags = tag_service_pb2_grpc.TagServiceStub(self.channel)

    async def require_customer(self, customer_id: str) -> None:
        """NOT_FOUND (profile's reason, CUSTOMER_NOT_FOUND) when profile does not know the customer."""
        await self.call(self.profiles.GetCustomer,
                        profile_service_pb2.GetCustomerRequest(name=f"customers/{customer_id}"))

    async def customer_ids(self) -> list[str]:
        ids: list[str] = []
        token = ""  # nosec B105 - the first page's token, not a password
        while True:
            page = await self.call(self.profiles.ListCustomers, profile_service_pb2.ListCustomersRequest(
                page_size=1000, page_token=token), timeout=30.0)
            ids += [c.customer_id for c in page.customers]
            token = page.next_page_token
            if not token:
                return ids

    async def features(self, customer_id: str, as_of: datetime | None = None
                       ) -> tuple[dict[str, float], list[str]]:
        request = event_service_pb2.GetFeaturesRequest(customer_id=customer_id)
        stamp = timestamps.to_timestamp(as_of)
        if stamp is not None:
            request.as_of.CopyFrom(stamp)
        response = await self.call(self.stub.GetFeatures, request)
        return dict(response.features), list(response.products_held)

    async def features_many(self, customer_ids: Sequence[str], as_of: datetime | None = None
                            ) -> dict[str, tuple[dict[str, float], list[str]]]:
        gate = asyncio.Semaphore(FEATURE_CONCURRENCY)
        out: dict[str, tuple[dict[str, float], list[str]]] = {}

        async def one(customer_id: str) -> None:
            async with gate:
                out[customer_id] = await self.features(customer_id, as_of)

        await asyncio.gather(*(one(c) for c in customer_ids))
        return out


class ProfileTagWriter:
    """Writes computed tags through profile's TagService.SetCustomerTags, source "campaign", 1000 a call.

    Each call's request id is derived from its content, so a retried batch job writes nothing twice."""

    def __init__(self, facts: ProfileFacts) -> None:
        self.facts = facts

    async def write(self, tags: Mapping[str, Mapping[str, str]]) -> int:
        items = sorted(tags.items())
        written = 0
        for start in range(0, len(items), TAG_BATCH):
            chunk = items[start:start + TAG_BATCH]
            request = tag_service_pb2.SetCustomerTagsRequest(source="campaign", items=[
                tag_service_pb2.CustomerTagValues(customer_id=cid, tags=dict(values)) for cid, values in chunk])
            digest = hashlib.sha256(request.SerializeToString(deterministic=True)).hexdigest()[:32]
            request.request_id = f"campaign-tags-{digest}"
            response = await self.facts.call(self.facts.tags.SetCustomerTags, request, timeout=30.0)
            written += response.tags
        return written


_CREDIT_FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
MAX_CREDIT_FEATURES = 200
NO_MODEL_CACHE_SECONDS = 30.0


class RiskPd(ServiceClient):
    """The customer's probability of default from risk's ScoreCredit (its champion credit model), reading the
    customer's attributes as the model's features. None when risk has no champion credit model (remembered
    for NO_MODEL_CACHE_SECONDS); any other failure is raised (pricing then keeps the standard terms)."""

    service_names = ("lodestar.risk.v1.RiskService",)

    def __init__(self, address: str, **kwargs: object) -> None:
        super().__init__("risk", address, risk_service_pb2_grpc.RiskServiceStub, **kwargs)  # type: ignore[arg-type]
        self._no_model_until = 0.0

    async def pd(self, customer: CustomerSnapshot) -> float | None:
        if time.monotonic() < self._no_model_until:
            return None
        features = {name: str(value) for name, value in sorted(customer.attributes.items())
                    if _CREDIT_FEATURE_NAME.match(name) and value is not None and len(str(value)) <= 128}
        income = customer.attributes.get("income")
        request = credit_pb2.ScoreCreditRequest(customer_id=customer.customer_id,
                                                features=dict(list(features.items())[:MAX_CREDIT_FEATURES]))
        try:
            request.monthly_income = float(str(income))
        except (TypeError, ValueError):
            pass
        try:
            response = await self.call(self.stub.ScoreCredit, request)
        except FailedPrecondition as error:
            if error.reason != "NO_CHAMPION_CREDIT_MODEL":
                raise
            self._no_model_until = time.monotonic() + NO_MODEL_CACHE_SECONDS
            return None
        return float(response.pd)
