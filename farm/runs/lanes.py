"""What a worker announces for its queue's lane: its slots, the provider cap it enforces, the ranking policy.

The caps come from the worker's settings because the worker is what spends them: fal's in-flight limit for
the cloud queue, the jobs the affordable pods can run for the gpu queue; post work has no provider.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from farm.config.settings import Settings
from farm.planning.estimate import makespan_at_limits
from farm.planning.plan import Plan, Step
from farm.planning.routing import QUEUES, step_queue
from farm.runs.scheduler import Announcement, RankingPolicy


def affordable_pods(max_pods: int, max_usd_per_hr: float, pod_usd_per_hr: float) -> int:
    """Pods the pool may run at once: its pod cap, or fewer when the $/hour cap allows fewer."""
    if pod_usd_per_hr <= 0:
        return max_pods
    return min(max_pods, math.floor(max_usd_per_hr / pod_usd_per_hr))


def provider_cap(queue: str, settings: Settings) -> int | None:
    if queue == "cloud":
        return settings.fal_max_in_flight
    if queue == "gpu":
        pods = affordable_pods(
            settings.gpu_max_pods, settings.gpu_max_usd_per_hr, settings.gpu_expected_usd_per_hr
        )
        return pods * settings.gpu_jobs_per_pod
    return None


def configured_limits(settings: Settings) -> dict[str, int | None]:
    """Per queue, what one worker of the configured size can run under the provider caps: the limits
    `farm estimate` plans with before any worker is up."""
    limits: dict[str, int | None] = {}
    for queue in QUEUES:
        slots, cap = settings.concurrency(queue), provider_cap(queue, settings)
        limits[queue] = slots if cap is None else min(slots, cap)
    return limits


def policy(settings: Settings) -> RankingPolicy:
    return RankingPolicy(
        order=settings.schedule_order,
        priority_head_start_s=settings.schedule_priority_head_start_s,
        aging=settings.schedule_aging,
    )


def announcement(queue: str, slots: int, settings: Settings) -> Announcement:
    return Announcement(slots=slots, cap=provider_cap(queue, settings), policy=policy(settings))


@dataclass(frozen=True)
class TimeAtLimits:
    backend: str
    limits: dict[str, int | None]
    """The limits of the queues the plan uses."""
    seconds: float


def time_at_limits(plan: Plan, settings: Settings) -> TimeAtLimits:
    """How long the plan takes at typical latencies on the configured backend, pools and provider caps."""
    backend = settings.backend()

    def lane_of(step: Step) -> str:
        return step_queue(step.kind, backend)

    limits = configured_limits(settings)
    used = {q: limits[q] for q in dict.fromkeys(lane_of(s) for s in plan.steps)}
    return TimeAtLimits(backend, used, makespan_at_limits(plan, lane_of, limits))
