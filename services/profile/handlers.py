"""gRPC handlers of ProfileService: validate, map proto <-> domain, call the service layer. No SQL here."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

import grpc
from google.protobuf import timestamp_pb2

from lodestar.profile.v1 import customer_pb2, profile_service_pb2, profile_service_pb2_grpc
from services.platform import pagination
from services.platform.errors import InvalidArgument, NotFound
from services.platform.idempotency import key_for
from services.platform.validation import (
    ID_PATTERN,
    Violations,
    check_date,
    check_id,
    check_mask,
    check_time_zone,
    parse_name,
)
from services.profile.domain import (
    CORE_FIELDS,
    UPDATABLE_FIELDS,
    Attribute,
    AttributeKind,
    AttributeSpec,
    AttributeType,
    Customer,
    RowError,
)
from services.profile.importer import ColumnBatchIn, ColumnIn, Importer, ImportRowIn, ImportTotals
from services.profile.registry import MAX_STRING_VALUE
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
MAX_STRING_ATTRIBUTE = MAX_STRING_VALUE


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


# -- attribute registry and bulk import ------------------------------------------------------------------------

_TYPE_TO_PROTO: dict[str, int] = {
    "string": customer_pb2.ATTRIBUTE_TYPE_STRING, "integer": customer_pb2.ATTRIBUTE_TYPE_INTEGER,
    "decimal": customer_pb2.ATTRIBUTE_TYPE_DECIMAL, "boolean": customer_pb2.ATTRIBUTE_TYPE_BOOLEAN,
    "date": customer_pb2.ATTRIBUTE_TYPE_DATE, "enum": customer_pb2.ATTRIBUTE_TYPE_ENUM,
}
_TYPE_FROM_PROTO = {number: name for name, number in _TYPE_TO_PROTO.items()}
_IMPORT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
MAX_IMPORT_ROWS = 10_000
_IMPORTABLE_CORE = frozenset(CORE_FIELDS) - {"customer_id"}


def spec_to_proto(spec: AttributeSpec) -> customer_pb2.AttributeDefinition:
    message = customer_pb2.AttributeDefinition(
        name=spec.name, type=_TYPE_TO_PROTO[spec.type], pii=spec.pii,  # type: ignore[arg-type]
        allowed_values=list(spec.allowed_values), min=spec.min, max=spec.max, description=spec.description,
    )
    if spec.update_time:
        message.update_time.CopyFrom(_timestamp(spec.update_time))
    return message


def spec_from_proto(message: customer_pb2.AttributeDefinition) -> AttributeSpec:
    kind: AttributeType = _TYPE_FROM_PROTO.get(message.type, "")  # type: ignore[assignment]
    return AttributeSpec(
        name=message.name, type=kind, pii=message.pii, allowed_values=tuple(message.allowed_values),
        min=message.min.strip(), max=message.max.strip(), description=message.description,
    )


def _column_of(field: str) -> str:
    """'customer.attributes[\'x\']' -> 'x'; 'customer.email' -> 'email'."""
    if field.startswith("customer.attributes["):
        return field[len("customer.attributes["):].rstrip("]").strip("'\"")
    return field.removeprefix("customer.")


def import_row_from_proto(row: customer_pb2.ImportRow) -> ImportRowIn:
    """One import row, validated like CreateCustomer's customer; problems become RowErrors, never raised."""
    number = row.row_number
    try:
        check_id(row.customer.customer_id, "customer.customer_id")
        customer = customer_from_proto(row.customer)
    except InvalidArgument as error:
        errors = []
        for violation in error.violations:
            column = _column_of(violation.field)
            if column == "customer_id":
                reason = error.reason
            elif violation.field.startswith("customer.attributes"):
                reason = "ATTRIBUTE_TYPE_MISMATCH" if column != "attributes" else "INVALID_ATTRIBUTE_NAME"
            else:
                reason = "INVALID_FIELD_VALUE"
            errors.append(RowError(number, column, reason, violation.description))
        return ImportRowIn(number, None, errors)
    return ImportRowIn(number, customer)


_COLUMN_KIND: dict[str, AttributeKind] = {
    "string_values": "string", "int_values": "int", "decimal_values": "decimal", "bool_values": "bool",
    "date_values": "date",
}


def _check_cell(name: str, kind: AttributeKind | None, value: object) -> tuple[list[tuple[str, str, str]],
                                                                               Attribute | None]:
    """One attribute cell of a columnar batch, checked exactly as the same value in a row's Customer."""
    message = customer_pb2.Customer(customer_id="x")
    holder = message.attributes[name]
    if kind is not None:
        setattr(holder, _KIND_FIELD[kind], value)
    row = import_row_from_proto(customer_pb2.ImportRow(customer=message))
    if row.customer is None:
        return [(e.column, e.reason, e.description) for e in row.errors], None
    return [], row.customer.attributes[name]


