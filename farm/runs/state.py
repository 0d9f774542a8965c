"""Run and step state in Redis. Every transition that releases work is one atomic Lua script.

Keys, all under `farm:run:<run id>`:
  (hash)        run metadata: status, counters (total, done, failed, active), times, storyboard, output
  :steps        hash step id -> step JSON (the plan, as the workers read it)
  :order        list of step ids in plan order
  :state        hash step id -> waiting | queued | running | done | cached | failed | cancelled
  :waiting      hash step id -> number of inputs not yet done
  :dependents   hash step id -> JSON list of the steps that consume its outputs
  :deliveries   hash step id -> how many times a worker started it
  :info         hash "<step id>:<field>" -> timings, worker, cached flag, cost, error
  :counters     hash "<step id>:<name>" -> retries, cap waits
  :backend      hash step id -> backend, when a step left the run's backend (content-policy fallback)
  :outbox       set of steps marked queued whose message is not yet known to be sent
  :gated        set of steps held for review (a review run's video steps) until their shot is approved
  :review       hash shot number -> needs_review | approved | retake (a reviewer's decision)
  :takes        hash shot number -> its current take (absent: take 1); a retake adds one
  :history      list of step ids a retake replaced, oldest first (their outputs stay on disk)
  :source       hash storyboard | registry -> the documents the run was planned from (JSON text)
  :remaining    hash step id -> seconds of typical latency from its start to the episode's end (its rank)
  :estimate     hash step id -> what the step is expected to cost on its queue, micro-dollars (paid only)
  :reserved     hash step id -> the estimate of a paid step admitted and not yet ended (`farm.runs.budget`)
The metadata hash also keeps the run's money: `spent_uusd`, and `budget_uusd` when it has a budget.
`active` counts queued + running steps: when it reaches zero the run has settled, or waits in `review`
while gated steps remain. A gated step whose inputs are all done is `held`, not queued.
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
from farm.runs import scripts as pipelines

RUNS_KEY = "farm:runs"
SETTLED = ("done", "cached")

_FINISH = """
local function finish(run, now, gated)
  local status = redis.call('HGET', run, 'status')
  if status ~= 'cancelling' and redis.call('SCARD', gated) > 0 then
    redis.call('HSET', run, 'status', 'review')
    return 'review'
  end
  local outcome
  if status == 'cancelling' then
    outcome = 'cancelled'
  elseif tonumber(redis.call('HGET', run, 'failed')) == 0
      and tonumber(redis.call('HGET', run, 'done')) == tonumber(redis.call('HGET', run, 'total')) then
    outcome = 'succeeded'
  else
    outcome = 'failed'
  end
  redis.call('HSET', run, 'status', outcome, 'finished_at', now)
  return outcome
end
"""

_BEGIN = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur ~= 'queued' and cur ~= 'running' then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], 'running')
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
"""

_REQUEUE = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], 'queued')
redis.call('HINCRBY', KEYS[2], ARGV[1], -1)
return 1
"""

_COMPLETE = (
    _FINISH
    + """
local state, waiting, deps, run, outbox, gated = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local steps, remaining, reserved = KEYS[7], KEYS[8], KEYS[9]
local step, final, now, cost = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', state, step)
if cur ~= 'running' and cur ~= 'queued' then return {'-', {}, {}, {}} end
redis.call('HSET', state, step, final)
redis.call('HINCRBY', run, 'done', 1)
-- Its estimate leaves the budget's in-flight sum as what it cost joins the spent sum: at the same moment.
redis.call('HDEL', reserved, step)
if cost ~= '0' then redis.call('HINCRBY', run, 'spent_uusd', cost) end
local status = redis.call('HGET', run, 'status')
local released = {}
local list = redis.call('HGET', deps, step)
if list then
  for _, d in ipairs(cjson.decode(list)) do
    local n = redis.call('HINCRBY', waiting, d, -1)
    if n == 0 and status == 'running' and redis.call('HGET', state, d) == 'waiting' then
      if redis.call('SISMEMBER', gated, d) == 1 then
        redis.call('HSET', state, d, 'held')
      else
        redis.call('HSET', state, d, 'queued')
        redis.call('SADD', outbox, d)
        table.insert(released, d)
      end
    end
  end
