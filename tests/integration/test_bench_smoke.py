"""Smoke runs of the benchmarks at tiny sizes, so the benchmark code cannot rot."""

from __future__ import annotations

from tests.benchmarks.cloud_capacity import measure


def test_cloud_capacity_benchmark_smoke() -> None:
    result = measure(requests=12, concurrency=12, hold_s=3.0)
    assert result.peak_in_flight >= 10, result
    assert result.peak_rss_mb >= result.idle_rss_mb > 0
