"""Run one plan step: claim it, reuse or render its outputs, publish them, release what it unblocks."""

from __future__ import annotations

import logging
import os
import random
import socket
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

from farm.config.redaction import scrubbed, secret_values
from farm.planning.plan import Step
from farm.planning.routing import backend_for, queue_for
from farm.runs import budget, counters
from farm.runs.dispatch import step_ended
from farm.runs.manifest import write_manifest
from farm.runs.state import Completion, RunStore
from farm.storage.artifacts import input_index, output_key, output_keys
from farm.storage.stores import StoreUnavailable
from tasks.context import WorkerContext
from workers.base import CapacityWait, ContentPolicyError, StepJob, StepResult, TransientError

log = logging.getLogger(__name__)


class StepFailed(Exception):
    """Raised after the step is marked failed, so Flower shows the task as failed with the reason."""


class RetryLater(Exception):
    """The step went back to queued; the task is to be sent again after `countdown` seconds."""

    def __init__(self, countdown: float, reason: str) -> None:
        super().__init__(reason)
        self.countdown = countdown


class Rerouted(Exception):
    """The step moves to another backend's queue (a content-policy refusal goes to the GPU pool)."""

    def __init__(self, queue: str, reason: str) -> None:
        super().__init__(reason)
        self.queue = queue


FALLBACK_BACKEND = "comfyui"
"""The studio's uncensored fallback: ComfyUI on rented GPU pods."""
MAX_BACKOFF_S = 60.0


def execute(
    ctx: WorkerContext, run_id: str, step_id: str, *, node: str = "", attempt: int = 0
) -> Completion | None:
    """Return the completion (steps to release), or None when there was nothing to do.

    `node` (the Celery worker's name) and `attempt` (the message's retry number) are recorded with the
    claim, so the reconciler can tell a dead worker's running step from a live one's (`tasks.orphans`).

    A finished step's slot is given back and what it unblocked is sent here, before the bookkeeping that
    nothing waits for. Raises RetryLater or Rerouted when the step must run again later or elsewhere,
    StepFailed when it failed.
    """
    runs = ctx.runs
    claim = runs.claim(run_id, step_id)  # one round trip: this sits on every dependency hop
    started = claim.started
    if started < 0:
        return None  # settled already, or cancelled while queued
    if started > ctx.settings.max_deliveries:
        limit = ctx.settings.max_deliveries
        _fail(
            ctx,
            run_id,
            step_id,
            f"its worker died {started - 1} times while running it (limit {limit}); not retried again",
            "worker_died",
        )
    step, meta = claim.reads.steps[step_id], claim.reads.meta
    backend = claim.reads.overrides.get(step_id, meta["backend"])
    worker = f"{socket.gethostname()}:{os.getpid()}"
    started_at = time.time()
    runs.set_info(
        run_id, step_id, started_at=started_at, worker=worker, delivery=started, node=node, attempt=attempt
    )
    try:
        cached, result = produce(ctx, run_id, step, meta["namespace"], backend)
        paths = publish(ctx, step, meta["namespace"], Path(meta["output_dir"]))
    except ContentPolicyError as exc:
        _reroute(ctx, run_id, step, backend, str(exc))
    except TransientError as exc:
        _retry_later(ctx, run_id, step, exc)
    except StoreUnavailable as exc:  # a full disk, a throttled bucket: retried, a paid render resumed
        _retry_later(ctx, run_id, step, TransientError(str(exc)))
    except Exception as exc:  # every other failure becomes a readable reason on the step
        log.exception("step %s of run %s failed", step_id, run_id)
        _fail(ctx, run_id, step_id, f"{type(exc).__name__}: {exc}", type(exc).__name__)
    finished_at = time.time()
    info = {
        "finished_at": finished_at,
        "cached": cached,
        "actual_cost_usd": str(result.cost_usd),
        "outputs": [str(p) for p in paths],
        "metadata": result.metadata,
    }
    completion = runs.complete(
        run_id, step_id, cached=cached, info=info, cost_uusd=budget.to_micros(result.cost_usd)
    )
    step_ended(
        runs,
        ctx.sender,
        run_id,
        step_id,
        completion.released,
        scheduler=ctx.scheduler,
        reads=completion.reads,
    )
    if not cached:
        _count_render(ctx, step, backend, finished_at - started_at, result.cost_usd)
    if completion.outcome:
        write_manifest(runs, ctx.store, run_id)
    return completion