end
local outcome = ''
if redis.call('HINCRBY', run, 'active', #released - 1) == 0 then outcome = finish(run, now, gated) end
if #released == 0 then return {outcome, {}, {}, {}} end
-- What sending them needs (their plans and ranks), so releasing costs no second round trip.
local plans = redis.call('HMGET', steps, unpack(released))
return {outcome, released, plans, redis.call('HMGET', remaining, unpack(released))}
"""
)

_FAIL = (
    _FINISH
    + """
local state, run, gated, reserved = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local step, now = ARGV[1], ARGV[2]
local cur = redis.call('HGET', state, step)
if cur ~= 'running' and cur ~= 'queued' then return '-' end
redis.call('HSET', state, step, 'failed')
redis.call('HDEL', reserved, step)
redis.call('HINCRBY', run, 'failed', 1)
if redis.call('HINCRBY', run, 'active', -1) == 0 then return finish(run, now, gated) end
return ''
"""
)

_CANCEL = (
    _FINISH
    + """
local state, run, gated = KEYS[1], KEYS[2], KEYS[3]
local now = ARGV[1]
local status = redis.call('HGET', run, 'status')
if status ~= 'running' and status ~= 'review' then return {'-'} end
redis.call('HSET', run, 'status', 'cancelling')
local revoked = {}
local all = redis.call('HGETALL', state)
for i = 1, #all, 2 do
  local step, s = all[i], all[i + 1]
  if s == 'queued' then
    redis.call('HSET', state, step, 'cancelled')
    table.insert(revoked, step)
  elseif s == 'waiting' or s == 'held' then
    redis.call('HSET', state, step, 'cancelled')
  end
end
local outcome = ''
if redis.call('HINCRBY', run, 'active', 0 - #revoked) == 0 then outcome = finish(run, now, gated) end
return {outcome, unpack(revoked)}
"""
)

# ARGV: now, then the step ids to un-gate.
_APPROVE = (
    _FINISH
    + """
local state, run, gated, outbox = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local status = redis.call('HGET', run, 'status')
if status ~= 'running' and status ~= 'review' then return {'-'} end
local released = {}
for i = 2, #ARGV do
  local step = ARGV[i]
  if redis.call('SREM', gated, step) == 1 and redis.call('HGET', state, step) == 'held' then
    redis.call('HSET', state, step, 'queued')
    redis.call('SADD', outbox, step)
    table.insert(released, step)
  end
end
if #released > 0 then redis.call('HSET', run, 'status', 'running') end
local outcome = ''
if redis.call('HINCRBY', run, 'active', #released) == 0 then outcome = finish(run, ARGV[1], gated) end
return {outcome, unpack(released)}
"""
)


# ARGV: now, then one JSON document: order (the new plan's step ids), steps (id -> step JSON, for ids the run
# has not seen), inputs (id -> input ids, for every step that may (re)start), gate (ids to hold for review),
# shots (shots whose review decision a new take clears), takes (shot -> take), storyboard (JSON text), cut.
_EXTEND = (
    _FINISH
    + """
local run, steps, order, state, waiting, deps = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local gated, outbox, review, takes, history, source = KEYS[7], KEYS[8], KEYS[9], KEYS[10], KEYS[11], KEYS[12]
local now = ARGV[1]
local status = redis.call('HGET', run, 'status')
if status == 'cancelling' or status == 'cancelled' then return {'-'} end
local p = cjson.decode(ARGV[2])
local current, gate = {}, {}
for _, id in ipairs(p.order) do current[id] = true end
for _, id in ipairs(p.gate) do gate[id] = true end
local delta = 0
for _, id in ipairs(redis.call('LRANGE', order, 0, -1)) do
  if not current[id] then
    local s = redis.call('HGET', state, id)
    if s == 'queued' or s == 'running' then delta = delta - 1 end
    if s ~= 'done' and s ~= 'cached' then redis.call('HSET', state, id, 'superseded') end
    redis.call('SREM', gated, id)
    redis.call('SREM', outbox, id)
    redis.call('RPUSH', history, id)
  end
end
for id, doc in pairs(p.steps) do redis.call('HSET', steps, id, doc) end
local released = {}
for _, id in ipairs(p.order) do
  local s = redis.call('HGET', state, id)
  if not s or s == 'failed' or s == 'cancelled' or s == 'superseded' then
    local n = 0
    for _, src in ipairs(p.inputs[id]) do
      local ss = redis.call('HGET', state, src)
      if ss ~= 'done' and ss ~= 'cached' then n = n + 1 end
      local list = cjson.decode(redis.call('HGET', deps, src) or '[]')
      local known = false
      for _, d in ipairs(list) do if d == id then known = true end end
      if not known then
        table.insert(list, id)
        redis.call('HSET', deps, src, cjson.encode(list))
      end
    end
    redis.call('HSET', waiting, id, n)
    if gate[id] then redis.call('SADD', gated, id) end
    if n > 0 then
      redis.call('HSET', state, id, 'waiting')
    elseif gate[id] then
      redis.call('HSET', state, id, 'held')
    else
      redis.call('HSET', state, id, 'queued')
      redis.call('SADD', outbox, id)
      table.insert(released, id)
      delta = delta + 1
    end
  end
end
local done, failed = 0, 0
redis.call('DEL', order)
for _, id in ipairs(p.order) do
  redis.call('RPUSH', order, id)
  local s = redis.call('HGET', state, id)
  if s == 'done' or s == 'cached' then done = done + 1 elseif s == 'failed' then failed = failed + 1 end
end
for _, shot in ipairs(p.shots) do redis.call('HDEL', review, tostring(shot)) end
for shot, take in pairs(p.takes) do redis.call('HSET', takes, shot, take) end
redis.call('HSET', source, 'storyboard', p.storyboard)
redis.call('HSET', run, 'total', #p.order, 'done', done, 'failed', failed, 'cut', p.cut, 'status', 'running')
redis.call('HDEL', run, 'finished_at', 'manifest')
local outcome = ''
if redis.call('HINCRBY', run, 'active', delta) == 0 then outcome = finish(run, now, gated) end
return {outcome, unpack(released)}
"""
)


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
    """Reads and atomic transitions of runs; the only module that knows the key layout."""

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._begin = client.register_script(_BEGIN)
        self._complete = client.register_script(_COMPLETE)
        self._fail = client.register_script(_FAIL)
        self._cancel = client.register_script(_CANCEL)
        self._requeue = client.register_script(_REQUEUE)
        self._approve = client.register_script(_APPROVE)
        self._extend = client.register_script(_EXTEND)

    # keys ----------------------------------------------------------------------------------------
    @staticmethod
    def key(run_id: str, part: str = "") -> str:
        return f"farm:run:{run_id}" + (f":{part}" if part else "")

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
            self.key(run_id),
            mapping={
                **header,
                "status": "running",
                "created_at": now,
                "total": len(plan.steps),
                "done": 0,
                "failed": 0,
                "active": len(roots),
            },
        )
        pipe.hset(self.key(run_id, "steps"), mapping={s.id: s.model_dump_json() for s in plan.steps})
        pipe.rpush(self.key(run_id, "order"), *[s.id for s in plan.steps])
        pipe.hset(
            self.key(run_id, "state"),
            mapping={s.id: "queued" if not s.inputs else "waiting" for s in plan.steps},
        )
        pipe.hset(self.key(run_id, "waiting"), mapping={s.id: len(s.inputs) for s in plan.steps})
        pipe.hset(
            self.key(run_id, "remaining"), mapping={k: str(v) for k, v in remaining_path_s(plan).items()}
        )
        if dependents:
            pipe.hset(
                self.key(run_id, "dependents"), mapping={k: json.dumps(v) for k, v in dependents.items()}
            )
        pipe.zadd(RUNS_KEY, {run_id: float(now)})
        if roots:
            pipe.sadd(self.key(run_id, "outbox"), *roots)
        if gated:
            pipe.sadd(self.key(run_id, "gated"), *gated)
        if source:
            documents: dict[Any, Any] = dict(source)
            pipe.hset(self.key(run_id, "source"), mapping=documents)
        pipe.execute()
        return roots

    # transitions ---------------------------------------------------------------------------------
    def begin(self, run_id: str, step_id: str) -> int:
        """Mark the step running; return how many times it has been started, or -1 to skip it."""
        keys = [self.key(run_id, "state"), self.key(run_id, "deliveries")]
        return int(self._begin(keys=keys, args=[step_id]))

    def claim(self, run_id: str, step_id: str) -> Claim:
        """`begin`, and read the step's plan and the run's metadata and overrides: one round trip, on
        every dependency hop."""
        keys = [self.key(run_id, "state"), self.key(run_id, "deliveries")]

        def build(pipe: Any) -> None:
            pipelines.call(pipe, self._begin, keys, [step_id])
            self._queue_run_reads(pipe, run_id)
            pipe.hmget(self.key(run_id, "steps"), [step_id])

        started, meta, overrides, raw = pipelines.run(self.r, build, [self._begin])
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
        parts = ("state", "waiting", "dependents", "", "outbox", "gated", "steps", "remaining", "reserved")
        keys = [self.key(run_id, p) for p in parts]
        args = [step_id, "cached" if cached else "done", str(time.time()), str(cost_uusd)]

        def build(pipe: Any) -> None:  # twice only if Redis forgot the script: writes the same info again
            if info:
                pipe.hset(self.key(run_id, "info"), mapping=_info_fields(step_id, info))
            pipelines.call(pipe, self._complete, keys, args)
            self._queue_run_reads(pipe, run_id)

        *_, reply, meta, overrides = pipelines.run(self.r, build, [self._complete])
        head = as_text(reply[0])
        if head == "-":
            return Completion([], "", duplicate=True)
        released = [as_text(x) for x in reply[1]]
        steps = {s: Step.model_validate_json(raw) for s, raw in zip(released, reply[2], strict=True)}
        remaining = {s: float(v) for s, v in zip(released, reply[3], strict=True) if v is not None}
        reads = ReleaseReads(as_texts(meta), as_texts(overrides), remaining, steps)
        return Completion(released, head, reads=reads)

    def _queue_run_reads(self, pipe: Any, run_id: str) -> None:
        pipe.hgetall(self.key(run_id))
        pipe.hgetall(self.key(run_id, "backend"))

    def fail(self, run_id: str, step_id: str, reason: str) -> str:
        """Mark the step failed with a reason; return the run outcome if this settled the run."""
        self.set_info(run_id, step_id, error=reason)
        keys = [self.key(run_id, p) for p in ("state", "", "gated", "reserved")]
        outcome = as_text(self._fail(keys=keys, args=[step_id, str(time.time())]))
        return "" if outcome == "-" else outcome

    def cancel(self, run_id: str) -> tuple[list[str], str]:
        """Stop releasing; return the queued steps to revoke and the outcome if already settled."""
        keys = [self.key(run_id, "state"), self.key(run_id), self.key(run_id, "gated")]
        reply = self._cancel(keys=keys, args=[str(time.time())])
        if as_text(reply[0]) == "-":
            return [], ""
        return [as_text(x) for x in reply[1:]], as_text(reply[0])

    def approve(self, run_id: str, step_ids: Collection[str]) -> Completion:
        """Un-gate steps: those already held are queued now (send them), the others run when ready."""
        keys = [
            self.key(run_id, "state"),
            self.key(run_id),
            self.key(run_id, "gated"),
            self.key(run_id, "outbox"),
        ]
        reply = self._approve(keys=keys, args=[str(time.time()), *step_ids])
        head = as_text(reply[0])
        if head == "-":
            return Completion([], "", duplicate=True)
        return Completion([as_text(x) for x in reply[1:]], head)

    def extend(self, run_id: str, change: Extension) -> Completion:
        """Switch the run to a new plan in one step: steps it no longer has are superseded (a queued one is
        skipped, a running one finishes unheeded), new and failed ones start when their inputs are done,
        finished ones are reused. Returns the steps to send; `duplicate` when the run was cancelled."""
        parts = ("", "steps", "order", "state", "waiting", "dependents", "gated", "outbox", "review")
        keys = [self.key(run_id, p) for p in (*parts, "takes", "history", "source")]
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
            self.r.hset(
                self.key(run_id, "remaining"), mapping={k: str(v) for k, v in change.remaining.items()}
            )
        reply = self._extend(keys=keys, args=[str(time.time()), json.dumps(doc)])
        head = as_text(reply[0])
        if head == "-":
            return Completion([], "", duplicate=True)
        return Completion([as_text(x) for x in reply[1:]], head)

    def source(self, run_id: str) -> dict[str, str]:
        """The storyboard and registry documents (JSON text) the run's current plan was built from."""
        return as_texts(self.r.hgetall(self.key(run_id, "source")))

    def gated(self, run_id: str) -> set[str]:
        return {as_text(s) for s in self.r.smembers(self.key(run_id, "gated"))}

    def mark_review(self, run_id: str, shot: int, decision: str) -> None:
        """A reviewer's decision on a shot: needs_review, approved or retake."""
        self.r.hset(self.key(run_id, "review"), str(shot), decision)

    def reviews(self, run_id: str) -> dict[int, str]:
        return {int(as_text(k)): as_text(v) for k, v in self.r.hgetall(self.key(run_id, "review")).items()}

    def takes(self, run_id: str) -> dict[int, int]:
        """Each retaken shot's current take; a shot that is not here is on its first take."""
        return {int(as_text(k)): int(v) for k, v in self.r.hgetall(self.key(run_id, "takes")).items()}

    def history(self, run_id: str) -> list[Step]:
        """Steps of earlier takes that a retake replaced, oldest first (once each, and none that a later
        retake brought back)."""
        current = {as_text(i) for i in self.r.lrange(self.key(run_id, "order"), 0, -1)}
        replaced = [as_text(i) for i in self.r.lrange(self.key(run_id, "history"), 0, -1)]
        ids = [i for i in dict.fromkeys(replaced) if i not in current]
        raw = self.r.hmget(self.key(run_id, "steps"), ids) if ids else []
        return [Step.model_validate_json(blob) for blob in raw if blob is not None]

    def release_reads(self, run_id: str, step_ids: list[str], *, with_steps: bool = True) -> ReleaseReads:
        """The run's metadata and backend overrides, and the steps' remaining paths (and plans)."""
        pipe = self.r.pipeline(transaction=False)
        self._queue_run_reads(pipe, run_id)
        if step_ids:
            pipe.hmget(self.key(run_id, "remaining"), step_ids)
            if with_steps:
                pipe.hmget(self.key(run_id, "steps"), step_ids)
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
            (pipe or self.r).hset(self.key(run_id, "info"), mapping=mapping)

    def sent_many(self, steps: list[tuple[str, str]]) -> None:
        """`sent` for several (run id, step id) pairs in one round trip."""
        if not steps:
            return
        pipe = self.r.pipeline(transaction=False)
        for run_id, step_id in steps:
            pipe.srem(self.key(run_id, "outbox"), step_id)
        pipe.execute()

    def remaining(self, run_id: str, step_ids: list[str]) -> dict[str, float]:
        """Each step's remaining path in seconds (0 for a step the run never ranked)."""
        raw = self.r.hmget(self.key(run_id, "remaining"), step_ids) if step_ids else []
        return {s: float(v) if v is not None else 0.0 for s, v in zip(step_ids, raw, strict=True)}

    def sent(self, run_id: str, step_id: str) -> None:
        """The step's message is on its queue: it leaves the outbox."""
        self.r.srem(self.key(run_id, "outbox"), step_id)

    def outbox(self, run_id: str) -> list[str]:
        """Steps released but whose message may never have been sent (the releasing worker died)."""
        return sorted(as_text(s) for s in self.r.smembers(self.key(run_id, "outbox")))

    def requeue(self, run_id: str, step_id: str) -> bool:
        """Back to queued for a deliberate retry; the start it used does not count as a worker death."""
        keys = [self.key(run_id, "state"), self.key(run_id, "deliveries")]
        return bool(self._requeue(keys=keys, args=[step_id]))

    def reroute(self, run_id: str, step_id: str, backend: str) -> None:
        """From now on this step runs on `backend` (e.g. the GPU pool after a content-policy refusal)."""
        self.r.hset(self.key(run_id, "backend"), step_id, backend)

    def backend_overrides(self, run_id: str) -> dict[str, str]:
        return as_texts(self.r.hgetall(self.key(run_id, "backend")))

    def bump(self, run_id: str, step_id: str, counter: str) -> int:
        """Increment a per-step counter (retries, cap waits) and return it."""
        return int(self.r.hincrby(self.key(run_id, "counters"), f"{step_id}:{counter}", 1))

    def counters(self, run_id: str) -> dict[str, dict[str, int]]:
        grouped: dict[str, dict[str, int]] = defaultdict(dict)
        for field, value in self.r.hgetall(self.key(run_id, "counters")).items():
            step_id, _, name = as_text(field).partition(":")
            grouped[step_id][name] = int(value)
        return dict(grouped)

    # info ----------------------------------------------------------------------------------------
    def set_info(self, run_id: str, step_id: str, **fields: Any) -> None:
        self.r.hset(self.key(run_id, "info"), mapping=_info_fields(step_id, fields))

    def info(self, run_id: str) -> dict[str, dict[str, Any]]:
        grouped: dict[str, dict[str, Any]] = defaultdict(dict)
        for field, value in self.r.hgetall(self.key(run_id, "info")).items():
            step_id, _, name = as_text(field).partition(":")
            grouped[step_id][name] = json.loads(value)
        return dict(grouped)

    # reads ---------------------------------------------------------------------------------------
    def exists(self, run_id: str) -> bool:
        return bool(self.r.exists(self.key(run_id)))

    def meta(self, run_id: str) -> dict[str, str]:
        return as_texts(self.r.hgetall(self.key(run_id)))

    def step(self, run_id: str, step_id: str) -> Step:
        raw = self.r.hget(self.key(run_id, "steps"), step_id)
        if raw is None:
            raise KeyError(f"run {run_id} has no step {step_id}")
        return Step.model_validate_json(raw)

    def steps(self, run_id: str) -> dict[str, Step]:
        """Every step of the run, in plan (dependency) order."""
        raw = {as_text(k): v for k, v in self.r.hgetall(self.key(run_id, "steps")).items()}
        order = [as_text(i) for i in self.r.lrange(self.key(run_id, "order"), 0, -1)]
        return {i: Step.model_validate_json(raw[i]) for i in order}

    def step_ids(self, run_id: str) -> set[str]:
        """Every step the run has ever had: its current plan and the takes a retake replaced."""
        return {as_text(i) for i in self.r.hkeys(self.key(run_id, "steps"))}

    def states(self, run_id: str) -> dict[str, str]:
        return as_texts(self.r.hgetall(self.key(run_id, "state")))

    def deliveries(self, run_id: str) -> dict[str, int]:
        return {as_text(k): int(v) for k, v in self.r.hgetall(self.key(run_id, "deliveries")).items()}

    def runs(self, limit: int = 50) -> list[str]:
        return [as_text(r) for r in self.r.zrevrange(RUNS_KEY, 0, limit - 1)]

    def running(self, limit: int = 200) -> list[tuple[str, dict[str, str]]]:
        """The runs still running among the newest `limit`, with their metadata (what recovery walks)."""
        found = [(run_id, self.meta(run_id)) for run_id in self.runs(limit)]
        return [(run_id, meta) for run_id, meta in found if meta.get("status") == "running"]


def _info_fields(step_id: str, fields: Mapping[str, Any]) -> dict[Any, Any]:
    return {f"{step_id}:{k}": json.dumps(v) for k, v in fields.items()}
