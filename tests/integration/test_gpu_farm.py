"""The sample episode entirely through the GPU pool: the RunPod emulator (real runpod SDK), pods that are
real SSH servers (paramiko on our side), and ComfyUI emulators started on the pods over SSH by PID."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import asyncssh
import httpx
import pytest

from farm.cli_pods import PodReaper
from farm.pod_registry import PodRegistry
from farm.settings import Settings
from farm.supervisor import free_port, start_farm, stop_farm
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle
from workers.emulators.runpod_server import RunpodEmulator, RunpodFaults
from workers.emulators.ssh_pod import SSHPod
from workers.gpu_pool import GpuPool, PoolLimits
from workers.pods import RunpodPods

RUNPOD_KEY = "runpod-test-key-0c4f-do-not-leak"
SHIM = """import os, sys
os.chdir(os.path.dirname(os.path.abspath(__file__)))
with open(".pid", "w") as handle:
    handle.write(str(os.getpid()))
from workers.emulators.comfyui_server import main
main(["--root", ".", "--port", "{port}", "--run-seconds", "0.02"])
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
        return GpuPool(pods, PodRegistry(self.redis), limits)


@pytest.fixture(scope="module")
def gpu_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GpuFarm]:
    home = tmp_path_factory.mktemp("gpu-home")
    key = asyncssh.generate_private_key("ssh-ed25519")
    (home / "ssh").mkdir()
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
    }
    with mock.patch.dict(os.environ, env):
        settings = Settings()
        farm = start_farm(
            settings,
            queues=("gpu", "post"),
            flower=False,
            redis_port=free_port(),
            private_dir=home / "private",
        )
    try:
        yield GpuFarm(
            farm,
            home / "out",
            "comfyui",
            runpod=runpod,
            fleet=fleet,
            settings=settings,
            env={**env, "FARM_REDIS_URL": farm.broker_url},
        )
    finally:
        stop_farm(farm)
        runpod.stop()


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
    executed = gpu_farm.fleet.executed()
    assert len(executed) == len(set(executed)) == len(model_steps), "one ComfyUI run per step, none twice"


def test_idle_pods_are_stopped_by_the_reaper(gpu_farm: GpuFarm) -> None:
    pool = gpu_farm.pool()
    running = [p.id for p in pool.registry.pods() if p.state == "running"]
    assert running, "the render above left warm pods"
    time.sleep(gpu_farm.settings.gpu_idle_timeout_s + 0.5)
    reaper = PodReaper(gpu_farm.settings, gpu_farm.farm.broker_url, every_s=0.0)  # what `farm up` runs
    reaper.maybe_reap()
    assert all(gpu_farm.runpod.pods()[p]["desiredStatus"] == "EXITED" for p in running)


def test_a_prompt_full_of_shell_metacharacters_renders_harmlessly(
    gpu_farm: GpuFarm, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    doc = copy.deepcopy(sample_doc)
    doc["project"] = "SHL"
    doc["shots"] = [s for s in doc["shots"] if s["shot"] == 6]
    doc["shots"][0]["first_frame"] = (
        'A pipe $(touch pwned); `touch pwned2` && rm -rf / "quoted" \\ | > out < in'
    )
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    (tmp_path / "storyboard.json").write_text(json.dumps(doc))
    run_id, _ = gpu_farm.submit(tmp_path / "storyboard.json")
    assert gpu_farm.wait(run_id, timeout_s=300) == "succeeded", gpu_farm.runs.info(run_id)
    assert not list(gpu_farm.fleet.base.rglob("pwned*")), "nothing in the prompt was executed on a pod"
    commands = [c for server in gpu_farm.fleet.servers.values() for c in server.commands()]
    assert commands and not any("pwned" in " ".join(c) for c in commands), (
        "prompts never enter a command line"
    )


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
    assert pod_id in pods("list").stdout
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
