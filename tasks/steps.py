"""One Celery task per step kind (farm.t2i, farm.video, ...), all running the same step executor."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready, worker_shutdown

from farm.planning.plan import StepKind
from farm.runs.dispatch import resend_unsent, step_ended
from tasks.announce import start_announcing, stop_announcing
from tasks.app import app
from tasks.config import task_name
from tasks.context import context
from tasks.execute import Rerouted, RetryLater, StepFailed, execute


def _run_step(task: Task[Any, Any], run_id: str, step_id: str) -> str:
    ctx = context()
    try:
        completion = execute(
            ctx, run_id, step_id, node=task.request.hostname or "", attempt=task.request.retries
        )
    except RetryLater as later:  # keeps its slot while it waits: the lane's capacity is spoken for
        raise task.retry(countdown=later.countdown) from later
    except Rerouted as moved:  # leaves this lane's slot for a place in the other lane's ready set
        step_ended(ctx.runs, ctx.sender, run_id, step_id, [step_id], scheduler=ctx.scheduler)
        return f"rerouted to {moved.queue}: {moved}"
    except StepFailed:
        step_ended(ctx.runs, ctx.sender, run_id, step_id, [], scheduler=ctx.scheduler)
        raise
    if completion is None:
        step_ended(ctx.runs, ctx.sender, run_id, step_id, [], scheduler=ctx.scheduler)
        return "skipped"
    return f"released {len(completion.released)}" + (
        f"; run {completion.outcome}" if completion.outcome else ""
    )


def _register(kind: StepKind) -> Task[Any, Any]:
    def run(self: Task[Any, Any], run_id: str, step_id: str) -> str:
        return _run_step(self, run_id, step_id)

    run.__name__ = run.__qualname__ = f"run_{kind.value}"
    # Retries are bounded by the executor (per kind of failure), not by Celery's default of three.
    task: Task[Any, Any] = app.task(name=task_name(kind), bind=True, max_retries=None)(run)
    return task


TASKS = {kind: _register(kind) for kind in StepKind}

# httpx logs every request at INFO: thousands of lines per episode from a cloud worker, its threads queueing
# on the log handler's lock. Failures still surface as the step's reason.
logging.getLogger("httpx").setLevel(logging.WARNING)


@worker_ready.connect
def _on_ready(sender: Any, **_: Any) -> None:
    """Announce this worker's slots (its lane may admit more now), then re-send steps a crashed worker
    admitted but never sent: a worker starting is often a worker coming back from a crash."""
    ctx = context()
    start_announcing(ctx, sender)
    resent = resend_unsent(ctx.runs, ctx.sender, ctx.scheduler)
    if resent:
        logging.getLogger(__name__).warning("re-sent %d released step(s) whose message was lost", resent)


@worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    stop_announcing(context())
