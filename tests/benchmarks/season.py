"""Planning and enqueueing a whole season: validate, plan and submit 60 episodes of 30 shots each.

The storyboards are generated in code (episode numbers change seeds and prompts, so no two episodes share
a step). A child process does the work against a real redis-server with no workers, through the same
`dispatch.submit` and Celery sender as `farm submit`: the run state is stored and the root steps are sent.
Peak memory is the child's peak resident set, VmHWM (interpreter and imports included), next to its
resident set once the imports are done; the difference is what the season itself needed. VmHWM is what
ru_maxrss reports, less the parent's size that ru_maxrss carries over the fork and exec (under `make
bench` the parent has grown by then, and ru_maxrss would report it instead of the child).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from farm.ops.redis_server import RedisServer
from farm.ops.supervisor import free_port
from farm.planning.plan import build_plan
from farm.planning.routing import QUEUES
from farm.runs import dispatch
from farm.runs.state import RunStore
from tasks.app import make_app
from tasks.sender import CelerySender
from tests.benchmarks.episodes import episode_doc, validated

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class SeasonResult:
    episodes: int
    shots_per_episode: int
    steps: int
    wall_s: float
    generate_s: float
    validate_s: float
    plan_s: float
    submit_s: float
    baseline_rss_mb: float
    """The child's resident set after its imports, before the first episode."""
    peak_rss_mb: float
    """The child's peak resident set (VmHWM) at the end."""
    messages_queued: int
    """Celery messages waiting on the farm's queues (root steps; no worker drains them)."""
    redis_used_mb: float

    @property
    def per_episode_ms(self) -> float:
        return self.wall_s * 1000 / self.episodes if self.episodes else 0.0

    @property
    def season_rss_mb(self) -> float:
        return max(0.0, self.peak_rss_mb - self.baseline_rss_mb)


def measure(episodes: int = 60, shots: int = 30, timeout_s: float = 600.0) -> SeasonResult:
    with tempfile.TemporaryDirectory(prefix="farm-bench-season-") as tmp:
        server = RedisServer(Path(tmp) / "redis", free_port())
        server.start()
        try:
            child = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "tests.benchmarks.season",
                    "--child",
                    server.url,
                    str(episodes),
                    str(shots),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=True,
            )
            figures: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
            client = redis.Redis.from_url(server.url)
            queued = sum(int(client.llen(queue)) for queue in QUEUES)
            used_mb = int(client.info("memory")["used_memory"]) / 2**20
            client.close()
        finally:
            server.stop()
    return SeasonResult(
        episodes=episodes,
        shots_per_episode=shots,
        messages_queued=queued,
        redis_used_mb=used_mb,
        **figures,
    )


def _status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: its peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(url: str, episodes: int, shots: int) -> dict[str, float | int]:
    """Runs in the child process: every episode through validate, plan and submit; timings by phase."""
    baseline = _status_mb("VmRSS")
    runs = RunStore(redis.Redis.from_url(url))
    sender = CelerySender(make_app(url))
    phases = {"generate_s": 0.0, "validate_s": 0.0, "plan_s": 0.0, "submit_s": 0.0}
    steps = 0
    out = Path(tempfile.gettempdir()) / "farm-bench-season-out"
    start = time.perf_counter()
    for number in range(1, episodes + 1):
        t0 = time.perf_counter()
        doc = episode_doc(number, shots)
        t1 = time.perf_counter()
        episode = validated(doc, f"storyboard_ep_{number:03d}.json")
        t2 = time.perf_counter()
        plan = build_plan(episode)
        t3 = time.perf_counter()
        dispatch.submit(
            runs,
            sender,
            plan,
            backend="fal",
            namespace="render",
            output=out,
            storyboard=str(episode.storyboard_file),
        )
        t4 = time.perf_counter()
        steps += len(plan.steps)
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[name] += seconds
    wall = time.perf_counter() - start
    return {
        "steps": steps,
        "wall_s": wall,
        **phases,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": _status_mb("VmHWM"),
    }


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        print(json.dumps(child(argv[1], int(argv[2]), int(argv[3]))))
        return
    result = measure()
    print(
        json.dumps(
            {
                **result.__dict__,
                "per_episode_ms": round(result.per_episode_ms, 1),
                "season_rss_mb": result.season_rss_mb,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
