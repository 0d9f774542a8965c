"""What a plan will cost and how long it will take: per shot, per endpoint, critical path, sequential."""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from decimal import Decimal

from farm.plan import Plan, StepKind


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
    dependents: dict[str, list[str]] = defaultdict(list)
    for step in plan.steps:
        for producer in step.inputs:
            dependents[producer].append(step.id)
    remaining: dict[str, float] = {}
    for step in reversed(plan.steps):  # dependency order, so every consumer is known first
        after = max((remaining[d] for d in dependents[step.id]), default=0.0)
        remaining[step.id] = step.latency_s + after
    return remaining
