"""Attribute registry and bulk import through a real aio server, a real stub and a real database."""

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import func, select

from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as pb
from lodestar.profile.v1 import profile_service_pb2_grpc as pbg
from services.profile.app import DEFINITION
from services.profile.db import AttributeDefinitionRow, CustomerRow, IdempotencyKey, ImportBatchRow
from tests.helpers import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
T = customer_pb2


@pytest.fixture
async def profile(start):
    svc = await start(DEFINITION)
    channel = grpc.aio.insecure_channel(svc.address)
    yield svc, pbg.ProfileServiceStub(channel)
    await channel.close()


def definitions():
    return [
        T.AttributeDefinition(name="age", type=T.ATTRIBUTE_TYPE_INTEGER, min="18", max="120"),
        T.AttributeDefinition(name="balance", type=T.ATTRIBUTE_TYPE_DECIMAL, min="-1000.00"),
        T.AttributeDefinition(name="segment", type=T.ATTRIBUTE_TYPE_ENUM, allowed_values=["mass", "affluent"]),
        T.AttributeDefinition(name="vip", type=T.ATTRIBUTE_TYPE_BOOLEAN),
        T.AttributeDefinition(name="opened", type=T.ATTRIBUTE_TYPE_DATE, min="2000-01-01"),
        T.AttributeDefinition(name="id_number", type=T.ATTRIBUTE_TYPE_STRING, pii=True),
        T.AttributeDefinition(name="salary_band", type=T.ATTRIBUTE_TYPE_ENUM, pii=True,
                              allowed_values=["band-lo", "band-hi"]),
    ]


async def register(stub):
    return await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions(), request_id="reg-1"))


async def rows_of(svc, model):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model)))


async def count(svc, model):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model))


# -- registry ---------------------------------------------------------------------------------------------------


async def test_upsert_then_list_round_trips_and_request_id_replays(profile):
    svc, stub = profile
    first = await register(stub)
    again = await register(stub)
    assert again == first
    assert await count(svc, AttributeDefinitionRow) == 7
    assert await count(svc, IdempotencyKey) == 1
    listed = await stub.ListAttributes(pb.ListAttributesRequest(page_size=3))
    assert [a.name for a in listed.attributes] == ["age", "balance", "id_number"]
    rest = await stub.ListAttributes(pb.ListAttributesRequest(page_size=10, page_token=listed.next_page_token))
    assert [a.name for a in rest.attributes] == ["opened", "salary_band", "segment", "vip"]
    assert rest.next_page_token == ""
    age = listed.attributes[0]
    assert (age.type, age.min, age.max, age.pii) == (T.ATTRIBUTE_TYPE_INTEGER, "18", "120", False)


@pytest.mark.parametrize(("definition", "field"), [
    (T.AttributeDefinition(name="Bad Name", type=T.ATTRIBUTE_TYPE_STRING), "attributes[0].name"),
    (T.AttributeDefinition(name="x"), "attributes[0].type"),
    (T.AttributeDefinition(name="x", type=T.ATTRIBUTE_TYPE_ENUM), "attributes[0].allowed_values"),
    (T.AttributeDefinition(name="x", type=T.ATTRIBUTE_TYPE_STRING, allowed_values=["a"]),
     "attributes[0].allowed_values"),
    (T.AttributeDefinition(name="x", type=T.ATTRIBUTE_TYPE_INTEGER, min="ten"), "attributes[0].min"),
    (T.AttributeDefinition(name="x", type=T.ATTRIBUTE_TYPE_INTEGER, min="5", max="1"), "attributes[0].min"),
    (T.AttributeDefinition(name="email", type=T.ATTRIBUTE_TYPE_STRING), "attributes[0].name"),
])
async def test_bad_definitions_are_rejected_and_nothing_is_written(profile, definition, field):
    svc, stub = profile
    got = await expect_error(stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=[definition])),
                             INVALID, "INVALID_ATTRIBUTE_DEFINITION")
    assert got.field_violations[0][0] == field
    assert await count(svc, AttributeDefinitionRow) == 0


def customer(cid="c-1", **attributes):
    message = T.Customer(customer_id=cid)
    for name, (kind, value) in attributes.items():
        setattr(message.attributes[name], kind, value)
    return message


async def test_customers_without_a_registry_accept_any_attribute(profile):
    _, stub = profile
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(anything=("string_value", "x"))))


