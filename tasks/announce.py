"""A worker's announcement of its slots to the scheduler, refreshed from a thread until it shuts down; the
same thread runs the farm's reconcile pass when it is this worker's turn (`tasks.reconcile`).

The worker process (the parent, for a prefork pool) announces every queue it drains; a worker that dies
stops refreshing and its slots drop out of the lane after `ANNOUNCE_TTL_S`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from farm.runs.dispatch import send_admitted
from farm.runs.lanes import announcement
from farm.runs.scheduler import ANNOUNCE_EVERY_S
from tasks.context import WorkerContext
from tasks.reconcile import Reconciler

log = logging.getLogger(__name__)

_stop = threading.Event()
_mine: list[tuple[str, str]] = []
"""(queue, worker name) pairs this process announced."""


def worker_lanes(consumer: Any) -> tuple[str, list[str], int]:
    """The worker's name, the queues it consumes and its concurrency, from Celery's consumer."""
    queues = sorted(consumer.app.amqp.queues.consume_from)
    return str(consumer.hostname), queues, int(consumer.controller.concurrency)


def start_announcing(ctx: WorkerContext, consumer: Any) -> None:
    name, queues, slots = worker_lanes(consumer)
    _mine[:] = [(q, name) for q in queues]
    announce_once(ctx, slots)
    # New slots: the lanes may admit steps that were waiting for room.
    send_admitted(ctx.runs, ctx.sender, ctx.scheduler.admit(queues))
    reconciler = Reconciler(ctx, name)
    thread = threading.Thread(
        target=_refresh, args=(ctx, slots, reconciler), name="farm-announce", daemon=True
    )
    thread.start()


def announce_once(ctx: WorkerContext, slots: int) -> None:
    for queue, name in _mine:
        ctx.scheduler.announce(queue, name, announcement(queue, slots, ctx.settings))


def _refresh(ctx: WorkerContext, slots: int, reconciler: Reconciler) -> None:
    while not _stop.wait(min(ANNOUNCE_EVERY_S, ctx.settings.reconcile_every_s)):
        try:
            announce_once(ctx, slots)
            reconciler.beat()
        except Exception:  # Redis away for a moment: the next beat tries again
            log.warning("could not refresh this worker's announcement or reconcile", exc_info=True)


def stop_announcing(ctx: WorkerContext) -> None:
    _stop.set()
    for queue, name in _mine:
        ctx.scheduler.withdraw(queue, name)