def _columns_invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument.field(f"columns.{field}", description, reason="INVALID_IMPORT_COLUMNS")


def _column_cells(column: customer_pb2.ImportColumn, field: str, n: int) -> tuple[AttributeKind, list[Any]]:
    which = column.WhichOneof("values")
    if which is None:
        raise _columns_invalid(f"{field}.values", "is required")
    values = list(getattr(column, which).values)
    if len(values) != n:
        raise _columns_invalid(f"{field}.values", f"must have one cell per row ({n}), has {len(values)}")
    return _COLUMN_KIND[which], values


def columns_from_proto(message: customer_pb2.ImportColumns) -> ColumnBatchIn:
    """A columnar batch: its shape checked (INVALID_ARGUMENT INVALID_IMPORT_COLUMNS for the whole stream), its ids
    and core fields checked per row (row errors, as import_row_from_proto gives them)."""
    row_numbers = list(message.row_numbers)
    n = len(row_numbers)
    if n > MAX_IMPORT_ROWS:
        raise InvalidArgument.field("columns.row_numbers", f"at most {MAX_IMPORT_ROWS} rows per batch",
                                    reason="BATCH_TOO_LARGE")
    ids = list(message.customer_ids)
    if len(ids) != n:
        raise _columns_invalid("customer_ids", f"must have one id per row ({n}), has {len(ids)}")
    id_errors: dict[int, list[RowError]] = {}
    match = ID_PATTERN.match
    for i in [i for i, cid in enumerate(ids) if not match(cid)]:
        id_errors[i] = import_row_from_proto(customer_pb2.ImportRow(
            row_number=row_numbers[i], customer=customer_pb2.Customer(customer_id=ids[i]))).errors
    core: dict[str, list[Any]] = {}
    core_errors: dict[int, list[RowError]] = {}
    for k, column in enumerate(message.core_columns):
        field = f"core_columns[{k}]"
        if column.name not in _IMPORTABLE_CORE or column.name in core:
            raise _columns_invalid(f"{field}.name", "must be one of " + ", ".join(sorted(_IMPORTABLE_CORE))
                                   + ", each at most once")
        kind, values = _column_cells(column, field, n)
        if kind != "string" or column.missing or column.exceptions:
            raise _columns_invalid(field, "a core field is a column of string_values (an empty cell is empty)")
        problems: dict[str, list[RowError]] = {}
        for value in set(values):
            if value:
                row = import_row_from_proto(customer_pb2.ImportRow(
                    customer=customer_pb2.Customer(customer_id="x", **{column.name: value})))
                if row.errors:
                    problems[value] = row.errors
        for i, value in enumerate(values):
            if value in problems:
                core_errors.setdefault(i, []).extend(
                    RowError(row_numbers[i], e.column, e.reason, e.description) for e in problems[value])
        if column.name == "birth_date":
            values = [None if not v or v in problems else date.fromisoformat(v) for v in values]
        core[column.name] = values
    attributes: list[ColumnIn] = []
    names: set[str] = set()
    for k, column in enumerate(message.attributes):
        field = f"attributes[{k}]"
        if column.name in names:
            raise _columns_invalid(f"{field}.name", "names an attribute twice in the batch")
        names.add(column.name)
        kind, values = _column_cells(column, field, n)
        missing = frozenset(column.missing)
        exceptions = {}
        for cell in column.exceptions:
            which = cell.value.WhichOneof("kind")
            exceptions[cell.index] = (_ONEOF_KIND[which] if which else None,
                                      getattr(cell.value, which) if which else None)
        if any(not 0 <= i < n for i in missing) or any(not 0 <= i < n for i in exceptions):
            raise _columns_invalid(field, f"missing and exceptions must be row indexes 0 to {n - 1}")
        attributes.append(ColumnIn(column.name, kind, values, missing, exceptions))
    return ColumnBatchIn(row_numbers, ids, core, attributes, _check_cell, id_errors, core_errors)


def _row_error_to_proto(error: RowError) -> customer_pb2.ImportRowError:
    return customer_pb2.ImportRowError(
        row_number=error.row_number, column=error.column, reason=error.reason, description=error.description
    )


