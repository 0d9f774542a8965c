"""Which delivered messages belong to steps a dead worker was running, so the reconciler can put them back.

The farm acks late, so a running step's message stays in kombu's `unacked` hash until the step ends. If
the worker dies (SIGKILL, a lost node, an OOM kill of the main process), kombu hands the message out again
only once the visibility timeout has passed: 40 minutes at the default scale, with a paid step in the
middle of it. A worker records its Celery node name and the message's retry number (`node`, `attempt`)
when it claims a step, and announces itself every few seconds (`farm.runs.keys.pool`). A delivered
message whose step is still running under a node that no longer announces itself is an orphan; the
reconciler (`tasks.reconcile`) puts it back on its queue when a pass a grace period later finds it so too,
through kombu's own restore, which is transactional, so a late ack or kombu's visibility restore cannot
make it two messages.

Matching the retry number matters: a step waiting out a retry countdown is held as a new message
(retries + 1) by some worker while its info still names the worker that ran the attempt before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from farm.config.redis_text import as_text
from farm.runs import keys
from farm.runs.dispatch import step_of_task
from farm.runs.keys import StepStatus
from farm.runs.state import RunStore


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
        step = step_of_task(str(headers.get("id") or "")) if isinstance(headers, dict) else None
        if headers is not None and step is not None:
            found.append(Delivered(as_text(tag), *step, int(headers.get("retries") or 0)))
    return found


def orphaned(runs: RunStore, delivered: list[Delivered], live: set[str]) -> list[Delivered]:
    """The messages whose step is running, claimed by this very attempt, on a node that is not `live`."""
    if not delivered:
        return []
    pipe = runs.r.pipeline(transaction=False)
    for message in delivered:
        pipe.hget(keys.states(message.run_id), message.step_id)
        pipe.hmget(keys.info(message.run_id), f"{message.step_id}:node", f"{message.step_id}:attempt")
    answers = pipe.execute()
    found = []
    for i, message in enumerate(delivered):
        state, (node, attempt) = answers[2 * i], answers[2 * i + 1]
        if as_text(state or b"") != StepStatus.RUNNING or node is None or attempt is None:
            continue
        if json.loads(node) not in live and json.loads(attempt) == message.retries:
            found.append(message)
    return found
