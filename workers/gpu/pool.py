"""The GPU pool: lease a warm pod (same models first), resume or create one within the caps, and stop
what nobody uses. Pods cost by the hour: nothing here leaves one running without a holder for long.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

from workers.base import CapacityWait, TransientError
from workers.gpu.pod_ledger import LedgerKnownHosts, PodLedger, PodRecord
from workers.gpu.pods import NoCapacity, PodNotFound, RunpodPods
from workers.gpu.ssh import Endpoint

CREATE_LOCK = "farm:pods:create-lock"
CREATE_LOCK_TTL_S = 60
FIRST_CONTACT_MARGIN_S = 600.0
"""After SSH answers, the worker still installs nodes and starts ComfyUI before its first contact."""
"""Longer than one deploy call to RunPod; a holder that dies frees it after this."""


@dataclass(frozen=True)
class PoolLimits:
    max_pods: int = 2
    max_usd_per_hr: float = 5.0
    idle_timeout_s: float = 600.0
    lease_ttl_s: float = 120.0
    name_prefix: str = "farm-gpu"
    expected_cost_per_hr: float = 1.19
    """An A100 80GB's price, used to check the $/hour cap before a pod exists."""
    fallback_gpu_types: tuple[str, ...] = ()
    """Tried in order when RunPod has none of the main GPU type (`FARM_GPU_FALLBACK_TYPES`)."""
    ssh_wait_s: float = 300.0
    ssh_poll_s: float = 2.0


class PoolFull(CapacityWait):
    """Every pod is busy and the caps forbid another: the step waits without holding a worker."""


@dataclass(frozen=True)
class PodLease:
    pod_id: str
    holder: str
    endpoint: Endpoint
    """Read from RunPod's API at acquisition: the SSH port changes on every resume."""
    cost_per_hr: float
    resumed: bool


@dataclass
class ReapReport:
    stopped_idle: list[str]
    stopped_orphans: list[str]
    forgotten: list[str]


