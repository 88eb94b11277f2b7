"""PII attribute values encrypted at rest, through a real aio server, a real stub and a real database: what is
stored, GetCustomer/ListCustomers decrypting, key rotation (old and new keys both decrypt during and after it),
crypto-shredding, start-up without keys, and PII kept out of logs, spans and idempotency records."""

import asyncio
import base64
import json
import logging
import os
import subprocess  # nosec B404 - runs the rotate-keys command under test
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import field_mask_pb2
from sqlalchemy import select

from lodestar.profile.v1 import customer_pb2 as T
from lodestar.profile.v1 import profile_service_pb2 as pb
from lodestar.profile.v1 import profile_service_pb2_grpc as pbg
from services.platform.server import StartupError
from services.profile.app import DEFINITION
from services.profile.db import CustomerKeyRow, CustomerRow, IdempotencyKey
from services.profile.pii import Keyring, destroy_customer_key, rotate_keys

ROOT = Path(__file__).resolve().parents[2]
SECRET = "110101199003077777"  # an id number: PII
K1 = "k1:" + base64.b64encode(b"1" * 32).decode()
K2 = "k2:" + base64.b64encode(b"2" * 32).decode()


def definitions():
    return [
        T.AttributeDefinition(name="age", type=T.ATTRIBUTE_TYPE_INTEGER),
        T.AttributeDefinition(name="id_number", type=T.ATTRIBUTE_TYPE_STRING, pii=True),
        T.AttributeDefinition(name="salary", type=T.ATTRIBUTE_TYPE_DECIMAL, pii=True),
    ]


def customer(cid, secret=SECRET, age=40):
    c = T.Customer(name=f"customers/{cid}", customer_id=cid)
    c.attributes["age"].int_value = age
    c.attributes["id_number"].string_value = secret
    c.attributes["salary"].decimal_value = "12345.60"
    return c


async def serve(start, url=None, keys=K1):
    env = {"PROFILE_PII_KEYS": keys}
    if url:
        env["DATABASE_URL"] = url
    svc = await start(DEFINITION, **env)
    channel = grpc.aio.insecure_channel(svc.address)
    stub = pbg.ProfileServiceStub(channel)
    return svc, stub


async def rows(svc, model, order):
    async with svc.runtime.database.sessionmaker() as session:
        return list(await session.scalars(select(model).order_by(order)))


async def test_pii_values_are_stored_encrypted_and_read_back_decrypted(start):
    svc, stub = await serve(start)
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    created = (await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("c-1")))).customer
    assert created.attributes["id_number"].string_value == SECRET
    row, = await rows(svc, CustomerRow, CustomerRow.customer_id)
    assert row.attributes == {"age": {"t": "int", "v": 40}}  # PII never in the plain attributes
    assert sorted(row.pii) == ["id_number", "salary"]
    key, = await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)
    assert (key.customer_id, key.master_key_id) == ("c-1", "k1")
    assert all(token.startswith(key.key_id + ".") for token in row.pii.values())
    assert SECRET not in json.dumps(row.pii) and "12345.60" not in json.dumps(row.pii)
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/c-1"))).customer
    assert dict(got.attributes) == dict(created.attributes)
    assert got.attributes["salary"].decimal_value == "12345.60"
    listed = await stub.ListCustomers(pb.ListCustomersRequest())
    assert listed.customers[0].attributes["id_number"].string_value == SECRET
    # An update re-encrypts under the same data key; a non-PII change keeps the PII.
    mask = field_mask_pb2.FieldMask(paths=["attributes.age"])
    changed = customer("c-1", age=41)
    updated = (await stub.UpdateCustomer(pb.UpdateCustomerRequest(customer=changed, update_mask=mask))).customer
    assert (updated.attributes["age"].int_value, updated.attributes["id_number"].string_value) == (41, SECRET)
    assert [k.key_id for k in await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)] == [key.key_id]


async def test_import_encrypts_pii_columns_and_merges_them_on_reimport(start):
    svc, stub = await serve(start)
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    columns = T.ImportColumns(row_numbers=[1, 2, 3], customer_ids=["i-1", "i-2", "i-3"])
    columns.attributes.add(name="age").int_values.values.extend([30, 31, 32])
    columns.attributes.add(name="id_number", missing=[2]).string_values.values.extend([SECRET, "X-2", ""])
    response = await stub.ImportCustomers(iter([pb.ImportCustomersRequest(import_id="p", columns=columns)]))
    assert (response.imported, response.failed) == (3, 0)
    stored = {r.customer_id: r for r in await rows(svc, CustomerRow, CustomerRow.customer_id)}
    assert stored["i-1"].attributes == {"age": {"t": "int", "v": 30}}
    assert sorted(stored["i-1"].pii) == ["id_number"] and not stored["i-3"].pii
    assert [k.customer_id for k in await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)] == ["i-1", "i-2"]
    # Re-import another PII column as rows: merged with the stored one, under the same data key.
    again = T.ImportRow(row_number=1, customer=T.Customer(customer_id="i-1"))
    again.customer.attributes["salary"].decimal_value = "99.5"
    response = await stub.ImportCustomers(iter([pb.ImportCustomersRequest(import_id="q", rows=[again])]))
    assert response.imported == 1
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/i-1"))).customer
    assert (got.attributes["id_number"].string_value, got.attributes["salary"].decimal_value) == (SECRET, "99.5")
    assert got.attributes["age"].int_value == 30
    assert len(await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)) == 2


