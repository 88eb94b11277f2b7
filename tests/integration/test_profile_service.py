"""ProfileService through a real aio server, a real stub and a real database."""

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from lodestar.profile.v1 import customer_pb2
from lodestar.profile.v1 import profile_service_pb2 as pb
from lodestar.profile.v1 import profile_service_pb2_grpc as pbg
from services.profile.app import DEFINITION
from services.profile.db import CustomerRow, IdempotencyKey
from tests.helpers import expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def profile(start):
    svc = await start(DEFINITION)
    channel = grpc.aio.insecure_channel(svc.address)
    yield svc, pbg.ProfileServiceStub(channel)
    await channel.close()


def customer(cid="c-1", **fields):
    message = customer_pb2.Customer(customer_id=cid, full_name="Li Wei", email="li.wei@example.cn",
                                    phone="+8613800138000", birth_date="1988-04-02", region="CN-31",
                                    time_zone="Asia/Shanghai", **fields)
    message.attributes["income"].decimal_value = "12500.50"
    message.attributes["vip"].bool_value = True
    return message


async def count_rows(svc, model=CustomerRow):
    async with svc.runtime.database.sessionmaker() as session:
        return await session.scalar(select(func.count()).select_from(model))


async def test_create_then_get_round_trips_every_field(profile):
    svc, stub = profile
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))).customer
    assert created.name == "customers/c-1" and created.etag
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/c-1"))).customer
    assert got == created
    assert got.attributes["income"].decimal_value == "12500.50"
    assert got.attributes["vip"].bool_value is True
    assert got.create_time.seconds > 0
    assert await count_rows(svc) == 1


async def test_duplicate_id_is_already_exists(profile):
    _, stub = profile
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))
    await expect_error(stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer())),
                       grpc.StatusCode.ALREADY_EXISTS, "CUSTOMER_ALREADY_EXISTS")


async def test_request_id_replays_the_first_response_and_writes_once(profile):
    svc, stub = profile
    first = await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(), request_id="req-1"))
    again = await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(), request_id="req-1"))
    assert again == first
    assert await count_rows(svc) == 1
    assert await count_rows(svc, IdempotencyKey) == 1


async def test_reused_request_id_with_other_payload_is_rejected_and_changes_nothing(profile):
    svc, stub = profile
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(), request_id="req-1"))
    got = await expect_error(
        stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("c-2"), request_id="req-1")),
        INVALID, "REQUEST_ID_REUSED")
    assert got.field_violations[0][0] == "request_id"
    assert await count_rows(svc) == 1


@pytest.mark.parametrize(("mutate", "field", "reason"), [
    (lambda c: setattr(c, "customer_id", ""), "customer.customer_id", "REQUIRED_FIELD_MISSING"),
    (lambda c: setattr(c, "customer_id", "bad id!"), "customer.customer_id", "INVALID_ID"),
    (lambda c: setattr(c, "email", "not-an-email"), "customer.email", "INVALID_ARGUMENT"),
    (lambda c: setattr(c, "phone", "12345"), "customer.phone", "INVALID_ARGUMENT"),
    (lambda c: setattr(c, "birth_date", "1988-13-40"), "customer.birth_date", "INVALID_ARGUMENT"),
    (lambda c: setattr(c, "birth_date", "2999-01-01"), "customer.birth_date", "INVALID_ARGUMENT"),
    (lambda c: setattr(c, "time_zone", "Mars/Olympus"), "customer.time_zone", "INVALID_ARGUMENT"),
    (lambda c: setattr(c, "region", "shanghai"), "customer.region", "INVALID_ARGUMENT"),
    (lambda c: c.attributes["income"].MergeFrom(customer_pb2.AttributeValue(decimal_value="12,5")),
     "customer.attributes['income']", "INVALID_ARGUMENT"),
    (lambda c: c.attributes["Bad-Name"].MergeFrom(customer_pb2.AttributeValue(int_value=1)),
     "customer.attributes", "INVALID_ARGUMENT"),
    (lambda c: c.attributes["empty"].Clear(), "customer.attributes['empty']", "INVALID_ARGUMENT"),
])
async def test_bad_input_names_the_field_and_writes_nothing(profile, mutate, field, reason):
    svc, stub = profile
    message = customer()
    mutate(message)
    got = await expect_error(stub.CreateCustomer(pb.CreateCustomerRequest(customer=message)), INVALID, reason)
    assert field in [f for f, _ in got.field_violations]
    assert got.metadata["field"] == got.field_violations[0][0]
    assert await count_rows(svc) == 0


async def test_get_missing_and_malformed_names(profile):
    _, stub = profile
    await expect_error(stub.GetCustomer(pb.GetCustomerRequest(name="customers/nobody")),
                       grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")
    got = await expect_error(stub.GetCustomer(pb.GetCustomerRequest(name="")), INVALID, "REQUIRED_FIELD_MISSING")
    assert got.field_violations[0][0] == "name"
    await expect_error(stub.GetCustomer(pb.GetCustomerRequest(name="people/x")), INVALID, "INVALID_NAME")


async def test_list_pages_through_everything_in_id_order(profile):
    _, stub = profile
    for i in range(7):
        await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(f"c-{i}", )))
    seen, token, pages = [], "", 0
    while True:
        page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=3, page_token=token))
        seen += [c.customer_id for c in page.customers]
        pages += 1
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"c-{i}" for i in range(7)]
    assert pages == 3


