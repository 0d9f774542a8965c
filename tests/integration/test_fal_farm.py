"""The sample episode through the fal.ai emulator: real fal-client, real Celery workers, real Redis.

The emulator's ledger counts accepted submits per payload, so the tests can prove that no paid step was
submitted twice, whatever is injected: worker kills, 5xx, 429 with Retry-After.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from emulators.fal_server import FalEmulator, Faults
from farm.cli.app import app
from farm.cli.runtime import PAUSED
from farm.episode.validate import load_episode
from farm.ops.supervisor import start_worker
from farm.planning.plan import Plan, build_plan
from farm.runs import dispatch
from farm.runs.progress import snapshot
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle, assert_secret_appears_nowhere, running_farm, worker_logs
from tests.support.ports import free_port

FAKE_FAL_SECRET = "fal-test-key-5bd1c0ffee-do-not-leak"
TIME_LIMIT_SCALE = 0.02
RECONCILE_EVERY_S = 2.0
"""A pass every 2 s: a killed worker's running steps go back to the queue about 20 s after the kill (its
announcement expires after 15 s), not after the 75 s visibility timeout at this scale."""
"""Shrinks the visibility timeout to about a minute, so a killed worker's steps come back within a test."""


@dataclass
class FalFarm(FarmHandle):
    emulator: FalEmulator = field(kw_only=True)


@contextmanager
def running_fal_farm(
    home: Path, *, latency_scale: float = 0.01, env: Mapping[str, str] | None = None, flower: bool = False
) -> Iterator[FalFarm]:
    """A cloud and post farm on a fresh fal emulator (its latencies x `latency_scale`), with the fake key;
    `env` adds or overrides farm settings; `flower` starts Flower too (its generated password in
    <home>/flower.json, as `farm up` does)."""
    emulator = FalEmulator(latency_scale=latency_scale, key=FAKE_FAL_SECRET).start()
    farm_env = {
        "FARM_HOME": str(home),
        "FAL_KEY": FAKE_FAL_SECRET,
        "FARM_FAL_URL": emulator.url,
        "FARM_ENGINE": "fal",
        "FARM_TIME_LIMIT_SCALE": str(TIME_LIMIT_SCALE),
        "FARM_FAL_POLL_INTERVAL_S": "0.1",
        "FARM_FAL_MAX_IN_FLIGHT": "6",
        "NO_PROXY": "127.0.0.1,localhost",
        "FARM_FLOWER_PORT": str(free_port()),
        "FARM_RECONCILE_EVERY_S": str(RECONCILE_EVERY_S),
        **(env or {}),
    }
    try:
        with running_farm(home, farm_env, ("cloud", "post"), flower=flower) as farm:
            yield FalFarm(farm, home / "out", "fal", emulator=emulator)
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def fal_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FalFarm]:
    with running_fal_farm(tmp_path_factory.mktemp("fal-home")) as farm:
        yield farm


def write_episode(folder: Path, storyboard: Doc, registry: Doc) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lora_registry.json").write_text(json.dumps(registry))
    path = folder / "storyboard.json"
    path.write_text(json.dumps(storyboard))
    return path


SMALL_SHOTS = (2, 4, 6)
"""Three shots of the sample: a standard one (keyframes, their upscales, a video), a triptych (a strip split
into panels, three videos and their cut) and a held still, then the episode cut. Every paid kind (t2i,
img2img, upscale, video) and the splits, holds and cuts after them, in 18 steps (14 paid) instead of 53:
what the cases about faults, budgets and kills render. The whole sample goes through fal in
test_sample_renders_through_fal_with_one_submit_per_paid_step."""


def variant(sample_doc: Doc, project: str, shots: Collection[int] | None = None) -> Doc:
    """The sample under another project code: every seed, so every step id, changes. With `shots`, only those
    shots of it."""
    doc = copy.deepcopy(sample_doc)
    doc["project"] = project
    if shots is not None:
        doc["shots"] = [s for s in doc["shots"] if s["shot"] in shots]
        assert len(doc["shots"]) == len(shots), f"the sample has no shot among {shots}"
    return doc


def paid_steps(plan: Plan) -> list[str]:
    return [s.id for s in plan.steps if s.cost_usd > 0]


