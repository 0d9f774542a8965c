"""The sample episode entirely through the GPU pool: the RunPod emulator (real runpod SDK), pods that are
real SSH servers (paramiko on our side), and ComfyUI emulators started on the pods over SSH by PID."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import httpx
import pytest

from emulators.runpod_server import RunpodEmulator, RunpodFaults
from emulators.ssh_pod import SSHPod
from farm.cli.pods import PodReaper
from farm.config.settings import Settings
from farm.ops.supervisor import start_worker
from farm.planning.plan import Plan
from farm.runs.progress import snapshot
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle, assert_secret_appears_nowhere, running_farm, worker_logs
from tests.support.ports import free_port
from workers.backends import BackendServices, build_gpu_pool
from workers.comfyui.backend import prompt_id_for
from workers.comfyui.on_pod import START_SCRIPT, ComfyOnPod, CustomNode
from workers.comfyui.workflows import load_workflow
from workers.gpu.pod_ledger import LedgerKnownHosts, PodLedger
from workers.gpu.pods import RunpodPods
from workers.gpu.pool import GpuPool, PoolLimits
from workers.gpu.ssh import PodShell

RUNPOD_KEY = "runpod-test-key-0c4f-do-not-leak"
TIME_LIMIT_SCALE = 0.02
"""Shrinks the visibility timeout to about a minute, so a killed worker's steps come back within a test."""
SHIM = """import os, sys
os.chdir(os.path.dirname(os.path.abspath(__file__)))
with open(".pid", "w") as handle:
    handle.write(str(os.getpid()))
fleet_setting = os.path.join("..", "..", "run_seconds")
run_seconds = open(fleet_setting).read().strip() if os.path.exists(fleet_setting) else "0.02"
nodes = sorted(os.listdir("custom_nodes")) if os.path.isdir("custom_nodes") else []
print("custom nodes loaded:", " ".join(nodes) or "none", flush=True)
from emulators.comfyui_server import main
main(["--root", ".", "--port", "{port}", "--run-seconds", run_seconds])
"""


@dataclass
class PodFleet:
    """The machines behind emulated pods: an SSH server each, with ComfyUI's port mapped to a local one."""

    base: Path
    public_key: str
    servers: dict[str, SSHPod] = field(default_factory=dict)
    comfy_ports: dict[str, int] = field(default_factory=dict)

    def start(self, pod_id: str) -> int:
        root = self.base / pod_id
        if pod_id not in self.comfy_ports:
            self.comfy_ports[pod_id] = free_port()
            (root / "ComfyUI").mkdir(parents=True)
            (root / "ComfyUI" / "main.py").write_text(SHIM.format(port=self.comfy_ports[pod_id]))
        server = SSHPod(root=root, authorized_key=self.public_key, forwards={8188: self.comfy_ports[pod_id]})
        self.servers[pod_id] = server.start()  # a fresh container: a fresh host key
        return server.port

    def stop(self, pod_id: str) -> None:
        pid_file = self.base / pod_id / "ComfyUI" / ".pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            pid_file.unlink()
        server = self.servers.pop(pod_id, None)
        if server is not None:
            server.stop()

    def set_run_seconds(self, seconds: float) -> None:
        """How long each ComfyUI run takes, on running pods now and on pods started later."""
        self.base.mkdir(parents=True, exist_ok=True)  # before the first pod, too
        (self.base / "run_seconds").write_text(str(seconds))
        for port in self.comfy_ports.values():
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"http://127.0.0.1:{port}/_faults", json={"run_seconds": seconds}, timeout=5)

    def restart_comfyui(self, pod_id: str) -> None:
        """ComfyUI restarts on the pod: the running prompt, the queue and the history are lost."""
        httpx.post(f"http://127.0.0.1:{self.comfy_ports[pod_id]}/_restart", timeout=5).raise_for_status()

    def executed(self) -> list[str]:
        runs: list[str] = []
        for port in self.comfy_ports.values():
            try:
                runs += httpx.get(f"http://127.0.0.1:{port}/_executed", timeout=5).json()["executed"]
            except httpx.HTTPError:
                continue
        return runs


