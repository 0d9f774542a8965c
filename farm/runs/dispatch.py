"""Submit a plan as a run, release ready steps through the scheduler to their queues, cancel.

The queue is an adapter: a released step is offered to `farm.runs.scheduler`, which admits it when its
lane has room (critical path first); only admitted steps become Celery messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Collection, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Protocol

from farm.planning.plan import Plan, Step
from farm.planning.routing import step_queue
from farm.runs import budget, keys
from farm.runs.budget import Pricing
from farm.runs.keys import StepStatus
from farm.runs.scheduler import DEFAULT_PRIORITY, Admitted, Ready, Scheduler, check_priority
from farm.runs.state import ReleaseReads, RunStore, new_run_id


class Sender(Protocol):
    """What dispatch needs from the queue (Celery in production); no Celery import here."""

    def send(self, run_id: str, step: Step, queue: str) -> None: ...

    def revoke(self, run_id: str, step_ids: list[str]) -> None: ...


def task_id(run_id: str, step_id: str) -> str:
    """A step's Celery task id: deterministic, so a step can be revoked, found in Flower or looked for in
    the broker from the run state alone."""
    return f"{run_id}:{step_id}"


def step_of_task(task: str) -> tuple[str, str] | None:
    """(run id, step id) of a farm task id, None for any other (run ids have no colon)."""
    run_id, colon, step_id = task.partition(":")
    return (run_id, step_id) if colon and run_id and step_id else None


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
    budget_usd: Decimal | None = None,
    pricing: Pricing | None = None,
) -> str:
    """Store the run and release its root steps; return the run id. `gated` steps wait for review
    (`farm.runs.review`); `source` holds the storyboard and registry documents a retake re-plans from;
    `priority` (1-9, 9 first) ranks its ready steps against other runs'; a paid step is admitted only
    while the run's spending fits `budget_usd` (`farm.runs.budget`), its estimate priced by `pricing`."""
    check_priority(priority)
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
        **(pricing or Pricing()).meta(),
    }
    if budget_usd is not None:
        meta[budget.BUDGET_FIELD] = str(budget.to_micros(budget_usd))
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
) -> list[Admitted]:
    """Offer steps that the state store has just marked queued, then send whatever the scheduler admits
    on their lanes (steps of any run)."""
    sched = scheduler or Scheduler(runs.r)
    found = runs.release_reads(run_id, [s.id for s in steps], with_steps=False)
    return _offer_and_send(runs, sender, sched, run_id, steps, backend, found)


def step_ended(
    runs: RunStore,
    sender: Sender,
    run_id: str,
    step_id: str,
    released: list[str],
    *,
    scheduler: Scheduler,
    reads: ReleaseReads | None = None,
) -> list[Admitted]:
    """A step finished (or failed, was skipped, or moves to another lane): free its slot, offer what it
    unblocked, send what is admitted. It sits on every dependency hop: given the `reads` that
    `RunStore.complete` returns, it costs one round trip, then the sends and one more."""
    found = reads if reads is not None else runs.release_reads(run_id, released)
    steps = [found.steps[s] for s in released]
    backend = found.meta.get("backend", "")
    admitted = _offer_and_send(runs, sender, scheduler, run_id, steps, backend, found, ended=step_id)
    if found.meta.get(budget.HELD_AT_FIELD):  # paused for budget: what this step freed may let one go
        admitted += readmit_held(runs, sender, run_id, scheduler)
    return admitted


def _offer_and_send(
    runs: RunStore,
    sender: Sender,
    scheduler: Scheduler,
    run_id: str,
    steps: list[Step],
    backend: str,
    found: ReleaseReads,
    ended: str | None = None,
) -> list[Admitted]:
    now = time.time()
    priority = run_priority(found.meta)
    pricing = Pricing.from_meta(found.meta)
    entries = []
    for step in steps:
        queue = step_queue(step.kind, backend, found.overrides.get(step.id))
        cost = budget.to_micros(budget.step_estimate_usd(step, queue, pricing))
        entries.append(Ready(run_id, step.id, queue, found.remaining.get(step.id, 0.0), priority, cost))
    infos = {e.step_id: {"queue": e.queue, "queued_at": now} for e in entries}
    finished = (run_id, ended) if ended else None
    admitted = scheduler.settle(
        entries, finished=finished, now=now, along=lambda pipe: runs.set_infos(run_id, infos, pipe=pipe)
    )
    send_admitted(runs, sender, admitted, {(run_id, s.id): s for s in steps})
    return admitted


