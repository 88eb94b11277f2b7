"""ImportCustomers with columnar batches (ImportColumns): the same outcome as the same rows, through a real aio
server, a real stub and a real database."""

import grpc
import pytest
from sqlalchemy import select

from lodestar.profile.v1 import customer_pb2 as T
from lodestar.profile.v1 import profile_service_pb2 as pb
from services.profile.db import CustomerRow, ImportBatchRow
from tests.helpers import expect_error
from tests.integration.test_profile_import import batches, count, customer, profile, register, row, send

__all__ = ["profile"]  # the fixture, re-used

INVALID = grpc.StatusCode.INVALID_ARGUMENT
_CELLS = {"string_value": "string_values", "int_value": "int_values", "decimal_value": "decimal_values",
          "bool_value": "bool_values", "date_value": "date_values"}
_PLACEHOLDER = {"string_value": "", "int_value": 0, "decimal_value": "0", "bool_value": False, "date_value": ""}


def to_columns(request: pb.ImportCustomersRequest) -> pb.ImportCustomersRequest:
    """The same batch in columns: each attribute column takes the kind of its first value; a value of another
    kind goes as an exception cell, an absent one is missing."""
    rows = list(request.rows)
    columns = T.ImportColumns(row_numbers=[r.row_number for r in rows],
                              customer_ids=[r.customer.customer_id for r in rows])
    for core in ("full_name", "email", "phone", "birth_date", "region", "time_zone"):
        cells = [getattr(r.customer, core) for r in rows]
        if any(cells):
            columns.core_columns.add(name=core).string_values.values.extend(cells)
    names = sorted({name for r in rows for name in r.customer.attributes}, reverse=True)
    for name in names:
        values = [r.customer.attributes[name] if name in r.customer.attributes else None for r in rows]
        kind = next(v.WhichOneof("kind") for v in values if v is not None)
        column = columns.attributes.add(name=name)
        cells = getattr(column, _CELLS[kind]).values
        for i, value in enumerate(values):
            if value is None:
                column.missing.append(i)
                cells.append(_PLACEHOLDER[kind])
            elif value.WhichOneof("kind") != kind:
                column.exceptions.add(index=i, value=value)
                cells.append(_PLACEHOLDER[kind])
            else:
                cells.append(getattr(value, kind))
    return pb.ImportCustomersRequest(import_id=request.import_id, batch_number=request.batch_number,
                                     core_fields=request.core_fields, columns=columns)


async def stored(svc):
    async with svc.runtime.database.sessionmaker() as session:
        rows = await session.scalars(select(CustomerRow).order_by(CustomerRow.customer_id))
        return {r.customer_id: (r.full_name, r.email, r.region, r.birth_date, r.attributes, r.version) for r in rows}


async def test_columns_give_the_same_outcome_as_rows(profile, start):
    svc, stub = profile
    await register(stub)
    by_rows = await send(stub, batches("imp-rows"))
    rows_state = await stored(svc)
    async with svc.runtime.database.sessionmaker() as session, session.begin():
        await session.execute(CustomerRow.__table__.delete())
    by_columns = await send(stub, [to_columns(b) for b in batches("imp-cols")])
    assert (by_columns.imported, by_columns.failed, by_columns.batches) == (3, 4, 2)
    assert list(by_columns.errors) == list(by_rows.errors)
    assert [(e.row_number, e.column, e.reason) for e in by_columns.errors] == [
        (2, "age", "VALUE_OUT_OF_RANGE"), (4, "segment", "VALUE_NOT_ALLOWED"),
        (5, "customer_id", "REQUIRED_FIELD_MISSING"), (6, "id_number", "ATTRIBUTE_TYPE_MISMATCH"),
        (6, "nope", "UNKNOWN_ATTRIBUTE")]
    assert await stored(svc) == rows_state
    outcomes = sorted((b.import_id, b.batch_number, b.imported, b.failed) for b in await all_batches(svc))
    assert outcomes == [("imp-cols", 0, 2, 1), ("imp-cols", 1, 1, 3), ("imp-rows", 0, 2, 1), ("imp-rows", 1, 1, 3)]


async def all_batches(svc):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(ImportBatchRow)))


