"""Shared helpers for the benchmarks under ``bench/``.

Every benchmark measures a same-run baseline, prints its figures and the ratio, and records them with
:func:`append_section`, which appends a dated section (title, UTC date, machine, command, lines) to
``docs/benchmarks.md``. ``BENCH_REPORT_PATH`` overrides the target file (tests and dry runs).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import shlex
import statistics
import sys
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPORT_PATH = ROOT / "docs" / "benchmarks.md"

HEADER = """# Benchmarks

Figures appended by the benchmarks under `bench/` (`make bench` runs them all at small scale, `make bench-full` at
full scale; `python -m bench.<name> [--scale small|full]` runs one). Each section states the date (UTC), the
machine, the command and the same-run baseline the figures are compared with. Newest sections are at the end.
"""

_lock = threading.Lock()


def report_path() -> Path:
    override = os.environ.get("BENCH_REPORT_PATH")
    return Path(override) if override else REPORT_PATH


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def _ram_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


def machine_description() -> str:
    """One line: cpu model, cores, RAM, OS and Python version."""
    ram = _ram_gib()
    ram_text = f"{ram:.1f} GiB RAM" if ram is not None else "RAM unknown"
    return (
        f"{_cpu_model()}, {os.cpu_count() or '?'} cores, {ram_text}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()} ({platform.python_implementation()})"
    )


def command_line(argv: Sequence[str] | None = None, module: str | None = None) -> str:
    """The command that reproduces this run, e.g. ``python -m bench.decision_latency --scale small``."""
    args = list(sys.argv[1:] if argv is None else argv)
    head = ["python", "-m", module] if module else [Path(sys.argv[0]).name or "python"]
    return shlex.join(head + args)


def append_section(title: str, command: str, lines: list[str]) -> None:
    """Append a dated section with the machine and the command to docs/benchmarks.md.

    ``lines`` is written as given: a markdown table, bullet lines, or both (blank lines are kept).
    """
    path = report_path()
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"## {title}",
        "",
        f"- date: {now}",
        f"- machine: {machine_description()}",
        f"- command: `{command}`",
        "",
        *lines,
    ]
    with _lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # two benchmark processes appending at once never interleave
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                handle.write(HEADER + "\n")
            else:
                handle.write("\n")
            handle.write("\n".join(body) + "\n")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Render a small markdown table as lines, ready for :func:`append_section`."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return str(value).replace("|", "\\|")

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def ratio(value: float, baseline: float) -> float:
    """value / baseline, NaN when the baseline is zero or missing."""
    return value / baseline if baseline else float("nan")


def scale_parser(description: str) -> argparse.ArgumentParser:
    """The common argument parser: ``--scale small|full`` (default small)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--scale", choices=("small", "full"), default="small")
    return parser
