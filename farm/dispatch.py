"""Submit a plan as a run, release ready steps to their queues, cancel. The queue is an adapter."""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol

from farm.plan import Plan, Step
from farm.routing import backend_for, queue_for
from farm.state import RunStore, new_run_id


class Sender(Protocol):
    """What dispatch needs from the queue (Celery in production); no Celery import here."""

    def send(self, run_id: str, step: Step, queue: str) -> None: ...

    def revoke(self, run_id: str, step_ids: list[str]) -> None: ...


def deliverables_dir(output: Path, plan: Plan) -> Path:
    return output / plan.project_name / f"ep_{plan.episode:03d}"


def submit(
    runs: RunStore,
    sender: Sender,
    plan: Plan,
    *,
    backend: str,
    namespace: str,
    output: Path,
    storyboard: str,
    gated: Collection[str] = (),
    source: Mapping[str, str] | None = None,
) -> str:
    """Store the run and release its root steps; return the run id. `gated` steps wait for review
    (`farm.review`); `source` holds the storyboard and registry documents a retake re-plans from."""
    run_id = new_run_id(plan)
    meta = {
        "project": plan.project,
        "project_name": plan.project_name,
        "episode": str(plan.episode),
        "title": plan.title,
        "storyboard": storyboard,
        "backend": backend,
        "namespace": namespace,
        "output_dir": str(deliverables_dir(output, plan).resolve()),
        "approaches": json.dumps({s.shot: s.approach for s in plan.shots}),
        "review": "1" if gated else "0",
    }
    roots = runs.create(run_id, plan, meta, gated, source)
    steps = {s.id: s for s in plan.steps}
    release(runs, sender, run_id, [steps[r] for r in roots], backend)
    return run_id


def release(runs: RunStore, sender: Sender, run_id: str, steps: list[Step], backend: str) -> None:
    """Send steps that the state store has just marked queued."""
    for step in steps:
        queue = queue_for(step.kind, backend_for(step.kind, backend))
        runs.set_info(run_id, step.id, queue=queue, queued_at=time.time())
        sender.send(run_id, step, queue)
        runs.sent(run_id, step.id)


def resend_unsent(runs: RunStore, sender: Sender) -> int:
    """Send again what a dead worker released but never sent; returns how many. A duplicate message is
    harmless: the state machine runs a step once, and paid steps resume their stored request."""
    count = 0
    for run_id in runs.runs(200):
        meta = runs.meta(run_id)
        if meta.get("status") != "running":
            continue
        overrides = runs.backend_overrides(run_id)
        states = runs.states(run_id)
        for step_id in runs.outbox(run_id):
            if states.get(step_id) != "queued":
                runs.sent(run_id, step_id)
                continue
            step = runs.step(run_id, step_id)
            backend = overrides.get(step_id) or backend_for(step.kind, meta["backend"])
            sender.send(run_id, step, queue_for(step.kind, backend))
            runs.sent(run_id, step_id)
            count += 1
    return count


def cancel(runs: RunStore, sender: Sender, run_id: str) -> str:
    """Stop releasing, revoke what is queued; running steps finish. Returns the outcome if settled."""
    revoked, outcome = runs.cancel(run_id)
    if revoked:
        sender.revoke(run_id, revoked)
    return outcome