async def test_columns_resume_and_reimport_like_rows(profile):
    svc, stub = profile
    await register(stub)
    first, second = (to_columns(b) for b in batches())
    assert (await send(stub, [first])).imported == 2
    resumed = await send(stub, [first, second])
    assert (resumed.imported, resumed.failed, resumed.batches_skipped) == (3, 4, 1)
    again = await send(stub, [to_columns(b) for b in batches("imp-2")])
    assert (again.imported, again.batches_skipped) == (3, 0)
    assert {cid: state[5] for cid, state in (await stored(svc)).items()} == {"a-1": 2, "a-3": 2, "a-7": 2}


async def test_bounds_kinds_escaping_and_duplicates(profile):
    svc, stub = profile
    await register(stub)
    rows = [
        row(1, "b-1", balance=("decimal_value", "-1000.00"), opened=("date_value", "2000-01-01"),
            id_number=("string_value", 'quote " back \\ tab \t ü')),
        row(2, "b-2", balance=("decimal_value", "-1000.000000001"), age=("int_value", 18)),
        row(3, "b-3", balance=("decimal_value", "1e400"), opened=("date_value", "2000-02-30")),
        row(4, "b-4", balance=("decimal_value", "NaN"), age=("int_value", 121)),
        row(5, "b-1", age=("int_value", 120), vip=("bool_value", True)),  # same id again: the later row wins
    ]
    by_rows = await send(stub, [pb.ImportCustomersRequest(import_id="r", rows=rows)])
    request = to_columns(pb.ImportCustomersRequest(import_id="k", batch_number=0, rows=rows))
    response = await send(stub, [request])
    # Row 4: the malformed balance hides the out-of-range age (registry problems come after malformed values).
    assert [(e.row_number, e.column, e.reason) for e in response.errors] == [
        (2, "balance", "VALUE_OUT_OF_RANGE"), (3, "opened", "ATTRIBUTE_TYPE_MISMATCH"),
        (4, "balance", "ATTRIBUTE_TYPE_MISMATCH")]
    assert list(response.errors) == list(by_rows.errors)
    assert (response.imported, response.failed) == (2, 3)
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/b-1"))).customer
    assert dict(got.attributes) == {"age": T.AttributeValue(int_value=120), "vip": T.AttributeValue(bool_value=True)}
    # An integer column for a DECIMAL attribute is stored as decimals; text is escaped like json.dumps.
    columns = T.ImportColumns(row_numbers=[1, 2], customer_ids=["d-1", "d-2"])
    columns.attributes.add(name="balance").int_values.values.extend([12, -1000])
    columns.attributes.add(name="id_number").string_values.values.extend(['a"b\\c', "ü\n"])
    response = await send(stub, [pb.ImportCustomersRequest(import_id="d", columns=columns)])
    assert (response.imported, response.failed) == (2, 0)
    state = await stored(svc)
    # id_number is PII: encrypted in customers.pii (docs/pii.md), never in the attributes JSON; GetCustomer decrypts.
    assert state["d-1"][4] == {"balance": {"t": "decimal", "v": "12"}}
    assert state["d-2"][4] == {"balance": {"t": "decimal", "v": "-1000"}}
    for cid, text in (("d-1", 'a"b\\c'), ("d-2", "ü\n")):
        got = (await stub.GetCustomer(pb.GetCustomerRequest(name=f"customers/{cid}"))).customer
        assert got.attributes["id_number"].string_value == text


async def test_core_columns_are_checked_and_merge_like_rows(profile):
    svc, stub = profile
    existing = customer("e-1", vip=("bool_value", True))
    existing.full_name, existing.region = "Kept Name", "CN-31"
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=existing))
    await register(stub)
    columns = T.ImportColumns(row_numbers=[1, 2, 3], customer_ids=["e-1", "e-2", "e-3"])
    columns.core_columns.add(name="region").string_values.values.extend(["CN-11", "nowhere", ""])
    columns.core_columns.add(name="birth_date").string_values.values.extend(["", "1990-01-01", "1990-13-01"])
    age = columns.attributes.add(name="age", missing=[2])
    age.int_values.values.extend([33, 7, 0])  # row 2: out of range, hidden by its malformed region (as for a row)
    response = await send(stub, [pb.ImportCustomersRequest(import_id="e", core_fields=["region"],
                                                           columns=columns)])
    assert [(e.row_number, e.column, e.reason) for e in response.errors] == [
        (2, "region", "INVALID_FIELD_VALUE"), (3, "birth_date", "INVALID_FIELD_VALUE")]
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/e-1"))).customer
    assert (got.full_name, got.region, got.birth_date) == ("Kept Name", "CN-11", "")
    assert got.attributes["vip"].bool_value is True and got.attributes["age"].int_value == 33
    assert sorted(await stored(svc)) == ["e-1"]