@pytest.mark.parametrize(("attributes", "reason", "column"), [
    ({"shoe_size": ("int_value", 42)}, "UNKNOWN_ATTRIBUTE", "shoe_size"),
    ({"age": ("string_value", "forty")}, "ATTRIBUTE_TYPE_MISMATCH", "age"),
    ({"age": ("int_value", 150)}, "VALUE_OUT_OF_RANGE", "age"),
    ({"balance": ("decimal_value", "-1000.01")}, "VALUE_OUT_OF_RANGE", "balance"),
    ({"balance": ("bool_value", True)}, "ATTRIBUTE_TYPE_MISMATCH", "balance"),
    ({"segment": ("string_value", "platinum")}, "VALUE_NOT_ALLOWED", "segment"),
    ({"vip": ("string_value", "yes")}, "ATTRIBUTE_TYPE_MISMATCH", "vip"),
    ({"opened": ("date_value", "1999-12-31")}, "VALUE_OUT_OF_RANGE", "opened"),
    ({"id_number": ("int_value", 310101)}, "ATTRIBUTE_TYPE_MISMATCH", "id_number"),
])
async def test_create_checks_values_against_the_registry(profile, attributes, reason, column):
    svc, stub = profile
    await register(stub)
    got = await expect_error(stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(**attributes))),
                             INVALID, reason)
    assert got.field_violations[0][0] == f"customer.attributes['{column}']"
    assert await count(svc, CustomerRow) == 0


async def test_good_values_pass_and_an_integer_is_accepted_for_a_decimal(profile):
    _, stub = profile
    await register(stub)
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(
        age=("int_value", 30), balance=("int_value", 12), segment=("string_value", "mass"),
        vip=("bool_value", True), opened=("date_value", "2010-05-01"), id_number=("string_value", "X1"),
    )))).customer
    assert created.attributes["balance"].decimal_value == "12"
    assert created.attributes["age"].int_value == 30


async def test_a_pii_value_never_appears_in_the_error(profile):
    _, stub = profile
    await register(stub)
    got = await expect_error(stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(
        salary_band=("string_value", "SECRET-9321")))), INVALID, "VALUE_NOT_ALLOWED")
    text = got.message + repr(got.field_violations) + repr(got.metadata)
    assert "SECRET-9321" not in text and "band-lo" not in text
    # A non-PII value is shown, so the check above could fail.
    got = await expect_error(stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(
        segment=("string_value", "platinum-77")))), INVALID, "VALUE_NOT_ALLOWED")
    assert "platinum-77" in got.field_violations[0][1]


async def test_update_checks_only_the_attributes_it_sets(profile):
    _, stub = profile
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(legacy=("string_value", "x"))))
    await register(stub)
    changes = customer(age=("int_value", 10))
    changes.name = "customers/c-1"
    await expect_error(stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=changes, update_mask=field_mask_pb2.FieldMask(paths=["attributes.age"]))), INVALID,
        "VALUE_OUT_OF_RANGE")
    changes = customer(age=("int_value", 40))
    changes.name = "customers/c-1"
    updated = (await stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=changes, update_mask=field_mask_pb2.FieldMask(paths=["attributes.age"])))).customer
    assert updated.attributes["age"].int_value == 40 and updated.attributes["legacy"].string_value == "x"


# -- import -----------------------------------------------------------------------------------------------------


def row(number, cid, **attributes):
    return T.ImportRow(row_number=number, customer=customer(cid, **attributes))


def batches(import_id="imp-1"):
    good = {"age": ("int_value", 30), "segment": ("string_value", "mass")}
    return [
        pb.ImportCustomersRequest(import_id=import_id, batch_number=0, core_fields=["region"], rows=[
            row(1, "a-1", **good),
            row(2, "a-2", age=("int_value", 7)),  # out of range
            row(3, "a-3", **good),
        ]),
        pb.ImportCustomersRequest(import_id=import_id, batch_number=1, core_fields=["region"], rows=[
            row(4, "a-4", segment=("string_value", "gold"), vip=("bool_value", False)),  # not allowed
            row(5, "", **good),  # no id
            row(6, "a-6", nope=("string_value", "x"), id_number=("int_value", 5)),  # two problems
            row(7, "a-7", balance=("decimal_value", "1.5"), opened=("date_value", "2001-02-03")),
        ]),
    ]


async def send(stub, requests):
    async def stream():
        for request in requests:
            yield request
    return await stub.ImportCustomers(stream())


async def test_import_commits_good_rows_and_reports_bad_ones(profile):
    svc, stub = profile
    await register(stub)
    response = await send(stub, batches())
    assert (response.imported, response.failed, response.batches, response.batches_skipped) == (3, 4, 2, 0)
    assert [(e.row_number, e.column, e.reason) for e in response.errors] == [
        (2, "age", "VALUE_OUT_OF_RANGE"),
        (4, "segment", "VALUE_NOT_ALLOWED"),
        (5, "customer_id", "REQUIRED_FIELD_MISSING"),
        (6, "id_number", "ATTRIBUTE_TYPE_MISMATCH"),
        (6, "nope", "UNKNOWN_ATTRIBUTE"),
    ]
    stored = {r.customer_id: r.attributes for r in await rows_of(svc, CustomerRow)}
    assert stored == {
        "a-1": {"age": {"t": "int", "v": 30}, "segment": {"t": "string", "v": "mass"}},
        "a-3": {"age": {"t": "int", "v": 30}, "segment": {"t": "string", "v": "mass"}},
        "a-7": {"balance": {"t": "decimal", "v": "1.5"}, "opened": {"t": "date", "v": "2001-02-03"}},
    }
    batches_rows = sorted((b.batch_number, b.imported, b.failed) for b in await rows_of(svc, ImportBatchRow))
    assert batches_rows == [(0, 2, 1), (1, 1, 3)]
    status = await stub.GetImport(pb.GetImportRequest(import_id="imp-1"))
    assert (list(status.committed_batches), status.imported, status.failed) == ([0, 1], 3, 4)


