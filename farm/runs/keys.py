"""The farm's Redis layout: every key the runs, the scheduler, the reconciler and the counters use, and the
step and run statuses stored under them. Nothing else in farm/ or tasks/ spells a farm key, so this is the
one place to read to know what is in Redis (kombu's own, `unacked` and the queue lists, are read in
`tasks.backlog`).

A run's keys all start `farm:run:<run id>`; a run id has no colon, so they cannot collide. Two Lua scripts
must build run keys themselves, because which run they touch is only known inside Redis: `lua/admit.lua`
(`:state`, `:estimate`, `:reserved`, `:outbox` and the metadata hash) and `lua/unhold.lua` (given the
metadata key). They follow the functions below.

The workers' own keys (`farm:pods...`, `farm:fal:...`, `farm:cap:...`) live beside their backends in
`workers/`, which does not import `farm.runs`.
"""

from __future__ import annotations

from enum import StrEnum


class StepStatus(StrEnum):
    """A step's state in its run's `states` hash. A str, so it is stored and compared as the plain word."""

    WAITING = "waiting"
    """Some of its inputs are not done yet."""
    HELD = "held"
    """Its inputs are done but it is gated for review until its shot is approved."""
    QUEUED = "queued"
    """Released: in the scheduler's ready set, admitted, or on its Celery queue."""
    RUNNING = "running"
    DONE = "done"
    CACHED = "cached"
    """Done by reusing an output the store already had."""
    FAILED = "failed"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"
    """A retake's new plan no longer has it; its outputs stay on disk."""
    BLOCKED = "blocked"
    """Never stored: how a waiting step behind a failed one is shown (`farm.runs.blocked`)."""


class RunStatus(StrEnum):
    """The `status` field of a run's metadata hash."""

    RUNNING = "running"
    REVIEW = "review"
    """Nothing queued or running; gated steps wait for a reviewer."""
    CANCELLING = "cancelling"
    """Cancelled while steps were running: it settles as cancelled when the last one ends."""
    CANCELLED = "cancelled"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


# runs ---------------------------------------------------------------------------------------------
RUNS = "farm:runs"
"""Sorted set: run id scored by when it was created (what `farm status` lists, newest first)."""


def run(run_id: str) -> str:
    """Hash: the run's metadata: status, counters (total, done, failed, active), times, storyboard,
    output dir, priority and its money (`spent_uusd`, `budget_uusd`)."""
    return f"farm:run:{run_id}"


def steps(run_id: str) -> str:
    """Hash: step id -> step JSON, every step the run has ever had (the plan, as the workers read it)."""
    return f"{run(run_id)}:steps"


def order(run_id: str) -> str:
    """List: the current plan's step ids in dependency order."""
    return f"{run(run_id)}:order"


def states(run_id: str) -> str:
    """Hash: step id -> its `StepStatus`."""
    return f"{run(run_id)}:state"


def waiting(run_id: str) -> str:
    """Hash: step id -> how many of its inputs are not done yet (it is released at zero)."""
    return f"{run(run_id)}:waiting"


def dependents(run_id: str) -> str:
    """Hash: step id -> JSON list of the steps that consume its outputs."""
    return f"{run(run_id)}:dependents"


def deliveries(run_id: str) -> str:
    """Hash: step id -> how many times a worker started it (more than one: a worker died on it)."""
    return f"{run(run_id)}:deliveries"


def info(run_id: str) -> str:
    """Hash: "<step id>:<field>" -> JSON value: timings, queue, worker, cost, error, progress."""
    return f"{run(run_id)}:info"


def counters(run_id: str) -> str:
    """Hash: "<step id>:<name>" -> integer: retries, cap waits."""
    return f"{run(run_id)}:counters"


def backend(run_id: str) -> str:
    """Hash: step id -> the backend it moved to away from the run's (a content-policy fallback)."""
    return f"{run(run_id)}:backend"


def outbox(run_id: str) -> str:
    """Set: steps released or admitted whose message is not yet known to be sent (what a crash may leave)."""
    return f"{run(run_id)}:outbox"


def gated(run_id: str) -> str:
    """Set: steps held for review until their shot is approved."""
    return f"{run(run_id)}:gated"


def review(run_id: str) -> str:
    """Hash: shot number -> a reviewer's decision (needs_review, approved, retake)."""
    return f"{run(run_id)}:review"


def takes(run_id: str) -> str:
    """Hash: shot number -> its current take; a shot not here is on its first."""
    return f"{run(run_id)}:takes"


def history(run_id: str) -> str:
    """List: step ids a retake replaced, oldest first (kept for the manifest and what they cost)."""
    return f"{run(run_id)}:history"


def source(run_id: str) -> str:
    """Hash: storyboard | registry (and their file names) -> the documents the run was planned from, so a
    retake can plan it again."""
    return f"{run(run_id)}:source"


def remaining(run_id: str) -> str:
    """Hash: step id -> seconds of typical latency from its start to the episode's end (its rank)."""
    return f"{run(run_id)}:remaining"


def estimate(run_id: str) -> str:
    """Hash: step id -> micro-dollars it is expected to cost on its queue (paid steps only); admission
    reads it."""
    return f"{run(run_id)}:estimate"


def reserved(run_id: str) -> str:
    """Hash: step id -> the estimate of a paid step admitted and not yet ended: the budget's in-flight
    money."""
    return f"{run(run_id)}:reserved"


# scheduler, one of each per queue ----------------------------------------------------------------
def ready(queue: str) -> str:
    """Sorted set: "<run id>\\t<step id>" -> rank, the queue's released steps waiting for admission."""
    return f"farm:sched:ready:{queue}"


def slots(queue: str) -> str:
    """Sorted set: "<run id>\\t<step id>" -> when admitted, the steps holding one of the lane's slots."""
    return f"farm:sched:slots:{queue}"


def pool(queue: str) -> str:
    """Hash: worker name -> JSON announcement (slots, cap, policy, expiry) of the workers draining it."""
    return f"farm:sched:pool:{queue}"


def held(queue: str) -> str:
    """Sorted set: "<run id>\\t<step id>" -> rank, steps that reached admission but did not fit their
    run's budget."""
    return f"farm:sched:held:{queue}"


# reconciler ---------------------------------------------------------------------------------------
RECONCILE_LOCK = "farm:reconcile:lock"
"""String with a TTL: which worker's turn it is to reconcile (one at a time across the farm)."""
RECONCILE_MISSING = "farm:reconcile:missing"
"""Hash: step member (or an `outbox`/`orphan` prefixed entry) -> when a pass first found it so; a later
pass acts on it only after the grace."""

# counters and ops ---------------------------------------------------------------------------------
METRICS_STEPS = "farm:metrics:steps"
"""Hash: "kind|engine|bucket" -> rendered steps per duration bucket, and "kind|engine|sum" -> seconds."""
METRICS_RETRIES = "farm:metrics:retries"
"""Hash: "kind|reason" -> retries."""
METRICS_FAILURES = "farm:metrics:failures"
"""Hash: "kind|reason" -> failed steps."""
METRICS_PAID = "farm:metrics:paid"
"""Hash: "endpoint|calls" -> paid calls, "endpoint|usd" -> what they cost."""
AUTOSCALE_DECISIONS = "farm:autoscale"
"""Hash: queue -> JSON of the autoscaler's last decision for its pool (for `/metrics` and ops)."""