async def test_pii_values_never_appear_in_column_errors(profile):
    _, stub = profile
    await register(stub)
    columns = T.ImportColumns(row_numbers=[1, 2], customer_ids=["p-1", "p-2"])
    columns.attributes.add(name="salary_band").string_values.values.extend(["SECRET-4411", "band-lo"])
    columns.attributes.add(name="id_number", missing=[0], exceptions=[
        T.ImportCell(index=1, value=T.AttributeValue(int_value=98765432))]).string_values.values.extend(["", ""])
    response = await send(stub, [pb.ImportCustomersRequest(import_id="p", columns=columns)])
    assert [(e.row_number, e.column, e.reason) for e in response.errors] == [
        (1, "salary_band", "VALUE_NOT_ALLOWED"), (2, "id_number", "ATTRIBUTE_TYPE_MISMATCH")]
    assert "SECRET-4411" not in str(response) and "98765432" not in str(response)
    # A non-PII value is shown, so the check above could fail.
    columns = T.ImportColumns(row_numbers=[1], customer_ids=["p-3"])
    columns.attributes.add(name="segment").string_values.values.append("platinum-77")
    response = await send(stub, [pb.ImportCustomersRequest(import_id="p2", columns=columns)])
    assert "platinum-77" in response.errors[0].description


def _columns(**changes):
    columns = T.ImportColumns(row_numbers=[1, 2], customer_ids=["x-1", "x-2"])
    columns.attributes.add(name="age").int_values.values.extend([30, 40])
    for name, value in changes.items():
        if name == "duplicate":
            columns.attributes.add(name="age").int_values.values.extend([30, 40])
        elif name == "short":
            columns.attributes[0].int_values.values.pop()
        elif name == "ids":
            del columns.customer_ids[:]
        elif name == "index":
            columns.attributes[0].missing.append(value)
        elif name == "core":
            columns.core_columns.add(name=value).string_values.values.extend(["", ""])
        elif name == "novalues":
            columns.attributes.add(name="vip")
    return columns


@pytest.mark.parametrize(("columns", "reason", "field"), [
    (_columns(duplicate=True), "INVALID_IMPORT_COLUMNS", "columns.attributes[1].name"),
    (_columns(short=True), "INVALID_IMPORT_COLUMNS", "columns.attributes[0].values"),
    (_columns(ids=True), "INVALID_IMPORT_COLUMNS", "columns.customer_ids"),
    (_columns(index=2), "INVALID_IMPORT_COLUMNS", "columns.attributes[0]"),
    (_columns(core="customer_id"), "INVALID_IMPORT_COLUMNS", "columns.core_columns[0].name"),
    (_columns(novalues=True), "INVALID_IMPORT_COLUMNS", "columns.attributes[1].values"),
])
async def test_malformed_columns_are_invalid_argument_and_nothing_is_written(profile, columns, reason, field):
    svc, stub = profile
    await register(stub)
    got = await expect_error(send(stub, [pb.ImportCustomersRequest(import_id="m", columns=columns)]), INVALID, reason)
    assert got.field_violations[0][0] == field
    assert await count(svc, CustomerRow) == 0 and await count(svc, ImportBatchRow) == 0


async def test_rows_and_columns_in_one_message_are_refused(profile):
    svc, stub = profile
    request = to_columns(batches()[0])
    request.rows.extend(batches()[0].rows)
    await expect_error(send(stub, [request]), INVALID, "ROWS_AND_COLUMNS")
    assert await count(svc, CustomerRow) == 0
