"""GPU fallback backend: ComfyUI on a leased RunPod pod, reached over SSH (paramiko) and a tunnel.

A step's ComfyUI prompt id is derived from its step id, so a redelivered task looks its run up in the
pod's history instead of rendering it again; the pool sends the retry back to the pod that holds that run.
Getting ComfyUI ready on the pod (nodes, start by PID, warm-up) is `workers.comfyui.on_pod`'s job.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from workers.base import PermanentError, StepJob, StepResult
from workers.comfyui.client import ComfyClient, execution_error, output_files
from workers.comfyui.on_pod import ComfyOnPod, ComfySettings, wait_for_run
from workers.comfyui.progress import ProgressWatcher, StepProgress, client_id_for
from workers.comfyui.workflows import fill, load_workflow, validate_graph, values_for_step, workflow_for_step
from workers.fal.outputs import check_image, check_video
from workers.gpu.pod_ledger import LedgerKnownHosts, PodLedger
from workers.gpu.pool import GpuPool, PodLease
from workers.gpu.ssh import PodShell

PROMPT_NAMESPACE = uuid.UUID("6f1c2d1e-9a57-4f37-8e2b-5d0c1a7e9b42")


def prompt_id_for(step_id: str) -> str:
    return str(uuid.uuid5(PROMPT_NAMESPACE, step_id))


class ComfyBackend:
    name = "comfyui"

    def __init__(self, pool: GpuPool, registry: PodLedger, settings: ComfySettings) -> None:
        self.pool = pool
        self.registry = registry
        self.known_hosts = LedgerKnownHosts(registry)
        self.settings = settings

    def run(self, job: StepJob) -> StepResult:
        workflow = load_workflow(workflow_for_step(job.kind, job.engine))
        holder = f"{socket.gethostname()}:{os.getpid()}:{job.step_id}"
        lease = self.pool.acquire(workflow.family, holder, step_id=job.step_id)
        started = time.monotonic()
        comfy = ComfyOnPod(self.registry, self.settings, lambda: self.pool.renew(lease))
        try:
            with PodShell(lease.pod_id, lease.endpoint, self.settings.key_path, self.known_hosts) as shell:
                setup = comfy.ensure(shell, lease.pod_id, workflow, fresh=lease.resumed)
                with shell.forward("127.0.0.1", self.settings.port) as tunnel:
                    client = ComfyClient(tunnel.url)
                    try:
                        rendered = self._render(client, tunnel.url, job, workflow.name, lease)
                        metadata = {**setup, **rendered}
                    finally:
                        client.close()
        finally:
            busy = time.monotonic() - started
            self.pool.release(lease, family=workflow.family, busy_s=busy)
        # A pod running several jobs at once bills each its share; the empty slots are idle time.
        cost = Decimal(str(round(busy * lease.cost_per_hr / 3600 / self.registry.slots, 6)))
        return StepResult(
            cost_usd=cost, metadata={**metadata, "pod": lease.pod_id, "pod_seconds": round(busy, 3)}
        )

    # one step -------------------------------------------------------------------------------------

    def _render(
        self, client: ComfyClient, base_url: str, job: StepJob, workflow_name: str, lease: PodLease
    ) -> dict[str, Any]:
        prompt_id = prompt_id_for(job.step_id)
        entry = client.history(prompt_id)
        resumed = entry is not None or client.queued(prompt_id)
        if entry is None:
            with ProgressWatcher(base_url, prompt_id, _reporter(job)):
                if not resumed:
                    names = [client.upload(path) for path in job.inputs]
                    values = values_for_step(job.kind, job.params, names, prefix=f"farm/{job.step_id}")
                    graph = fill(load_workflow(workflow_name), values)
                    validate_graph(graph)
                    self.registry.remember_run(job.step_id, lease.pod_id)
                    client.submit(graph, prompt_id, client_id_for(prompt_id))
                entry = wait_for_run(
                    client,
                    prompt_id,
                    self.settings.run_timeout_s,
                    self.settings.poll_s,
                    lambda: self.pool.renew(lease),
                )
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


def _reporter(job: StepJob) -> Callable[[StepProgress], None]:
    def report(progress: StepProgress) -> None:
        if job.report is not None:
            job.report({"node": progress.node, "value": progress.value, "max": progress.max})

    return report
