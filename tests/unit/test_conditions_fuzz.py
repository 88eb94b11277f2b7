"""CI's share of the fuzzing: the atheris target on a few hundred generated inputs (grammar-shaped and raw)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz.fuzz_conditions import fuzz_one

_PIECES = st.sampled_from([
    "age", "region", "tag.", "attr.", "feature.", "x", "and", "or", "not", "between", "in", "is", "null",
    "true", "false", "date(", '"2026-01-31"', "count(", "sum(", "txn", ".amount", ",", "90d", "0d", "(", ")",
    "=", "!=", "<", "<=", ">", ">=", "-", "5000", "1.5", '"a\\"b"', '"\\u00e9"', " ", "\n", "\\", '"',
])


@settings(max_examples=250, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_target_on_raw_bytes(data: bytes) -> None:
    fuzz_one(data)


@settings(max_examples=250, deadline=None)
@given(st.lists(_PIECES, max_size=25).map(lambda parts: " ".join(parts).encode()))
def test_fuzz_target_on_grammar_shaped_text(data: bytes) -> None:
    fuzz_one(data)


def test_fuzz_target_accepts_a_valid_condition() -> None:
    fuzz_one(b'age between 25 and 35 and tag.lifecycle = "dormant" and sum(txn.amount, 90d) > 5000')