def send_admitted(
    runs: RunStore,
    sender: Sender,
    admitted: list[Admitted],
    known: Mapping[tuple[str, str], Step] | None = None,
) -> None:
    """Send admitted steps (reading the ones not in `known`), then take them out of their outboxes."""
    for entry in admitted:
        step = (known or {}).get((entry.run_id, entry.step_id)) or runs.step(entry.run_id, entry.step_id)
        sender.send(entry.run_id, step, entry.queue)
    runs.sent_many([(a.run_id, a.step_id) for a in admitted])


def reprioritise(runs: RunStore, run_id: str, priority: int, scheduler: Scheduler | None = None) -> int:
    """Set a run's priority; its steps already waiting are ranked again. Returns how many were."""
    check_priority(priority)
    sched = scheduler or Scheduler(runs.r)
    runs.r.hset(keys.run(run_id), "priority", str(priority))
    waiting = sched.waiting_of(run_id)
    ids = [s for steps in waiting.values() for s in steps]
    remaining, info = runs.remaining(run_id, ids), runs.info(run_id)
    entries = [Ready(run_id, s, q, remaining[s], priority) for q, steps in waiting.items() for s in steps]
    sched.rerank(run_id, entries, {s: float(info.get(s, {}).get("queued_at", time.time())) for s in ids})
    return len(entries)


def set_budget(
    runs: RunStore, sender: Sender, run_id: str, usd: Decimal | None, scheduler: Scheduler | None = None
) -> list[Admitted]:
    """Give the run a new budget (None: no limit). Steps that waited for budget go back to their ready
    sets, keeping their rank, and are admitted if they fit now; the rest wait again."""
    if usd is None:
        runs.r.hdel(keys.run(run_id), budget.BUDGET_FIELD)
    else:
        runs.r.hset(keys.run(run_id), budget.BUDGET_FIELD, str(budget.to_micros(usd)))
    return readmit_held(runs, sender, run_id, scheduler or Scheduler(runs.r))


def readmit_held(runs: RunStore, sender: Sender, run_id: str, scheduler: Scheduler) -> list[Admitted]:
    """Offer the run's budget-held steps again and send those that fit now (after a raise, or after one of
    its steps ended for less than its estimate, or failed, and freed part of the budget)."""
    queues = scheduler.unhold(run_id)
    if not queues:
        return []
    admitted = scheduler.admit(queues)
    send_admitted(runs, sender, admitted)
    return admitted


def run_priority(meta: Mapping[str, str]) -> int:
    return int(meta.get("priority") or DEFAULT_PRIORITY)


def resend_unsent(runs: RunStore, sender: Sender, scheduler: Scheduler | None = None) -> int:
    """Send again what a dead worker admitted but never sent, and offer again what it released but never
    offered; returns how many were sent. A duplicate message is harmless: the state machine runs a step
    once, and paid steps resume their stored request."""
    sched = scheduler or Scheduler(runs.r)
    count = 0
    for run_id, meta in runs.running():
        count += resend_outbox(runs, sender, sched, run_id, meta, runs.outbox(run_id))
    return count


def resend_outbox(
    runs: RunStore,
    sender: Sender,
    scheduler: Scheduler,
    run_id: str,
    meta: Mapping[str, str],
    step_ids: Collection[str],
) -> int:
    """`resend_unsent` for some of one run's outbox: send those holding a slot, offer the others."""
    overrides = runs.backend_overrides(run_id)
    states = runs.states(run_id)
    count = 0
    unoffered = []
    for step_id in step_ids:
        if states.get(step_id) != StepStatus.QUEUED:
            runs.sent(run_id, step_id)
            continue
        step = runs.step(run_id, step_id)
        queue = step_queue(step.kind, meta["backend"], overrides.get(step_id))
        if scheduler.holds_slot(run_id, step_id):
            sender.send(run_id, step, queue)
            runs.sent(run_id, step_id)
            count += 1
        else:
            unoffered.append(step)
    if unoffered:  # offering keeps the rank of a step already waiting in its ready set
        count += len(release(runs, sender, run_id, unoffered, meta["backend"], scheduler=scheduler))
    return count


def cancel(runs: RunStore, sender: Sender, run_id: str) -> str:
    """Stop releasing, revoke what is queued; running steps finish. Returns the outcome if settled."""
    revoked, outcome = runs.cancel(run_id)
    if revoked:
        Scheduler(runs.r).drop(run_id, revoked)
        sender.revoke(run_id, revoked)
    return outcome
