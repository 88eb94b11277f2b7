"""Run every benchmark module ``bench/<name>.py`` that defines ``main(argv)``, one after the other.

    python -m bench.run_all [--scale small|full] [--only NAME ...] [--list]

A failing benchmark (non-zero return or an exception) is reported and the run continues; the exit status is
non-zero if any failed. A benchmark that skips (e.g. its data set is absent) returns 0 and says so itself.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import bench

# faults is not a benchmark: it has its own target (make faults) and its verdicts go to docs/reliability.md.
EXCLUDED = frozenset({"run_all", "report", "echo", "faults"})


def discover() -> list[str]:
    """Names of the benchmark modules, sorted (modules starting with ``_`` are helpers)."""
    path = [str(Path(bench.__file__).parent)]
    return sorted(
        info.name
        for info in pkgutil.iter_modules(path)
        if not info.ispkg and info.name not in EXCLUDED and not info.name.startswith("_")
    )


def _load(name: str) -> Callable[[list[str] | None], int] | None:
    module = importlib.import_module(f"bench.{name}")
    entry = getattr(module, "main", None)
    return entry if callable(entry) else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--scale", choices=("small", "full"), default="small")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmark modules")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    names = discover()
    if args.only:
        unknown = sorted(set(args.only) - set(names))
        if unknown:
            parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}")
        names = [n for n in names if n in args.only]
    if args.list:
        print("\n".join(names))
        return 0

    results: list[tuple[str, str, float]] = []
    for name in names:
        print(f"=== bench.{name} --scale {args.scale}", flush=True)
        started = time.perf_counter()
        try:
            entry = _load(name)
            if entry is None:
                status = "skipped (no main)"
            else:
                code = entry(["--scale", args.scale])
                status = "ok" if not code else f"FAILED (exit {code})"
        except SystemExit as exc:  # argparse inside a benchmark
            status = "ok" if exc.code in (0, None) else f"FAILED (exit {exc.code})"
        except Exception:  # one broken benchmark must not stop the others
            traceback.print_exc()
            status = "FAILED (exception)"
        elapsed = time.perf_counter() - started
        results.append((name, status, elapsed))
        print(f"=== bench.{name}: {status} in {elapsed:.1f} s", flush=True)

    print("\nsummary")
    width = max((len(n) for n, _, _ in results), default=10)
    for name, status, elapsed in results:
        print(f"  {name:<{width}}  {status:<22} {elapsed:8.1f} s")
    failed = [n for n, s, _ in results if s.startswith("FAILED")]
    print(f"{len(results) - len(failed)}/{len(results)} passed" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
