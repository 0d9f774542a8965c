"""What one dependency hop costs on the farm, against a bare Celery chain of no-op tasks on the same Redis.

Farm: a storyboard of held shots, each opening on the previous shot's first frame, is one long chain of
image and upscale steps (the short holds branch off it) on the embedded engine, so every step runs in
the post pool. A hop is a consumer's `started_at` minus its producer's `finished_at`: the worker marks
the step done, the Lua script releases the next one, it is offered, admitted and sent, another worker
process picks it up and claims it. A warm-up run first, so no process pays its start-up inside the figure.

Bare Celery: a worker with the same pool, concurrency and flags as the farm's post worker, on the farm's
Redis, runs a canvas chain of N no-op tasks (after a short warm-up chain). Per task = total time / N;
the mean gap between one task's end and the next one's start is reported too.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery, chain

from farm.supervisor import POOLS, Farm, worker_command
from tests.benchmarks import bare_chain
from tests.benchmarks.episodes import chain_doc, plan_of
from tests.benchmarks.farm_runs import fresh_farm

TARGET = 2.0
"""Farm hop over bare Celery's per-task time."""
ROOT = Path(__file__).resolve().parents[2]
CHAIN_KINDS = ("img2img", "upscale")
"""The steps on the chain: each has exactly one input, the previous link."""


@dataclass(frozen=True)
class HopResult:
    pool: str
    concurrency: int
    farm_status: str
    farm_hops: int
    farm_hop_s: float
    """Mean over the chain's edges."""
    farm_hop_median_s: float
    bare_tasks: int
    bare_per_task_s: float
    """Total time of the chain (send to last task's end) / number of tasks."""
    bare_gap_s: float
    """Mean of next task's start - previous task's end."""

    @property
    def ratio(self) -> float:
        return self.farm_hop_s / self.bare_per_task_s if self.bare_per_task_s else 0.0


def measure(hops: int = 40, bare_tasks: int = 100, concurrency: int = 4) -> HopResult:
    settings: dict[str, str | int | float] = {"engine": "local", "post_concurrency": concurrency}
    with fresh_farm(("post",), settings) as bench:
        bench.run(plan_of(chain_doc(3, episode=2)), "local", timeout_s=120)  # warm-up, other step ids
        times = bench.run(plan_of(chain_doc(hops)), "local", timeout_s=300)
        gaps = times.gaps_s(CHAIN_KINDS)
        per_task, gap = bare_celery(bench.farm, bare_tasks)
    return HopResult(
        pool=POOLS["post"],
        concurrency=concurrency,
        farm_status=times.status,
        farm_hops=len(gaps),
        farm_hop_s=statistics.fmean(gaps) if gaps else 0.0,
        farm_hop_median_s=statistics.median(gaps) if gaps else 0.0,
        bare_tasks=bare_tasks,
        bare_per_task_s=per_task,
        bare_gap_s=gap,
    )


def bare_celery(farm: Farm, tasks: int) -> tuple[float, float]:
    """Run the no-op chain on a worker started like the farm's post worker; (per task, mean gap)."""
    command = worker_command("post", farm.settings, f"bench-hop.{secrets.token_hex(3)}@%h")
    command[command.index("-A") + 1] = "tests.benchmarks.bare_chain"
    command[command.index("-Q") + 1] = bare_chain.QUEUE
    log_path = farm.log_dir / "worker-bench-hop.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=farm.env, cwd=ROOT)
    try:
        _wait_ready(log_path, worker)
        app = bare_chain.make_app(farm.broker_url)
        client = redis.Redis.from_url(farm.broker_url)
        _run_chain(app, client, 10)  # warm-up: every pool process has run a task
        per_task, gap = _run_chain(app, client, tasks)
        client.close()
        return per_task, gap
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _run_chain(app: Celery, client: redis.Redis, tasks: int, timeout_s: float = 120.0) -> tuple[float, float]:
    key = f"bench:hop:{secrets.token_hex(4)}"
    links = [app.signature(bare_chain.TASK, args=(i, key), immutable=True) for i in range(tasks)]
    sent = time.time()
    chain(*links).apply_async(queue=bare_chain.QUEUE)
    deadline = time.monotonic() + timeout_s
    while client.llen(key) < tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    rows = sorted(json.loads(raw) for raw in client.lrange(key, 0, -1))
    client.delete(key)
    if len(rows) < tasks:
        return 0.0, 0.0
    gaps = [rows[i + 1][1] - rows[i][2] for i in range(len(rows) - 1)]
    return (rows[-1][2] - sent) / tasks, statistics.fmean(gaps) if gaps else 0.0


def _wait_ready(log: Path, worker: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the bare Celery worker did not start; see {log}")
        time.sleep(0.1)


def main() -> None:
    result = measure()
    print(json.dumps({**result.__dict__, "ratio": round(result.ratio, 2)}))


if __name__ == "__main__":
    main()
