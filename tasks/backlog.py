"""How much work waits for each queue, read straight from the broker's Redis keys.

A queue's length alone hides load: Celery's Redis transport keeps each priority in its own list
(`<queue>\\x06\\x16<n>`), and a message a worker has taken (running, or prefetched and not started yet) leaves
the list for the transport's `unacked` hash until it is acknowledged, which with late acks is after the
step. Both count here. A step waiting out a countdown (a retry's backoff, a full pool's 30 s) also sits in
`unacked` with an `eta` header: it is counted apart, since more workers would not make it start sooner.
Steps the scheduler holds back because every worker slot is taken (`farm.runs.scheduler`'s ready sets) are
load too; those held back by a provider's cap are not, since more workers could not start them either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from farm.runs.scheduler import Scheduler

PRIORITY_SEPARATOR = "\x06\x16"
PRIORITY_STEPS = (0, 3, 6, 9)
"""kombu's Redis transport: priority 0 is the queue's own list, the others get a suffix."""
UNACKED_KEY = "unacked"


@dataclass(frozen=True)
class Backlog:
    queue: str
    waiting: int
    """Messages in the queue's lists, every priority."""
    reserved: int
    """Taken by a worker and not yet acknowledged: running, or prefetched and about to run."""
    delayed: int = 0
    """Taken by a worker but held until a countdown ends (not load: nothing can run them sooner)."""
    ready: int = 0
    """Ready steps the scheduler holds for want of a worker slot (as many as the provider cap lets run)."""

    @property
    def load(self) -> int:
        """Steps that want a worker now."""
        return self.waiting + self.reserved + self.ready


def priority_lists(queue: str) -> list[str]:
    return [queue if n == 0 else f"{queue}{PRIORITY_SEPARATOR}{n}" for n in PRIORITY_STEPS]


def read_backlogs(client: redis.Redis, queues: Iterable[str], now: float | None = None) -> dict[str, Backlog]:
    """One consistent-enough reading of every queue (a pipeline for the lists, one pass over unacked)."""
    names = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in names:
        for key in priority_lists(queue):
            pipe.llen(key)
    lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    waiting = {q: sum(lengths[i * steps : (i + 1) * steps]) for i, q in enumerate(names)}
    reserved = dict.fromkeys(names, 0)
    delayed = dict.fromkeys(names, 0)
    moment = time.time() if now is None else now
    for raw in client.hvals(UNACKED_KEY):
        queue, eta = _routing(raw)
        if queue not in reserved:
            continue
        if eta is not None and eta > moment:
            delayed[queue] += 1
        else:
            reserved[queue] += 1
    ready = startable_ready(client, names)
    return {q: Backlog(q, waiting[q], reserved[q], delayed[q], ready[q]) for q in names}


def startable_ready(client: redis.Redis, queues: list[str]) -> dict[str, int]:
    """Per queue, the ready steps that more worker slots would start: all of them, or only what the
    provider's cap leaves room for beside the steps already admitted."""
    scheduler = Scheduler(client)
    lanes, counts = scheduler.lanes(queues), scheduler.ready_counts(queues)
    admitted = scheduler.admitted_counts(queues)
    startable = {}
    for queue in queues:
        cap = lanes[queue].cap
        room = counts[queue] if cap is None else max(0, cap - admitted[queue])
        startable[queue] = min(counts[queue], room)
    return startable


def _routing(raw: bytes | str) -> tuple[str, float | None]:
    """The queue an unacked message was routed to, and its ETA (epoch seconds) if it has one."""
    try:
        message, _exchange, routing_key = json.loads(raw)
        headers: dict[str, Any] = message.get("headers") or {}
    except (ValueError, TypeError, AttributeError):
        return "", None
    eta = headers.get("eta")
    return str(routing_key), _epoch(eta) if isinstance(eta, str) else None


def _epoch(stamp: str) -> float | None:
    try:
        return datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return None
