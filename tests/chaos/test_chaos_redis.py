"""Redis killed mid-episode: SIGKILL, restart from its AOF, the broker's messages gone; the run finishes.

Real Redis, real Celery workers (cloud and post), the fal emulator. After the restart every Celery message
(queued and delivered-unacked) is deleted, so the steps that were admitted or running have no message:
only the reconciler (`tasks.reconcile`, run by a worker every FARM_RECONCILE_EVERY_S) can bring them back.
Celery 5.7's threads-pool worker exits when Redis vanishes under it; the fixture supervises the workers
the way `farm up` does (`restart_exited_workers`).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.runs.progress import snapshot
from tests.conftest import Doc
from tests.integration.conftest import supervised, worker_logs
from tests.integration.test_fal_farm import (
    SMALL_SHOTS,
    FalFarm,
    assert_one_submit_per_paid_step,
    running_fal_farm,
    unconfirmed_submits,
    variant,
    write_episode,
)
from workers.media import probe

pytestmark = pytest.mark.chaos

BROKER_KEYS = ("cloud", "post", "gpu", "unacked", "unacked_index")
"""Celery's queues and kombu's record of delivered, unacknowledged messages."""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalFarm]:
    home = tmp_path_factory.mktemp("chaos-home")
    fast_reconcile = {"FARM_RECONCILE_EVERY_S": "1"}
    with running_fal_farm(home, latency_scale=0.05, env=fast_reconcile) as running, supervised(running.farm):
        yield running


def test_redis_killed_and_restarted_from_its_aof_with_every_message_lost(
    farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    path = write_episode(tmp_path, variant(sample_doc, "RDS", SMALL_SHOTS), registry_doc)
    run_id, plan = farm.submit(path)
    videos = {s.id for s in plan.steps if s.kind.value == "video"}
    deadline = time.monotonic() + 120
    while not any(farm.runs.states(run_id).get(v) == "running" for v in videos):
        assert time.monotonic() < deadline, "no video step started"
        time.sleep(0.1)
    time.sleep(0.5)  # the submits land at fal
    server = farm.farm.redis
    assert server is not None and server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    time.sleep(1.0)
    server.start()  # same port and data: the AOF is replayed
    lost = sum(int(farm.redis.llen(k)) for k in ("cloud", "post")) + int(farm.redis.hlen("unacked"))
    farm.redis.delete(*BROKER_KEYS)
    assert lost > 0, "the kill came while steps were in flight: some messages existed"

    assert farm.wait(run_id, timeout_s=400) == "succeeded", snapshot(farm.runs, run_id).failures
    unconfirmed = unconfirmed_submits(farm, run_id)
    assert len(unconfirmed) <= 2, "only a submit cut off by the kill itself can be unconfirmed"
    assert_one_submit_per_paid_step(farm.emulator, plan, unconfirmed)
    assert "whose message was lost" in worker_logs(farm.farm), "the reconciler sent the lost steps again"
    folder = Path(farm.runs.meta(run_id)["output_dir"])
    episode = probe(
        folder / next(s.asset_name for s in plan.steps if s.kind.value == "concat" and not s.shot)
    )
    assert episode.codec == "h264" and episode.frames > 0
    assert not list(folder.rglob("*.partial")), "no half-written output"
