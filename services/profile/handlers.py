"""gRPC handlers of ProfileService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal, InvalidOperation

import grpc
from google.protobuf import timestamp_pb2

from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc
from services.platform import pagination
from services.platform.idempotency import key_for
from services.platform.validation import (
    Violations,
    check_date,
    check_id,
    check_mask,
    check_time_zone,
    parse_name,
)
from services.profile.domain import UPDATABLE_FIELDS, Attribute, AttributeKind, Customer
from services.profile.service import ProfileService

_EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]{2,}$")
_PHONE = re.compile(r"^\+[1-9]\d{6,14}$")
_REGION = re.compile(r"^[A-Z]{2}(-[A-Z0-9]{1,3})?$")
_ATTRIBUTE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_ONEOF_KIND: dict[str, AttributeKind] = {
    "string_value": "string", "int_value": "int", "decimal_value": "decimal", "bool_value": "bool",
    "date_value": "date",
}
_KIND_FIELD = {kind: name for name, kind in _ONEOF_KIND.items()}
MAX_STRING_ATTRIBUTE = 1000


def _timestamp(value: object) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    if value is not None:
        ts.FromDatetime(value)  # type: ignore[arg-type]
    return ts


def customer_to_proto(customer: Customer) -> customer_pb2.Customer:
    message = customer_pb2.Customer(
        name=f"customers/{customer.customer_id}", customer_id=customer.customer_id,
        full_name=customer.full_name, email=customer.email, phone=customer.phone,
        birth_date=customer.birth_date.isoformat() if customer.birth_date else "",
        region=customer.region, time_zone=customer.time_zone, etag=customer.etag if customer.version else "",
    )
    for name, attribute in customer.attributes.items():
        setattr(message.attributes[name], _KIND_FIELD[attribute.kind], attribute.value)
    if customer.create_time:
        message.create_time.CopyFrom(_timestamp(customer.create_time))
    if customer.update_time:
        message.update_time.CopyFrom(_timestamp(customer.update_time))
    return message


def customer_from_proto(message: customer_pb2.Customer, *, field_prefix: str = "customer") -> Customer:
    """The client-settable fields, validated; raises InvalidArgument listing every problem."""
    violations = Violations()
    p = field_prefix
    if message.email and not _EMAIL.match(message.email):
        violations.add(f"{p}.email", "must be an e-mail address")
    if message.phone and not _PHONE.match(message.phone):
        violations.add(f"{p}.phone", "must be an E.164 phone number such as +8613800138000")
    if message.region and not _REGION.match(message.region):
        violations.add(f"{p}.region", "must be an ISO 3166 code such as CN or CN-31")
    if len(message.full_name) > 200:
        violations.add(f"{p}.full_name", "must be at most 200 characters")
    birth_date = check_date(message.birth_date, f"{p}.birth_date", violations)
    if birth_date and not date(1900, 1, 1) <= birth_date <= date.today():
        violations.add(f"{p}.birth_date", "must be between 1900-01-01 and today")
    check_time_zone(message.time_zone, f"{p}.time_zone", violations)
    attributes: dict[str, Attribute] = {}
    for name, value in message.attributes.items():
        field = f"{p}.attributes[{name!r}]" if _ATTRIBUTE_NAME.match(name) else f"{p}.attributes"
        if not _ATTRIBUTE_NAME.match(name):
            violations.add(field, "attribute names are lower_snake_case, at most 64 characters")
            continue
        kind_field = value.WhichOneof("kind")
        if kind_field is None:
            violations.add(field, "has no value")
            continue
        raw = getattr(value, kind_field)
        kind = _ONEOF_KIND[kind_field]
        if kind == "decimal":
            try:
                if not Decimal(raw).is_finite():
                    raise InvalidOperation
            except InvalidOperation:
                violations.add(field, "must be a finite decimal number such as 1234.50")
                continue
        elif kind == "date":
            check_date(raw, field, violations)
        elif kind == "string" and len(raw) > MAX_STRING_ATTRIBUTE:
            violations.add(field, f"must be at most {MAX_STRING_ATTRIBUTE} characters")
            continue
        attributes[name] = Attribute(kind, raw)
    violations.raise_if_any()
    return Customer(
        customer_id=message.customer_id, full_name=message.full_name, email=message.email, phone=message.phone,
        birth_date=birth_date, region=message.region, time_zone=message.time_zone, attributes=attributes,
    )


class ProfileHandlers(profile_service_pb2_grpc.ProfileServiceServicer):
    def __init__(self, service: ProfileService) -> None:
        self.service = service

    async def GetCustomer(self, request: profile_service_pb2.GetCustomerRequest,
                          context: grpc.aio.ServicerContext) -> profile_service_pb2.GetCustomerResponse:
        customer_id = parse_name(request.name, "customers")
        customer = await self.service.get_customer(customer_id)
        return profile_service_pb2.GetCustomerResponse(customer=customer_to_proto(customer))

    async def ListCustomers(self, request: profile_service_pb2.ListCustomersRequest,
                            context: grpc.aio.ServicerContext) -> profile_service_pb2.ListCustomersResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(region=request.region)
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after_id = position.get("after") if position else None
        if after_id is not None and not isinstance(after_id, str):
            after_id = None
        page = await self.service.list_customers(after_id=after_id, page_size=size, region=request.region or None)
        token = pagination.encode_page_token({"after": page.next_after_id}, fingerprint) if page.next_after_id else ""
        return profile_service_pb2.ListCustomersResponse(
            customers=[customer_to_proto(c) for c in page.customers], next_page_token=token
        )

    async def CreateCustomer(self, request: profile_service_pb2.CreateCustomerRequest,
                             context: grpc.aio.ServicerContext) -> profile_service_pb2.CreateCustomerResponse:
        check_id(request.customer.customer_id, "customer.customer_id")
        customer = customer_from_proto(request.customer)
        key = key_for("CreateCustomer", request)
        created = await self.service.create_customer(customer, key)
        return profile_service_pb2.CreateCustomerResponse(customer=customer_to_proto(created))

    async def UpdateCustomer(self, request: profile_service_pb2.UpdateCustomerRequest,
                             context: grpc.aio.ServicerContext) -> profile_service_pb2.UpdateCustomerResponse:
        customer_id = parse_name(request.customer.name, "customers", field="customer.name")
        paths = check_mask(request.update_mask.paths, set(UPDATABLE_FIELDS) | {"attributes"}, ("attributes",))
        changes = customer_from_proto(request.customer)
        changes.customer_id = customer_id
        key = key_for("UpdateCustomer", request)
        updated = await self.service.update_customer(changes, paths, request.customer.etag, key)
        return profile_service_pb2.UpdateCustomerResponse(customer=customer_to_proto(updated))

    async def DeleteCustomer(self, request: profile_service_pb2.DeleteCustomerRequest,
                             context: grpc.aio.ServicerContext) -> profile_service_pb2.DeleteCustomerResponse:
        customer_id = parse_name(request.name, "customers")
        key = key_for("DeleteCustomer", request)
        await self.service.delete_customer(customer_id, request.etag, key)
        return profile_service_pb2.DeleteCustomerResponse()
