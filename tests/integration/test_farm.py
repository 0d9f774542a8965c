"""The sample episode end to end on a real farm: real redis-server, Celery workers per queue, Flower."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
import redis
from pydantic import SecretStr

from farm.config.settings import Settings
from farm.episode.validate import check_episode
from farm.ops.supervisor import start_farm, stop_farm
from farm.planning.plan import Plan, build_plan
from farm.planning.routing import QUEUES
from farm.runs import dispatch, review
from farm.runs.progress import snapshot
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle, assert_secret_appears_nowhere, read_until
from tests.support.ports import free_port
from workers.media import probe

FLOWER_PASSWORD = "flower-test-password"


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmHandle]:
    home = tmp_path_factory.mktemp("farm-home")
    settings = Settings(home=home, flower_port=free_port(), flower_password=SecretStr(FLOWER_PASSWORD))
    with mock.patch.dict(os.environ, {"FARM_HOME": str(home)}):
        running = start_farm(settings, redis_port=free_port(), private_dir=home / "private")
    try:
        yield FarmHandle(running, home / "out")
    finally:
        stop_farm(running)


@pytest.fixture(scope="module")
def first_run(farm: FarmHandle, sample_path: Path) -> tuple[str, Plan]:
    run_id, plan = farm.submit(sample_path)
    assert farm.wait(run_id) == "succeeded", snapshot(farm.runs, run_id).failures
    return run_id, plan


def manifest_of(farm: FarmHandle, run_id: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (Path(farm.runs.meta(run_id)["output_dir"]) / "manifest.json").read_text()
    )
    return doc


def test_sample_renders_to_an_h264_portrait_episode(farm: FarmHandle, first_run: tuple[str, Plan]) -> None:
    run_id, plan = first_run
    folder = Path(farm.runs.meta(run_id)["output_dir"])
    episode = probe(folder / "LEV_EP001_episode.mp4")
    assert (episode.codec, episode.width, episode.height, episode.fps) == ("h264", 720, 1280, 16.0)
    clips = [probe(folder / plan.step(shot.clip).asset_name) for shot in plan.shots]
    assert abs(episode.duration_s - sum(c.duration_s for c in clips)) <= 0.2
    for step in plan.steps:
        for name in step.outputs:
            assert (folder / name).stat().st_size > 0, name


def test_manifest_records_every_step_reproducibly(farm: FarmHandle, first_run: tuple[str, Plan]) -> None:
    run_id, plan = first_run
    manifest = manifest_of(farm, run_id)
    assert manifest["status"] == "succeeded"
    assert [s["id"] for s in manifest["steps"]] == [s.id for s in plan.steps]
    by_id = {s.id: s for s in plan.steps}
    for row in manifest["steps"]:
        step = by_id[row["id"]]
        assert row["state"] == "done" and row["cached"] is False
        assert row["params"] == step.params and row["seed"] == step.params.get("seed")
        assert row["inputs"] == list(step.inputs)
        assert row["timings"]["seconds"] is not None and row["timings"]["seconds"] >= 0
        assert row["cost_usd"]["estimated"] == float(step.cost_usd) and row["cost_usd"]["actual"] == 0.0
        assert all(Path(o["path"]).exists() for o in row["outputs"])
    assert manifest["cost_usd"]["estimated"] == pytest.approx(1.557)


def test_flower_lists_every_step_with_readable_args(farm: FarmHandle, first_run: tuple[str, Plan]) -> None:
    run_id, plan = first_run
    access = farm.farm.flower_access
    assert access is not None
    assert httpx.get(f"{access.url}/api/tasks", timeout=10).status_code == 401
    tasks = httpx.get(f"{access.url}/api/tasks", auth=(access.user, access.password), timeout=10).json()
    mine = {tid: t for tid, t in tasks.items() if tid.startswith(run_id)}
    assert len(mine) == len(plan.steps)
    for step in plan.steps:
        task = mine[f"{run_id}:{step.id}"]
        assert task["name"] == f"farm.{step.kind.value}"
        assert task["args"] == f"{run_id} {step.asset_name}"


def test_the_farms_own_redis_refuses_clients_without_its_password_which_shows_nowhere(
    farm: FarmHandle, first_run: tuple[str, Plan]
) -> None:
    """The farm that rendered the sample ran on a password-protected Redis; no command line, log, Redis
    value, manifest or Flower page shows the password."""
    server = farm.farm.redis
    assert server is not None and server.password, "the farm started its own redis-server, with a password"
    password = server.password
    assert farm.farm.broker_url == server.url and f":{password}@" in server.url
    for client in (redis.Redis(port=server.port), redis.Redis(port=server.port, password="guess")):
        with pytest.raises(redis.AuthenticationError):  # NOAUTH, then WRONGPASS
            client.ping()
    saved = farm.farm.settings.home / "redis.json"
    assert json.loads(saved.read_text())["password"] == password
    for private in (saved, server.data_dir / "redis.conf"):
        assert private.stat().st_mode & 0o077 == 0, private
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            assert password.encode() not in cmdline.read_bytes(), cmdline
        except OSError:
            continue  # the process ended
    assert_secret_appears_nowhere(farm, password)
    assert password not in (server.data_dir / "redis.log").read_text()
    access = farm.farm.flower_access
    assert access is not None
    for page in ("/broker", "/workers", "/api/workers?refresh=1", "/tasks"):
        shown = httpx.get(f"{access.url}{page}", auth=(access.user, access.password), timeout=10)
        assert shown.status_code == 200 and password not in shown.text, page
    workers = httpx.get(f"{access.url}/api/workers", auth=(access.user, access.password), timeout=10).json()
    assert workers and all(w["stats"]["broker"]["port"] == server.port for w in workers.values()), workers


def test_resubmitting_renders_nothing(
    farm: FarmHandle, first_run: tuple[str, Plan], sample_path: Path
) -> None:
    run_id, _ = farm.submit(sample_path)
    assert farm.wait(run_id) == "succeeded"
    assert set(farm.runs.states(run_id).values()) == {"cached"}
    assert all(row["cached"] for row in manifest_of(farm, run_id)["steps"])


def test_editing_one_shot_renders_only_what_changed(
    farm: FarmHandle, first_run: tuple[str, Plan], sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    _, before = first_run
    edited = copy.deepcopy(sample_doc)
    edited["shots"][6]["last_frame"] = "JNXCHAR yanks the lever, sparks spitting from the panel."
    path = tmp_path / "storyboard.json"
    path.write_text(json.dumps(edited))
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    run_id, after = farm.submit(path)
    assert farm.wait(run_id) == "succeeded"
    rendered = {i for i, state in farm.runs.states(run_id).items() if state == "done"}
    assert rendered == {s.id for s in after.steps} - {s.id for s in before.steps}
    assert {(after.step(i).shot, after.step(i).kind.value, after.step(i).role) for i in rendered} == {
        (7, "img2img", "last"),
        (7, "upscale", "last"),
        (7, "video", "clip"),
        (None, "concat", "episode"),
    }


class _Mkdir:
    """Unpickling this creates a directory: what a pickled message could make a worker do if accepted."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.mkdir, (str(self.path),))


