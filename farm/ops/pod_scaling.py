"""The GPU pod pool as an autoscaler pool: the `gpu` queue's backlog decides how many pods run.

The same decisions as for worker processes, in pods: `per_worker` is the jobs one pod takes, the maximum
is what the pod and $/hour caps allow. More pods are started ahead of the steps that will need them (a boot
takes minutes; each start runs in its own thread, so the autoscaler keeps ticking). Fewer pods means
stopping idle ones only: a pod a step holds is never stopped, it becomes idle and goes on the next
decision. The pool's own caps are checked again at every start, so no decision can pass them.
"""

from __future__ import annotations

import logging
import math
import threading

from farm.config.settings import Settings
from farm.ops.scaling_rules import ScalingPolicy
from workers.base import CapacityWait
from workers.gpu.pod_ledger import LIVE_STATES
from workers.gpu.pool import GpuPool

log = logging.getLogger(__name__)

POD_POOL = "gpu-pods"
MIN_UP_COOLDOWN_S = 15.0
"""A new pod shows in the registry a moment after its start begins: no second start for the same demand."""


class PodPoolScaling:
    def __init__(self, pool: GpuPool) -> None:
        self.pool = pool
        self.starts: list[threading.Thread] = []

    def count(self) -> int:
        self.starts = [t for t in self.starts if t.is_alive()]
        return sum(1 for p in self.pool.registry.pods() if p.state in LIVE_STATES)

    def scale_to(self, target: int) -> None:
        live = self.count()
        for _ in range(target - live):
            start = threading.Thread(target=self._start, name="pod-start", daemon=True)
            start.start()
            self.starts.append(start)
        if target < live:
            idle = sorted(
                (p for p in self.pool.registry.pods() if p.state == "running" and not p.lease_holders),
                key=lambda p: p.last_used,
            )
            for record in idle[: live - target]:
                log.info("autoscale %s: stopping idle pod %s", POD_POOL, record.id)
                self.pool.stop(record.id)

    def _start(self) -> None:
        try:
            pod_id = self.pool.start_new()
        except CapacityWait as exc:  # at a cap, or RunPod has no GPU of any allowed type now
            log.warning("autoscale %s: no pod started: %s", POD_POOL, exc)
            return
        log.info("autoscale %s: started pod %s ahead of the backlog", POD_POOL, pod_id)


def pod_policy(settings: Settings, min_pods: int = 0) -> ScalingPolicy:
    price = settings.gpu_expected_usd_per_hr
    affordable = min(settings.gpu_max_pods, math.floor(settings.gpu_max_usd_per_hr / price))
    return ScalingPolicy(
        min(min_pods, affordable),
        affordable,
        settings.gpu_jobs_per_pod,
        max(settings.autoscale_up_cooldown_s, MIN_UP_COOLDOWN_S),
        settings.gpu_idle_timeout_s,
        f"{settings.gpu_max_pods} pod(s) max and ${settings.gpu_max_usd_per_hr:g}/h",
    )
