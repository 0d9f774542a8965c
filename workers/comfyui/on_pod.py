"""ComfyUI's life on one pod: custom nodes, start and stop by PID, health through the tunnel, warm-up.

ComfyUI loads custom nodes only when it starts, so a node installed while it runs means a restart. The
first generation after a start loads the models into VRAM, so a small warm-up run of the workflow that is
about to be used follows every start: the cost lands on the step that needed the start, and a model that
does not load fails there with ComfyUI's own message instead of inside a long real render.
"""

from __future__ import annotations

import hashlib
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from workers.base import PermanentError, TransientError
from workers.comfyui.client import ComfyClient, execution_error
from workers.comfyui.workflows import Workflow, fill, validate_graph, warm_up_values
from workers.gpu.pod_ledger import PodLedger
from workers.gpu.ssh import PodShell

START_SCRIPT = 'cd "$1" && shift && nohup "$@" > comfyui.log 2>&1 < /dev/null & echo $!'
"""Fixed text: the directory and the command line arrive as separate, quoted arguments."""
MISSING_NODES_SCRIPT = 'd="$1/custom_nodes"; shift; for n; do [ -d "$d/$n" ] || echo "$n"; done'
REQUIREMENTS_SCRIPT = (
    'cd "$1" && if [ -f requirements.txt ]; then "$2" -m pip install -q -r requirements.txt; fi'
)
LOST_AFTER_MISSES = 5
WARM_UP_NAMESPACE = uuid.UUID("0b8e3f52-6a1d-4c27-9f0e-7d3a2c5b1e64")


@dataclass(frozen=True)
class CustomNode:
    """A custom node repository: `URL` or `URL#ref` (a branch or tag), cloned into custom_nodes/<name>."""

    url: str
    ref: str | None = None

    @classmethod
    def parse(cls, text: str) -> CustomNode:
        url, _, ref = text.strip().partition("#")
        node = cls(url, ref or None)
        if not url or url.startswith("-") or not node.name or node.name.startswith("."):
            raise ValueError(f"custom node {text!r} is not a repository URL")
        return node

    @property
    def name(self) -> str:
        last = self.url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        return last.removesuffix(".git")


@dataclass(frozen=True)
class ComfySettings:
    key_path: Path
    comfy_dir: str = "/workspace/ComfyUI"
    command: tuple[str, ...] = ("python", "main.py", "--listen", "127.0.0.1", "--port", "8188")
    port: int = 8188
    custom_nodes: tuple[CustomNode, ...] = ()
    warm_up: bool = True
    start_timeout_s: float = 120.0
    install_timeout_s: float = 900.0
    run_timeout_s: float = 1800.0
    poll_s: float = 1.0

    @property
    def nodes_fingerprint(self) -> str:
        """Which node list a pod was set up for: a change means installing (and restarting) again."""
        text = "\n".join(f"{n.url}#{n.ref or ''}" for n in self.custom_nodes)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def wait_for_run(
    client: ComfyClient, prompt_id: str, timeout_s: float, poll_s: float, tick: Callable[[], object]
) -> dict[str, Any]:
    """The history entry of a submitted prompt once it has run; TransientError if ComfyUI lost it."""
    deadline = time.monotonic() + timeout_s
    misses = 0
    while time.monotonic() < deadline:
        entry = client.history(prompt_id)
        if entry is not None:
            return entry
        # Between leaving the queue and entering the history a run is briefly in neither:
        # only several misses in a row mean ComfyUI really lost it (a restart forgets history).
        misses = 0 if client.queued(prompt_id) else misses + 1
        if misses >= LOST_AFTER_MISSES:
            raise TransientError("the pod forgot the run (ComfyUI restarted?); it will be submitted again")
        tick()
        time.sleep(poll_s if misses == 0 else 0.2)
    raise PermanentError(f"ComfyUI did not finish within {timeout_s:g} s")


