"""What one dependency hop costs on the farm, against a bare Celery chain of no-op tasks on the same Redis.

Farm: a storyboard of held shots, each opening on the previous shot's first frame, is one long chain of
image and upscale steps on the embedded engine, so every step runs in the post pool. The holds that
branch off the chain and the final concat are taken out of the plan: their encodes would run beside the
chain and take the CPU from it on a 2-core box, and bare Celery's chain has nothing beside it either.
A hop is a consumer's `started_at` minus its producer's `finished_at`: the worker marks
the step done, the Lua script releases the next one, it is offered, admitted and sent, another worker
process picks it up and claims it. A warm-up run first, so no process pays its start-up inside the figure.

Bare Celery: a worker with the same pool, concurrency and flags as the farm's post worker, on the farm's
Redis, runs a canvas chain of N no-op tasks (after a short warm-up chain); its gap is one task's end to
the next one's start. Farm chains and bare chains alternate for a few rounds, so a change in the machine's
load falls on both, and the ratio is of the medians.
"""

from __future__ import annotations

import json
import secrets
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from celery import Celery, chain

from farm.ops.supervisor import POOLS, Farm, worker_command
from farm.planning.plan import Plan
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
    rounds: int
    farm_status: str
    """'succeeded' when every round's run did, else the first other status."""
    farm_hops: int
    farm_hop_s: float
    """Mean over every round's chain edges."""
    farm_hop_median_s: float
    bare_tasks: int
    """Gaps measured in bare Celery (chain length - 1, per round)."""
    bare_gap_s: float
    """Mean of the next task's start - the previous task's end."""
    bare_gap_median_s: float
    bare_per_task_s: float
    """Every round's chain: total time (send to last end) / number of tasks, averaged."""

    @property
    def ratio(self) -> float:
        """Median farm hop over median bare gap: both are end-of-one-step to start-of-the-next, and the
        median keeps a hop that met an encode or a scheduler hiccup on a shared 2-core box from deciding."""
        return self.farm_hop_median_s / self.bare_gap_median_s if self.bare_gap_median_s else 0.0

    @property
    def ratio_of_means(self) -> float:
        return self.farm_hop_s / self.bare_gap_s if self.bare_gap_s else 0.0


def measure(hops: int = 40, bare_tasks: int = 100, concurrency: int = 4, rounds: int = 3) -> HopResult:
    """Alternate farm chains and bare chains, `rounds` times, so drift in the machine's load hits both."""
    settings: dict[str, str | int | float] = {"engine": "local", "post_concurrency": concurrency}
    farm_gaps: list[float] = []
    bare_gaps: list[float] = []
    per_task: list[float] = []
    statuses: list[str] = []
    with fresh_farm(("post",), settings) as bench, bare_worker(bench.farm) as (app, client):
        bench.run(chain_only(plan_of(chain_doc(3, episode=2))), "local", timeout_s=120)  # warm-up
        _run_chain(app, client, 10)  # warm-up: every pool process has run a task
        for n in range(rounds):
            times = bench.run(chain_only(plan_of(chain_doc(hops, episode=10 + n))), "local", timeout_s=300)
            statuses.append(times.status)
            farm_gaps += times.gaps_s(CHAIN_KINDS)
            total, gaps = _run_chain(app, client, bare_tasks)
            per_task.append(total / bare_tasks)
            bare_gaps += gaps
    return HopResult(
        pool=POOLS["post"],
        concurrency=concurrency,
        rounds=rounds,
        farm_status=next((s for s in statuses if s != "succeeded"), "succeeded"),
        farm_hops=len(farm_gaps),
        farm_hop_s=_mean(farm_gaps),
        farm_hop_median_s=_median(farm_gaps),
        bare_tasks=len(bare_gaps),
        bare_gap_s=_mean(bare_gaps),
        bare_gap_median_s=_median(bare_gaps),
        bare_per_task_s=_mean(per_task),
    )


def chain_only(plan: Plan) -> Plan:
    """The plan's image and upscale steps alone: one dependency chain and nothing running beside it."""
    kept = tuple(s for s in plan.steps if s.kind.value in (*CHAIN_KINDS, "t2i"))
    return plan.model_copy(update={"steps": kept})


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else 0.0


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


@contextmanager
def bare_worker(farm: Farm) -> Iterator[tuple[Celery, redis.Redis]]:
    """A worker for the no-op chain, started like the farm's post worker, on the farm's Redis."""
    command = worker_command("post", farm.settings, f"bench-hop.{secrets.token_hex(3)}@%h")
    command[command.index("-A") + 1] = "tests.benchmarks.bare_chain"
    command[command.index("-Q") + 1] = bare_chain.QUEUE
    log_path = farm.log_dir / "worker-bench-hop.log"
    with open(log_path, "ab") as log:
        worker = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=farm.env, cwd=ROOT)
    client = redis.Redis.from_url(farm.broker_url)
    try:
        _wait_ready(log_path, worker)
        yield bare_chain.make_app(farm.broker_url), client
    finally:
        client.close()
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def _run_chain(
    app: Celery, client: redis.Redis, tasks: int, timeout_s: float = 120.0
) -> tuple[float, list[float]]:
    """Run a chain of `tasks` no-ops; (send to last end, gaps between one's end and the next's start)."""
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
        raise RuntimeError(f"the bare chain ran {len(rows)} of {tasks} tasks in {timeout_s:.0f} s")
    return rows[-1][2] - sent, [rows[i + 1][1] - rows[i][2] for i in range(len(rows) - 1)]


def _wait_ready(log: Path, worker: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while " ready." not in log.read_text(errors="replace"):
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the bare Celery worker did not start; see {log}")
        time.sleep(0.1)


def main() -> None:
    result = measure()
    print(
        json.dumps(
            {**result.__dict__, "ratio": round(result.ratio, 2), "of_means": round(result.ratio_of_means, 2)}
        )
    )


if __name__ == "__main__":
    main()
