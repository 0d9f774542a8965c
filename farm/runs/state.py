"""Run and step state in Redis. Every transition that releases work is one atomic Lua script
(`farm/runs/lua/`); the keys and what lives in each are listed in `farm.runs.keys`.

A run's metadata hash keeps its status, counters (total, done, failed, active), times, storyboard and
money: `spent_uusd`, and `budget_uusd` when it has a budget. `active` counts queued + running steps: when
it reaches zero the run has settled, or waits in `review` while gated steps remain. A gated step whose
inputs are all done is `held`, not queued.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import defaultdict
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from farm.config.redis_text import as_text, as_texts
from farm.planning.estimate import remaining_path_s
from farm.planning.plan import Plan, Step
from farm.runs import keys, scripts
from farm.runs.keys import RunStatus, StepStatus

SETTLED = (StepStatus.DONE, StepStatus.CACHED)
_COMPLETE_KEYS = (
    keys.states,
    keys.waiting,
    keys.dependents,
    keys.run,
    keys.outbox,
    keys.gated,
    keys.steps,
    keys.remaining,
    keys.reserved,
)
"""KEYS[1..9] of lua/complete.lua."""
_EXTEND_KEYS = (
    keys.run,
    keys.steps,
    keys.order,
    keys.states,
    keys.waiting,
    keys.dependents,
    keys.gated,
    keys.outbox,
    keys.review,
    keys.takes,
    keys.history,
    keys.source,
)
"""KEYS[1..12] of lua/extend.lua."""


@dataclass(frozen=True)
class Extension:
    """A retake's new plan for a run: what it runs from now on and what it writes down."""

    order: list[str]
    """Every step id of the new plan, in dependency order; steps of the old plan not in it are superseded."""
    new_steps: list[Step]
    """Steps the run has never had (kept alongside the ones they replace)."""
    inputs: dict[str, list[str]]
    """Every step of `order` -> its input ids (a failed step restarts, whichever it is)."""
    gate: list[str]
    shots: list[int]
    takes: dict[int, int]
    storyboard: str
    cut: int
    remaining: dict[str, float]
    """Every step of `order` -> its remaining path in the new plan (the scheduler's rank)."""


@dataclass(frozen=True)
class Completion:
    released: list[str]
    """Steps whose inputs are now all there: send them."""
    outcome: str
    """'' while the run goes on; succeeded | failed | cancelled when this call settled it."""
    duplicate: bool = False
    """The step was already settled (a redelivered task): nothing changed."""
    reads: ReleaseReads | None = None
    """From `RunStore.complete`: what sending the released steps needs, read in the same round trip."""


@dataclass(frozen=True)
class ReleaseReads:
    """What releasing steps needs from a run, read in one round trip."""

    meta: dict[str, str]
    overrides: dict[str, str]
    remaining: dict[str, float]
    steps: dict[str, Step]


@dataclass(frozen=True)
class Claim:
    """A worker's start of a step: how many times it has been started (-1: skip it) and the run as read
    in the same round trip."""

    started: int
    reads: ReleaseReads


def new_run_id(plan: Plan) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    return f"{plan.project.lower()}-ep{plan.episode:03d}-{stamp}-{secrets.token_hex(2)}"


