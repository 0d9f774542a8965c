"""What a worker announces for its queue's lane: its slots, the provider cap it enforces, the ranking policy.

The caps come from the worker's settings because the worker is what spends them: fal's in-flight limit for
the cloud queue, the jobs the affordable pods can run for the gpu queue; post work has no provider.
"""

from __future__ import annotations

from farm.autoscale import affordable_pods
from farm.scheduler import Announcement, Policy
from farm.settings import Settings


def provider_cap(queue: str, settings: Settings) -> int | None:
    if queue == "cloud":
        return settings.fal_max_in_flight
    if queue == "gpu":
        pods = affordable_pods(
            settings.gpu_max_pods, settings.gpu_max_usd_per_hr, settings.gpu_expected_usd_per_hr
        )
        return pods * settings.gpu_jobs_per_pod
    return None


def policy(settings: Settings) -> Policy:
    return Policy(
        order=settings.schedule_order,
        priority_head_start_s=settings.schedule_priority_head_start_s,
        aging=settings.schedule_aging,
    )


def announcement(queue: str, slots: int, settings: Settings) -> Announcement:
    return Announcement(slots=slots, cap=provider_cap(queue, settings), policy=policy(settings))
