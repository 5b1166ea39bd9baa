"""Benchmarks: run as modules (`python -m tests.benchmarks.bench_...`), not collected by pytest."""