@dataclass
class GpuFarm(FarmHandle):
    runpod: RunpodEmulator = field(kw_only=True)
    fleet: PodFleet = field(kw_only=True)
    settings: Settings = field(kw_only=True)
    env: dict[str, str] = field(kw_only=True)

    def pool(self) -> GpuPool:
        pods = RunpodPods(RUNPOD_KEY, base_url=self.runpod.url)
        limits = PoolLimits(
            idle_timeout_s=self.settings.gpu_idle_timeout_s, name_prefix=self.settings.gpu_pod_prefix
        )
        return GpuPool(pods, PodLedger(self.redis), limits)


def node_repository(folder: Path, name: str) -> str:
    """A custom node as a local git repository; pods clone it like any node repository."""
    repo = folder / name
    repo.mkdir(parents=True)
    (repo / "__init__.py").write_text("NODE_CLASS_MAPPINGS: dict[str, type] = {}\n")
    git = ["git", "-c", "user.name=farm", "-c", "user.email=farm@example.invalid", "-C", str(repo)]
    for args in (["init", "-q"], ["add", "."], ["commit", "-q", "-m", "node"]):
        subprocess.run([*git, *args], check=True, capture_output=True)
    return repo.as_uri()


@contextlib.contextmanager
def running_gpu_farm(home: Path) -> Iterator[GpuFarm]:
    """A gpu and post farm on a fresh RunPod emulator whose pods are real SSH servers running the ComfyUI
    emulator (two pods at most, idle after 3 s); the SSH key and the pods' files live under `home`."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    (home / "ssh").mkdir(parents=True)
    key_path = home / "ssh" / "id_ed25519"
    key.write_private_key(str(key_path))
    public = key.export_public_key().decode().strip()
    key_path.with_suffix(".pub").write_text(public + "\n")
    fleet = PodFleet(home / "pods", public)
    runpod = RunpodEmulator(
        api_key=RUNPOD_KEY, backend=fleet, faults=RunpodFaults(runtime_delay_polls=1)
    ).start()
    env = {
        "FARM_HOME": str(home),
        "FARM_ENGINE": "comfyui",
        "FARM_RUNPOD_API_KEY": RUNPOD_KEY,
        "FARM_RUNPOD_URL": runpod.url,
        "FARM_GPU_SSH_KEY": str(key_path),
        "FARM_COMFY_DIR": "ComfyUI",
        "FARM_COMFY_COMMAND": f"{sys.executable} main.py --listen 127.0.0.1 --port 8188",
        "FARM_GPU_MAX_PODS": "2",
        "FARM_GPU_IDLE_TIMEOUT_S": "3",
        "NO_PROXY": "127.0.0.1,localhost",
        "FARM_GPU_CONCURRENCY": "2",
        "FARM_TIME_LIMIT_SCALE": str(TIME_LIMIT_SCALE),
        "FARM_RECONCILE_EVERY_S": "2",  # a killed worker's step is put back ~20 s after, not after 75 s
        "FARM_COMFY_CUSTOM_NODES": node_repository(home / "nodes", "farm-first-node"),
    }
    try:
        with running_farm(home, env, ("gpu", "post")) as farm:
            yield GpuFarm(
                farm,
                home / "out",
                "comfyui",
                runpod=runpod,
                fleet=fleet,
                settings=farm.settings,
                env={**env, "FARM_REDIS_URL": farm.broker_url},
            )
    finally:
        runpod.stop()


@pytest.fixture(scope="module")
def gpu_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuFarm]:
    with running_gpu_farm(tmp_path_factory.mktemp("gpu-home")) as farm:
        yield farm


def test_the_sample_renders_entirely_through_the_gpu_pool(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    doc = copy.deepcopy(sample_doc)
    doc["project"] = "GPU"
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    (tmp_path / "storyboard.json").write_text(json.dumps(doc))
    run_id, plan = gpu_farm.submit(tmp_path / "storyboard.json")
    assert gpu_farm.wait(run_id, timeout_s=600) == "succeeded", gpu_farm.runs.info(run_id)
    manifest = json.loads(Path(gpu_farm.runs.meta(run_id)["manifest"]).read_text())
    model_steps = [r for r in manifest["steps"] if r["engine"] != "post"]
    assert len(model_steps) == sum(1 for s in plan.steps if s.engine != "post")
    assert model_steps and all(r["backend"] == "comfyui" and r["provider"]["pod"] for r in model_steps)
    assert manifest["cost_usd"]["actual"] > 0, "pod seconds are charged to the run"
    assert set(renders_per_step(gpu_farm, plan).values()) == {1}, "one ComfyUI run per step, none twice"
    starts = [r["provider"] for r in model_steps if "comfy_start_s" in r["provider"]]
    assert starts and all("warm_up_s" in p for p in starts), "every ComfyUI start is warmed up"
    warm_ups = list(gpu_farm.fleet.base.rglob("output/farm/_warm_up*"))
    assert len(warm_ups) == len(starts)
    assert all(p["installed_nodes"] == ["farm-first-node"] for p in starts), "each new pod got the node"


def test_idle_pods_are_stopped_by_the_reaper(gpu_farm: GpuFarm) -> None:
    pool = gpu_farm.pool()
    if not any(p.state == "running" for p in pool.registry.pods()):
        pool.start_new()  # this test alone: no render has left a warm pod
    running = [p.id for p in pool.registry.pods() if p.state == "running"]
    time.sleep(gpu_farm.settings.gpu_idle_timeout_s + 0.5)
    reaper = PodReaper(gpu_farm.settings, gpu_farm.farm.broker_url, every_s=0.0)  # what `farm up` runs
    reaper.maybe_reap()
    assert all(gpu_farm.runpod.pods()[p]["desiredStatus"] == "EXITED" for p in running)


def test_a_prompt_full_of_shell_metacharacters_renders_harmlessly(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    first_frame = 'A pipe $(touch pwned); `touch pwned2` && rm -rf / "quoted" \\ | > out < in'
    path = one_shot_episode(tmp_path, sample_doc, registry_doc, "SHL", first_frame=first_frame)
    run_id, _ = gpu_farm.submit(path)
    assert gpu_farm.wait(run_id, timeout_s=300) == "succeeded", gpu_farm.runs.info(run_id)
    assert not list(gpu_farm.fleet.base.rglob("pwned*")), "nothing in the prompt was executed on a pod"
    commands = [c for server in gpu_farm.fleet.servers.values() for c in server.commands()]
    assert commands and not any("pwned" in " ".join(c) for c in commands), (
        "prompts never enter a command line"
    )


def one_shot_episode(
    folder: Path, sample_doc: Doc, registry_doc: Doc, project: str, first_frame: str | None = None
) -> Path:
    """Shot 6 of the sample alone, under its own project code (so its own step and prompt ids)."""
    doc = copy.deepcopy(sample_doc)
    doc["project"] = project
    doc["shots"] = [s for s in doc["shots"] if s["shot"] == 6]
    if first_frame is not None:
        doc["shots"][0]["first_frame"] = first_frame
    (folder / "lora_registry.json").write_text(json.dumps(registry_doc))
    (folder / "storyboard.json").write_text(json.dumps(doc))
    return folder / "storyboard.json"


def caught_in_flight(gpu_farm: GpuFarm, plan: Plan, timeout_s: float = 120) -> tuple[str, str]:
    """The first step whose ComfyUI prompt went to a pod, and that pod, while the prompt still runs."""
    registry = PodLedger(gpu_farm.redis)
    deadline = time.monotonic() + timeout_s
    while True:
        for step in plan.steps:
            if (pod_id := registry.run_pod(step.id)) is not None:
                time.sleep(0.3)  # let the submit land
                return step.id, pod_id
        assert time.monotonic() < deadline, "no step reached a pod"
        time.sleep(0.05)


def renders_per_step(gpu_farm: GpuFarm, plan: Plan) -> dict[str, int]:
    """How many times ComfyUI started each of the plan's model steps, across all pods."""
    started = Counter(gpu_farm.fleet.executed())
    return {s.id: started[prompt_id_for(s.id)] for s in plan.steps if s.engine != "post"}


