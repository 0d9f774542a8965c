"""How many fal requests one cloud worker process keeps in flight, and at what memory cost.

A storyboard of N independent held shots gives N text-to-image steps that are ready at once. One cloud
worker (threads pool) runs them against the fal emulator, whose latency is stretched so every request
stays open for seconds; we sample the emulator's outstanding requests and the worker's resident memory.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import redis

from emulators.fal_server import FalEmulator
from farm.config.settings import Settings
from farm.episode.validate import check_episode
from farm.ops.supervisor import free_port, start_farm, stop_farm
from farm.planning.plan import build_plan
from farm.runs import dispatch
from farm.runs.state import RunStore
from tasks.app import make_app
from tasks.sender import CelerySender

REGISTRY: dict[str, Any] = {"schema_version": 1, "characters": {}}


@dataclass(frozen=True)
class CapacityResult:
    requests: int
    concurrency: int
    peak_in_flight: int
    idle_rss_mb: float
    peak_rss_mb: float

    @property
    def rss_per_request_kb(self) -> float:
        extra = max(0.0, self.peak_rss_mb - self.idle_rss_mb)
        return extra * 1024 / self.peak_in_flight if self.peak_in_flight else 0.0


def many_held_shots(n: int) -> dict[str, Any]:
    shots = [
        {
            "shot": i,
            "scene": 1,
            "generation_approach": "held_frame_static",
            "characters_in_shot": [],
            "first_frame": f"Wide view of harbour number {i} at dusk, lamps reflected in still water.",
            "duration_s": 1,
        }
        for i in range(1, n + 1)
    ]
    return {
        "schema_version": 3,
        "project": "CAP",
        "project_name": "capacity",
        "episode": 1,
        "title": "capacity",
        "aspect_ratio": "9:16",
        "defaults": {"engine": "z_image_turbo"},
        "shots": shots,
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def measure(requests: int, concurrency: int, hold_s: float = 8.0) -> CapacityResult:
    """Run `requests` ready steps through one cloud worker; each fal request stays open ~`hold_s`."""
    latency_scale = hold_s / 4.0  # Z-Image's card latency is 4 s
    with (
        tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp,
        FalEmulator(latency_scale=latency_scale, key="bench-key") as emulator,
    ):
        home = Path(tmp)
        env = {
            "FARM_HOME": str(home),
            "FAL_KEY": "bench-key",
            "FARM_FAL_URL": emulator.url,
            "FARM_ENGINE": "fal",
            "FARM_CLOUD_CONCURRENCY": str(concurrency),
            "FARM_FAL_MAX_IN_FLIGHT": str(requests + 10),
            "FARM_FAL_POLL_INTERVAL_S": "0.5",
            "NO_PROXY": "127.0.0.1,localhost",
        }
        with mock.patch.dict(os.environ, env):
            farm = start_farm(
                Settings(),
                queues=("cloud",),
                flower=False,
                redis_port=free_port(),
                private_dir=home / "private",
            )
        try:
            worker_pid = farm.workers["cloud"].pid
            idle = rss_mb(worker_pid)
            plan = build_plan(
                check_episode(
                    many_held_shots(requests), REGISTRY, Path("capacity.json"), Path("lora_registry.json")
                )
            )
            runs = RunStore(redis.Redis.from_url(farm.broker_url))
            run_id = dispatch.submit(
                runs,
                CelerySender(make_app(farm.broker_url)),
                plan,
                backend="fal",
                namespace="render",
                output=home / "out",
                storyboard="capacity.json",
            )
            peak, peak_rss = _sample(emulator, worker_pid, requests, deadline_s=hold_s * 6 + 30)
            dispatch.cancel(runs, CelerySender(make_app(farm.broker_url)), run_id)
        finally:
            stop_farm(farm, timeout_s=30)
    return CapacityResult(requests, concurrency, peak, idle, peak_rss)


def _sample(emulator: FalEmulator, pid: int, requests: int, deadline_s: float) -> tuple[int, float]:
    peak, peak_rss = 0, 0.0
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        outstanding = emulator.outstanding()
        if outstanding >= peak:
            peak, peak_rss = outstanding, max(peak_rss, rss_mb(pid))
        if peak >= requests or (peak and outstanding == 0 and len(emulator.ledger()) >= requests):
            break
        time.sleep(0.1)
    return peak, peak_rss


def main() -> None:
    result = measure(requests=150, concurrency=160)
    print(
        json.dumps(
            {
                **result.__dict__,
                "rss_per_request_kb": round(result.rss_per_request_kb, 1),
                "target_in_flight": 100,
                "ratio_to_target": round(result.peak_in_flight / 100, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
