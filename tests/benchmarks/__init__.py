"""Benchmarks: not tests. Each measures and reports ratios side by side in one run."""