def step_record(gpu_farm: GpuFarm, run_id: str, step_id: str) -> dict[str, object]:
    manifest = json.loads(Path(gpu_farm.runs.meta(run_id)["manifest"]).read_text())
    return next(r for r in manifest["steps"] if r["id"] == step_id)


@contextlib.contextmanager
def slow_comfyui(gpu_farm: GpuFarm, seconds: float) -> Iterator[None]:
    gpu_farm.fleet.set_run_seconds(seconds)
    try:
        yield
    finally:
        gpu_farm.fleet.set_run_seconds(0.02)


@pytest.mark.chaos
def test_ssh_dropped_mid_job_resumes_the_run_without_rendering_it_again(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    with slow_comfyui(gpu_farm, 2.0):
        run_id, plan = gpu_farm.submit(one_shot_episode(tmp_path, sample_doc, registry_doc, "DRP"))
        step_id, pod_id = caught_in_flight(gpu_farm, plan)
        gpu_farm.fleet.servers[pod_id].drop_connections()
        assert gpu_farm.wait(run_id, timeout_s=300) == "succeeded", gpu_farm.runs.info(run_id)
    assert set(renders_per_step(gpu_farm, plan).values()) == {1}, "no prompt rendered twice"
    record = step_record(gpu_farm, run_id, step_id)
    assert record["retries"] >= 1  # type: ignore[operator]
    assert record["provider"]["resumed_run"] is True  # type: ignore[index]


def test_a_running_gpu_step_shows_live_progress_in_the_run_status(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    with slow_comfyui(gpu_farm, 2.0):
        run_id, plan = gpu_farm.submit(one_shot_episode(tmp_path, sample_doc, registry_doc, "PRG"))
        step_id, _ = caught_in_flight(gpu_farm, plan)
        deadline = time.monotonic() + 60
        while not (activity := [s.activity for s in snapshot(gpu_farm.runs, run_id).shots if s.activity]):
            assert time.monotonic() < deadline, "no progress reported while the step ran"
            time.sleep(0.1)
        assert re.fullmatch(r"(t2i|img2img|upscale|video) \d+/\d+", activity[0]), activity
        assert gpu_farm.wait(run_id, timeout_s=300) == "succeeded", gpu_farm.runs.info(run_id)
    last = gpu_farm.runs.info(run_id)[step_id]["progress"]
    assert last["value"] == last["max"] > 1, "the last sampler step is always recorded"


@pytest.mark.chaos
def test_comfyui_restarted_mid_job_renders_only_the_lost_prompt_again(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    with slow_comfyui(gpu_farm, 2.0):
        run_id, plan = gpu_farm.submit(one_shot_episode(tmp_path, sample_doc, registry_doc, "RST"))
        step_id, pod_id = caught_in_flight(gpu_farm, plan)
        gpu_farm.fleet.restart_comfyui(pod_id)
        assert gpu_farm.wait(run_id, timeout_s=300) == "succeeded", gpu_farm.runs.info(run_id)
    renders = renders_per_step(gpu_farm, plan)
    assert renders.pop(step_id) == 2, "the prompt the restart lost was submitted again"
    assert set(renders.values()) == {1}
    assert step_record(gpu_farm, run_id, step_id)["retries"] >= 1  # type: ignore[operator]


@pytest.mark.chaos
def test_a_gpu_worker_killed_mid_job_leaves_no_orphan_pod_and_no_second_render(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    with slow_comfyui(gpu_farm, 3.0):
        run_id, plan = gpu_farm.submit(one_shot_episode(tmp_path, sample_doc, registry_doc, "KIL"))
        step_id, pod_id = caught_in_flight(gpu_farm, plan)
        worker = gpu_farm.farm.workers["gpu"]
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        registry = PodLedger(gpu_farm.redis)
        assert registry.get(pod_id).lease_holder, "the dead worker's lease outlives it"  # type: ignore[union-attr]
        gpu_farm.farm.workers["gpu"] = start_worker(gpu_farm.farm, "gpu")
        assert gpu_farm.wait(run_id, timeout_s=400) == "succeeded", gpu_farm.runs.info(run_id)
    assert gpu_farm.runs.deliveries(run_id)[step_id] >= 2, "the step was redelivered after the kill"
    assert "a gone worker was running" in worker_logs(gpu_farm.farm), "put back by the reconciler"
    assert set(renders_per_step(gpu_farm, plan).values()) == {1}, "the finished prompt was not rendered again"
    assert step_record(gpu_farm, run_id, step_id)["provider"]["resumed_run"] is True  # type: ignore[index]
    time.sleep(gpu_farm.settings.gpu_idle_timeout_s + 0.5)
    PodReaper(gpu_farm.settings, gpu_farm.farm.broker_url, every_s=0.0).maybe_reap()
    live = {p: pod["desiredStatus"] for p, pod in gpu_farm.runpod.pods().items()}
    assert live and set(live.values()) == {"EXITED"}, f"after reconciliation no pod runs: {live}"
    assert all(p.lease_holder is None for p in registry.pods())


def comfy_pid(registry: PodLedger, pod_id: str) -> int | None:
    record = registry.get(pod_id)
    return record.comfy_pid if record is not None else None


def test_a_new_custom_node_is_installed_and_comfyui_restarted_by_pid(
    gpu_farm: GpuFarm, tmp_path: Path
) -> None:
    pool, registry, comfy = build_gpu_pool(BackendServices(gpu_farm.settings, gpu_farm.redis))
    lease = pool.acquire("qwen", "test-holder:1:nodes")
    workflow = load_workflow("qwen_t2i")
    shell = PodShell(lease.pod_id, lease.endpoint, comfy.key_path, LedgerKnownHosts(registry))
    try:
        with shell:
            ComfyOnPod(registry, comfy, tick=lambda: None).ensure(
                shell, lease.pod_id, workflow, fresh=lease.resumed
            )
            old_pid = comfy_pid(registry, lease.pod_id)
            second = CustomNode.parse(node_repository(tmp_path, "farm-second-node"))
            wider = dataclasses.replace(comfy, custom_nodes=(*comfy.custom_nodes, second))
            on_pod = ComfyOnPod(registry, wider, tick=lambda: pool.renew(lease))
            done = on_pod.ensure(shell, lease.pod_id, workflow, fresh=False)
            assert done["installed_nodes"] == ["farm-second-node"] and "warm_up_s" in done
            new_pid = comfy_pid(registry, lease.pod_id)
            assert old_pid is not None and new_pid != old_pid and not on_pod.alive(shell, old_pid)
            log = shell.run(["cat", f"{comfy.comfy_dir}/comfyui.log"]).stdout.splitlines()
            loaded = [line for line in log if line.startswith("custom nodes loaded:")]
            assert loaded == ["custom nodes loaded: farm-first-node farm-second-node"], "the new start's log"
            assert on_pod.ensure(shell, lease.pod_id, workflow, fresh=False) == {}, "ready: nothing to do"
            kills = [c for c in gpu_farm.fleet.servers[lease.pod_id].commands() if "kill" in c[0]]
            assert ["kill", str(old_pid)] in kills and not any("pkill" in c[0] for c in kills)
    finally:
        pool.release(lease, family="qwen", busy_s=0.0)


def test_two_jobs_sharing_a_pod_start_comfyui_once(gpu_farm: GpuFarm) -> None:
    pool, _, comfy = build_gpu_pool(BackendServices(gpu_farm.settings, gpu_farm.redis))
    registry = PodLedger(gpu_farm.redis, slots=2)  # FARM_GPU_JOBS_PER_POD=2
    pool.registry = registry
    first = pool.acquire("zimage", "test-holder:1:job-a")
    others = [p.id for p in registry.pods() if p.id != first.pod_id]
    for other in others:  # busy elsewhere: the next job has to share
        while registry.lease(other, "test-holder:0:elsewhere", 60):
            pass
    second = pool.acquire("zimage", "test-holder:2:job-b")
    assert first.pod_id == second.pod_id, "the second job shares the pod"
    pod_id, workflow = first.pod_id, load_workflow("zimage_t2i")
    shells = [
        PodShell(pod_id, lease.endpoint, comfy.key_path, LedgerKnownHosts(registry))
        for lease in (first, second)
    ]
    try:
        with shells[0]:
            pid = comfy_pid(registry, pod_id)
            if pid is not None:
                ComfyOnPod(registry, comfy, tick=lambda: None).stop(shells[0], pod_id, pid)
        server = gpu_farm.fleet.servers[pod_id]
        starts_before = sum(1 for c in server.commands() if START_SCRIPT in c)
        with ThreadPoolExecutor(2) as threads:
            done = list(
                threads.map(
                    lambda shell: ComfyOnPod(registry, comfy, tick=lambda: None).ensure(
                        shell, pod_id, workflow, fresh=False
                    ),
                    shells,
                )
            )
        assert sum(1 for c in server.commands() if START_SCRIPT in c) == starts_before + 1
        assert sorted("comfy_start_s" in d for d in done) == [False, True], "one started it, one found it up"
    finally:
        for shell in shells:
            shell.close()
        for lease in (first, second):
            pool.release(lease, family="zimage", busy_s=0.0)
        for other in others:
            while registry.release(other, "test-holder:0:elsewhere", family="", busy_s=0.0):
                pass


def test_every_pods_command_against_the_emulator(gpu_farm: GpuFarm) -> None:
    env = {**os.environ, **gpu_farm.env, "COLUMNS": "200"}

    def pods(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "farm.cli", "pods", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    time.sleep(gpu_farm.settings.gpu_idle_timeout_s + 0.5)  # the pods of the renders above go idle
    reaped = pods("reap")
    assert reaped.returncode == 0 and reaped.stdout.startswith("stopped idle:"), reaped.stderr
    started = pods("up")
    assert started.returncode == 0, started.stderr
    pod_id = started.stdout.split(":")[0]
    listing = pods("list").stdout
    assert pod_id in listing and "busy" in listing and "spent idle since their last job" in listing
    echoed = pods("exec", pod_id, "--", "printf", "%s", "a b; $(touch x) 'q'")
    assert echoed.returncode == 0 and echoed.stdout == "a b; $(touch x) 'q'"
    assert pods("exec", pod_id, "--", "sh", "-c", "exit 3").returncode == 3
    assert pods("logs", pod_id).returncode == 0
    port_before = gpu_farm.pool().pods.get(pod_id).ssh
    assert f"-p {port_before.port} root@127.0.0.1" in pods("ssh", pod_id).stdout  # type: ignore[union-attr]
    unhealthy = pods("health", pod_id)
    assert unhealthy.returncode == 1 and "Traceback" not in unhealthy.stderr
    assert pods("stop", pod_id).stdout.strip() == f"{pod_id}: stopped"
    assert pods("resume", pod_id).stdout.strip() == f"{pod_id}: running"
    assert gpu_farm.pool().pods.get(pod_id).ssh != port_before, "the SSH endpoint changed on resume"
    assert pods("terminate", pod_id).stdout.strip() == f"{pod_id}: terminated"
    assert pod_id not in gpu_farm.runpod.pods()
    missing = pods("stop", "nosuchpod00")
    assert (
        missing.returncode == 1 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    )


def test_the_runpod_key_appears_nowhere(gpu_farm: GpuFarm) -> None:
    """After every run and pods command above: not in logs, Redis, manifests, nor on any pod."""
    assert_secret_appears_nowhere(gpu_farm, RUNPOD_KEY)
    commands = [" ".join(c) for server in gpu_farm.fleet.servers.values() for c in server.commands()]
    assert not any(RUNPOD_KEY in c for c in commands)
