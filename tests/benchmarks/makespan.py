"""Makespan of one episode with no cap in the way, against the lower bound its own step times allow.

A 31-shot episode (see `episodes.py`) runs on a fresh farm (one cloud and one post worker) against the fal
emulator, every card latency scaled by `latency_scale`, with fal's in-flight cap far above what the
episode can use. Makespan is the run's creation to its last step's finish. The bound is the longest path
through the plan's DAG weighted by the durations measured in the same run: with unlimited workers that
is all the time the episode needs, so makespan / bound is what the farm's hand-overs and queueing cost.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.benchmarks.episodes import episode_doc, plan_of
from tests.benchmarks.farm_runs import LATENCY_SCALE, UNCAPPED, RunTimes, StandIns, run_on_fal

TARGET = 1.10


@dataclass(frozen=True)
class MakespanResult:
    shots: int
    steps: int
    finished: int
    cached: int
    retries: int
    status: str
    latency_scale: float
    makespan_s: float
    critical_path_s: float
    sequential_s: float
    median_gap_s: float
    """Median over steps with inputs: start minus the last input's finish (release, queue, pickup)."""
    max_gap_s: float
    cloud_worker_cores: float
    """CPU time of the cloud worker process over the makespan."""

    @property
    def ratio_to_bound(self) -> float:
        return self.makespan_s / self.critical_path_s if self.critical_path_s else 0.0

    @property
    def speedup(self) -> float:
        """Sequential time over makespan: how much of the episode ran side by side."""
        return self.sequential_s / self.makespan_s if self.makespan_s else 0.0


def result_of(times: RunTimes, shots: int, latency_scale: float) -> MakespanResult:
    gaps = times.gaps_s()
    return MakespanResult(
        shots=shots,
        steps=len(times.steps),
        finished=times.finished,
        cached=times.cached,
        retries=times.retries,
        status=times.status,
        latency_scale=latency_scale,
        makespan_s=times.makespan_s,
        critical_path_s=times.critical_path_s,
        sequential_s=times.sequential_s,
        median_gap_s=statistics.median(gaps) if gaps else 0.0,
        max_gap_s=max(gaps, default=0.0),
        cloud_worker_cores=times.worker_cores("cloud"),
    )


def measure(
    shots: int = 31, latency_scale: float = LATENCY_SCALE, timeout_s: float = 600.0
) -> MakespanResult:
    """Run a `shots`-shot episode once with no effective fal cap."""
    plan = plan_of(episode_doc(1, shots))
    with tempfile.TemporaryDirectory(prefix="farm-bench-stand-ins-") as tmp:
        stand_ins = StandIns(Path(tmp))
        stand_ins.prepare()
        times = run_on_fal(
            plan,
            stand_ins,
            latency_scale=latency_scale,
            cap=UNCAPPED,
            order="critical_path",
            timeout_s=timeout_s,
        )
    return result_of(times, shots, latency_scale)


def main() -> None:
    result = measure()
    figures = {**asdict(result), "ratio_to_bound": result.ratio_to_bound, "speedup": result.speedup}
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in figures.items()}))


if __name__ == "__main__":
    main()
