"""Several episodes on one real farm with room for one step at a time: the urgent one goes first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
import redis

from farm.config.settings import Settings
from farm.episode.validate import load_episode
from farm.ops.supervisor import Farm, start_farm, stop_farm
from farm.planning.plan import build_plan
from farm.runs import dispatch, keys
from farm.runs.progress import snapshot
from farm.runs.state import RunStore
from tasks.app import make_app
from tasks.sender import CelerySender
from tests.conftest import EXAMPLE, load_doc
from tests.support.ports import free_port

SHOTS = (1, 6, 7)
"""Three shots of the bundled example, a clip of each kind (a push-in, a video, a held still): 12 steps for
each run to take one at a time instead of the example's 36. Two episodes of any length show the order."""


def small_example(folder: Path) -> Path:
    """The bundled example cut to SHOTS, beside its registry."""
    doc = load_doc(EXAMPLE)
    doc["shots"] = [s for s in doc["shots"] if s["shot"] in SHOTS]
    folder.mkdir()
    (folder / "lora_registry.json").write_text(EXAMPLE.with_name("lora_registry.json").read_text())
    path = folder / EXAMPLE.name
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def one_slot_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    home = tmp_path_factory.mktemp("season-home")
    env = {"FARM_HOME": str(home), "FARM_POST_CONCURRENCY": "1", "FARM_ENGINE": "local"}
    with mock.patch.dict(os.environ, env):
        running = start_farm(Settings(), queues=("post",), flower=False, redis_port=free_port())
    try:
        yield running
    finally:
        stop_farm(running)


def farm_cli(farm: Farm, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env["FARM_REDIS_URL"] = farm.broker_url
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_urgent_episode_submitted_later_finishes_first(one_slot_farm: Farm, tmp_path: Path) -> None:
    client = redis.Redis.from_url(one_slot_farm.broker_url)
    runs, sender = RunStore(client), CelerySender(make_app(one_slot_farm.broker_url))
    storyboard = small_example(tmp_path / "episode")
    plan = build_plan(load_episode(storyboard))

    def submit(namespace: str, priority: int) -> str:
        # Separate namespaces: nothing of one run is reused by the other, both render every step.
        return dispatch.submit(
            runs,
            sender,
            plan,
            backend="local",
            namespace=namespace,
            output=tmp_path / namespace,
            storyboard=str(storyboard),
            priority=priority,
        )

    routine = submit("routine", 2)
    deadline = time.monotonic() + 120
    while snapshot(runs, routine).done < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    urgent = submit("urgent", 9)
    lanes = farm_cli(one_slot_farm, "queue")
    assert lanes.returncode == 0, lanes.stderr
    row = next(cells for cells in map(str.split, lanes.stdout.splitlines()) if cells[:1] == ["post"])
    assert row[1:4] == ["1", "-", "1"], lanes.stdout  # limit 1: no provider cap, one worker slot
    assert farm_cli(one_slot_farm, "priority", routine, "1").returncode == 0
    assert farm_cli(one_slot_farm, "priority", routine, "12").returncode == 2

    deadline = time.monotonic() + 300
    while not snapshot(runs, urgent).finished:
        assert time.monotonic() < deadline, "the urgent run did not finish"
        assert client.zcard(keys.slots("post")) <= 1, "never more admitted than the one slot"
        time.sleep(0.05)
    assert runs.meta(urgent)["status"] == "succeeded"
    assert not snapshot(runs, routine).finished, "the routine run, submitted first, is still going"
    urgent_starts = [i["started_at"] for i in runs.info(urgent).values()]
    routine_starts = [i["started_at"] for i in runs.info(routine).values() if "started_at" in i]
    between = [t for t in routine_starts if min(urgent_starts) < t < max(urgent_starts)]
    assert between == [], "once the urgent run arrived, every routine step waited for it"
    dispatch.cancel(runs, sender, routine)
