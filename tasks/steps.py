"""One Celery task per step kind (farm.t2i, farm.video, ...), all running the same step executor."""

from __future__ import annotations

import logging
from typing import Any

from celery import Task
from celery.signals import worker_ready

from farm.dispatch import release, resend_unsent
from farm.plan import StepKind
from tasks.app import app
from tasks.config import task_name
from tasks.context import context
from tasks.execute import Rerouted, RetryLater, execute


def _run_step(task: Task[Any, Any], run_id: str, step_id: str) -> str:
    ctx = context()
    try:
        completion = execute(ctx, run_id, step_id)
    except RetryLater as later:
        raise task.retry(countdown=later.countdown) from later
    except Rerouted as moved:
        ctx.sender.send(run_id, ctx.runs.step(run_id, step_id), moved.queue)
        return f"rerouted to {moved.queue}: {moved}"
    if completion is None:
        return "skipped"
    if completion.released:
        backend = ctx.runs.meta(run_id)["backend"]
        release(
            ctx.runs, ctx.sender, run_id, [ctx.runs.step(run_id, s) for s in completion.released], backend
        )
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


@worker_ready.connect
def _resend_unsent(**_: Any) -> None:
    """A worker starting is often a worker coming back from a crash: re-send steps released but never sent."""
    ctx = context()
    resent = resend_unsent(ctx.runs, ctx.sender)
    if resent:
        logging.getLogger(__name__).warning("re-sent %d released step(s) whose message was lost", resent)
