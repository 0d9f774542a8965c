"""Real parts: a real redis-server per session, and a whole farm (workers per queue, Flower) per module."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import redis

from farm.config.redis_text import as_text
from farm.config.settings import Settings
from farm.episode.validate import load_episode
from farm.ops.supervisor import Farm, FlowerAccess, restart_exited_workers, start_farm, stop_farm
from farm.planning.plan import Plan, build_plan
from farm.runs import dispatch
from farm.runs.progress import snapshot
from farm.runs.retake import run_source
from farm.runs.state import RunStore
from farm.storage.artifacts import namespace_for
from tasks.app import make_app, signing_of
from tasks.sender import CelerySender
from tests.support.ports import free_port


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def read_until(process: subprocess.Popen[str], marker: str, timeout_s: float = 90) -> str:
    """Read a child's merged output line by line until `marker` shows up; fail if it exits first."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        assert time.monotonic() < deadline and process.poll() is None, seen
        seen += process.stdout.readline()
    return seen


@dataclass
class FarmHandle:
    """A running farm as a test drives it: submit a storyboard, wait until the run has settled."""

    farm: Farm
    out: Path
    backend: str = "local"
    redis: redis.Redis = field(init=False)
    runs: RunStore = field(init=False)
    sender: CelerySender = field(init=False)

    def __post_init__(self) -> None:
        self.redis = redis.Redis.from_url(self.farm.broker_url)
        self.runs = RunStore(self.redis)
        self.sender = CelerySender(make_app(self.farm.broker_url, signing=signing_of(self.farm.settings)))

    def submit(self, storyboard: Path, budget_usd: Decimal | None = None) -> tuple[str, Plan]:
        episode = load_episode(storyboard)
        plan = build_plan(episode)
        run_id = dispatch.submit(
            self.runs,
            self.sender,
            plan,
            backend=self.backend,
            namespace=namespace_for(self.backend),
            output=self.out,
            storyboard=str(storyboard),
            source=run_source(episode),
            budget_usd=budget_usd,
        )
        return run_id, plan

    def wait(self, run_id: str, timeout_s: float = 300) -> str:
        deadline = time.monotonic() + timeout_s
        while not (progress := snapshot(self.runs, run_id)).finished:
            assert time.monotonic() < deadline, f"run {run_id} still {progress.status}: {progress.counts}"
            time.sleep(0.2)
        return progress.status


def flower_views(access: FlowerAccess, timeout_s: float = 30) -> dict[str, bytes]:
    """What Flower's API serves, by path: the task list, every task's info (arguments, result, exception,
    traceback) and the workers (stats, queues, configuration), asked of the workers until they answer."""
    with httpx.Client(base_url=access.url, auth=(access.user, access.password), timeout=30) as client:
        tasks = client.get("/api/tasks")
        tasks.raise_for_status()
        views = {"/api/tasks": tasks.content}
        for task_id in tasks.json():
            info = client.get(f"/api/task/info/{task_id}")
            info.raise_for_status()
            views[f"/api/task/info/{task_id}"] = info.content
        deadline = time.monotonic() + timeout_s
        while not (workers := client.get("/api/workers", params={"refresh": "1"})).json():
            assert time.monotonic() < deadline, "Flower's /api/workers never listed a worker"
            time.sleep(0.5)
        views["/api/workers"] = workers.content
    return views


def redis_value(r: redis.Redis, key: bytes) -> bytes:
    """A key's whole value, read by its type. Not DUMP: Redis compresses (LZF) what DUMP returns, so a
    secret inside a hash or a long string would not show in it as it is."""
    kind = as_text(r.type(key))
    parts: list[Any]
    if kind == "string":
        parts = [r.get(key)]
    elif kind == "hash":
        parts = [item for pair in r.hgetall(key).items() for item in pair]
    elif kind == "list":
        parts = r.lrange(key, 0, -1)
    elif kind == "set":
        parts = list(r.smembers(key))
    elif kind == "zset":
        parts = r.zrange(key, 0, -1)
    elif kind == "stream":
        parts = [repr(entry).encode() for entry in r.xrange(key) or []]
    else:
        raise AssertionError(f"{key!r} is a {kind}: read it here")
    return b"\x00".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)


def farm_contents(
    handle: FarmHandle, flower: FlowerAccess | None = None, shown: Mapping[str, str] | None = None
) -> Iterator[tuple[object, bytes]]:
    """(where, bytes) for everything a farm wrote or shows: its processes' logs, every Redis value (queues,
    task messages, results, run state), its files (deliverables, manifests, the local artifact store),
    with `flower` what Flower's API serves, and `shown` (command -> what it printed)."""
    for log in handle.farm.log_dir.glob("*.log"):
        yield log, log.read_bytes()
    for key in handle.redis.scan_iter():
        yield key, redis_value(handle.redis, key)
    for root in (handle.out, handle.farm.settings.artifacts_root()):
        yield from ((path, path.read_bytes()) for path in root.rglob("*") if path.is_file())
    if flower is not None:
        yield from flower_views(flower).items()
    for command, output in (shown or {}).items():
        yield command, output.encode()


def assert_secret_appears_nowhere(
    handle: FarmHandle,
    *secrets: str,
    flower: FlowerAccess | None = None,
    shown: Mapping[str, str] | None = None,
) -> None:
    """None of `secrets` is anywhere in `farm_contents`."""
    needles = [secret.encode() for secret in secrets]
    for where, data in farm_contents(handle, flower, shown):
        for needle in needles:
            assert needle not in data, f"{needle[:8]!r}... found in {where!r}"


@contextmanager
def running_farm(
    home: Path,
    env: Mapping[str, str],
    queues: tuple[str, ...],
    *,
    flower: bool = False,
    settings: Settings | None = None,
) -> Iterator[Farm]:
    """A farm whose processes see `env` (its settings are read from it unless given), on a free Redis port
    with Redis's data under <home>/private; stopped warmly at the end."""
    with mock.patch.dict(os.environ, env):
        farm = start_farm(
            settings or Settings(),
            queues=queues,
            flower=flower,
            redis_port=free_port(),
            private_dir=home / "private",
        )
    try:
        yield farm
    finally:
        stop_farm(farm)


def worker_logs(farm: Farm) -> str:
    """Everything the farm's workers logged (a restarted worker appends to its queue's log)."""
    return "".join(p.read_text(errors="replace") for p in sorted(farm.log_dir.glob("worker-*.log")))


@contextmanager
def supervised(farm: Farm) -> Iterator[None]:
    """What `farm up` does between Ctrl-Cs, for a test's farm: start again a worker that exited."""
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.5):
            restart_exited_workers(farm)

    watchdog = threading.Thread(target=watch, name="test-supervisor", daemon=True)
    watchdog.start()
    try:
        yield
    finally:
        done.set()
        watchdog.join()