async def test_rotation_rewraps_resumably_and_old_and_new_keys_both_decrypt(start):
    svc, stub = await serve(start, keys=K1)
    url = svc.runtime.settings.database_url
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    for n in range(3):
        await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer(f"r-{n}", secret=f"{SECRET}{n}")))
    both = Keyring.parse(f"{K2},{K1}")
    # Interrupted rotation: one batch of one key, then a service with both keys reads every customer.
    report = await rotate_keys(svc.runtime.database, both, batch_size=1, max_batches=1)
    assert (report.rewrapped, report.done) == (1, False)
    masters = [k.master_key_id for k in await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)]
    assert masters == ["k2", "k1", "k1"]
    _, during_stub = await serve(start, url, keys=f"{K2},{K1}")
    for n in range(3):
        got = (await during_stub.GetCustomer(pb.GetCustomerRequest(name=f"customers/r-{n}"))).customer
        assert got.attributes["id_number"].string_value == f"{SECRET}{n}"
    # A customer created during the rotation gets a key wrapped under the newest master key.
    await during_stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("r-9")))
    # Resumed: the rest is rewrapped, what was done is skipped.
    report = await rotate_keys(svc.runtime.database, both, batch_size=2)
    assert (report.rewrapped, report.done) == (2, True)
    keys = await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)
    assert {k.master_key_id for k in keys} == {"k2"}
    # After: the old master key can go; everything still decrypts with the new one alone.
    _, after_stub = await serve(start, url, keys=K2)
    for cid, secret in (("r-0", SECRET + "0"), ("r-2", SECRET + "2"), ("r-9", SECRET)):
        got = (await after_stub.GetCustomer(pb.GetCustomerRequest(name=f"customers/{cid}"))).customer
        assert got.attributes["id_number"].string_value == secret
    # And the old key alone no longer opens them: INTERNAL PII_KEY_UNAVAILABLE, no PII in the message.
    _, stale_stub = await serve(start, url, keys=K1)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stale_stub.GetCustomer(pb.GetCustomerRequest(name="customers/r-0"))
    assert caught.value.code() == grpc.StatusCode.INTERNAL and SECRET not in (caught.value.details() or "")


async def test_rotate_keys_command_runs_against_the_database(start):
    svc, stub = await serve(start, keys=K1)
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("x-1")))
    env = {**os.environ, "DATABASE_URL": svc.runtime.settings.database_url, "PROFILE_PII_KEYS": f"{K2},{K1}",
           "LOG_LEVEL": "WARNING"}
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "services.profile", "rotate-keys", "--json"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=60, check=False)  # nosec B603
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"master_key_id": "k2", "scanned": 1, "rewrapped": 1, "batches": 1,
                                       "done": True}
    key, = await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)
    assert key.master_key_id == "k2"


async def test_destroying_a_customer_key_makes_its_pii_unreadable(start):
    svc, stub = await serve(start)
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("d-1")))
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("d-2")))
    before, = [r for r in await rows(svc, CustomerRow, CustomerRow.customer_id) if r.customer_id == "d-1"]
    old_tokens = dict(before.pii)
    async with svc.runtime.database.sessionmaker() as session, session.begin():
        assert await destroy_customer_key(session, "d-1") is True
    async with svc.runtime.database.sessionmaker() as session, session.begin():
        assert await destroy_customer_key(session, "d-1") is False  # idempotent
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/d-1"))).customer
    assert dict(got.attributes) == {"age": T.AttributeValue(int_value=40)}
    assert [k.customer_id for k in await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id)] == ["d-2"]
    # A backup's ciphertexts, put back, do not open: the key is gone (a new one is never the old one).
    await stub.UpdateCustomer(pb.UpdateCustomerRequest(
        customer=customer("d-1", secret="NEW-ID"), update_mask=field_mask_pb2.FieldMask(paths=["attributes"])))
    async with svc.runtime.database.sessionmaker() as session, session.begin():
        row = await session.get(CustomerRow, "d-1")
        assert row is not None
        row.pii = old_tokens
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/d-1"))).customer
    assert "id_number" not in got.attributes and got.attributes["age"].int_value == 40
    other = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/d-2"))).customer
    assert other.attributes["id_number"].string_value == SECRET


