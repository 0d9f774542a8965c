"""What a plan will cost and how long it will take: per shot, per endpoint, critical path, sequential."""

from __future__ import annotations

import heapq
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal

from farm.planning.plan import Plan, Step, StepKind


@dataclass(frozen=True)
class EndpointCalls:
    endpoint: str
    calls: int
    cost_usd: Decimal


@dataclass(frozen=True)
class Estimate:
    cost_usd: Decimal
    cost_by_shot: dict[int | None, Decimal]
    steps_by_kind: dict[str, int]
    cost_by_kind: dict[str, Decimal]
    paid_calls: list[EndpointCalls]
    critical_path: list[str]
    critical_path_s: float
    sequential_s: float
    """All steps one after another: how the studio's old scripts ran."""


def estimate(plan: Plan) -> Estimate:
    by_shot: dict[int | None, Decimal] = defaultdict(Decimal)
    by_kind: dict[str, Decimal] = {k.value: Decimal(0) for k in StepKind}
    calls: Counter[str] = Counter()
    call_cost: dict[str, Decimal] = defaultdict(Decimal)
    for step in plan.steps:
        by_shot[step.shot] += step.cost_usd
        by_kind[step.kind.value] += step.cost_usd
        if step.endpoint is not None and step.cost_usd > 0:
            calls[step.endpoint] += 1
            call_cost[step.endpoint] += step.cost_usd
    counts = Counter(step.kind.value for step in plan.steps)
    path, path_s = critical_path(plan)
    return Estimate(
        cost_usd=sum((s.cost_usd for s in plan.steps), Decimal(0)),
        cost_by_shot=dict(by_shot),
        steps_by_kind={k.value: counts.get(k.value, 0) for k in StepKind},
        cost_by_kind=by_kind,
        paid_calls=[EndpointCalls(e, n, call_cost[e]) for e, n in sorted(calls.items())],
        critical_path=path,
        critical_path_s=path_s,
        sequential_s=sum(s.latency_s for s in plan.steps),
    )


def critical_path(plan: Plan) -> tuple[list[str], float]:
    """The longest chain of typical latencies: the least time the episode can take with no caps."""
    finish: dict[str, float] = {}
    via: dict[str, str | None] = {}
    for step in plan.steps:
        before = max(step.inputs, key=lambda i: finish[i], default=None)
        finish[step.id] = step.latency_s + (finish[before] if before else 0.0)
        via[step.id] = before
    if not finish:
        return [], 0.0
    last = max(finish, key=lambda i: finish[i])
    chain = [last]
    while (before := via[chain[-1]]) is not None:
        chain.append(before)
    return chain[::-1], finish[last]


def remaining_path_s(plan: Plan) -> dict[str, float]:
    """Per step, the longest chain of typical latencies from its start to the end of the episode: the
    scheduler's rank, since the step with the most still ahead of it is the one the episode waits for."""
    consumers = plan.consumers()
    remaining: dict[str, float] = {}
    for step in reversed(plan.steps):  # dependency order, so every consumer is known first
        after = max((remaining[d.id] for d in consumers.get(step.id, [])), default=0.0)
        remaining[step.id] = step.latency_s + after
    return remaining


def makespan_at_limits(plan: Plan, lane_of: Callable[[Step], str], limits: Mapping[str, int | None]) -> float:
    """How long the plan takes at typical latencies when each lane runs at most its limit at once (None: no
    limit), ready steps started longest-remaining-path first, as the farm's scheduler does."""
    return _ListSchedule(plan, lane_of, limits).run()


class _ListSchedule:
    """A simulated clock over the plan: steps start by rank while their lane has room, end after latency."""

    def __init__(self, plan: Plan, lane_of: Callable[[Step], str], limits: Mapping[str, int | None]) -> None:
        self.plan, self.lane_of, self.limits = plan, lane_of, limits
        self.remaining = remaining_path_s(plan)
        self.waiting = {s.id: len(s.inputs) for s in plan.steps}
        self.consumers = plan.consumers()
        self.ready: dict[str, list[tuple[float, int, Step]]] = defaultdict(list)
        self.running: list[tuple[float, int, Step]] = []
        self.busy: Counter[str] = Counter()
        self.tie = itertools.count()

    def offer(self, step: Step) -> None:
        heapq.heappush(self.ready[self.lane_of(step)], (-self.remaining[step.id], next(self.tie), step))

    def start_ready(self, now: float) -> None:
        for lane, queue in self.ready.items():
            limit = self.limits.get(lane)
            while queue and (limit is None or self.busy[lane] < limit):
                _, _, step = heapq.heappop(queue)
                self.busy[lane] += 1
                heapq.heappush(self.running, (now + step.latency_s, next(self.tie), step))

    def run(self) -> float:
        for step in self.plan.steps:
            if not step.inputs:
                self.offer(step)
        now = 0.0
        while True:
            self.start_ready(now)
            if not self.running:
                return now
            now, _, done = heapq.heappop(self.running)
            self.busy[self.lane_of(done)] -= 1
            for consumer in self.consumers.get(done.id, []):
                self.waiting[consumer.id] -= 1
                if self.waiting[consumer.id] == 0:
                    self.offer(consumer)