async def test_list_filters_by_region_and_rejects_bad_paging(profile):
    _, stub = profile
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("c-cn")))
    pt = customer("c-pt")
    pt.region, pt.time_zone = "PT-11", "Europe/Lisbon"
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=pt))
    page = await stub.ListCustomers(pb.ListCustomersRequest(region="PT-11"))
    assert [c.customer_id for c in page.customers] == ["c-pt"]
    await expect_error(stub.ListCustomers(pb.ListCustomersRequest(page_size=-5)), INVALID, "INVALID_PAGE_SIZE")
    await expect_error(stub.ListCustomers(pb.ListCustomersRequest(page_token="nonsense")), INVALID,
                       "INVALID_PAGE_TOKEN")
    token = (await stub.ListCustomers(pb.ListCustomersRequest(page_size=1))).next_page_token
    await expect_error(stub.ListCustomers(pb.ListCustomersRequest(page_size=1, page_token=token, region="PT-11")),
                       INVALID, "PAGE_TOKEN_QUERY_MISMATCH")


async def test_update_changes_only_masked_fields(profile):
    _, stub = profile
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))).customer
    change = customer_pb2.Customer(name=created.name, etag=created.etag, region="CN-11", email="other@example.cn")
    change.attributes["segment"].string_value = "mass"
    mask = field_mask_pb2.FieldMask(paths=["region", "attributes.segment", "attributes.vip"])
    updated = (await stub.UpdateCustomer(pb.UpdateCustomerRequest(customer=change, update_mask=mask))).customer
    assert updated.region == "CN-11"
    assert updated.email == "li.wei@example.cn"  # not in the mask
    assert updated.attributes["segment"].string_value == "mass"
    assert "vip" not in updated.attributes  # named in the mask, absent in the change: removed
    assert updated.attributes["income"].decimal_value == "12500.50"
    assert updated.etag != created.etag


async def test_update_with_stale_etag_is_aborted_and_changes_nothing(profile):
    _, stub = profile
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))).customer
    mask = field_mask_pb2.FieldMask(paths=["region"])
    await stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=customer_pb2.Customer(name=created.name, etag=created.etag, region="CN-44"), update_mask=mask))
    await expect_error(stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=customer_pb2.Customer(name=created.name, etag=created.etag, region="CN-11"), update_mask=mask)),
        grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    assert (await stub.GetCustomer(pb.GetCustomerRequest(name=created.name))).customer.region == "CN-44"


async def test_update_mask_errors(profile):
    _, stub = profile
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))).customer
    target = customer_pb2.Customer(name=created.name)
    await expect_error(stub.UpdateCustomer(pb.UpdateCustomerRequest(customer=target)), INVALID,
                       "REQUIRED_FIELD_MISSING")
    got = await expect_error(stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=target, update_mask=field_mask_pb2.FieldMask(paths=["customer_id"]))), INVALID,
        "INVALID_UPDATE_MASK")
    assert got.field_violations[0][0] == "update_mask"
    await expect_error(stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=customer_pb2.Customer(name="customers/ghost"), update_mask=field_mask_pb2.FieldMask(
            paths=["region"]))), grpc.StatusCode.NOT_FOUND, "CUSTOMER_NOT_FOUND")


async def test_delete_with_etag(profile):
    svc, stub = profile
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))).customer
    await expect_error(stub.DeleteCustomer(pb.DeleteCustomerRequest(name=created.name, etag="stale")),
                       grpc.StatusCode.ABORTED, "ETAG_MISMATCH")
    await stub.DeleteCustomer(pb.DeleteCustomerRequest(name=created.name, etag=created.etag, request_id="d-1"))
    assert await count_rows(svc) == 0
    # A retried delete replays its success instead of failing with NOT_FOUND.
    await stub.DeleteCustomer(pb.DeleteCustomerRequest(name=created.name, etag=created.etag, request_id="d-1"))
    await expect_error(stub.GetCustomer(pb.GetCustomerRequest(name=created.name)), grpc.StatusCode.NOT_FOUND,
                       "CUSTOMER_NOT_FOUND")


async def test_database_down_is_unavailable_and_not_serving(profile, tmp_path):
    svc, stub = profile
    broken = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/missing-dir/x.db")
    svc.runtime.database.sessionmaker = async_sessionmaker(broken)
    svc.runtime.database.engine = broken
    await expect_error(stub.GetCustomer(pb.GetCustomerRequest(name="customers/c-1")), grpc.StatusCode.UNAVAILABLE,
                       "DATABASE_UNAVAILABLE")
    assert await svc.check_ready() is False
    await broken.dispose()


async def test_server_span_is_parent_of_its_sql_spans(profile, span_exporter):
    _, stub = profile
    span_exporter.clear()
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer()))
    spans = span_exporter.get_finished_spans()
    server = [s for s in spans if s.name == "/lodestar.profile.v1.ProfileService/CreateCustomer"]
    assert len(server) == 1
    sql = [s for s in spans if s.parent and s.parent.span_id == server[0].context.span_id]
    assert sql, "expected SQL spans under the server span"
    assert all(s.context.trace_id == server[0].context.trace_id for s in sql)
    for s in spans:  # no personal data in any span attribute
        text = repr(dict(s.attributes or {}))
        assert "li.wei@example.cn" not in text and "+8613800138000" not in text and "Li Wei" not in text