async def test_production_refuses_to_start_without_keys(start):
    with pytest.raises(StartupError, match="PROFILE_PII_KEYS is required in production"):
        await start(DEFINITION, KUBERNETES_SERVICE_HOST="10.0.0.1")
    with pytest.raises(StartupError, match="must be 32 bytes"):
        await start(DEFINITION, PROFILE_PII_KEYS="k1:" + base64.b64encode(b"short").decode())


async def test_pii_never_reaches_logs_spans_or_idempotency_records(start, span_exporter, caplog):
    caplog.set_level(logging.DEBUG)
    svc, stub = await serve(start)
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    request = pb.CreateCustomerRequest(customer=customer("l-1"), request_id="create-l-1")
    first = (await stub.CreateCustomer(request)).customer
    replayed = (await stub.CreateCustomer(request)).customer
    assert replayed == first and replayed.attributes["id_number"].string_value == SECRET
    columns = T.ImportColumns(row_numbers=[1], customer_ids=["l-2"])
    columns.attributes.add(name="id_number").string_values.values.append(SECRET)
    await stub.ImportCustomers(iter([pb.ImportCustomersRequest(import_id="l", columns=columns)]))
    await stub.GetCustomer(pb.GetCustomerRequest(name="customers/l-2"))
    stored, = await rows(svc, IdempotencyKey, IdempotencyKey.request_id)
    assert SECRET.encode() not in stored.response and b"12345.60" not in stored.response
    logged = caplog.text + "".join(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert SECRET not in logged
    spans = span_exporter.get_finished_spans()
    assert spans and all(SECRET not in json.dumps(dict(s.attributes or {}), default=str) for s in spans)


async def test_import_moves_a_value_stored_in_clear_into_the_encrypted_map(start):
    svc, stub = await serve(start)
    # A customer written before id_number was flagged PII (or before encryption): its value is in clear.
    async with svc.runtime.database.sessionmaker() as session, session.begin():
        session.add(CustomerRow(customer_id="m-1", attributes={"id_number": {"t": "string", "v": "OLD-CLEAR"},
                                                               "age": {"t": "int", "v": 50}}))
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    columns = T.ImportColumns(row_numbers=[1], customer_ids=["m-1"])
    columns.attributes.add(name="id_number").string_values.values.append(SECRET)
    response = await stub.ImportCustomers(iter([pb.ImportCustomersRequest(import_id="m", columns=columns)]))
    assert response.imported == 1
    row, = await rows(svc, CustomerRow, CustomerRow.customer_id)
    assert row.attributes == {"age": {"t": "int", "v": 50}} and sorted(row.pii) == ["id_number"]
    got = (await stub.GetCustomer(pb.GetCustomerRequest(name="customers/m-1"))).customer
    assert (got.attributes["id_number"].string_value, got.attributes["age"].int_value) == (SECRET, 50)


async def test_data_subject_access_export_decrypts_pii_and_erasure_shreds_the_key(start):
    from lodestar.common.v1 import data_subject_pb2
    from services.profile.data_subject import PII_SECTION, ProfileDataSubject

    svc, stub = await serve(start)
    await stub.UpsertAttributes(pb.UpsertAttributesRequest(attributes=definitions()))
    await stub.CreateCustomer(pb.CreateCustomerRequest(customer=customer("c-1")))
    subject = ProfileDataSubject(svc.runtime.database, svc.runtime.components["pii_keyring"])
    export = await subject.export("c-1")
    sections = {s.name: s for s in export.sections}
    # The customer gets their PII values in clear; the table dump holds only ciphertext.
    assert json.loads(sections[PII_SECTION].json_document) == {"id_number": SECRET, "salary": "12345.60"}
    assert SECRET not in sections["customers"].json_document
    # Without the keyring there is nothing to decrypt with: the section is left out, never ciphertext passed off.
    assert PII_SECTION not in {s.name for s in (await ProfileDataSubject(svc.runtime.database).export("c-1")).sections}

    receipt = await subject.erase(data_subject_pb2.EraseCustomerDataRequest(customer_id="c-1", request_id="dsr-1"))
    tables = {t.table: t.rows_deleted for t in receipt.tables}
    assert tables["customer_keys"] == 1 and tables["customers"] == 1
    assert await rows(svc, CustomerKeyRow, CustomerKeyRow.customer_id) == []