class GpuPool:
    def __init__(self, pods: RunpodPods, registry: PodLedger, limits: PoolLimits | None = None) -> None:
        self.pods = pods
        self.registry = registry
        self.limits = limits or PoolLimits()

    def acquire(self, family: str, holder: str, step_id: str | None = None) -> PodLease:
        """A pod for one step: the pod that already holds this step's run, else the best free one."""
        if step_id is not None and (lease := self._back_to_run(step_id, holder)) is not None:
            return lease
        for candidate in self.registry.candidates(family):
            if self.registry.lease(candidate.id, holder, self.limits.lease_ttl_s):
                lease = self._ready(candidate, holder)
                if lease is not None:
                    return lease
        return self._create(holder)

    def renew(self, lease: PodLease) -> bool:
        return self.registry.renew(lease.pod_id, lease.holder, self.limits.lease_ttl_s)

    def release(self, lease: PodLease, *, family: str, busy_s: float) -> None:
        self.registry.release(lease.pod_id, lease.holder, family=family, busy_s=busy_s)

    def start_new(self) -> str:
        """`farm pods up`: one more running pod now (a stopped one is resumed first), within the caps."""
        holder = f"ops-{secrets.token_hex(3)}"
        stopped = [p for p in self.registry.candidates("") if p.state == "stopped"]
        lease = None
        for record in stopped:
            if self.registry.lease(record.id, holder, self.limits.lease_ttl_s):
                lease = self._ready(record, holder)
                if lease is not None:
                    break
        lease = lease or self._create(holder)
        self.release(lease, family="", busy_s=0.0)
        return lease.pod_id

    def resume(self, pod_id: str) -> None:
        """A resumed pod is a new container: ComfyUI is not running and its SSH host key is new."""
        self.registry.set(pod_id, state="starting", comfy_pid="")
        LedgerKnownHosts(self.registry).expect_new_key(pod_id, self._first_contact_s())
        self.pods.resume(pod_id)

    def _first_contact_s(self) -> float:
        """How long a new container may take to boot and be reached once: its key is pinned within it."""
        return 2 * self.limits.ssh_wait_s + FIRST_CONTACT_MARGIN_S

    def stop(self, pod_id: str) -> None:
        self.pods.stop(pod_id)
        self.registry.set(pod_id, state="stopped", stopped_at=time.time())

    def terminate(self, pod_id: str) -> None:
        self.pods.terminate(pod_id)
        self.registry.forget(pod_id)

    def reap(self) -> ReapReport:
        """Stop idle pods; reconcile with RunPod: stop live pods nobody knows, forget vanished ones."""
        report = ReapReport([], [], [])
        for record in self.registry.idle(self.limits.idle_timeout_s):
            self.stop(record.id)
            report.stopped_idle.append(record.id)
        at_runpod = {p.id: p for p in self.pods.list(self.limits.name_prefix)}
        known = {p.id: p for p in self.registry.pods()}
        for pod_id, info in at_runpod.items():
            mine = known.get(pod_id)
            orphan = mine is None or (mine.state == "stopped" and mine.lease_holder is None)
            if orphan and info.status == "RUNNING":
                self.pods.stop(pod_id)
                report.stopped_orphans.append(pod_id)
        for pod_id in set(known) - set(at_runpod):
            self.registry.forget(pod_id)
            report.forgotten.append(pod_id)
        return report

    # internals -------------------------------------------------------------------------------------

    def _back_to_run(self, step_id: str, holder: str) -> PodLease | None:
        """A retried step returns to the pod where its prompt was submitted, if that pod is still up (a
        stopped pod lost its ComfyUI history with its container, so any pod will do then)."""
        pod_id = self.registry.run_pod(step_id)
        record = self.registry.get(pod_id) if pod_id else None
        if record is None or record.state != "running":
            return None
        if not self.registry.take_over(record.id, holder, self.limits.lease_ttl_s, step_id):
            return None
        return self._ready(record, holder)

    def _ready(self, record: PodRecord, holder: str) -> PodLease | None:
        """Bring a leased pod to running and read its current SSH endpoint; None if it is gone."""
        try:
            resumed = record.state != "running"
            if resumed:
                self.resume(record.id)
            endpoint = self.pods.wait_for_ssh(record.id, self.limits.ssh_wait_s, self.limits.ssh_poll_s)
        except PodNotFound:
            self.registry.forget(record.id)
            return None
        self.registry.set(record.id, state="running", started_at=time.time())
        return PodLease(record.id, holder, endpoint, record.cost_per_hr, resumed)

    def _may_create(self) -> bool:
        """Caps count live pods only: a stopped pod costs no GPU time."""
        live = [p for p in self.registry.pods() if p.state in ("starting", "running")]
        within_cost = (
            self.registry.hourly_cost() + self.limits.expected_cost_per_hr <= self.limits.max_usd_per_hr
        )
        return len(live) < self.limits.max_pods and within_cost

    def _deploy(self, name: str) -> tuple[str, str]:
        """The main GPU type, else each fallback in turn; NoCapacity (a wait) only when all are out."""
        types = (self.pods.spec.gpu_type, *self.limits.fallback_gpu_types)
        for gpu_type in types:
            try:
                return self.pods.create(name, gpu_type), gpu_type
            except NoCapacity:
                continue
        raise NoCapacity(f"RunPod has none of {', '.join(types)} available right now; retry later")

    def _create(self, holder: str) -> PodLease:
        """A new pod, leased to `holder`. Checking the caps and registering the pod happen under one lock,
        so workers (or the autoscaler) starting pods at the same moment can never pass a cap together."""
        name = f"{self.limits.name_prefix}-{secrets.token_hex(4)}"
        with self.registry.r.lock(CREATE_LOCK, timeout=CREATE_LOCK_TTL_S, blocking_timeout=CREATE_LOCK_TTL_S):
            if not self._may_create():
                raise PoolFull(
                    "every GPU pod is busy and the pool is at its pod or $/hour cap", retry_after_s=5.0
                )
            pod_id, gpu_type = self._deploy(name)
            self.registry.register(pod_id, name, gpu=gpu_type, cost_per_hr=self.limits.expected_cost_per_hr)
            LedgerKnownHosts(self.registry).expect_new_key(pod_id, self._first_contact_s())
            self.registry.lease(pod_id, holder, self.limits.lease_ttl_s)
        try:
            endpoint = self.pods.wait_for_ssh(pod_id, self.limits.ssh_wait_s, self.limits.ssh_poll_s)
        except TransientError:
            self.terminate(pod_id)  # never keep paying for a pod that did not come up
            raise
        info = self.pods.get(pod_id)
        self.registry.set(
            pod_id, state="running", started_at=time.time(), cost_per_hr=info.cost_per_hr, gpu=info.gpu
        )
        return PodLease(pod_id, holder, endpoint, info.cost_per_hr, resumed=False)
