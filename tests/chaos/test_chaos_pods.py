"""A RunPod pod vanishing during a farm run, while ComfyUI renders a step on it.

The RunPod emulator's `vanish(pod)` deletes the pod out of band: its SSH server and ComfyUI stop and the
API no longer knows it, as when RunPod reclaims a machine. The step's next poll through the tunnel fails
(a transient error), and its retry goes back to the pod that held its run (workers/gpu/pool.py), finds
RunPod has no such pod, forgets it and renders on a new one: the render was lost with the pod, so it is
done once more there, and only there. The run finishes and, once idle, no pod is left running.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.cli.pods import PodReaper
from tests.chaos.support import assert_nothing_lost, assert_whole_files, run_state
from tests.conftest import Doc
from tests.integration.test_gpu_farm import (
    GpuFarm,
    caught_in_flight,
    one_shot_episode,
    renders_per_step,
    running_gpu_farm,
    slow_comfyui,
    step_record,
)
from workers.gpu.pod_ledger import PodLedger


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuFarm]:
    with running_gpu_farm(tmp_path_factory.mktemp("vanish-home")) as running:
        yield running


@pytest.mark.chaos
def test_a_pod_vanishing_mid_render_is_forgotten_and_its_step_renders_on_a_new_pod(
    farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    with slow_comfyui(farm, 3.0):  # long enough to be caught mid-render; the new pod renders at full speed
        run_id, plan = farm.submit(one_shot_episode(tmp_path, sample_doc, registry_doc, "VAN"))
        step_id, vanished = caught_in_flight(farm, plan)
        farm.runpod.vanish(vanished)
    assert farm.wait(run_id, timeout_s=400) == "succeeded", run_state(farm, run_id)

    registry = PodLedger(farm.redis)
    assert registry.get(vanished) is None, "the pool forgot the pod RunPod no longer has"
    record = step_record(farm, run_id, step_id)
    provider = record["provider"]
    assert isinstance(provider, dict) and provider["pod"] != vanished, "rendered on another pod"
    assert provider["resumed_run"] is False, "the run was lost with the pod: rendered anew"
    assert record["retries"] >= 1  # type: ignore[operator]
    assert set(renders_per_step(farm, plan).values()) == {1}, "each step rendered once on the live pods"
    assert_nothing_lost(farm, run_id, plan)
    assert_whole_files(Path(farm.runs.meta(run_id)["output_dir"]), farm.settings.artifacts_root())

    time.sleep(farm.settings.gpu_idle_timeout_s + 0.5)
    PodReaper(farm.settings, farm.farm.broker_url, every_s=0.0).maybe_reap()
    live = {p: pod["desiredStatus"] for p, pod in farm.runpod.pods().items()}
    assert vanished not in live and live and set(live.values()) == {"EXITED"}, f"no pod left running: {live}"
    assert all(p.lease_holder is None for p in registry.pods())
