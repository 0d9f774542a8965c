"""How much work waits for each queue, read straight from the broker's Redis keys.

A queue's length alone hides load: Celery's Redis transport keeps each priority in its own list
(`<queue>\\x06\\x16<n>`), and a message a worker has taken (running, or prefetched and not started yet) leaves
the list for the transport's `unacked` hash until it is acknowledged, which with late acks is after the
step. Both count here. A step waiting out a countdown (a retry's backoff, a full pool's 30 s) also sits in
`unacked` with an `eta` header: it is counted apart, since more workers would not make it start sooner.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

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

    @property
    def load(self) -> int:
        """Steps that want a worker now."""
        return self.waiting + self.reserved


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
    return {q: Backlog(q, waiting[q], reserved[q], delayed[q]) for q in names}


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
