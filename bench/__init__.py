"""Lodestar benchmarks: one module per benchmark, each with ``main(argv) -> int``; see bench/report.py."""
