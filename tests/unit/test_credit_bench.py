"""The German credit benchmark's cost rule and its skip (the data set itself is never read in tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench import credit_german


def test_average_cost_uses_the_codebook_matrix_and_the_one_sixth_threshold() -> None:
    bad = np.array([True, True, False, False, False, False])
    pd_values = np.array([0.10, 0.50, 0.16, 0.17, 0.90, 0.01])
    # approved: rows 0 (bad: 5), 2 (good: 0), 5 (good: 0); rejected goods: rows 3 and 4 (1 each)
    assert credit_german.average_cost(bad, pd_values) == pytest.approx(7 / 6)
    assert credit_german.THRESHOLD == pytest.approx(1 / 6)


def test_skips_with_a_message_when_the_data_set_is_absent(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(credit_german, "DATA", tmp_path / "absent" / "german.data")
    monkeypatch.setenv("BENCH_REPORT_PATH", str(tmp_path / "benchmarks.md"))
    assert credit_german.main([]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "benchmarks.md").exists()