def _retry_later(ctx: WorkerContext, run_id: str, step: Step, exc: TransientError) -> NoReturn:
    """Bounded retries with exponential backoff and jitter; waiting for a cap slot is not a retry."""
    reason = f"wait:{type(exc).__name__}" if isinstance(exc, CapacityWait) else type(exc).__name__
    counters.record_retry(ctx.runs.r, step.kind.value, reason)
    if isinstance(exc, CapacityWait):
        ctx.runs.bump(run_id, step.id, "cap_waits")
        ctx.runs.set_info(run_id, step.id, last_wait_reason=str(exc))
        countdown = exc.retry_after_s or 1.0
    else:
        retries = ctx.runs.bump(run_id, step.id, "retries")
        ctx.runs.set_info(run_id, step.id, last_retry_reason=str(exc))
        if retries > ctx.settings.fal_max_retries:
            _fail(
                ctx,
                run_id,
                step.id,
                f"gave up after {retries - 1} retries; last error: {exc}",
                "retries_spent",
            )
        backoff = min(MAX_BACKOFF_S, 2.0 ** (retries - 1)) * random.uniform(0.5, 1.5)
        countdown = max(exc.retry_after_s or 0.0, backoff)
    ctx.runs.requeue(run_id, step.id)
    raise RetryLater(countdown, str(exc))


def _reroute(ctx: WorkerContext, run_id: str, step: Step, backend: str, reason: str) -> NoReturn:
    if backend == FALLBACK_BACKEND:
        _fail(ctx, run_id, step.id, f"refused by the fallback too: {reason}", "refused")
    ctx.runs.reroute(run_id, step.id, FALLBACK_BACKEND)
    ctx.runs.set_info(run_id, step.id, fallback={"from": backend, "to": FALLBACK_BACKEND, "reason": reason})
    ctx.runs.requeue(run_id, step.id)
    raise Rerouted(queue_for(step.kind, FALLBACK_BACKEND), reason)


def produce(
    ctx: WorkerContext, run_id: str, step: Step, namespace: str, backend: str
) -> tuple[bool, StepResult]:
    """Reuse the step's outputs when the store has them all (never pay twice); else render them."""
    keys = output_keys(namespace, step)
    if all(ctx.store.has(k) for k in keys):
        return True, StepResult()
    work = ctx.settings.home / "work"
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work, prefix=f"{step.id}-") as tmp:
        folder = Path(tmp)
        inputs = fetch_inputs(ctx, run_id, step, namespace, folder)
        outputs = [folder / f"out{i}{Path(name).suffix}" for i, name in enumerate(step.outputs)]
        engine = ctx.backend(backend_for(step.kind, backend))
        job = StepJob(
            step.id,
            step.kind.value,
            step.engine,
            step.endpoint,
            step.params,
            inputs,
            outputs,
            step.operation,
            report=LiveProgress(ctx.runs, run_id, step.id),
        )
        with scrubbed(secret_values(ctx.settings)):  # a provider's error may quote what it was sent
            result = engine.run(job)
        for key, path in zip(keys, outputs, strict=True):
            if not path.is_file() or path.stat().st_size == 0:
                raise RuntimeError(f"engine {engine.name} did not write {step.outputs[outputs.index(path)]}")
            ctx.store.put_file(key, path)
    return False, result


def fetch_inputs(ctx: WorkerContext, run_id: str, step: Step, namespace: str, folder: Path) -> list[Path]:
    paths = []
    for n, input_id in enumerate(step.inputs):
        producer = ctx.runs.step(run_id, input_id)
        index = input_index(step, producer)
        name = producer.outputs[index]
        dest = folder / f"in{n}{Path(name).suffix}"
        ctx.store.get_file(output_key(namespace, producer.id, index, name), dest)
        paths.append(dest)
    return paths


def publish(ctx: WorkerContext, step: Step, namespace: str, output_dir: Path) -> list[Path]:
    """Copy the step's outputs into the deliverables folder under their asset names (atomically)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for key, name in zip(output_keys(namespace, step), step.outputs, strict=True):
        dest = output_dir / name
        ctx.store.get_file(key, dest)
        paths.append(dest)
    return paths


def _count_render(ctx: WorkerContext, step: Step, backend: str, seconds: float, cost: Decimal) -> None:
    """Into the farm-wide metrics: how long the render took and, when paid, where the money went."""
    counters.record_step(ctx.runs.r, step.kind.value, step.engine, seconds)
    if cost > 0:
        where = backend_for(step.kind, backend)
        counters.record_paid(ctx.runs.r, step.endpoint if where == "fal" and step.endpoint else where, cost)


def _fail(ctx: WorkerContext, run_id: str, step_id: str, reason: str, category: str) -> NoReturn:
    """Mark the step failed with its reason (`category` is the short one the metrics count by)."""
    counters.record_failure(ctx.runs.r, ctx.runs.step(run_id, step_id).kind.value, category)
    if ctx.runs.fail(run_id, step_id, reason):
        write_manifest(ctx.runs, ctx.store, run_id)
    raise StepFailed(reason)


class LiveProgress:
    """A running step's progress into its info for `farm status`: at most every half second, plus the end."""

    EVERY_S = 0.5

    def __init__(self, runs: RunStore, run_id: str, step_id: str) -> None:
        self.runs, self.run_id, self.step_id = runs, run_id, step_id
        self._last = 0.0

    def __call__(self, progress: dict[str, Any]) -> None:
        now = time.monotonic()
        if now - self._last < self.EVERY_S and progress.get("value") != progress.get("max"):
            return
        self._last = now
        self.runs.set_info(self.run_id, self.step_id, progress=progress)
