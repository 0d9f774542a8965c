"""How many workers a queue should have: the decision alone, pure, so every rule is testable without a farm.

Scaling up is prompt (a short cooldown only stops flapping between two readings); scaling down waits until
the backlog has wanted fewer workers for a whole cooldown, then goes to what it wants, and the workers that
leave finish their step first (warm shutdown, in the pool that carries the decision out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from farm.runs.lanes import affordable_pods
from tasks.backlog import Backlog


@dataclass(frozen=True)
class ScalingPolicy:
    min_workers: int
    max_workers: int
    per_worker: int
    """Steps one worker takes at a time (its concurrency): the backlog each added worker absorbs."""
    up_cooldown_s: float = 5.0
    down_cooldown_s: float = 120.0
    cap_reason: str = ""
    """Why max_workers is lower than configured (the GPU pool's $/hour cap), for the log."""

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.per_worker < 1:
            raise ValueError(f"need 0 <= min <= max and per_worker >= 1, got {self}")


@dataclass(frozen=True)
class Decision:
    """One reading and what the scaler made of it: logged as is, so ops can see why it scaled."""

    queue: str
    backlog: Backlog
    actual: int
    wanted: int
    """What the backlog alone asks for, within min and max."""
    target: int
    """What the pool is told to have now (cooldowns applied)."""
    reason: str

    @property
    def action(self) -> str:
        return "up" if self.target > self.actual else "down" if self.target < self.actual else "hold"

    def line(self) -> str:
        b = self.backlog
        return (
            f"autoscale {self.queue}: {self.action} {self.actual}->{self.target} "
            f"(waiting={b.waiting} reserved={b.reserved} delayed={b.delayed} wanted={self.wanted}) "
            + self.reason
        )


def wanted_workers(policy: ScalingPolicy, backlog: Backlog) -> int:
    return max(policy.min_workers, min(policy.max_workers, math.ceil(backlog.load / policy.per_worker)))


@dataclass
class Scaler:
    """The decisions of one queue over time (it remembers when it last scaled and since when it could
    shrink)."""

    queue: str
    policy: ScalingPolicy
    last_change: float = -math.inf
    fewer_since: float | None = None

    def decide(self, backlog: Backlog, actual: int, now: float) -> Decision:
        wanted = wanted_workers(self.policy, backlog)
        target, reason = actual, "as wanted"
        if wanted > actual:
            self.fewer_since = None
            if now - self.last_change >= self.policy.up_cooldown_s:
                target, reason = wanted, "backlog grew"
            else:
                reason = f"up-cooldown ({self.policy.up_cooldown_s:g} s)"
        elif wanted < actual:
            self.fewer_since = now if self.fewer_since is None else self.fewer_since
            waited = now - self.fewer_since
            if waited >= self.policy.down_cooldown_s:
                target, reason = wanted, f"backlog wanted fewer for {waited:.0f} s"
            else:
                reason = f"down-cooldown {waited:.0f}/{self.policy.down_cooldown_s:g} s"
        else:
            self.fewer_since = None
        if wanted == self.policy.max_workers and self.policy.cap_reason:
            reason += f"; at most {self.policy.max_workers}: {self.policy.cap_reason}"
        if target != actual:
            self.last_change, self.fewer_since = now, None
        return Decision(self.queue, backlog, actual, wanted, target, reason)


def gpu_worker_cap(
    max_workers: int,
    max_pods: int,
    max_usd_per_hr: float,
    pod_usd_per_hr: float,
    jobs_per_pod: int,
    per_worker: int,
) -> tuple[int, str]:
    """GPU workers beyond what the affordable pods can serve would only wait for a pod: the pool's pod
    and $/hour caps bound the queue's workers."""
    affordable = affordable_pods(max_pods, max_usd_per_hr, pod_usd_per_hr)
    useful = math.ceil(affordable * jobs_per_pod / per_worker)
    if useful >= max_workers:
        return max_workers, ""
    return useful, (
        f"{affordable} pod(s) fit ${max_usd_per_hr:g}/h at ${pod_usd_per_hr:g}/h and {max_pods} pod(s) max, "
        f"{jobs_per_pod} job(s) each"
    )