class ComfyOnPod:
    """Brings ComfyUI on a leased pod to ready for a workflow; `tick` renews the lease while it waits."""

    def __init__(self, registry: PodLedger, settings: ComfySettings, tick: Callable[[], object]) -> None:
        self.registry = registry
        self.settings = settings
        self.tick = tick

    def ensure(self, shell: PodShell, pod_id: str, workflow: Workflow, *, fresh: bool) -> dict[str, Any]:
        """Install missing custom nodes, (re)start ComfyUI when needed, warm it up after a start.

        `fresh`: the pod was just resumed, a new container where the recorded PID means nothing.
        Returns what it did, for the step's metadata (empty when ComfyUI was ready already)."""
        s = self.settings
        longest = s.install_timeout_s * max(1, len(s.custom_nodes)) + s.start_timeout_s + s.run_timeout_s
        try:
            with self.registry.setup_lock(pod_id, ttl_s=longest, wait_s=longest, tick=self.tick):
                return self._ensure(shell, pod_id, workflow, fresh=fresh)
        except TimeoutError as exc:
            raise TransientError(str(exc)) from exc

    def _ensure(self, shell: PodShell, pod_id: str, workflow: Workflow, *, fresh: bool) -> dict[str, Any]:
        record = self.registry.get(pod_id)
        pid = record.comfy_pid if record is not None and not fresh else None
        alive = pid is not None and self.alive(shell, pid)
        done: dict[str, Any] = {}
        if not alive or record is None or record.comfy_nodes != self.settings.nodes_fingerprint:
            installed = self._install_nodes(shell)
            self.registry.set(pod_id, comfy_nodes=self.settings.nodes_fingerprint)
            if installed:
                done["installed_nodes"] = installed
            if alive and installed and pid is not None:
                self.stop(shell, pod_id, pid)  # custom nodes load only when ComfyUI starts
                alive = False
        if alive:
            return done
        started = time.monotonic()
        pid = self._start(shell, pod_id)
        done["comfy_start_s"] = round(time.monotonic() - started, 3)
        if self.settings.warm_up:
            done["warm_up_s"] = self._warm_up(shell, pod_id, pid, workflow)
        return done

    def alive(self, shell: PodShell, pid: int) -> bool:
        return shell.run(["kill", "-0", str(pid)], check=False).exit_code == 0

    def stop(self, shell: PodShell, pod_id: str, pid: int, wait_s: float = 30.0) -> None:
        """By PID, never by name (a name-pattern kill once took the SSH session down); waits for the exit."""
        shell.run(["kill", str(pid)], check=False)
        deadline = time.monotonic() + wait_s
        while self.alive(shell, pid):
            if time.monotonic() > deadline:
                shell.run(["kill", "-9", str(pid)], check=False)
                break
            time.sleep(0.2)
        self.registry.set(pod_id, comfy_pid="")

    def healthy(self, shell: PodShell) -> bool:
        try:
            with shell.forward("127.0.0.1", self.settings.port) as tunnel:
                client = ComfyClient(tunnel.url, timeout_s=10)
                try:
                    return client.healthy()
                finally:
                    client.close()
        except TransientError:
            return False  # not listening yet

    # internals -----------------------------------------------------------------------------------

    def _install_nodes(self, shell: PodShell) -> list[str]:
        nodes = {node.name: node for node in self.settings.custom_nodes}
        if not nodes:
            return []
        comfy_dir = self.settings.comfy_dir
        listing = shell.run(["sh", "-c", MISSING_NODES_SCRIPT, "sh", comfy_dir, *nodes])
        missing = [nodes[name] for name in listing.stdout.split() if name in nodes]
        for node in missing:
            target = f"{comfy_dir}/custom_nodes/{node.name}"
            branch = ["--branch", node.ref] if node.ref else []
            limit = self.settings.install_timeout_s
            shell.run(["git", "clone", "--depth", "1", *branch, "--", node.url, target], timeout_s=limit)
            python = self.settings.command[0]
            shell.run(["sh", "-c", REQUIREMENTS_SCRIPT, "sh", target, python], timeout_s=limit)
            self.tick()
        return [node.name for node in missing]

    def _start(self, shell: PodShell, pod_id: str) -> int:
        """Start ComfyUI in the background, record its PID, wait until it answers; returns the PID."""
        result = shell.run(["sh", "-c", START_SCRIPT, "sh", self.settings.comfy_dir, *self.settings.command])
        pid = int(result.stdout.strip().splitlines()[-1])
        self.registry.set(pod_id, comfy_pid=pid, comfy_started_at=time.time())
        deadline = time.monotonic() + self.settings.start_timeout_s
        while not self.healthy(shell):
            if time.monotonic() > deadline or not self.alive(shell, pid):
                raise TransientError(
                    f"ComfyUI on pod {pod_id} did not come up within {self.settings.start_timeout_s:g} s"
                    " (see `farm pods logs`)"
                )
            self.tick()
            time.sleep(0.5)
        return pid

    def _warm_up(self, shell: PodShell, pod_id: str, pid: int, workflow: Workflow) -> float:
        """One small run of `workflow` right after a start, so the models are in VRAM for real steps."""
        started = time.monotonic()
        prompt_id = str(uuid.uuid5(WARM_UP_NAMESPACE, f"{pod_id}:{pid}:{workflow.name}"))
        with shell.forward("127.0.0.1", self.settings.port) as tunnel:
            client = ComfyClient(tunnel.url)
            try:
                image = _upload_test_card(client) if _needs_image(workflow) else None
                graph = fill(workflow, warm_up_values(workflow, image))
                validate_graph(graph)
                client.submit(graph, prompt_id)
                entry = wait_for_run(
                    client, prompt_id, self.settings.run_timeout_s, self.settings.poll_s, self.tick
                )
            finally:
                client.close()
        failure = execution_error(entry)
        if failure:
            raise PermanentError(f"warming up {workflow.name} on pod {pod_id} failed: {failure}")
        seconds = round(time.monotonic() - started, 3)
        self.registry.set(pod_id, warm_workflow=workflow.name, warm_up_s=seconds)
        return seconds


def _needs_image(workflow: Workflow) -> bool:
    return any(name in workflow.parameters for name in ("image", "start_image"))


def _upload_test_card(client: ComfyClient) -> str:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "farm_warm_up.png"
        Image.new("RGB", (256, 256), (128, 128, 128)).save(path)
        return client.upload(path)
