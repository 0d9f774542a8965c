"""Give a step whose Celery message is gone a new one, so a run never waits forever for a lost message.

A queued or running step that is no longer in its run's outbox was sent: its message is in a Celery queue,
or delivered and not yet acknowledged (`unacked`: the farm acks late, so a running step's message stays
there until it ends, and a dead worker's comes back after the visibility timeout). When it is in neither,
it is lost: Redis restarted from an AOF that missed the last second, a task died of an error outside the
step's own handling and its message was acked, someone flushed a queue. The reconciler finds such steps
and, when a later pass still finds them missing (a delivery takes a moment to show in `unacked`), sends
them again. The state machine runs a step once and paid steps resume their stored request, so a message
sent twice by a race costs nothing.

It also does what a worker does when it starts (`dispatch.resend_unsent`): offer and send what is still
in an outbox, here only what a pass a grace period earlier found there too; and, given a way to put a
message back, it hands a dead worker's running steps to the others (`tasks.orphans`). Workers run it every
`FARM_RECONCILE_EVERY_S` from their announcement thread (`Reconciler`), one at a time (a lock); `farm
reconcile` runs it once.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from farm.config.redis_text import as_text
from farm.planning.routing import QUEUES, step_queue
from farm.runs import keys
from farm.runs.dispatch import Sender, resend_outbox, task_id
from farm.runs.keys import StepStatus
from farm.runs.scheduler import SEPARATOR, Scheduler, member
from farm.runs.state import RunStore
from tasks.backlog import UNACKED_KEY, priority_lists
from tasks.orphans import Delivered, delivered_messages, orphaned

if TYPE_CHECKING:
    from tasks.context import WorkerContext

log = logging.getLogger(__name__)

LIVE_STATES = (StepStatus.QUEUED, StepStatus.RUNNING)
OUTBOX, ORPHAN = "outbox", "orphan"
"""Prefixes of the first-seen entries that are not a missing message: a step left in an outbox, a gone
worker's delivered message (by its tag)."""


@dataclass(frozen=True)
class Reconciled:
    from_outbox: int
    """Steps sent from an outbox a dead dispatcher left behind (those still waiting for a slot are offered
    to their ready set again, keeping their rank if they are there)."""
    missing: int
    """Sent steps whose message is gone, first seen now: sent again by a later pass if still gone."""
    resent: int
    """Sent steps whose message was gone in two passes: sent again."""
    orphaned: int = 0
    """Running steps whose worker is gone, seen so for less than the grace: put back by a later pass."""
    restored: int = 0
    """Messages of a gone worker's running steps put back on their queues now."""


def broker_task_ids(client: redis.Redis, queues: Iterable[str] = QUEUES) -> set[str]:
    """Task ids of every message waiting in the queues or delivered and not yet acknowledged."""
    return broker_view(client, queues)[0]


