"""GPU fallback backend: ComfyUI on a leased RunPod pod, reached over SSH (paramiko) and a tunnel.

A step's ComfyUI prompt id is derived from its step id, so a redelivered task looks its run up in the
pod's history instead of rendering it again. ComfyUI is started in the background with its PID kept in
the pod's record and stopped by that PID only (a name-pattern kill once took the SSH session down).
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from farm.pod_registry import PodRegistry, RegistryKnownHosts
from workers.base import PermanentError, StepJob, StepResult, TransientError
from workers.comfy_client import ComfyClient, execution_error, output_files
from workers.comfy_workflows import fill, load_workflow, validate_graph, values_for_step, workflow_for_step
from workers.fal_outputs import check_image, check_video
from workers.gpu_pool import GpuPool, PodLease
from workers.ssh import PodShell

LOST_AFTER_MISSES = 5
PROMPT_NAMESPACE = uuid.UUID("6f1c2d1e-9a57-4f37-8e2b-5d0c1a7e9b42")
START_SCRIPT = 'cd "$1" && shift && nohup "$@" > comfyui.log 2>&1 < /dev/null & echo $!'
"""Fixed text: the directory and the command line arrive as separate, quoted arguments."""


@dataclass(frozen=True)
class ComfySettings:
    key_path: Path
    comfy_dir: str = "/workspace/ComfyUI"
    command: tuple[str, ...] = ("python", "main.py", "--listen", "127.0.0.1", "--port", "8188")
    port: int = 8188
    start_timeout_s: float = 120.0
    run_timeout_s: float = 1800.0
    poll_s: float = 1.0


def prompt_id_for(step_id: str) -> str:
    return str(uuid.uuid5(PROMPT_NAMESPACE, step_id))


class ComfyEngine:
    name = "comfyui"

    def __init__(self, pool: GpuPool, registry: PodRegistry, settings: ComfySettings) -> None:
        self.pool = pool
        self.registry = registry
        self.known_hosts = RegistryKnownHosts(registry)
        self.settings = settings

    def run(self, job: StepJob) -> StepResult:
        workflow = load_workflow(workflow_for_step(job.kind, job.engine))
        holder = f"{socket.gethostname()}:{os.getpid()}:{job.step_id}"
        lease = self.pool.acquire(workflow.family, holder, step_id=job.step_id)
        started = time.monotonic()
        try:
            with PodShell(lease.pod_id, lease.endpoint, self.settings.key_path, self.known_hosts) as shell:
                self._ensure_comfyui(shell, lease)
                with shell.forward("127.0.0.1", self.settings.port) as tunnel:
                    client = ComfyClient(tunnel.url)
                    try:
                        metadata = self._render(client, job, workflow.name, lease)
                    finally:
                        client.close()
        finally:
            busy = time.monotonic() - started
            self.pool.release(lease, family=workflow.family, busy_s=busy)
        cost = Decimal(str(round(busy * lease.cost_per_hr / 3600, 6)))
        return StepResult(
            cost_usd=cost, metadata={**metadata, "pod": lease.pod_id, "pod_seconds": round(busy, 3)}
        )

    # ComfyUI on the pod ---------------------------------------------------------------------------

    def _ensure_comfyui(self, shell: PodShell, lease: PodLease) -> None:
        record = self.registry.get(lease.pod_id)
        pid = record.comfy_pid if record and not lease.resumed else None
        if pid is not None and shell.run(["kill", "-0", str(pid)], check=False).exit_code == 0:
            return
        result = shell.run(["sh", "-c", START_SCRIPT, "sh", self.settings.comfy_dir, *self.settings.command])
        new_pid = int(result.stdout.strip().splitlines()[-1])
        self.registry.set(lease.pod_id, comfy_pid=new_pid, comfy_started_at=time.time())
        self._wait_healthy(shell, lease)

    def _wait_healthy(self, shell: PodShell, lease: PodLease) -> None:
        deadline = time.monotonic() + self.settings.start_timeout_s
        while time.monotonic() < deadline:
            try:
                with shell.forward("127.0.0.1", self.settings.port) as tunnel:
                    client = ComfyClient(tunnel.url, timeout_s=10)
                    healthy = client.healthy()
                    client.close()
                if healthy:
                    return
            except TransientError:
                pass  # not listening yet
            self.pool.renew(lease)
            time.sleep(0.5)
        raise TransientError(
            f"ComfyUI on pod {lease.pod_id} did not come up within {self.settings.start_timeout_s:g} s"
        )

    def stop_comfyui(self, shell: PodShell, pod_id: str) -> None:
        """By PID, never by name."""
        record = self.registry.get(pod_id)
        if record is not None and record.comfy_pid is not None:
            shell.run(["kill", str(record.comfy_pid)], check=False)
            self.registry.set(pod_id, comfy_pid="")

    # one step -------------------------------------------------------------------------------------

    def _render(
        self, client: ComfyClient, job: StepJob, workflow_name: str, lease: PodLease
    ) -> dict[str, Any]:
        prompt_id = prompt_id_for(job.step_id)
        entry = client.history(prompt_id)
        resumed = entry is not None or client.queued(prompt_id)
        if not resumed:
            names = [client.upload(path) for path in job.inputs]
            values = values_for_step(job.kind, job.params, names, prefix=f"farm/{job.step_id}")
            graph = fill(load_workflow(workflow_name), values)
            validate_graph(graph)
            self.registry.remember_run(job.step_id, lease.pod_id)
            client.submit(graph, prompt_id)
        entry = entry or self._wait(client, prompt_id, lease)
        failure = execution_error(entry)
        if failure:
            raise PermanentError(f"ComfyUI failed this step: {failure}")
        files = output_files(entry)
        if len(files) < len(job.outputs):
            raise PermanentError(f"ComfyUI wrote {len(files)} files, the step needs {len(job.outputs)}")
        for ref, dest in zip(files, job.outputs, strict=False):
            client.download(ref, dest)
        self.registry.forget_run(job.step_id)
        checks = check_video(job) if job.kind == "video" else check_image(job)
        return {"prompt_id": prompt_id, "workflow": workflow_name, "resumed_run": resumed, **checks}

    def _wait(self, client: ComfyClient, prompt_id: str, lease: PodLease) -> dict[str, Any]:
        deadline = time.monotonic() + self.settings.run_timeout_s
        misses = 0
        while time.monotonic() < deadline:
            entry = client.history(prompt_id)
            if entry is not None:
                return entry
            # Between leaving the queue and entering the history a run is briefly in neither:
            # only several misses in a row mean ComfyUI really lost it (a restart forgets history).
            misses = 0 if client.queued(prompt_id) else misses + 1
            if misses >= LOST_AFTER_MISSES:
                raise TransientError(
                    "the pod forgot the run (ComfyUI restarted?); it will be submitted again"
                )
            self.pool.renew(lease)
            time.sleep(self.settings.poll_s if misses == 0 else 0.2)
        raise PermanentError(f"ComfyUI did not finish within {self.settings.run_timeout_s:g} s")
