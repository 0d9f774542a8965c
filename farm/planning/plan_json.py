"""`farm plan --json`: the stable, machine-readable contract for a render plan.

Keys documented in docs/plan-json.md; add keys freely, never rename or remove one.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from farm.planning.estimate import Estimate, estimate
from farm.planning.plan import Plan, Step

PLAN_FORMAT = 1


def plan_document(plan: Plan, est: Estimate | None = None) -> dict[str, Any]:
    est = est or estimate(plan)
    return {
        "format": PLAN_FORMAT,
        "project": plan.project,
        "project_name": plan.project_name,
        "episode": plan.episode,
        "title": plan.title,
        "steps": [step_document(s) for s in plan.steps],
        "shots": [
            {
                **shot.model_dump(mode="json", exclude={"clip_s"}),
                "clip_s": round(shot.clip_s, 4),
                "cost_usd": money(est.cost_by_shot.get(shot.shot, Decimal(0))),
            }
            for shot in plan.shots
        ],
        "totals": est.steps_by_kind,
        "cost_by_kind": {k: money(v) for k, v in est.cost_by_kind.items()},
        "paid_calls": [
            {"endpoint": c.endpoint, "calls": c.calls, "cost_usd": money(c.cost_usd)} for c in est.paid_calls
        ],
        "cost_usd": money(est.cost_usd),
        "critical_path": est.critical_path,
        "critical_path_s": round(est.critical_path_s, 3),
        "sequential_s": round(est.sequential_s, 3),
    }


def money(value: Decimal) -> float:
    """Dollars as a JSON number, to a hundredth of a cent's precision and no float noise."""
    return float(value.quantize(Decimal("0.000001")))


def step_document(step: Step) -> dict[str, Any]:
    """A step as plain JSON; the manifest starts from the same document."""
    return {
        "id": step.id,
        "kind": step.kind.value,
        "shot": step.shot,
        "role": step.role,
        "engine": step.engine,
        "operation": step.operation,
        "endpoint": step.endpoint,
        "inputs": list(step.inputs),
        "asset_name": step.asset_name,
        "outputs": list(step.outputs),
        "params": step.params,
        "seed": step.params.get("seed"),
        "cost_usd": money(step.cost_usd),
        "latency_s": step.latency_s,
        "notes": list(step.notes),
        "take": step.take,
    }
