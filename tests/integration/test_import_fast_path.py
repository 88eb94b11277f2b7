"""The import's fast paths give exactly what the plain paths give: the CLI's pyarrow reader and column conversion
against pandas + coerce_column, the numpy date screen against date.fromisoformat; and the import's relaxed
durability (SQLite synchronous=OFF, PostgreSQL synchronous_commit=off) never outlives the import's transactions."""

from datetime import date

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lodestar.profile.v1 import customer_pb2 as T
from lodestar.profile.v1 import profile_service_pb2 as pb
from lodestar.profile.v1 import profile_service_pb2_grpc as pbg
from lodestar_cli.commands.imports import build_columns, build_columns_arrow, read_chunks, read_tables
from services.profile.app import DEFINITION
from services.profile.registry import _date_suspects, _iso_date, parse_schema

TRICKY = (
    'cid;age;balance;vip;opened;segment;mobile;note\n'
    'a-1;42;1234.50;true;2000-01-01;mass;+8613800000001;"semi;colon"\n'
    'a-2;+5;1e3;YES;2000-02-30;affluent;;"quote "" inside"\n'
    'a-3;007;.5;0;1999-12-31;mass;+8613800000003;"new\nline"\n'
    'a-4;;-;maybe;;private;x;ü\n'
    'a-5;99999999999999999999;NaN;f;2000-1-01;mass;+86;\n'
    'a-6;١٢;12;N;0000-01-01;;+8613800000006;plain\n'
    'a-7;-0;-0.0;t;2024-02-29;mass;+8613800000007;"  spaced  "\n'
)
SCHEMA = {"version": 1, "id_column": "cid", "columns": [
    {"column": "age", "name": "age", "type": "integer"},
    {"column": "balance", "name": "balance", "type": "decimal"},
    {"column": "vip", "name": "vip", "type": "boolean"},
    {"column": "opened", "name": "opened", "type": "date"},
    {"column": "segment", "name": "segment", "type": "enum", "allowed_values": ["mass", "affluent"]},
    {"column": "mobile", "name": "mobile", "type": "string", "pii": True},
    {"column": "note", "name": "note", "type": "string"},
]}


def _mappings():
    _, mappings = parse_schema(SCHEMA)
    return mappings


@pytest.mark.parametrize("size", [1, 3, 100])
def test_arrow_csv_batches_equal_the_pandas_ones_cell_for_cell(tmp_path, size):
    path = tmp_path / "tricky.csv"
    path.write_text(TRICKY, encoding="utf-8")
    chunks = list(read_chunks(path, False, ";", size))
    tables = list(read_tables(path, False, ";", size))
    assert [t.num_rows for t in tables] == [len(c["cid"]) for c in chunks]
    first = 1
    for chunk, table in zip(chunks, tables, strict=True):
        slow = build_columns(chunk, first, "cid", "r", _mappings())
        fast = build_columns_arrow(table, first, "cid", "r", _mappings())
        assert fast == slow
        first += table.num_rows
    # The cases that matter are there: a + sign and non-ASCII digits parse (the exact way, as Python's int does),
    # a value out of int64 is sent as text for the service to reject.
    whole = build_columns_arrow(pa.concat_tables(tables), 1, "cid", "r", _mappings())
    age = next(c for c in whole.attributes if c.name == "age")
    assert [e.index for e in age.exceptions] == [4] and list(age.missing) == [3]
    assert [age.int_values.values[i] for i in (0, 1, 2, 5, 6)] == [42, 5, 7, 12, 0]


def test_arrow_reader_leaves_duplicated_headers_to_pandas(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("id,a,a\n1,x,y\n", encoding="utf-8")
    table, = read_tables(path, False, ",", 10)
    chunk, = read_chunks(path, False, ",", 10)
    assert table.column_names == list(chunk) == ["id", "a", "a.1"]


def test_parquet_tables_equal_the_list_path(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"cid": ["p-1", "p-2", "p-3"], "age": [30, None, 40], "vip": [True, False, None],
                             "balance": [1.5, None, 2.0], "opened": ["2000-01-01", None, "2001-01-01"]}), path)
    mappings = [m for m in _mappings() if m.column in {"age", "vip", "balance", "opened"}]
    chunk, = read_chunks(path, True, ",", 10)
    table, = read_tables(path, True, ",", 10)
    assert build_columns_arrow(table, 1, "cid", "r", mappings) == build_columns(chunk, 1, "cid", "r", mappings)


_DATEISH = st.text(alphabet="0123456789-+ x\x00\u0660", min_size=0, max_size=12)  # \u0660: Arabic-Indic 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_DATEISH, st.dates().map(date.isoformat)), min_size=1, max_size=8),
       st.one_of(st.none(), st.dates()))
def test_numpy_date_screen_agrees_with_the_exact_check(values, low):
    screened = _date_suspects(values, low, None)
    if screened is None:
        return  # left to the exact per-value check
    exact = [i for i, v in enumerate(values)
             if (day := _iso_date(v)) is None or (low is not None and day < low)]
    assert screened == exact


async def test_relaxed_durability_ends_with_the_import(start, database_url):
    svc = await start(DEFINITION)
    channel = grpc.aio.insecure_channel(svc.address)
    stub = pbg.ProfileServiceStub(channel)
    columns = T.ImportColumns(row_numbers=[1, 2], customer_ids=["s-1", "s-2"])
    columns.attributes.add(name="age").int_values.values.extend([30, 40])
    requests = [pb.ImportCustomersRequest(import_id="sync", batch_number=k, columns=columns) for k in range(3)]
    engine = svc.runtime.database.engine
    sqlite = engine.dialect.name == "sqlite"
    async with engine.connect() as connection:
        before = (await connection.exec_driver_sql("PRAGMA synchronous" if sqlite else "SHOW synchronous_commit")
                  ).scalar()
    assert before == (1 if sqlite else before)  # SQLite: the platform's NORMAL; PostgreSQL: the server's setting
    response = await stub.ImportCustomers(iter(requests))
    assert (response.imported, response.batches) == (6, 3)
    # Every connection the pool hands out afterwards has the platform's durability back.
    connections = [await engine.connect() for _ in range(3)]
    try:
        for connection in connections:
            setting = "PRAGMA synchronous" if sqlite else "SHOW synchronous_commit"
            assert (await connection.exec_driver_sql(setting)).scalar() == before
    finally:
        for connection in connections:
            await connection.close()
    await channel.close()
