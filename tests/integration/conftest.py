"""Real parts: a real redis-server per session, and a whole farm (workers per queue, Flower) per module."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from farm import dispatch
from farm.artifacts import namespace_for
from farm.plan import Plan, build_plan
from farm.progress import snapshot
from farm.redis_server import RedisServer
from farm.retake import run_source
from farm.state import RunStore
from farm.supervisor import Farm, free_port, restart_exited_workers
from farm.validate import load_episode
from tasks.app import make_app, signing_of
from tasks.sender import CelerySender


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    yield r
    r.close()


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

    def submit(self, storyboard: Path) -> tuple[str, Plan]:
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
        )
        return run_id, plan

    def wait(self, run_id: str, timeout_s: float = 300) -> str:
        deadline = time.monotonic() + timeout_s
        while not (progress := snapshot(self.runs, run_id)).finished:
            assert time.monotonic() < deadline, f"run {run_id} still {progress.status}: {progress.counts}"
            time.sleep(0.2)
        return progress.status


def assert_secret_appears_nowhere(handle: FarmHandle, secret: str) -> None:
    """No log of the farm's processes, no Redis value (queues, task messages, run state) and no manifest
    holds `secret`."""
    for log in handle.farm.log_dir.glob("*.log"):
        assert secret not in log.read_text(errors="replace"), log
    for key in handle.redis.scan_iter("*"):
        assert secret.encode() not in (handle.redis.dump(key) or b""), (key, handle.redis.type(key))
    for manifest in handle.out.rglob("manifest.json"):
        assert secret not in manifest.read_text(), manifest


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