class ProfileRegistryHandlers:
    """UpsertAttributes, ListAttributes, ImportCustomers and GetImport, mixed into ProfileHandlers."""

    service: ProfileService

    @property
    def importer(self) -> Importer:
        return Importer(self.service.uow_factory)

    async def UpsertAttributes(self, request: profile_service_pb2.UpsertAttributesRequest,
                               context: grpc.aio.ServicerContext) -> profile_service_pb2.UpsertAttributesResponse:
        specs = [spec_from_proto(m) for m in request.attributes]
        key = key_for("UpsertAttributes", request)
        stored = await self.service.upsert_attributes(specs, key)
        return profile_service_pb2.UpsertAttributesResponse(attributes=[spec_to_proto(s) for s in stored])

    async def ListAttributes(self, request: profile_service_pb2.ListAttributesRequest,
                             context: grpc.aio.ServicerContext) -> profile_service_pb2.ListAttributesResponse:
        size = pagination.page_size(request.page_size)
        fingerprint = pagination.query_fingerprint(collection="attributes")
        position = pagination.decode_page_token(request.page_token, fingerprint)
        after = position.get("after") if position else None
        specs, next_after = await self.service.list_attributes(
            after_name=after if isinstance(after, str) else None, page_size=size
        )
        token = pagination.encode_page_token({"after": next_after}, fingerprint) if next_after else ""
        return profile_service_pb2.ListAttributesResponse(
            attributes=[spec_to_proto(s) for s in specs], next_page_token=token
        )

    async def ImportCustomers(self, request_iterator: AsyncIterator[profile_service_pb2.ImportCustomersRequest],
                              context: grpc.aio.ServicerContext) -> profile_service_pb2.ImportCustomersResponse:
        importer = self.importer
        totals = ImportTotals()
        registry = None
        async for request in request_iterator:
            if not totals.import_id:
                if not _IMPORT_ID.match(request.import_id):
                    raise InvalidArgument.field(
                        "import_id", "is required: 1-128 letters, digits, '.', '_', ':' or '-'",
                        reason="INVALID_IMPORT_ID")
                totals.import_id = request.import_id
            elif request.import_id != totals.import_id:
                raise InvalidArgument.field("import_id", "must be the same in every message of the stream",
                                            reason="IMPORT_ID_CHANGED")
            if request.batch_number < 0:
                raise InvalidArgument.field("batch_number", "must not be negative", reason="INVALID_BATCH_NUMBER")
            if request.rows and request.HasField("columns"):
                raise InvalidArgument.field("columns", "a message carries rows or columns, not both",
                                            reason="ROWS_AND_COLUMNS")
            if len(request.rows) > MAX_IMPORT_ROWS:
                raise InvalidArgument.field("rows", f"at most {MAX_IMPORT_ROWS} rows per batch",
                                            reason="BATCH_TOO_LARGE")
            unknown = [f for f in request.core_fields if f not in _IMPORTABLE_CORE]
            if unknown:
                raise InvalidArgument.field("core_fields", "may name only " + ", ".join(sorted(_IMPORTABLE_CORE)),
                                            reason="UNKNOWN_CORE_FIELD")
            if registry is None:
                registry = await importer.load_registry()
            if request.HasField("columns"):
                batch = columns_from_proto(request.columns)
                result = await importer.import_columns(
                    totals.import_id, request.batch_number, batch, frozenset(request.core_fields), registry
                )
            else:
                rows = [import_row_from_proto(row) for row in request.rows]
                result = await importer.import_batch(
                    totals.import_id, request.batch_number, rows, frozenset(request.core_fields), registry
                )
            totals.add(result)
        totals.errors.sort(key=lambda e: (e.row_number, e.column))
        return profile_service_pb2.ImportCustomersResponse(
            import_id=totals.import_id, imported=totals.imported, failed=totals.failed, batches=totals.batches,
            batches_skipped=totals.batches_skipped, errors=[_row_error_to_proto(e) for e in totals.errors],
            errors_truncated=totals.errors_truncated,
        )

    async def GetImport(self, request: profile_service_pb2.GetImportRequest,
                        context: grpc.aio.ServicerContext) -> profile_service_pb2.GetImportResponse:
        if not _IMPORT_ID.match(request.import_id):
            raise InvalidArgument.field("import_id", "is required: 1-128 letters, digits, '.', '_', ':' or '-'",
                                        reason="INVALID_IMPORT_ID")
        status = await self.importer.status(request.import_id)
        if status is None:
            raise NotFound("import", f"imports/{request.import_id}")
        return profile_service_pb2.GetImportResponse(
            import_id=status.import_id, committed_batches=status.committed_batches, imported=status.imported,
            failed=status.failed,
        )


class ProfileHandlers(ProfileRegistryHandlers, profile_service_pb2_grpc.ProfileServiceServicer):
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
