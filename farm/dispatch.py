"""Submit a plan as a run, release ready steps through the scheduler to their queues, cancel.

The queue is an adapter: a released step is offered to `farm.scheduler`, which admits it when its lane has
room (critical path first); only admitted steps become Celery messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Protocol

from farm.plan import Plan, Step
from farm.routing import backend_for, queue_for
from farm.scheduler import DEFAULT_PRIORITY, PRIORITIES, Admitted, Ready, Scheduler
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
    priority: int = DEFAULT_PRIORITY,
) -> str:
    """Store the run and release its root steps; return the run id. `gated` steps wait for review
    (`farm.review`); `source` holds the storyboard and registry documents a retake re-plans from;
    `priority` (1-9, 9 first) ranks its ready steps against other runs'."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be 1 to 9 (9 goes first), not {priority}")
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
        "priority": str(priority),
    }
    roots = runs.create(run_id, plan, meta, gated, source)
    steps = {s.id: s for s in plan.steps}
    release(runs, sender, run_id, [steps[r] for r in roots], backend)
    return run_id


def release(
    runs: RunStore,
    sender: Sender,
    run_id: str,
    steps: list[Step],
    backend: str,
    *,
    scheduler: Scheduler | None = None,
    freed: Collection[str] = (),
) -> list[Admitted]:
    """Offer steps that the state store has just marked queued, then send whatever the scheduler admits
    (from any run) on their lanes and on `freed` ones (lanes where a step just gave back its slot)."""
    sched = scheduler or Scheduler(runs.r)
    now = time.time()
    overrides = runs.backend_overrides(run_id) if steps else {}
    remaining = runs.remaining(run_id, [s.id for s in steps])
    priority = run_priority(runs.meta(run_id)) if steps else DEFAULT_PRIORITY
    entries = []
    for step in steps:
        queue = queue_for(step.kind, overrides.get(step.id) or backend_for(step.kind, backend))
        runs.set_info(run_id, step.id, queue=queue, queued_at=now)
        entries.append(Ready(run_id, step.id, queue, remaining[step.id], priority))
    sched.offer(entries, now)
    admitted = sched.admit({*freed, *(e.queue for e in entries)}, now)
    send_admitted(runs, sender, admitted)
    return admitted


def send_admitted(runs: RunStore, sender: Sender, admitted: list[Admitted]) -> None:
    for entry in admitted:
        sender.send(entry.run_id, runs.step(entry.run_id, entry.step_id), entry.queue)
        runs.sent(entry.run_id, entry.step_id)


def step_ended(
    runs: RunStore, sender: Sender, run_id: str, step_id: str, released: list[str], *, scheduler: Scheduler
) -> None:
    """A step finished (or failed, or was skipped): free its slot, offer what it unblocked, admit more."""
    freed = scheduler.finish(run_id, step_id)
    steps = [runs.step(run_id, s) for s in released]
    backend = runs.meta(run_id)["backend"] if steps else ""
    release(runs, sender, run_id, steps, backend, scheduler=scheduler, freed=freed)


def reprioritise(runs: RunStore, run_id: str, priority: int, scheduler: Scheduler | None = None) -> int:
    """Set a run's priority; its steps already waiting are ranked again. Returns how many were."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be 1 to 9 (9 goes first), not {priority}")
    sched = scheduler or Scheduler(runs.r)
    runs.r.hset(runs.key(run_id), "priority", str(priority))
    waiting = sched.waiting_of(run_id)
    ids = [s for steps in waiting.values() for s in steps]
    remaining, info = runs.remaining(run_id, ids), runs.info(run_id)
    entries = [Ready(run_id, s, q, remaining[s], priority) for q, steps in waiting.items() for s in steps]
    sched.rerank(run_id, entries, {s: float(info.get(s, {}).get("queued_at", time.time())) for s in ids})
    return len(entries)


def run_priority(meta: Mapping[str, str]) -> int:
    return int(meta.get("priority") or DEFAULT_PRIORITY)


def resend_unsent(runs: RunStore, sender: Sender, scheduler: Scheduler | None = None) -> int:
    """Send again what a dead worker admitted but never sent, and offer again what it released but never
    offered; returns how many were sent. A duplicate message is harmless: the state machine runs a step
    once, and paid steps resume their stored request."""
    sched = scheduler or Scheduler(runs.r)
    count = 0
    for run_id in runs.runs(200):
        meta = runs.meta(run_id)
        if meta.get("status") != "running":
            continue
        overrides = runs.backend_overrides(run_id)
        states = runs.states(run_id)
        unoffered = []
        for step_id in runs.outbox(run_id):
            if states.get(step_id) != "queued":
                runs.sent(run_id, step_id)
                continue
            step = runs.step(run_id, step_id)
            queue = queue_for(step.kind, overrides.get(step_id) or backend_for(step.kind, meta["backend"]))
            if sched.holds_slot(run_id, step_id):
                sender.send(run_id, step, queue)
                runs.sent(run_id, step_id)
                count += 1
            else:
                unoffered.append(step)
        if unoffered:  # offering keeps the rank of a step already waiting in its ready set
            count += len(release(runs, sender, run_id, unoffered, meta["backend"], scheduler=sched))
    return count


def cancel(runs: RunStore, sender: Sender, run_id: str) -> str:
    """Stop releasing, revoke what is queued; running steps finish. Returns the outcome if settled."""
    revoked, outcome = runs.cancel(run_id)
    if revoked:
        Scheduler(runs.r).drop(run_id, revoked)
        sender.revoke(run_id, revoked)
    return outcome
