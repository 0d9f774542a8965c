"""`farm up` SIGKILLed mid-episode and started again: the run resumes from Redis and finishes whole.

Its children get SIGTERM when it dies (so no orphan keeps a port or a pod): Redis writes its AOF and
exits, the workers stop. The steps that were running stay in kombu's `unacked`; the new farm's reconciler
(every 2 s here) puts back those of workers that no longer announce themselves (`tasks.orphans`), and
kombu's visibility timeout (about 75 s at FARM_TIME_LIMIT_SCALE=0.02) catches any other. Two farms render
the sample here, so this case runs in `make chaos` only.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
import redis

from farm.config.redis_connection import redis_url
from farm.config.settings import Settings
from farm.runs.progress import snapshot
from farm.runs.state import RunStore
from tests.integration.conftest import read_until
from tests.integration.test_cli_farm import alive, descendants, farm_env
from workers.media import probe

pytestmark = [pytest.mark.chaos, pytest.mark.slow]


def farm_up(env: dict[str, str]) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "up", "--no-flower"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    read_until(process, "workers ")  # printed once every worker is ready
    return process


def test_farm_up_killed_mid_run_resumes_the_run_when_started_again(sample_path: Path, tmp_path: Path) -> None:
    env = {
        **farm_env(tmp_path / "home"),
        "FARM_TIME_LIMIT_SCALE": "0.02",
        "FARM_RECONCILE_EVERY_S": "2",
        "FARM_OUTPUT": str(tmp_path / "out"),
    }
    first = farm_up(env)
    try:
        submitted = subprocess.run(
            [sys.executable, "-m", "farm.cli", "submit", str(sample_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        run_id = submitted.stdout.strip()
        client = redis.Redis.from_url(redis_url(_settings(env)))
        runs = RunStore(client)
        deadline = time.monotonic() + 180
        while sum(1 for s in runs.states(run_id).values() if s == "done") < 8:
            assert time.monotonic() < deadline, runs.states(run_id)
            time.sleep(0.1)
        children = descendants(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        if first.stdout:
            first.stdout.close()
    deadline = time.monotonic() + 90
    while left := [pid for pid in children if alive(pid)]:
        assert time.monotonic() < deadline, f"the children of the killed `farm up` stop: {left} still run"
        time.sleep(0.2)

    second = farm_up(env)
    try:
        client = redis.Redis.from_url(redis_url(_settings(env)))
        runs = RunStore(client)
        assert runs.meta(run_id)["status"] == "running", "the run was kept in Redis's AOF"
        deadline = time.monotonic() + 400
        while not (progress := snapshot(runs, run_id)).finished:
            assert time.monotonic() < deadline, progress.counts
            time.sleep(0.5)
        assert progress.status == "succeeded", progress.failures
        folder = Path(runs.meta(run_id)["output_dir"])
        episode = probe(next(folder.glob("*_episode.mp4")))
        assert episode.codec == "h264" and episode.frames > 0
        assert not list(folder.rglob("*.partial")), "no half-written output"
    finally:
        second.send_signal(signal.SIGINT)
        second.wait(90)
        if second.stdout:
            second.stdout.close()


def _settings(env: dict[str, str]) -> Settings:
    """The farm's settings as its processes read them from `env`."""
    with mock.patch.dict("os.environ", env, clear=True):
        return Settings()