def broker_view(client: redis.Redis, queues: Iterable[str] = QUEUES) -> tuple[set[str], list[Delivered]]:
    """Task ids of every message waiting or delivered, and the delivered ones' tags, in one read."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in priority_lists(queue):
            pipe.lrange(key, 0, -1)
    pipe.hgetall(UNACKED_KEY)
    *lists, unacked = pipe.execute()
    delivered = delivered_messages(unacked)
    found = {_task_id(raw) for messages in lists for raw in messages}
    found |= {task_id(message.run_id, message.step_id) for message in delivered}
    return found - {""}, delivered


def _task_id(message: bytes | str | dict[str, object]) -> str:
    doc = json.loads(message) if isinstance(message, bytes | str) else message
    headers = doc.get("headers") if isinstance(doc, dict) else None
    task_id = headers.get("id") if isinstance(headers, dict) else None
    return str(task_id) if task_id else ""


def reconcile(
    runs: RunStore,
    sender: Sender,
    scheduler: Scheduler,
    *,
    grace_s: float,
    restore: Callable[[str], None] | None = None,
    now: float | None = None,
) -> Reconciled:
    """One pass. A step is sent from its outbox, or sent again for a missing message, only when a pass
    `grace_s` or more earlier saw it the same way: a live dispatcher's send takes a moment too. With
    `restore` (put a delivered message back on its queue, by tag), a gone worker's running steps too."""
    moment = time.time() if now is None else now
    present, delivered = broker_view(runs.r)
    seen = {as_text(k): float(v) for k, v in runs.r.hgetall(keys.RECONCILE_MISSING).items()}
    pending: dict[str, float] = {}

    def overdue(key: str) -> bool:
        first = seen.get(key, moment)
        if moment - first >= grace_s:
            return True
        pending[key] = first
        return False

    waiting = scheduler.ready_members()  # a step offered after this read is in its outbox, skipped below
    from_outbox = resent = 0
    for run_id, meta in runs.running():
        states = runs.states(run_id)  # first: a step sent after this read is in none of the reads below
        outbox = runs.outbox(run_id)
        stale = [s for s in outbox if overdue(f"{OUTBOX}{SEPARATOR}{member(run_id, s)}")]
        if stale:
            from_outbox += resend_outbox(runs, sender, scheduler, run_id, meta, stale)
        overrides = runs.backend_overrides(run_id)
        for step_id, state in states.items():
            key = member(run_id, step_id)
            if state not in LIVE_STATES or step_id in outbox or key in waiting:
                continue
            if task_id(run_id, step_id) in present or not overdue(key):
                continue
            step = runs.step(run_id, step_id)
            sender.send(run_id, step, step_queue(step.kind, meta["backend"], overrides.get(step_id)))
            resent += 1
    restored = 0 if restore is None else _put_back(runs, scheduler, delivered, restore, overdue, moment)
    pipe = runs.r.pipeline(transaction=True)
    pipe.delete(keys.RECONCILE_MISSING)
    if pending:
        pipe.hset(keys.RECONCILE_MISSING, mapping={k: str(v) for k, v in pending.items()})
    pipe.execute()
    kinds = Counter(k.partition(SEPARATOR)[0] if k.startswith((OUTBOX, ORPHAN)) else "" for k in pending)
    return Reconciled(from_outbox, kinds[""], resent, kinds[ORPHAN], restored)


def _put_back(
    runs: RunStore,
    scheduler: Scheduler,
    delivered: list[Delivered],
    restore: Callable[[str], None],
    overdue: Callable[[str], bool],
    moment: float,
) -> int:
    """Put back on their queues the messages of steps a gone worker was running (`tasks.orphans`), those a
    pass a grace period earlier found so too; returns how many."""
    restored = 0
    for message in orphaned(runs, delivered, scheduler.live_workers(now=moment)):
        if overdue(f"{ORPHAN}{SEPARATOR}{message.tag}"):
            restore(message.tag)
            restored += 1
    return restored


def take_turn(client: redis.Redis, holder: str, every_s: float) -> bool:
    """True for one caller per `every_s` across the farm (the others skip this period)."""
    return bool(client.set(keys.RECONCILE_LOCK, holder, nx=True, px=max(1, int(every_s * 1000))))


class Reconciler:
    """Called on every announcement beat; runs a pass when its period is up and no other worker took it."""

    def __init__(self, ctx: WorkerContext, holder: str) -> None:
        self.ctx, self.holder = ctx, holder
        self._next = time.monotonic() + ctx.settings.reconcile_every_s

    def beat(self) -> None:
        every = self.ctx.settings.reconcile_every_s
        if time.monotonic() < self._next:
            return
        self._next = time.monotonic() + every
        if not take_turn(self.ctx.runs.r, self.holder, every):
            return
        ctx = self.ctx
        result = reconcile(ctx.runs, ctx.sender, ctx.scheduler, grace_s=every, restore=ctx.sender.restore)
        if result.from_outbox or result.resent:
            log.warning(
                "reconcile: sent %d step(s) left in an outbox and %d whose message was lost",
                result.from_outbox,
                result.resent,
            )
        elif result.missing:
            log.info(
                "reconcile: %d step(s) without a message; sent again next pass if still so", result.missing
            )
        if result.restored:
            log.warning("reconcile: put back %d step(s) a gone worker was running", result.restored)
        elif result.orphaned:
            log.info(
                "reconcile: %d running step(s) on a gone worker; put back next pass if still so",
                result.orphaned,
            )