@pytest.mark.chaos
def test_a_pickled_message_is_refused_and_runs_nothing(farm: FarmHandle, tmp_path: Path) -> None:
    """The workers accept JSON only: a pickle, the classic way to run code in a Celery worker, is dropped
    unread, with a line in the worker's log."""
    marker = tmp_path / "unpickled"
    log = farm.farm.log_dir / "worker-post.log"
    before = log.read_text(errors="replace").count("Refusing to deserialize")
    farm.sender.app.send_task("farm.t2i", args=[_Mkdir(marker), "step"], queue="post", serializer="pickle")
    deadline = time.monotonic() + 30
    while log.read_text(errors="replace").count("Refusing to deserialize") == before:
        assert time.monotonic() < deadline, "the worker never saw the pickled message"
        time.sleep(0.2)
    assert "untrusted content of type pickle" in log.read_text(errors="replace")
    assert not marker.exists(), "the pickle was never loaded"
    assert farm.redis.llen("post") == 0, "the message is gone, not waiting to be retried"


@pytest.mark.chaos
def test_a_pool_child_killed_each_time_it_runs_a_step_fails_that_step_after_the_delivery_cap(
    farm: FarmHandle, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    """As the OOM killer would: the prefork child running a step is SIGKILLed on every delivery. Celery
    requeues the step each time (late acks, reject on worker lost); the fourth start finds the cap spent
    and fails the step with that reason; nothing else is lost and no half-written file is left."""
    doc = copy.deepcopy(sample_doc)
    doc["project"], doc["shots"] = "OOMK", doc["shots"][:2]
    path = tmp_path / "storyboard.json"
    path.write_text(json.dumps(doc))
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    run_id, plan = farm.submit(path)
    killed: dict[str, set[int]] = {}
    victim: str | None = None
    deadline = time.monotonic() + 240
    while (victim is None or farm.runs.states(run_id)[victim] != "failed") and time.monotonic() < deadline:
        states, deliveries, info = (
            farm.runs.states(run_id),
            farm.runs.deliveries(run_id),
            farm.runs.info(run_id),
        )
        running = [s for s, state in states.items() if state == "running" and (victim is None or s == victim)]
        for step_id in running:
            started = info.get(step_id, {})
            if started.get("delivery") != deliveries.get(step_id) or started.get("delivery") in killed.get(
                step_id, set()
            ):
                continue  # its info is from an earlier delivery, or this delivery was killed already
            pid = int(str(started["worker"]).rpartition(":")[2])
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue  # it finished first
            killed.setdefault(step_id, set()).add(int(started["delivery"]))
            victim = step_id
            break
        time.sleep(0.01)
    assert victim is not None, "no step was caught running"
    assert farm.wait(run_id, timeout_s=240) == "failed"
    reason = str(farm.runs.info(run_id)[victim]["error"])
    assert "worker died 3 times" in reason and "not retried again" in reason, reason
    assert killed[victim] == {1, 2, 3} and farm.runs.deliveries(run_id)[victim] == 4
    states = farm.runs.states(run_id)
    lost = {s: state for s, state in states.items() if state in ("queued", "running")}
    assert not lost, f"every step ended: {lost}"
    downstream = {c.id for c in plan.consumers().get(victim, [])}
    assert all(states[s] == "waiting" for s in downstream), "what needs the failed step never started"
    folder = Path(farm.runs.meta(run_id)["output_dir"])
    assert not list(folder.rglob("*.partial")) and not list(
        farm.farm.settings.artifacts_root().rglob("*.partial")
    )


def test_bad_storyboard_enqueues_nothing(
    farm: FarmHandle, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    bad = copy.deepcopy(sample_doc)
    del bad["shots"][3]["triptych_prompt"]
    path = tmp_path / "storyboard.json"
    path.write_text(json.dumps(bad))
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    runs_before = farm.runs.runs(1000)
    env = {**os.environ, "FARM_REDIS_URL": farm.farm.broker_url}
    result = subprocess.run(
        [sys.executable, "-m", "farm.cli", "submit", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "shots[3].triptych_prompt" in result.stderr
    assert farm.runs.runs(1000) == runs_before
    assert all(farm.redis.llen(queue) == 0 for queue in QUEUES)


def test_cancel_stops_releasing_and_revokes_queued(
    farm: FarmHandle, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    fresh = copy.deepcopy(sample_doc)
    fresh["project"] = "CXL"  # every seed changes: nothing can be reused
    path = tmp_path / "storyboard.json"
    path.write_text(json.dumps(fresh))
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    run_id, plan = farm.submit(path)
    dispatch.cancel(farm.runs, farm.sender, run_id)
    assert farm.wait(run_id, timeout_s=60) == "cancelled"
    states = farm.runs.states(run_id)
    assert "cancelled" in states.values()
    assert not {"queued", "running", "waiting"} & set(states.values())
    assert sum(1 for s in states.values() if s == "done") < len(plan.steps)
    time.sleep(1.0)
    assert farm.runs.states(run_id) == states, "nothing ran after the run settled"


def farm_cli(farm: FarmHandle, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FARM_REDIS_URL": farm.farm.broker_url, "COLUMNS": "160"}
    return subprocess.run(
        [sys.executable, "-m", "farm.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def test_status_runs_and_submit_watch_commands(
    farm: FarmHandle, first_run: tuple[str, Plan], sample_path: Path, tmp_path: Path
) -> None:
    run_id, _ = first_run
    status = farm_cli(farm, "status", run_id)
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout and "53/53" in status.stdout and "triptych_split_flf" in status.stdout
    listed = farm_cli(farm, "runs")
    assert run_id in listed.stdout
    assert farm_cli(farm, "status", "no-such-run").returncode == 2
    watched = farm_cli(farm, "submit", str(sample_path), "--watch", "--out", str(tmp_path))
    assert watched.returncode == 0, watched.stderr
    new_run = watched.stdout.splitlines()[0]
    assert farm.runs.meta(new_run)["status"] == "succeeded"
    assert (tmp_path / "leviathan" / "ep_001" / "LEV_EP001_episode.mp4").exists()


def test_worker_command_runs_one_pool_in_the_foreground(farm: FarmHandle) -> None:
    assert farm_cli(farm, "worker", "--queue", "nope").returncode == 2
    env = {**os.environ, "FARM_REDIS_URL": farm.farm.broker_url}
    with subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "worker", "--queue", "gpu"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        assert "gpu" in read_until(process, " ready.")
        process.terminate()
        assert process.wait(60) == 0


def wait_for_status(farm: FarmHandle, run_id: str, wanted: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while (status := farm.runs.meta(run_id).get("status")) != wanted:
        assert time.monotonic() < deadline, f"run {run_id} is {status}, not {wanted}"
        assert status not in ("failed", "cancelled"), snapshot(farm.runs, run_id).failures
        time.sleep(0.2)


def test_a_review_run_renders_no_video_before_its_shot_is_approved(
    farm: FarmHandle, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    doc = copy.deepcopy(sample_doc)
    doc["project"] = "REV"  # its own step ids: nothing comes from the store
    # Three shots whose clips are each held a different way (a video, a held still, a push-in): a first and
    # a second to approve and a third still waiting, without rendering the whole sample a second time.
    doc["shots"] = [s for s in doc["shots"] if s["shot"] in (2, 6, 10)]
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    (tmp_path / "storyboard.json").write_text(json.dumps(doc))
    storyboard, out = str(tmp_path / "storyboard.json"), str(tmp_path / "out")
    submitted = farm_cli(farm, "submit", storyboard, "--review", "--watch", "--out", out)
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.splitlines()[0]
    assert farm.runs.meta(run_id)["status"] == "review", "watching stops when the run waits for review"
    steps, info = farm.runs.steps(run_id), farm.runs.info(run_id)
    held = {s.id: s for s in steps.values() if s.id in farm.runs.gated(run_id)}
    assert held and all("started_at" not in info.get(step_id, {}) for step_id in held), "no video ran"
    assert set(review.shot_states(farm.runs, run_id).values()) == {"generated"}
    first, second, *_ = sorted({s.shot for s in held.values() if s.shot is not None})

    approved = farm_cli(farm, "approve", run_id, str(first))
    assert approved.returncode == 0 and f"approved shot(s) {first}" in approved.stdout, approved.stderr
    wait_for_status(farm, run_id, "review")
    states = farm.runs.states(run_id)
    assert all(states[i] == "done" for i, s in held.items() if s.shot == first)
    assert all(states[i] == "held" for i, s in held.items() if s.shot != first)
    status = farm_cli(farm, "status", run_id)
    assert "review" in status.stdout and "approved" in status.stdout and "generated" in status.stdout

    review.mark(farm.runs, run_id, [second], "approved")  # as the dailies page does
    rendered = farm_cli(farm, "render-video", run_id)
    assert f"for shot(s) {first}, {second}" in rendered.stdout and "waiting for approval: " in rendered.stdout
    wait_for_status(farm, run_id, "review")
    assert farm_cli(farm, "approve", run_id, "99").returncode == 2
    assert farm_cli(farm, "approve", run_id, "--all").returncode == 0
    assert farm.wait(run_id) == "succeeded"
    assert (Path(farm.runs.meta(run_id)["output_dir"]) / "manifest.json").exists()


def test_a_retake_rerenders_the_shot_and_its_continuity_child_and_keeps_the_old_take(
    farm: FarmHandle, first_run: tuple[str, Plan], sample_path: Path, sample_doc: Doc, registry_doc: Doc
) -> None:
    run_id, before = first_run
    folder = Path(farm.runs.meta(run_id)["output_dir"])
    new_last = "JNXCHAR slumps against the sealed bulkhead, water to her waist."
    edited = copy.deepcopy(sample_doc)
    edited["shots"][1]["last_frame"] = new_last
    after = build_plan(check_episode(edited, registry_doc, sample_path, sample_path))
    expected = {s.id for s in after.steps} - {s.id for s in before.steps}
    info_before = farm.runs.info(run_id)

    retaken = farm_cli(farm, "retake", run_id, "2", "--last", new_last)
    assert retaken.returncode == 0, retaken.stderr
    assert "shot 2 take T02" in retaken.stdout
    assert "shot 3 take T02 (continues from a retaken shot)" in retaken.stdout
    assert farm.wait(run_id) == "succeeded", snapshot(farm.runs, run_id).failures

    info = farm.runs.info(run_id)
    ran = {i for i in info if info[i].get("started_at") != info_before.get(i, {}).get("started_at")}
    assert ran == expected, "exactly the changed steps of shot 2, shot 3 and the episode cut ran"
    steps = farm.runs.steps(run_id)
    for step_id in expected:
        assert (folder / steps[step_id].asset_name).stat().st_size > 0
    replaced = farm.runs.history(run_id)
    assert replaced and all((folder / s.asset_name).stat().st_size > 0 for s in replaced), "old take kept"
    cuts = [
        probe(folder / name).duration_s for name in ("LEV_EP001_episode.mp4", "LEV_EP001_episode_C02.mp4")
    ]
    assert abs(cuts[0] - cuts[1]) <= 0.1, "the new cut has the same shots, one of them retaken"
    manifest = manifest_of(farm, run_id)
    assert manifest["takes"] == {"2": 2, "3": 2} and manifest["cut"] == 2
    old_rows = [row for row in manifest["steps"] if not row["current"]]
    assert {row["id"] for row in old_rows} == {s.id for s in replaced}
    assert all(row["take"] == 1 and row["state"] == "done" for row in old_rows)
    status = farm_cli(farm, "status", run_id)
    assert "T02" in status.stdout and "succeeded" in status.stdout
    again = farm_cli(farm, "retake", run_id, "2", "--last", new_last)
    assert again.returncode == 2 and "nothing changes" in again.stderr