async def test_reimporting_under_a_new_id_upserts_the_same_rows(profile):
    svc, stub = profile
    await register(stub)
    await send(stub, batches("imp-1"))
    again = await send(stub, batches("imp-2"))
    assert (again.imported, again.failed, again.batches_skipped) == (3, 4, 0)
    rows = {r.customer_id: r for r in await rows_of(svc, CustomerRow)}
    assert sorted(rows) == ["a-1", "a-3", "a-7"]
    assert rows["a-1"].version == 2
    assert rows["a-1"].attributes == {"age": {"t": "int", "v": 30}, "segment": {"t": "string", "v": "mass"}}


async def test_import_merges_attributes_and_only_overwrites_the_core_fields_it_carries(profile):
    _, stub = profile
    existing = customer("a-1", vip=("bool_value", True))
    existing.full_name, existing.region = "Kept Name", "CN-31"
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=existing))
    await register(stub)
    update = customer("a-1", age=("int_value", 33))
    update.region = "CN-11"
    await send(stub, [pb.ImportCustomersRequest(import_id="m", batch_number=0, core_fields=["region"],
                                                rows=[T.ImportRow(row_number=1, customer=update)])])
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/a-1"))).customer
    assert (got.full_name, got.region) == ("Kept Name", "CN-11")
    assert got.attributes["vip"].bool_value is True and got.attributes["age"].int_value == 33


async def test_an_interrupted_import_resumes_skipping_committed_batches(profile):
    svc, stub = profile
    await register(stub)
    first, second = batches()
    # The first run stops after one batch (the client was interrupted).
    partial = await send(stub, [first])
    assert (partial.imported, partial.batches) == (2, 1)
    status = await stub.GetImport(pb.GetImportRequest(import_id="imp-1"))
    assert list(status.committed_batches) == [0]
    # The re-run sends everything again; batch 0 is replayed, not rewritten.
    resumed = await send(stub, [first, second])
    assert (resumed.imported, resumed.failed, resumed.batches, resumed.batches_skipped) == (3, 4, 2, 1)
    assert [e.row_number for e in resumed.errors] == [2, 4, 5, 6, 6]
    rows = {r.customer_id: r.version for r in await rows_of(svc, CustomerRow)}
    assert rows == {"a-1": 1, "a-3": 1, "a-7": 1}
    assert await count(svc, ImportBatchRow) == 2


async def test_pii_values_never_appear_in_import_errors(profile):
    _, stub = profile
    await register(stub)
    response = await send(stub, [pb.ImportCustomersRequest(import_id="p", batch_number=0, rows=[
        row(1, "p-1", salary_band=("string_value", "SECRET-4411")),
        row(2, "p-2", id_number=("int_value", 98765432)),
    ])])
    assert [(e.column, e.reason) for e in response.errors] == [
        ("salary_band", "VALUE_NOT_ALLOWED"), ("id_number", "ATTRIBUTE_TYPE_MISMATCH")]
    assert "SECRET-4411" not in str(response) and "98765432" not in str(response)


@pytest.mark.parametrize(("requests", "reason"), [
    ([pb.ImportCustomersRequest(import_id="", batch_number=0)], "INVALID_IMPORT_ID"),
    ([pb.ImportCustomersRequest(import_id="a", batch_number=-1)], "INVALID_BATCH_NUMBER"),
    ([pb.ImportCustomersRequest(import_id="a", core_fields=["customer_id"])], "UNKNOWN_CORE_FIELD"),
    ([pb.ImportCustomersRequest(import_id="a"), pb.ImportCustomersRequest(import_id="b", batch_number=1)],
     "IMPORT_ID_CHANGED"),
])
async def test_malformed_import_streams_are_invalid_argument(profile, requests, reason):
    _, stub = profile
    await expect_error(send(stub, requests), INVALID, reason)


async def test_get_import_of_an_unknown_id_is_not_found(profile):
    _, stub = profile
    await expect_error(stub.GetImport(pb.GetImportRequest(import_id="nope")), grpc.StatusCode.NOT_FOUND,
                       "IMPORT_NOT_FOUND")