class RunStore:
    """Reads and atomic transitions of runs (their keys: `farm.runs.keys`)."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._begin = scripts.load(client, "begin")
        self._complete = scripts.load(client, "finish", "complete")
        self._fail = scripts.load(client, "finish", "fail")
        self._cancel = scripts.load(client, "finish", "cancel")
        self._requeue = scripts.load(client, "requeue")
        self._approve = scripts.load(client, "finish", "approve")
        self._extend = scripts.load(client, "finish", "extend")

    # creation ------------------------------------------------------------------------------------
    def create(
        self,
        run_id: str,
        plan: Plan,
        meta: dict[str, str],
        gated: Collection[str] = (),
        source: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Store the plan and its state in one transaction; return the root steps, already queued.
        `gated` steps wait for review: they are held, not queued, once their inputs are done. `source` keeps
        the documents the plan came from (for retakes)."""
        dependents = {producer: [s.id for s in steps] for producer, steps in plan.consumers().items()}
        roots = [s.id for s in plan.steps if not s.inputs]
        now = str(time.time())
        header: dict[Any, Any] = dict(meta)
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(
            keys.run(run_id),
            mapping={
                **header,
                "status": RunStatus.RUNNING,
                "created_at": now,
                "total": len(plan.steps),
                "done": 0,
                "failed": 0,
                "active": len(roots),
            },
        )
        pipe.hset(keys.steps(run_id), mapping={s.id: s.model_dump_json() for s in plan.steps})
        pipe.rpush(keys.order(run_id), *[s.id for s in plan.steps])
        pipe.hset(
            keys.states(run_id),
            mapping={s.id: StepStatus.QUEUED if not s.inputs else StepStatus.WAITING for s in plan.steps},
        )
        pipe.hset(keys.waiting(run_id), mapping={s.id: len(s.inputs) for s in plan.steps})
        pipe.hset(keys.remaining(run_id), mapping={k: str(v) for k, v in remaining_path_s(plan).items()})
        if dependents:
            pipe.hset(keys.dependents(run_id), mapping={k: json.dumps(v) for k, v in dependents.items()})
        pipe.zadd(keys.RUNS, {run_id: float(now)})
        if roots:
            pipe.sadd(keys.outbox(run_id), *roots)
        if gated:
            pipe.sadd(keys.gated(run_id), *gated)
        if source:
            documents: dict[Any, Any] = dict(source)
            pipe.hset(keys.source(run_id), mapping=documents)
        pipe.execute()
        return roots

    # transitions ---------------------------------------------------------------------------------
    def begin(self, run_id: str, step_id: str) -> int:
        """Mark the step running; return how many times it has been started, or -1 to skip it."""
        return int(self._begin(keys=[keys.states(run_id), keys.deliveries(run_id)], args=[step_id]))

    def claim(self, run_id: str, step_id: str) -> Claim:
        """`begin`, and read the step's plan and the run's metadata and overrides: one round trip, on
        every dependency hop."""
        touched = [keys.states(run_id), keys.deliveries(run_id)]

        def build(pipe: Any) -> None:
            scripts.call(pipe, self._begin, touched, [step_id])
            self._queue_run_reads(pipe, run_id)
            pipe.hmget(keys.steps(run_id), [step_id])

        started, meta, overrides, raw = scripts.run(self.r, build, [self._begin])
        steps = {step_id: Step.model_validate_json(raw[0])} if raw[0] is not None else {}
        return Claim(int(started), ReleaseReads(as_texts(meta), as_texts(overrides), {}, steps))

    def complete(
        self,
        run_id: str,
        step_id: str,
        *,
        cached: bool = False,
        info: Mapping[str, Any] | None = None,
        cost_uusd: int = 0,
    ) -> Completion:
        """Mark the step done (or cached) and queue what it unblocks; `cost_uusd` (what the provider
        charged, micro-dollars) joins the run's spent money. In the same round trip: write `info` fields
        first, and read what sending the released steps needs (`Completion.reads`)."""
        touched = [key(run_id) for key in _COMPLETE_KEYS]
        final = StepStatus.CACHED if cached else StepStatus.DONE
        args = [step_id, final, str(time.time()), str(cost_uusd)]

        def build(pipe: Any) -> None:  # twice only if Redis forgot the script: writes the same info again
            if info:
                pipe.hset(keys.info(run_id), mapping=_info_fields(step_id, info))
            scripts.call(pipe, self._complete, touched, args)
            self._queue_run_reads(pipe, run_id)

        *_, reply, meta, overrides = scripts.run(self.r, build, [self._complete])
        head = as_text(reply[0])
        if head == "-":
            return Completion([], "", duplicate=True)
        released = [as_text(x) for x in reply[1]]
        steps = {s: Step.model_validate_json(raw) for s, raw in zip(released, reply[2], strict=True)}
        remaining = {s: float(v) for s, v in zip(released, reply[3], strict=True) if v is not None}
        reads = ReleaseReads(as_texts(meta), as_texts(overrides), remaining, steps)
        return Completion(released, head, reads=reads)

    def _queue_run_reads(self, pipe: Any, run_id: str) -> None:
        pipe.hgetall(keys.run(run_id))
        pipe.hgetall(keys.backend(run_id))

    def fail(self, run_id: str, step_id: str, reason: str) -> str:
        """Mark the step failed with a reason; return the run outcome if this settled the run."""
        self.set_info(run_id, step_id, error=reason)
        touched = [keys.states(run_id), keys.run(run_id), keys.gated(run_id), keys.reserved(run_id)]
        outcome = as_text(self._fail(keys=touched, args=[step_id, str(time.time())]))
        return "" if outcome == "-" else outcome

    def cancel(self, run_id: str) -> tuple[list[str], str]:
        """Stop releasing; return the queued steps to revoke and the outcome if already settled."""
        touched = [keys.states(run_id), keys.run(run_id), keys.gated(run_id)]
        reply = self._cancel(keys=touched, args=[str(time.time())])
        if as_text(reply[0]) == "-":
            return [], ""
        return [as_text(x) for x in reply[1:]], as_text(reply[0])

    def approve(self, run_id: str, step_ids: Collection[str]) -> Completion:
        """Un-gate steps: those already held are queued now (send them), the others run when ready."""
        touched = [keys.states(run_id), keys.run(run_id), keys.gated(run_id), keys.outbox(run_id)]
        reply = self._approve(keys=touched, args=[str(time.time()), *step_ids])
        head = as_text(reply[0])
        if head == "-":
            return Completion([], "", duplicate=True)
        return Completion([as_text(x) for x in reply[1:]], head)

    def extend(self, run_id: str, change: Extension) -> Completion:
        """Switch the run to a new plan in one step: steps it no longer has are superseded (a queued one is
        skipped, a running one finishes unheeded), new and failed ones start when their inputs are done,
        finished ones are reused. Returns the steps to send; `duplicate` when the run was cancelled."""
        touched = [key(run_id) for key in _EXTEND_KEYS]
        doc = {
            "order": change.order,
            "steps": {s.id: s.model_dump_json() for s in change.new_steps},
            "inputs": change.inputs,
            "gate": change.gate,
            "shots": change.shots,
            "takes": {str(k): v for k, v in change.takes.items()},
            "storyboard": change.storyboard,
            "cut": change.cut,
        }
        if change.remaining:  # before the swap: the steps it releases are ranked by the new plan
            self.r.hset(keys.remaining(run_id), mapping={k: str(v) for k, v in change.remaining.items()})
        reply = self._extend(keys=touched, args=[str(time.time()), json.dumps(doc)])
        head = as_text(reply[0])
        if head == "-":
            return Completion([], "", duplicate=True)
        return Completion([as_text(x) for x in reply[1:]], head)

    def source(self, run_id: str) -> dict[str, str]:
        """The storyboard and registry documents (JSON text) the run's current plan was built from."""
        return as_texts(self.r.hgetall(keys.source(run_id)))

    def gated(self, run_id: str) -> set[str]:
        return {as_text(s) for s in self.r.smembers(keys.gated(run_id))}

    def mark_review(self, run_id: str, shot: int, decision: str) -> None:
        """A reviewer's decision on a shot: needs_review, approved or retake."""
        self.r.hset(keys.review(run_id), str(shot), decision)

    def reviews(self, run_id: str) -> dict[int, str]:
        return {int(as_text(k)): as_text(v) for k, v in self.r.hgetall(keys.review(run_id)).items()}

    def takes(self, run_id: str) -> dict[int, int]:
        """Each retaken shot's current take; a shot that is not here is on its first take."""
        return {int(as_text(k)): int(v) for k, v in self.r.hgetall(keys.takes(run_id)).items()}

    def history(self, run_id: str) -> list[Step]:
        """Steps of earlier takes that a retake replaced, oldest first (once each, and none that a later
        retake brought back)."""
        current = {as_text(i) for i in self.r.lrange(keys.order(run_id), 0, -1)}
        replaced = [as_text(i) for i in self.r.lrange(keys.history(run_id), 0, -1)]
        ids = [i for i in dict.fromkeys(replaced) if i not in current]
        raw = self.r.hmget(keys.steps(run_id), ids) if ids else []
        return [Step.model_validate_json(blob) for blob in raw if blob is not None]

    def release_reads(self, run_id: str, step_ids: list[str], *, with_steps: bool = True) -> ReleaseReads:
        """The run's metadata and backend overrides, and the steps' remaining paths (and plans)."""
        pipe = self.r.pipeline(transaction=False)
        self._queue_run_reads(pipe, run_id)
        if step_ids:
            pipe.hmget(keys.remaining(run_id), step_ids)
            if with_steps:
                pipe.hmget(keys.steps(run_id), step_ids)
        meta, overrides, *rest = pipe.execute()
        remaining = (
            {s: float(v) for s, v in zip(step_ids, rest[0], strict=True) if v is not None} if rest else {}
        )
        steps = {}
        if len(rest) > 1:
            steps = {s: Step.model_validate_json(raw) for s, raw in zip(step_ids, rest[1], strict=True)}
        return ReleaseReads(as_texts(meta), as_texts(overrides), remaining, steps)

    def set_infos(
        self, run_id: str, fields_by_step: Mapping[str, Mapping[str, Any]], *, pipe: Any = None
    ) -> None:
        """`set_info` for several steps in one write (queued on `pipe` when given)."""
        mapping: dict[Any, Any] = {
            k: v
            for step_id, fields in fields_by_step.items()
            for k, v in _info_fields(step_id, fields).items()
        }
        if mapping:
            (pipe or self.r).hset(keys.info(run_id), mapping=mapping)

    def sent_many(self, steps: list[tuple[str, str]]) -> None:
        """`sent` for several (run id, step id) pairs in one round trip."""
        if not steps:
            return
        pipe = self.r.pipeline(transaction=False)
        for run_id, step_id in steps:
            pipe.srem(keys.outbox(run_id), step_id)
        pipe.execute()

    def remaining(self, run_id: str, step_ids: list[str]) -> dict[str, float]:
        """Each step's remaining path in seconds (0 for a step the run never ranked)."""
        raw = self.r.hmget(keys.remaining(run_id), step_ids) if step_ids else []
        return {s: float(v) if v is not None else 0.0 for s, v in zip(step_ids, raw, strict=True)}

    def sent(self, run_id: str, step_id: str) -> None:
        """The step's message is on its queue: it leaves the outbox."""
        self.r.srem(keys.outbox(run_id), step_id)

    def outbox(self, run_id: str) -> list[str]:
        """Steps released but whose message may never have been sent (the releasing worker died)."""
        return sorted(as_text(s) for s in self.r.smembers(keys.outbox(run_id)))

    def requeue(self, run_id: str, step_id: str) -> bool:
        """Back to queued for a deliberate retry; the start it used does not count as a worker death."""
        return bool(self._requeue(keys=[keys.states(run_id), keys.deliveries(run_id)], args=[step_id]))

    def reroute(self, run_id: str, step_id: str, backend: str) -> None:
        """From now on this step runs on `backend` (e.g. the GPU pool after a content-policy refusal)."""
        self.r.hset(keys.backend(run_id), step_id, backend)

    def backend_overrides(self, run_id: str) -> dict[str, str]:
        return as_texts(self.r.hgetall(keys.backend(run_id)))

    def bump(self, run_id: str, step_id: str, counter: str) -> int:
        """Increment a per-step counter (retries, cap waits) and return it."""
        return int(self.r.hincrby(keys.counters(run_id), f"{step_id}:{counter}", 1))

    def counters(self, run_id: str) -> dict[str, dict[str, int]]:
        grouped: dict[str, dict[str, int]] = defaultdict(dict)
        for field, value in self.r.hgetall(keys.counters(run_id)).items():
            step_id, _, name = as_text(field).partition(":")
            grouped[step_id][name] = int(value)
        return dict(grouped)

    # info ----------------------------------------------------------------------------------------
    def set_info(self, run_id: str, step_id: str, **fields: Any) -> None:
        self.r.hset(keys.info(run_id), mapping=_info_fields(step_id, fields))

    def info(self, run_id: str) -> dict[str, dict[str, Any]]:
        grouped: dict[str, dict[str, Any]] = defaultdict(dict)
        for field, value in self.r.hgetall(keys.info(run_id)).items():
            step_id, _, name = as_text(field).partition(":")
            grouped[step_id][name] = json.loads(value)
        return dict(grouped)

    # reads ---------------------------------------------------------------------------------------
    def exists(self, run_id: str) -> bool:
        return bool(self.r.exists(keys.run(run_id)))

    def meta(self, run_id: str) -> dict[str, str]:
        return as_texts(self.r.hgetall(keys.run(run_id)))

    def step(self, run_id: str, step_id: str) -> Step:
        raw = self.r.hget(keys.steps(run_id), step_id)
        if raw is None:
            raise KeyError(f"run {run_id} has no step {step_id}")
        return Step.model_validate_json(raw)

    def steps(self, run_id: str) -> dict[str, Step]:
        """Every step of the run, in plan (dependency) order."""
        raw = {as_text(k): v for k, v in self.r.hgetall(keys.steps(run_id)).items()}
        order = [as_text(i) for i in self.r.lrange(keys.order(run_id), 0, -1)]
        return {i: Step.model_validate_json(raw[i]) for i in order}

    def step_ids(self, run_id: str) -> set[str]:
        """Every step the run has ever had: its current plan and the takes a retake replaced."""
        return {as_text(i) for i in self.r.hkeys(keys.steps(run_id))}

    def states(self, run_id: str) -> dict[str, str]:
        return as_texts(self.r.hgetall(keys.states(run_id)))

    def deliveries(self, run_id: str) -> dict[str, int]:
        return {as_text(k): int(v) for k, v in self.r.hgetall(keys.deliveries(run_id)).items()}

    def runs(self, limit: int = 50) -> list[str]:
        return [as_text(r) for r in self.r.zrevrange(keys.RUNS, 0, limit - 1)]

    def running(self, limit: int = 200) -> list[tuple[str, dict[str, str]]]:
        """The runs still running among the newest `limit`, with their metadata (what recovery walks)."""
        found = [(run_id, self.meta(run_id)) for run_id in self.runs(limit)]
        return [(run_id, meta) for run_id, meta in found if meta.get("status") == RunStatus.RUNNING]


def _info_fields(step_id: str, fields: Mapping[str, Any]) -> dict[Any, Any]:
    return {f"{step_id}:{k}": json.dumps(v) for k, v in fields.items()}
