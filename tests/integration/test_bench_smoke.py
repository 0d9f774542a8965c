"""Smoke runs of the benchmarks at tiny sizes, so the benchmark code cannot rot, plus the bound arithmetic."""

from __future__ import annotations

import pytest

from tests.benchmarks import fal_caps, hop_overhead, makespan, season
from tests.benchmarks.cloud_capacity import measure
from tests.benchmarks.episodes import chain_doc, episode_doc, plan_of
from tests.benchmarks.farm_runs import RunTimes, StepTiming

SMOKE_SCALE = 0.02
"""Shorter emulated latencies than `make bench` uses: the smoke runs check the code, not the figures."""


def test_cloud_capacity_benchmark_smoke() -> None:
    result = measure(requests=12, concurrency=12, hold_s=3.0)
    assert result.peak_in_flight >= 10, result
    assert result.peak_rss_mb >= result.idle_rss_mb > 0


def _step(
    step_id: str, inputs: tuple[str, ...], start: float, end: float, queue: str = "cloud"
) -> StepTiming:
    return StepTiming(step_id, "t2i", inputs, queue, "done", False, start, start, end)


def test_bounds_come_from_measured_durations() -> None:
    """a -> b -> d and a -> c -> d: the longer branch (b, 3 s) makes the critical path 1 + 3 + 1 s."""
    times = RunTimes(
        "run",
        "succeeded",
        100.0,
        (
            _step("a", (), 100.5, 101.5),
            _step("b", ("a",), 101.6, 104.6),
            _step("c", ("a",), 101.7, 102.7, queue="post"),
            _step("d", ("b", "c"), 104.8, 105.8),
        ),
    )
    assert times.critical_path_s == pytest.approx(5.0)
    assert times.sequential_s == pytest.approx(6.0)
    assert times.makespan_s == pytest.approx(5.8)
    assert times.work_s("cloud") == pytest.approx(5.0)
    assert times.gaps_s() == pytest.approx([0.1, 0.2, 0.2])
    assert times.finished == 4 and times.cached == 0


def test_generated_storyboards_have_the_studio_mix() -> None:
    doc = episode_doc(1, 31)
    approaches = [shot["generation_approach"] for shot in doc["shots"]]
    assert approaches.count("standard_flf") == 25
    assert approaches.count("triptych_split_flf") == 5
    assert approaches.count("held_frame_static") == 1
    assert sum(1 for shot in doc["shots"] if "continuity_from" in shot) >= 3
    plan_of(doc)  # validates, and refuses prompts the compiler would cut
    chain = plan_of(chain_doc(5))
    assert sum(1 for s in chain.steps if s.kind.value in hop_overhead.CHAIN_KINDS) == 5


def test_makespan_benchmark_smoke() -> None:
    result = makespan.measure(shots=4, latency_scale=SMOKE_SCALE, timeout_s=120)
    assert result.status == "succeeded", result
    assert result.finished == result.steps > 0 and result.cached == 0, result
    assert result.makespan_s >= 0.9 * result.critical_path_s > 0, result
    assert result.sequential_s >= result.critical_path_s, result
    assert result.speedup > 1 and result.ratio_to_bound > 0, result


def test_fal_caps_benchmark_smoke() -> None:
    result = fal_caps.measure(shots=4, caps=(2,), latency_scale=SMOKE_SCALE, timeout_s=120)
    assert [(r.order, r.cap) for r in result.runs] == [("critical_path", 2), ("fifo", 2)]
    for run in result.runs:
        assert run.status == "succeeded", run
        assert run.finished == run.steps > run.fal_steps > 0 and run.cached == 0, run
        assert run.bound_s >= run.fal_work_s / 2 > 0, run
        assert run.makespan_s >= 0.9 * run.bound_s, run


def test_hop_overhead_benchmark_smoke() -> None:
    result = hop_overhead.measure(hops=5, bare_tasks=20, concurrency=2, rounds=1)
    assert result.farm_status == "succeeded", result
    assert result.farm_hops == 5, result
    assert 0 < result.farm_hop_s < 1.0, result
    assert 0 < result.bare_per_task_s < 1.0 and result.bare_gap_median_s > 0, result
    assert result.bare_tasks == 19, result
    assert result.ratio > 0


def test_season_benchmark_smoke() -> None:
    result = season.measure(episodes=2, shots=5, timeout_s=120)
    assert result.steps > 2 * 5, result
    assert result.messages_queued > 0, result
    assert result.peak_rss_mb >= result.baseline_rss_mb > 0, result
    phases = result.generate_s + result.validate_s + result.plan_s + result.submit_s
    assert 0 < phases <= result.wall_s, result
