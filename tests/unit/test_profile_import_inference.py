"""Schema inference from small generated CSV and Parquet files, and reading them back in chunks."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lodestar_cli.commands.imports import build_rows, count_rows, read_chunks, sample_columns
from services.profile.registry import infer_schema, parse_schema


def write_csv(path):
    rows = ['id|Full Name|Segment|Score|Joined|Note', '1|"Li, Wei"|mass|10|2020-01-01|"said ""hi"""']
    rows += [f'{i}|"N{i}"|{"mass" if i % 2 else "affluent"}|{i}|2020-01-{i:02d}|' for i in range(2, 9)]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_csv_inference_with_quotes_and_a_custom_separator(tmp_path):
    path = write_csv(tmp_path / "c.csv")
    sample = sample_columns(path, False, "|", 100)
    assert sample["Full Name"][0] == "Li, Wei" and sample["Note"][0] == 'said "hi"'
    document = infer_schema(sample, id_column="id")
    columns = {c["name"]: c for c in document["columns"]}
    assert "id" not in columns and document["id_column"] == "id"
    assert columns["full_name"] == {"column": "Full Name", "name": "full_name", "core": True}
    assert columns["segment"]["type"] == "enum" and columns["segment"]["allowed_values"] == ["affluent", "mass"]
    assert columns["score"]["type"] == "integer" and columns["joined"]["type"] == "date"
    assert count_rows(path, False) == 8


def test_parquet_inference_uses_the_same_rules(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"cid": ["a", "b", "c", "d"], "amount": [1.5, 2.0, None, 3.25],
                             "active": [True, False, True, None], "tier": ["x", "x", "y", "y"],
                             "phone": ["+1", "+2", "+3", "+4"]}), path)
    document = infer_schema(sample_columns(path, True, ",", 10), id_column="cid")
    columns = {c["name"]: c for c in document["columns"]}
    assert columns["amount"]["type"] == "decimal" and columns["active"]["type"] == "boolean"
    assert columns["tier"]["type"] == "enum" and columns["phone"] == {"column": "phone", "name": "phone", "core": True}
    assert count_rows(path, True) == 4


def test_rows_are_built_typed_with_row_numbers_and_stable_ids(tmp_path):
    path = write_csv(tmp_path / "c.csv")
    document = infer_schema(sample_columns(path, False, "|", 100))
    _, mappings = parse_schema(document)
    chunks = list(read_chunks(path, False, "|", 5))
    assert [len(c["id"]) for c in chunks] == [5, 3]
    rows = build_rows(chunks[1], 6, None, "rabc", mappings)
    assert [r.row_number for r in rows] == [6, 7, 8]
    assert rows[0].customer.customer_id == "rabc-6" and rows[0].customer.full_name == "N6"
    assert rows[0].customer.attributes["score"].int_value == 6
    assert rows[0].customer.attributes["id"].int_value == 6
    assert "note" not in rows[0].customer.attributes  # empty cell: no value


def test_a_schema_naming_an_unknown_type_is_rejected():
    with pytest.raises(ValueError, match="columns\\[0\\]"):
        parse_schema({"columns": [{"column": "a", "type": "float"}]})
