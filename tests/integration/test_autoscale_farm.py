"""The autoscaler on a running farm: a burst of work grows the post pool to its maximum, and once the
backlog is gone and the cooldown over, the pool shrinks by warm shutdown. No step is lost or killed."""

from __future__ import annotations

import copy
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import httpx
import pytest

from farm.cli.ops import local_autoscaler
from farm.config.settings import Settings
from farm.ops.autoscaler import last_decisions
from farm.ops.metrics import metric_value, serve_metrics
from farm.ops.scaling_rules import Decision
from farm.ops.supervisor import start_farm, stop_farm
from farm.ops.worker_pool import LocalWorkers
from farm.planning.routing import QUEUES
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle
from tests.support.ports import free_port

SHOTS = 8
"""Held shots (a keyframe, its upscale, a push-in each): eight steps ready at once and 25 in all, more than
the first worker gets through while two more start."""
MAX_WORKERS = 3
DOWN_COOLDOWN_S = 4.0


def burst(sample_doc: Doc, registry_doc: Doc, folder: Path) -> Path:
    """An episode of many independent held shots: a backlog of post steps all at once."""
    doc = copy.deepcopy(sample_doc)
    template = next(s for s in doc["shots"] if s["generation_approach"] == "held_frame_push")
    doc["project"] = "ASC"
    doc["shots"] = [
        {**template, "shot": n, "scene": 1, "first_frame": f"{template['first_frame']} Buoy number {n}."}
        for n in range(1, SHOTS + 1)
    ]
    (folder / "lora_registry.json").write_text(json.dumps(registry_doc))
    path = folder / "storyboard.json"
    path.write_text(json.dumps(doc))
    return path


class Scaling:
    """The autoscaler ticking in a thread, as `farm up --autoscale` runs it."""

    def __init__(self, handle: FarmHandle) -> None:
        self.scaler, pools = local_autoscaler(handle.farm, ("post",))
        self.pool: LocalWorkers = pools["post"]
        self.decisions: list[Decision] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.decisions += self.scaler.tick()
            self._stop.wait(0.3)

    def __enter__(self) -> Scaling:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.pool.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[FarmHandle]:
    home = tmp_path / "home"
    settings = Settings(
        home=home,
        post_concurrency=1,
        autoscale_workers=f"post=1:{MAX_WORKERS}",
        autoscale_up_cooldown_s=0.5,
        autoscale_down_cooldown_s=DOWN_COOLDOWN_S,
    )
    with mock.patch.dict(os.environ, {"FARM_HOME": str(home)}):
        running = start_farm(
            settings, queues=(), flower=False, redis_port=free_port(), private_dir=home / "p"
        )
    try:
        yield FarmHandle(running, tmp_path / "out")
    finally:
        stop_farm(running)


def test_a_burst_scales_the_pool_up_then_down_after_the_cooldown_losing_nothing(
    farm: FarmHandle, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    with Scaling(farm) as scaling:
        deadline = time.monotonic() + 60
        while scaling.pool.count() < 1:
            assert time.monotonic() < deadline, "the minimum worker never started"
            time.sleep(0.1)
        run_id, plan = farm.submit(burst(sample_doc, registry_doc, tmp_path))
        assert farm.wait(run_id, timeout_s=300) == "succeeded"
        settled = time.monotonic()
        while scaling.pool.count() > 1 or scaling.pool.draining or last_decisions(farm.redis)["post"]["load"]:
            assert time.monotonic() - settled < 60, "the pool never shrank back"
            time.sleep(0.2)

    ups = [d for d in scaling.decisions if d.action == "up" and d.target == MAX_WORKERS]
    assert ups and ups[0].backlog.load >= MAX_WORKERS, "the burst grew the pool to its maximum"
    downs = [d for d in scaling.decisions if d.action == "down"]
    assert downs and downs[-1].target == 1 and all(d.backlog.load < d.actual for d in downs)
    waited = [float(re.findall(r"wanted fewer for (\d+) s", d.reason)[0]) for d in downs]
    assert min(waited) >= DOWN_COOLDOWN_S, "no worker left before the cooldown"
    retired = scaling.pool.retired
    assert len(retired) >= MAX_WORKERS - 1 and all(p.returncode == 0 for p in retired), "warm exits"

    states, deliveries = farm.runs.states(run_id), farm.runs.deliveries(run_id)
    assert set(states.values()) == {"done"} and len(states) == len(plan.steps), "no step lost"
    assert set(deliveries.values()) == {1}, "no step was killed and delivered again"
    workers = {farm.runs.info(run_id)[s.id]["worker"] for s in plan.steps}
    assert len(workers) >= 2, "the added workers took part"
    published = last_decisions(farm.redis)["post"]
    assert published["target"] == 1 and published["load"] == 0

    scraper = ("prometheus", "autoscale-test")
    server, thread = serve_metrics(farm.redis, QUEUES, "127.0.0.1", 0, credentials=scraper)
    try:
        text = httpx.get(f"http://127.0.0.1:{server.server_port}/metrics", auth=scraper).text
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    post = {"queue": "post"}
    assert metric_value(text, "farm_workers_actual", {"pool": "post"}) == published["actual"]
    assert metric_value(text, "farm_workers_target", {"pool": "post"}) == 1
    assert (
        metric_value(text, "farm_queue_waiting", post) == 0
        and metric_value(text, "farm_queue_reserved", post) == 0
    )
    for kind in {s.kind.value for s in plan.steps}:
        engines = {s.engine for s in plan.steps if s.kind.value == kind}
        rendered = sum(1 for s in plan.steps if s.kind.value == kind)
        counted = sum(
            metric_value(text, "farm_step_duration_seconds_count", {"kind": kind, "engine": e}) or 0
            for e in engines
        )
        assert counted == rendered, f"every {kind} step timed once"
    assert metric_value(text, "farm_paid_calls_total") is None, "the embedded engine pays nothing"
