"""The post pool's worker SIGKILLed while its children encode with ffmpeg: the episode still finishes whole.

The worker's steps stay in kombu's `unacked` (late acks); the reconciler (every 2 s here) finds their worker
gone once its announcement expires (15 s) and puts them back a pass later (`tasks.orphans`), long before the
visibility timeout (about 75 s at this FARM_TIME_LIMIT_SCALE). The sample's encodes make it a long case,
so it runs with `make chaos`, not in `make test`.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.runs.progress import snapshot
from tests.integration.conftest import FarmHandle, running_farm, supervised, worker_logs
from workers.media import probe

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

ENCODING_KINDS = ("video", "ken_burns", "hold", "concat")
"""Steps whose embedded engine runs ffmpeg."""


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmHandle]:
    home = tmp_path_factory.mktemp("post-chaos")
    env = {
        "FARM_HOME": str(home),
        "FARM_ENGINE": "local",
        "FARM_TIME_LIMIT_SCALE": "0.02",
        "FARM_RECONCILE_EVERY_S": "2",
    }
    with running_farm(home, env, ("post",)) as running, supervised(running):
        yield FarmHandle(running, home / "out")


def test_the_post_worker_killed_mid_ffmpeg_loses_nothing(farm: FarmHandle, sample_path: Path) -> None:
    run_id, plan = farm.submit(sample_path)
    encoding = {s.id for s in plan.steps if s.kind.value in ENCODING_KINDS}
    deadline = time.monotonic() + 180
    while not any(farm.runs.states(run_id).get(s) == "running" for s in encoding):
        assert time.monotonic() < deadline, "no encoding step started"
        time.sleep(0.05)
    worker = farm.farm.workers["post"]
    worker.send_signal(signal.SIGKILL)
    worker.wait()

    assert farm.wait(run_id, timeout_s=400) == "succeeded", snapshot(farm.runs, run_id).failures
    assert max(farm.runs.deliveries(run_id).values()) >= 2, "a step the kill interrupted ran again"
    assert "a gone worker was running" in worker_logs(farm.farm), "put back by the reconciler"
    folder = Path(farm.runs.meta(run_id)["output_dir"])
    for step in plan.steps:
        if step.kind.value in ENCODING_KINDS:
            for name in step.outputs:
                clip = probe(folder / name)
                assert clip.codec == "h264" and clip.frames > 0, name
    assert not list(folder.rglob("*.partial")), "no half-written output"