def assert_one_submit_per_paid_step(
    emulator: FalEmulator, plan: Plan, unconfirmed: frozenset[str] = frozenset()
) -> None:
    """One submit per paid step, except the documented window (docs/fal.md): a worker killed after fal
    accepted a submit but before its id was stored leaves a claim without an id; that step is submitted
    once more after the grace period and marked `unconfirmed_submit`. Such steps may have exactly two."""
    seeds = {s.params["seed"]: s for s in plan.steps if s.cost_usd > 0}
    per_step = Counter(
        seeds[e["payload"]["seed"]].id for e in emulator.ledger() if e["payload"].get("seed") in seeds
    )
    assert set(per_step) == {s.id for s in seeds.values()}, "every paid step was submitted"
    wrong = {step: n for step, n in per_step.items() if n != (2 if step in unconfirmed else 1)}
    assert not wrong, f"submits per step (unconfirmed: {sorted(unconfirmed)}): {wrong}"


def unconfirmed_submits(handle: FarmHandle, run_id: str) -> frozenset[str]:
    manifest = json.loads(Path(handle.runs.meta(run_id)["manifest"]).read_text())
    return frozenset(r["id"] for r in manifest["steps"] if (r["provider"] or {}).get("unconfirmed_submit"))


def test_sample_renders_through_fal_with_one_submit_per_paid_step(
    fal_farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    path = write_episode(tmp_path, variant(sample_doc, "FAL"), registry_doc)
    run_id, plan = fal_farm.submit(path)
    assert fal_farm.wait(run_id) == "succeeded", snapshot(fal_farm.runs, run_id).failures
    assert_one_submit_per_paid_step(fal_farm.emulator, plan)
    manifest = json.loads(Path(fal_farm.runs.meta(run_id)["manifest"]).read_text())
    assert manifest["cost_usd"]["actual"] == pytest.approx(1.557)
    video = next(r for r in manifest["steps"] if r["kind"] == "video")
    assert video["backend"] == "fal" and video["provider"]["request_id"]
    assert video["provider"]["endpoint"] == "fal-ai/wan/v2.2-a14b/image-to-video/lora"


@pytest.mark.chaos
def test_sigkill_of_the_cloud_worker_mid_video_still_finishes_without_double_submits(
    fal_farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    path = write_episode(tmp_path, variant(sample_doc, "KIL", SMALL_SHOTS), registry_doc)
    fal_farm.emulator.latency_scale = 0.05  # videos take ~7 s: long enough to be caught in flight
    try:
        run_id, plan = fal_farm.submit(path)
        videos = {s.id for s in plan.steps if s.kind.value == "video"}
        deadline = time.monotonic() + 120
        while not any(fal_farm.runs.states(run_id).get(v) == "running" for v in videos):
            assert time.monotonic() < deadline, "no video step started"
            time.sleep(0.1)
        time.sleep(0.5)  # let the submit land
        cloud = fal_farm.farm.workers["cloud"]
        cloud.send_signal(signal.SIGKILL)
        cloud.wait()
        fal_farm.farm.workers["cloud"] = start_worker(fal_farm.farm, "cloud")
        assert fal_farm.wait(run_id, timeout_s=400) == "succeeded", snapshot(fal_farm.runs, run_id).failures
    finally:
        fal_farm.emulator.latency_scale = 0.01
    assert max(fal_farm.runs.deliveries(run_id).values()) >= 2, "some step was redelivered after the kill"
    assert "a gone worker was running" in worker_logs(fal_farm.farm), "put back by the reconciler"
    unconfirmed = unconfirmed_submits(fal_farm, run_id)
    assert len(unconfirmed) <= 2, "only a submit cut off by the kill itself can be unconfirmed"
    assert_one_submit_per_paid_step(fal_farm.emulator, plan, unconfirmed)


@pytest.mark.chaos
def test_5xx_and_429_storms_are_retried_boundedly_and_counted(
    fal_farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    path = write_episode(tmp_path, variant(sample_doc, "ERR", SMALL_SHOTS), registry_doc)
    fal_farm.emulator.set_faults(
        Faults(
            submit_5xx_rate=0.2, submit_429_rate=0.1, poll_5xx_rate=0.2, poll_429_rate=0.1, retry_after_s=0.5
        )
    )
    try:
        run_id, plan = fal_farm.submit(path)
        assert fal_farm.wait(run_id, timeout_s=400) == "succeeded", snapshot(fal_farm.runs, run_id).failures
    finally:
        fal_farm.emulator.set_faults(Faults())
    assert_one_submit_per_paid_step(fal_farm.emulator, plan)
    manifest = json.loads(Path(fal_farm.runs.meta(run_id)["manifest"]).read_text())
    retries = [r["retries"] for r in manifest["steps"]]
    assert sum(retries) > 0, "with 30% of submits refused some steps must have been retried"
    assert max(retries) <= 8


@pytest.mark.chaos
@pytest.mark.slow
def test_dropped_submit_responses_cost_at_most_one_extra_request_each_and_the_run_finishes(
    fal_farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    """fal takes some submits and the answer never comes back. The farm cannot know whether the request
    exists, so it keeps the claim for the grace period (60 s) and then submits once more, marking the step
    `unconfirmed_submit` (docs/fal.md, "the one remaining window"): at most two requests for those steps,
    one for every other."""
    path = write_episode(tmp_path, variant(sample_doc, "DRP"), registry_doc)
    before = len(fal_farm.emulator.ledger())
    fal_farm.emulator.set_faults(Faults(drop_submit_response_rate=0.5, seed=7))
    try:
        run_id, plan = fal_farm.submit(path)
        deadline = time.monotonic() + 120
        while len(fal_farm.emulator.ledger()) < before + 8:  # the first submits, half of them unanswered
            assert time.monotonic() < deadline, snapshot(fal_farm.runs, run_id).counts
            time.sleep(0.05)
    finally:
        fal_farm.emulator.set_faults(Faults())  # the submits after the grace get their answers
    assert fal_farm.wait(run_id, timeout_s=400) == "succeeded", snapshot(fal_farm.runs, run_id).failures
    unconfirmed = unconfirmed_submits(fal_farm, run_id)
    assert unconfirmed, "some steps waited out the grace after their submit's answer was dropped"
    assert_one_submit_per_paid_step(fal_farm.emulator, plan, unconfirmed)


def test_content_policy_refusal_reroutes_the_step_to_the_gpu_queue(
    fal_farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    doc = variant(sample_doc, "CPV")
    doc["shots"] = [s for s in doc["shots"] if s["shot"] == 6]
    doc["shots"][0]["first_frame"] += " FORBIDDENWORD"
    run_id, plan = fal_farm.submit(write_episode(tmp_path, doc, registry_doc))
    t2i = next(s for s in plan.steps if s.kind.value == "t2i")
    deadline = time.monotonic() + 60
    while "fallback" not in fal_farm.runs.info(run_id).get(t2i.id, {}):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    fallback = fal_farm.runs.info(run_id)[t2i.id]["fallback"]
    assert fallback["to"] == "comfyui" and "content" in fallback["reason"]
    assert fal_farm.runs.states(run_id)[t2i.id] == "queued"
    assert fal_farm.redis.llen("gpu") == 1, "the step waits on the gpu queue for the GPU pool"
    dispatch.cancel(fal_farm.runs, fal_farm.sender, run_id)


def test_a_run_over_its_budget_pauses_without_paying_more_and_resumes_when_it_is_raised(
    fal_farm: FalFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_episode(tmp_path, variant(sample_doc, "BUD", SMALL_SHOTS), registry_doc)
    estimate = sum((s.cost_usd for s in build_plan(load_episode(path)).steps), Decimal(0))
    limit = (estimate / 2).quantize(Decimal("0.01"))
    run_id, plan = fal_farm.submit(path, budget_usd=limit)
    deadline = time.monotonic() + 120
    while not (progress := snapshot(fal_farm.runs, run_id)).waiting_for_budget:
        assert time.monotonic() < deadline and progress.status == "running", progress.counts
        time.sleep(0.2)
    seeds = {s.params["seed"]: s for s in plan.steps if s.cost_usd > 0}
    paid = [
        seeds[e["payload"]["seed"]] for e in fal_farm.emulator.ledger() if e["payload"].get("seed") in seeds
    ]
    assert paid and sum((s.cost_usd for s in paid), Decimal(0)) <= limit, "fal was asked for no more"
    assert progress.ledger is not None and progress.ledger.spent_usd <= limit

    monkeypatch.setenv("FARM_REDIS_URL", fal_farm.farm.broker_url)
    shown = CliRunner().invoke(app, ["status", run_id])
    assert shown.exit_code == 0 and "paused" in shown.output and f"farm budget {run_id} USD" in shown.output
    watched = CliRunner().invoke(app, ["watch", run_id])
    assert watched.exit_code == PAUSED, watched.output
    raised = CliRunner().invoke(app, ["budget", run_id, "none"])
    assert raised.exit_code == 0 and "held step(s) admitted" in raised.output, raised.output

    assert fal_farm.wait(run_id) == "succeeded", snapshot(fal_farm.runs, run_id).failures
    assert_one_submit_per_paid_step(fal_farm.emulator, plan)
    manifest = json.loads(Path(fal_farm.runs.meta(run_id)["manifest"]).read_text())
    spent = snapshot(fal_farm.runs, run_id).ledger
    assert spent is not None and float(spent.spent_usd) == manifest["cost_usd"]["actual"]
    assert manifest["cost_usd"]["actual"] == manifest["cost_usd"]["estimated"] == float(estimate)


def test_the_fal_key_appears_nowhere(fal_farm: FalFarm) -> None:
    """After the runs above: logs, every Redis value, the queues and the manifests never hold the key."""
    assert_secret_appears_nowhere(fal_farm, FAKE_FAL_SECRET)


FAKE_RUNPOD_SECRET = "runpod-test-key-7e11aced-do-not-leak"


def test_no_secret_leaks_from_a_farm_with_flower_even_when_fal_quotes_the_key_in_an_error(
    sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    """A farm with Flower and both providers' keys renders one shot and fails another whose fal error
    quotes the request's headers, the fal key among them. The step's reason keeps what fal said, with the
    key redacted; no log, Redis value, file, Flower API view or command output holds either key."""
    doc = variant(sample_doc, "SEC")
    shot = next(s for s in doc["shots"] if s["shot"] == 6)
    echoed = {**shot, "shot": 7, "first_frame": f"ECHOHEADERS {shot['first_frame']}"}
    doc["shots"] = [shot, echoed]
    path = write_episode(tmp_path / "episode", doc, registry_doc)
    keys = {"FAL_KEY": FAKE_FAL_SECRET, "RUNPOD_API_KEY": FAKE_RUNPOD_SECRET}
    with running_fal_farm(tmp_path / "home", env=keys, flower=True) as farm:
        run_id, plan = farm.submit(path)
        assert farm.wait(run_id, timeout_s=120) == "failed"
        failed = next(s for s in plan.steps if s.shot == 7 and s.kind.value == "t2i")
        reason = farm.runs.info(run_id)[failed.id]["error"]
        assert "fal rejected the request (HTTP 400)" in reason and "'Key [redacted]'" in reason, reason
        states = farm.runs.states(run_id)
        rendered = {step_id for step_id, state in states.items() if state == "done"}
        assert rendered == {s.id for s in plan.steps if s.shot == 6}, "the other shot rendered, alone"

        env = {**os.environ, **keys, "FARM_REDIS_URL": farm.farm.broker_url, "COLUMNS": "400"}
        shown: dict[str, str] = {}
        for command in (["status", run_id], ["runs"]):
            done = subprocess.run(
                [sys.executable, "-m", "farm.cli", *command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            shown[" ".join(command)] = done.stdout + done.stderr
        assert "Key [redacted]" in shown[f"status {run_id}"], shown

        access = farm.farm.flower_access
        assert access is not None
        task = httpx.get(
            f"{access.url}/api/task/info/{run_id}:{failed.id}", auth=(access.user, access.password)
        )
        assert task.json()["state"] == "FAILURE" and "Key [redacted]" in task.json()["exception"], task.text
        assert_secret_appears_nowhere(farm, *keys.values(), flower=access, shown=shown)
