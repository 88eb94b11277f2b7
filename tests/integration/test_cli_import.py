"""`lodestar import customers` against a real in-process profile service."""

import asyncio
import csv
import io
import json

import grpc
import pytest
import yaml

from lodestar.profile.v1 import profile_service_pb2 as pb
from lodestar.profile.v1 import profile_service_pb2_grpc as pbg
from lodestar_cli.main import run
from services.profile.app import DEFINITION

HEADER = "Customer No;Age;Job;Balance;Has Loan;Opened;Email;Phone Number\n"


def bank_file(path, rows=12, bad=()):
    lines = [HEADER]
    for i in range(1, rows + 1):
        job = ["admin.", "technician", "services"][i % 3]
        age = "abc" if i in bad else str(20 + i)
        lines.append(f'"C{i:04d}";{age};"{job}";{i * 10.5:.2f};"{"yes" if i % 2 else "no"}";2015-01-{i:02d};'
                     f'"user{i}@example.com";"+86138000{i:05d}"\n')
    path.write_text("".join(lines), encoding="utf-8")
    return path


@pytest.fixture
async def profile(start, monkeypatch):
    svc = await start(DEFINITION)
    monkeypatch.setenv("PROFILE_SERVICE_ADDR", svc.address)
    channel = grpc.aio.insecure_channel(svc.address)
    yield svc, pbg.ProfileServiceStub(channel)
    await channel.close()


async def cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = await asyncio.to_thread(run, list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


async def all_customers(stub):
    return {c.customer_id: c for c in (await stub.ListCustomers(pb.ListCustomersRequest(page_size=1000))).customers}


async def test_infer_then_import_with_the_reviewed_schema(profile, tmp_path):
    _, stub = profile
    data = bank_file(tmp_path / "bank.csv")
    schema = tmp_path / "schema.yaml"
    code, out, _ = await cli("import", "customers", str(data), "--sep", ";", "--id-column", "Customer No",
                             "--infer-schema", str(schema), "--json")
    assert code == 0, out
    assert json.loads(out)["pii"] == ["phone_number"]
    document = yaml.safe_load(schema.read_text())
    by_name = {c["name"]: c for c in document["columns"]}
    assert by_name["age"]["type"] == "integer" and by_name["balance"]["type"] == "decimal"
    assert by_name["job"] == {"column": "Job", "name": "job", "type": "enum", "pii": False,
                              "allowed_values": ["admin.", "services", "technician"],
                              "description": "inferred from column 'Job'"}
    assert by_name["has_loan"]["type"] == "boolean" and by_name["opened"]["type"] == "date"
    assert by_name["email"] == {"column": "Email", "name": "email", "core": True}
    # The reviewer adds a range: two rows now fail.
    by_name["age"]["max"] = 30
    schema.write_text(yaml.safe_dump(document))
    errors = tmp_path / "bad.csv"
    code, out, _ = await cli("import", "customers", str(data), "--sep", ";", "--schema", str(schema),
                             "--errors", str(errors), "--batch-size", "5", "--json")
    assert code == 0, out
    result = json.loads(out)
    assert (result["imported"], result["failed"], result["batches"], result["error_file"]) == (10, 2, 3, str(errors))
    assert list(csv.reader(errors.open())) == [
        ["row", "column", "reason", "description"],
        ["11", "age", "VALUE_OUT_OF_RANGE", "must be at most 30 (got '31')"],
        ["12", "age", "VALUE_OUT_OF_RANGE", "must be at most 30 (got '32')"],
    ]
    customers = await all_customers(stub)
    assert sorted(customers) == [f"C{i:04d}" for i in range(1, 11)]
    c1 = customers["C0001"]
    assert c1.email == "user1@example.com"
    assert c1.attributes["has_loan"].bool_value is True
    assert c1.attributes["balance"].decimal_value == "10.50"
    assert c1.attributes["opened"].date_value == "2015-01-01"
    assert c1.attributes["phone_number"].string_value == "+8613800000001"


async def test_without_id_column_ids_are_stable_and_rerun_resumes(profile, tmp_path):
    _, stub = profile
    data = bank_file(tmp_path / "bank.csv", rows=7, bad=(3,))
    data.write_text(data.read_text().replace("Customer No;", "Ref;"))
    argv = ("import", "customers", str(data), "--sep", ";", "--batch-size", "3", "--sample-rows", "2", "--json")
    code, out, _ = await cli(*argv)
    first = json.loads(out)
    assert (code, first["imported"], first["failed"], first["batches_resumed"]) == (0, 6, 1, 0)
    ids = sorted(await all_customers(stub))
    assert len(ids) == 6 and all(i.startswith("r") and i.endswith(("-1", "-2", "-4", "-5", "-6", "-7")) for i in ids)
    with open(first["error_file"]) as handle:  # noqa: ASYNC230 - a small local file
        rows = list(csv.reader(handle))
    assert rows[1][:3] == ["3", "age", "ATTRIBUTE_TYPE_MISMATCH"]
    # Same file again: every batch is already committed and only replayed; same ids, same counts.
    code, out, _ = await cli(*argv)
    again = json.loads(out)
    assert (again["imported"], again["failed"], again["batches_resumed"]) == (6, 1, 3)
    assert again["import_id"] == first["import_id"]
    assert sorted(await all_customers(stub)) == ids


async def test_parquet_import(profile, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    _, stub = profile
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"customer_id": ["p1", "p2", "p3"], "score": [1, 2, None],
                             "vip": [True, False, True], "tier": ["a", "a", "b"]}), path)
    code, out, _ = await cli("import", "customers", str(path), "--json")
    assert code == 0, out
    result = json.loads(out)
    assert (result["imported"], result["failed"], result["error_file"]) == (3, 0, None)
    customers = await all_customers(stub)
    assert customers["p1"].attributes["score"].int_value == 1 and "score" not in customers["p3"].attributes
    assert customers["p2"].attributes["vip"].bool_value is False


async def test_unreachable_service_is_a_json_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PROFILE_SERVICE_ADDR", "127.0.0.1:1")
    data = bank_file(tmp_path / "bank.csv", rows=2)
    code, out, _ = await cli("import", "customers", str(data), "--sep", ";", "--json", "--timeout", "1")
    assert code == 1 and json.loads(out)["error"]["code"] == "UNAVAILABLE"
