"""The same episode under fal in-flight caps, admitted in critical-path order and in release (fifo) order.

Each (order, cap) pair is one run on a fresh farm and a fresh emulator (nothing reused from an earlier
run). The bound for a capped run is the larger of two limits, both from the run's own measured durations:
the critical path (no schedule beats it) and the fal work divided by the cap (cap requests at a time
cannot get through the cloud steps' total time any faster). fal work is the sum of the durations of the
steps that ran on the cloud queue.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.benchmarks.episodes import episode_doc, plan_of
from tests.benchmarks.farm_runs import LATENCY_SCALE, RunTimes, StandIns, run_on_fal

TARGET = 1.15
"""For the critical-path order; fifo is there to compare against."""
CAPS = (4, 10, 40)
ORDERS = ("critical_path", "fifo")


@dataclass(frozen=True)
class CapRun:
    order: str
    cap: int
    status: str
    steps: int
    finished: int
    cached: int
    retries: int
    cap_waits: int
    """Attempts that found the cap full and came back later (admission under the cap should leave none)."""
    makespan_s: float
    critical_path_s: float
    fal_work_s: float
    fal_steps: int
    cloud_worker_cores: float

    @property
    def bound_s(self) -> float:
        return max(self.critical_path_s, self.fal_work_s / self.cap)

    @property
    def ratio_to_bound(self) -> float:
        return self.makespan_s / self.bound_s if self.bound_s else 0.0


@dataclass(frozen=True)
class CapsResult:
    shots: int
    latency_scale: float
    runs: tuple[CapRun, ...]

    def run(self, order: str, cap: int) -> CapRun:
        return next(r for r in self.runs if r.order == order and r.cap == cap)


def cap_run(times: RunTimes, order: str, cap: int) -> CapRun:
    return CapRun(
        order=order,
        cap=cap,
        status=times.status,
        steps=len(times.steps),
        finished=times.finished,
        cached=times.cached,
        retries=times.retries,
        cap_waits=times.cap_waits,
        makespan_s=times.makespan_s,
        critical_path_s=times.critical_path_s,
        fal_work_s=times.work_s("cloud"),
        fal_steps=times.count("cloud"),
        cloud_worker_cores=times.worker_cores("cloud"),
    )


def measure(
    shots: int = 31,
    caps: Sequence[int] = CAPS,
    orders: Sequence[str] = ORDERS,
    latency_scale: float = LATENCY_SCALE,
    timeout_s: float = 900.0,
) -> CapsResult:
    """One run per (order, cap), smallest cap first."""
    plan = plan_of(episode_doc(1, shots))
    runs = []
    with tempfile.TemporaryDirectory(prefix="farm-bench-stand-ins-") as tmp:
        stand_ins = StandIns(Path(tmp))
        stand_ins.prepare()
        for cap in sorted(caps):
            for order in orders:
                times = run_on_fal(
                    plan, stand_ins, latency_scale=latency_scale, cap=cap, order=order, timeout_s=timeout_s
                )
                runs.append(cap_run(times, order, cap))
    return CapsResult(shots, latency_scale, tuple(runs))


def main() -> None:
    result = measure()
    for run in result.runs:
        print(
            json.dumps(
                {
                    "order": run.order,
                    "cap": run.cap,
                    "status": run.status,
                    "makespan_s": round(run.makespan_s, 2),
                    "bound_s": round(run.bound_s, 2),
                    "ratio_to_bound": round(run.ratio_to_bound, 3),
                    "cap_waits": run.cap_waits,
                }
            )
        )


if __name__ == "__main__":
    main()
