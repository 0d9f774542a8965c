"""`farm autoscale` and `farm up --autoscale`: every few seconds, read each queue's backlog, decide, resize.

Each decision is logged with its inputs when it changes anything or differs from the last one, and kept in
Redis (`farm.runs.keys.AUTOSCALE_DECISIONS`, one JSON per queue) for `/metrics` and for ops asking why a
pool has the size it has.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from typing import Protocol

import redis

from farm.config.settings import Settings
from farm.ops.scaling_rules import Decision, Scaler, ScalingPolicy, gpu_worker_cap
from farm.runs import keys
from tasks.backlog import read_backlogs

log = logging.getLogger(__name__)


class Pool(Protocol):
    def count(self) -> int: ...

    def scale_to(self, target: int) -> None: ...


def parse_limits(spec: str) -> dict[str, tuple[int, int]]:
    """`post=1:4,cloud=1:2` -> {"post": (1, 4), "cloud": (1, 2)}; a clear error for anything else."""
    limits: dict[str, tuple[int, int]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        queue, _, bounds = part.partition("=")
        low, _, high = bounds.partition(":")
        try:
            limits[queue.strip()] = (int(low), int(high))
        except ValueError:
            raise ValueError(f"FARM_AUTOSCALE_WORKERS: {part!r} is not queue=min:max") from None
    return limits


def policies(settings: Settings, queues: tuple[str, ...]) -> dict[str, ScalingPolicy]:
    limits = parse_limits(settings.autoscale_workers)
    result = {}
    for queue in queues:
        low, high = limits.get(queue, (0, 1))
        cap_reason = ""
        if queue == "gpu":
            high, cap_reason = gpu_worker_cap(
                high,
                settings.gpu_max_pods,
                settings.gpu_max_usd_per_hr,
                settings.gpu_expected_usd_per_hr,
                settings.gpu_jobs_per_pod,
                settings.concurrency(queue),
            )
            low = min(low, high)
        result[queue] = ScalingPolicy(
            low,
            high,
            settings.concurrency(queue),
            settings.autoscale_up_cooldown_s,
            settings.autoscale_down_cooldown_s,
            cap_reason,
        )
    return result


class Autoscaler:
    def __init__(
        self,
        client: redis.Redis,
        pools: Mapping[str, Pool],
        policies: Mapping[str, ScalingPolicy],
        clock: Callable[[], float] = time.time,
        sources: Mapping[str, str] | None = None,
    ) -> None:
        """`pools` by name; each is sized by the backlog of the queue `sources` names (default: its own name,
        so the GPU pod pool can follow the `gpu` queue beside the `gpu` workers)."""
        self.client, self.pools, self.clock = client, pools, clock
        self.sources = {name: (sources or {}).get(name, name) for name in pools}
        self.scalers = {name: Scaler(name, policies[name]) for name in pools}
        self._last: dict[str, tuple[str, int, int, int]] = {}

    def tick(self) -> list[Decision]:
        """One reading of every queue, one decision per pool, carried out."""
        now = self.clock()
        backlogs = read_backlogs(self.client, sorted(set(self.sources.values())), now)
        decisions = []
        for name, pool in self.pools.items():
            decision = self.scalers[name].decide(backlogs[self.sources[name]], pool.count(), now)
            if decision.target != decision.actual:
                pool.scale_to(decision.target)
            self._report(decision, now)
            decisions.append(decision)
        return decisions

    def run(self, interval_s: float, stop: Callable[[], bool]) -> None:
        while not stop():
            self.tick()
            deadline = time.monotonic() + interval_s
            while not stop() and time.monotonic() < deadline:
                time.sleep(0.1)

    def _report(self, decision: Decision, now: float) -> None:
        summary = (decision.action, decision.wanted, decision.target, decision.backlog.load)
        if self._last.get(decision.queue) != summary:
            log.info(decision.line())
            self._last[decision.queue] = summary
        doc = {
            **asdict(decision.backlog),
            "load": decision.backlog.load,
            "actual": decision.actual,
            "wanted": decision.wanted,
            "target": decision.target,
            "reason": decision.reason,
            "at": now,
        }
        self.client.hset(keys.AUTOSCALE_DECISIONS, decision.queue, json.dumps(doc))


def last_decisions(client: redis.Redis) -> dict[str, dict[str, object]]:
    """The autoscaler's last decision per queue, as it wrote them."""
    return {
        (k.decode() if isinstance(k, bytes) else str(k)): json.loads(v)
        for k, v in client.hgetall(keys.AUTOSCALE_DECISIONS).items()
    }
