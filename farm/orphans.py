"""Hand a dead worker's running steps to another worker within a minute, not after the visibility timeout.

The farm acks late, so a running step's message stays in kombu's `unacked` hash until the step ends. If
the worker dies (SIGKILL, a lost node, an OOM kill of the main process), kombu hands the message out again
only once the visibility timeout has passed: 40 minutes at the default scale, with a paid step in the
middle of it. A worker records its Celery node name and the message's retry number (`node`, `attempt`)
when it claims a step, and announces itself every few seconds (`farm:sched:pool:<queue>`). A delivered
message whose step is still running under a node that no longer announces itself, seen so by two reconcile
passes a grace period apart, is an orphan: it goes back on its queue through kombu's own restore, which is
transactional, so a late ack or kombu's visibility restore cannot make it two messages.

Matching the retry number matters: a step waiting out a retry countdown is held as a new message
(retries + 1) by some worker while its info still names the worker that ran the attempt before.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import redis

from farm.redis_values import as_text
from farm.routing import QUEUES
from farm.scheduler import Scheduler
from farm.state import RunStore

ORPHANS_KEY = "farm:reconcile:orphans"
"""Hash: delivery tag -> when a pass first found its step running under a node that is gone."""
TASK_ID_SEPARATOR = ":"
"""`dispatch.task_id` is `<run id>:<step id>`; run ids have no colon."""


@dataclass(frozen=True)
class Delivered:
    """A message a worker took and has not acknowledged: its step, and which attempt it carries."""

    tag: str
    run_id: str
    step_id: str
    retries: int


def delivered_messages(raw_unacked: dict[bytes, bytes]) -> list[Delivered]:
    """The farm's steps among kombu's unacked entries (`tag -> [message, exchange, routing key]`)."""
    found = []
    for tag, entry in raw_unacked.items():
        message = json.loads(entry)[0]
        headers = message.get("headers") if isinstance(message, dict) else None
        if not isinstance(headers, dict) or TASK_ID_SEPARATOR not in str(headers.get("id") or ""):
            continue
        run_id, _, step_id = str(headers["id"]).partition(TASK_ID_SEPARATOR)
        found.append(Delivered(as_text(tag), run_id, step_id, int(headers.get("retries") or 0)))
    return found


def live_nodes(client: redis.Redis, queues: Iterable[str] = QUEUES, now: float | None = None) -> set[str]:
    """Worker node names whose announcement has not expired, on any queue."""
    moment = time.time() if now is None else now
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.hgetall(Scheduler.pool_key(queue))
    return {
        as_text(node)
        for announced in pipe.execute()
        for node, blob in announced.items()
        if json.loads(blob)["expires"] > moment
    }


@dataclass(frozen=True)
class Orphans:
    seen: int
    """Running steps whose worker is gone, first seen by this pass: put back by a later pass if still so."""
    restored: int
    """Their messages put back on their queues by this pass."""


def rescue_orphans(
    runs: RunStore,
    delivered: list[Delivered],
    restore: Callable[[str], None],
    *,
    grace_s: float,
    now: float | None = None,
) -> Orphans:
    """One pass: put back every message whose step a gone worker was running, if a pass `grace_s` or
    more earlier found it the same way; remember the rest for the next pass."""
    moment = time.time() if now is None else now
    live = live_nodes(runs.r, now=moment)
    earlier = {as_text(k): float(v) for k, v in runs.r.hgetall(ORPHANS_KEY).items()}
    pending: dict[str, float] = {}
    restored = 0
    for message in _orphaned(runs, delivered, live):
        first = earlier.get(message.tag, moment)
        if moment - first >= grace_s:
            restore(message.tag)
            restored += 1
        else:
            pending[message.tag] = first
    pipe = runs.r.pipeline(transaction=True)
    pipe.delete(ORPHANS_KEY)
    if pending:
        pipe.hset(ORPHANS_KEY, mapping={k: str(v) for k, v in pending.items()})
    pipe.execute()
    return Orphans(sum(1 for tag in pending if tag not in earlier), restored)


def _orphaned(runs: RunStore, delivered: list[Delivered], live: set[str]) -> list[Delivered]:
    """The messages whose step is running, claimed by this very attempt, on a node that is not live."""
    if not delivered:
        return []
    pipe = runs.r.pipeline(transaction=False)
    for message in delivered:
        pipe.hget(runs.key(message.run_id, "state"), message.step_id)
        pipe.hmget(runs.key(message.run_id, "info"), f"{message.step_id}:node", f"{message.step_id}:attempt")
    answers = pipe.execute()
    orphaned = []
    for i, message in enumerate(delivered):
        state, (node, attempt) = answers[2 * i], answers[2 * i + 1]
        if as_text(state or b"") != "running" or node is None or attempt is None:
            continue
        if json.loads(node) not in live and json.loads(attempt) == message.retries:
            orphaned.append(message)
    return orphaned
