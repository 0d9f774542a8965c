"""Admission of ready steps to their queues: longest remaining path first, then run priority, within capacity.

A step whose inputs are all done is *ready*. It is not handed to Celery at once: it waits in its queue's
ready set (`farm:sched:ready:<queue>`, a sorted set scored by rank) and is *admitted*, best rank first,
while the queue's lane has room, that is while fewer of its steps are admitted than the lane's limit:
the provider's cap (fal's in-flight limit, the pods the caps allow) or the live workers' slots, whichever
is smaller. An admitted step holds a slot (`farm:sched:slots:<queue>`) until it ends, so the Celery queue
stays short and the order chosen here is the order steps start in.

Why not Celery priorities: the Redis transport has a handful of levels and a message, once queued, keeps
its place; a critical-path order needs a real number per step and room to put a late step ahead.

Workers announce themselves (`farm:sched:pool:<queue>`): their slots, the provider cap they enforce and the
ordering policy, refreshed every few seconds, so every dispatcher (CLI, workers) orders alike. A worker that
stops refreshing drops out. With no live worker a lane admits everything: the messages wait in Celery's
queue, where the autoscaler and KEDA see them and start workers.

A slot whose step is no longer queued or running (done, failed, cancelled, superseded, or its worker died
and a later attempt finished it) is taken back at the next admission, so a crash never leaks capacity.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import redis

from farm.config.redis_text import as_text
from farm.planning.routing import QUEUES
from farm.runs import scripts as pipelines

log = logging.getLogger(__name__)
Order = Literal["critical_path", "fifo"]
DEFAULT_PRIORITY = 5
PRIORITIES = range(1, 10)
"""Run priorities: 9 goes first, 1 last; 5 unless `farm submit --priority` says otherwise."""


def check_priority(priority: int) -> None:
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be 1 to 9 (9 goes first), not {priority}")


ANNOUNCE_EVERY_S = 5.0
ANNOUNCE_TTL_S = 15.0
SEPARATOR = "\t"

_ADMIT = """
local ready, slots, held = KEYS[1], KEYS[2], KEYS[3]
local limit, now, ended = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local function split(member)
  local cut = string.find(member, '\\t', 1, true)
  return string.sub(member, 1, cut - 1), string.sub(member, cut + 1)
end
local function state_of(member)
  local run, step = split(member)
  return redis.call('HGET', 'farm:run:' .. run .. ':state', step), run, step
end
-- The run's budget: spent + the estimates of its paid steps in flight + this one's must fit. A reservation
-- whose step is no longer queued or running has ended (its cost is in spent, or it never ran): dropped.
local function affordable(run, step, member, score)
  local meta = 'farm:run:' .. run
  local cost = tonumber(redis.call('HGET', meta .. ':estimate', step) or '0')
  if cost <= 0 then return true end
  local reserved = meta .. ':reserved'
  local budget = redis.call('HGET', meta, 'budget_uusd')
  if budget then
    local in_flight = 0
    local flat = redis.call('HGETALL', reserved)
    for i = 1, #flat, 2 do
      if flat[i] ~= step then
        local s = redis.call('HGET', meta .. ':state', flat[i])
        if s == 'queued' or s == 'running' then
          in_flight = in_flight + tonumber(flat[i + 1])
        else
          redis.call('HDEL', reserved, flat[i])
        end
      end
    end
    local need = tonumber(redis.call('HGET', meta, 'spent_uusd') or '0') + in_flight + cost
    if need > tonumber(budget) then
      redis.call('ZADD', held, score, member)
      redis.call('HSET', meta, 'budget_need_uusd', string.format('%d', need), 'budget_held_at', now)
      return false
    end
  end
  redis.call('HSET', reserved, step, string.format('%d', cost))
  return true
end
if ended ~= '' then redis.call('ZREM', slots, ended) end
local used = redis.call('ZCARD', slots)
if limit >= 0 and used >= limit then
  -- Full: take back slots of steps that ended without saying so (their worker died).
  for _, m in ipairs(redis.call('ZRANGE', slots, 0, -1)) do
    local s = state_of(m)
    if s ~= 'queued' and s ~= 'running' then redis.call('ZREM', slots, m) end
  end
  used = redis.call('ZCARD', slots)
end
local admitted, over = {}, {}
while limit < 0 or used < limit do
  local top = redis.call('ZPOPMAX', ready)
  if #top == 0 then break end
  local s, run, step = state_of(top[1])
  if s == 'queued' then
    if affordable(run, step, top[1], top[2]) then
      redis.call('ZADD', slots, now, top[1])
      redis.call('SADD', 'farm:run:' .. run .. ':outbox', step)
      used = used + 1
      table.insert(admitted, top[1])
    else
      table.insert(over, top[1])
    end
  end
end
return {admitted, over}
"""

# KEYS: pairs of (held set, ready set) per queue; ARGV: the run's member prefix, its metadata key.
_UNHOLD = """
local prefix, meta = ARGV[1], ARGV[2]
local moved = {}
for i = 1, #KEYS, 2 do
  local held, ready = KEYS[i], KEYS[i + 1]
  local flat = redis.call('ZRANGE', held, 0, -1, 'WITHSCORES')
  local any = false
  for j = 1, #flat, 2 do
    if string.sub(flat[j], 1, #prefix) == prefix then
      redis.call('ZADD', ready, 'NX', flat[j + 1], flat[j])
      redis.call('ZREM', held, flat[j])
      any = true
    end
  end
  if any then table.insert(moved, (i + 1) / 2) end
end
-- Not paused any more: the admission that follows marks the run again if it holds a step again.
redis.call('HDEL', meta, 'budget_held_at', 'budget_need_uusd')
return moved
"""


@dataclass(frozen=True)
class RankingPolicy:
    """How ready steps are ranked. Higher rank is admitted first."""

    order: Order = "critical_path"
    priority_head_start_s: float = 300.0
    """Each priority level above 5 is worth this many seconds of remaining path (below 5: a handicap)."""
    aging: float = 0.25
    """Seconds of rank a ready step gains per second it waits, so no run starves behind a busier or more
    urgent one: a lower step overtakes within (rank gap / aging) seconds."""

    def score(self, remaining_s: float, priority: int, ready_at: float) -> float:
        if self.order == "fifo":
            return -ready_at
        # rank(t) = remaining + head start + aging * (t - ready_at); the term in t is common to every entry.
        head_start = (priority - DEFAULT_PRIORITY) * self.priority_head_start_s
        return remaining_s + head_start - self.aging * ready_at


@dataclass(frozen=True)
class Ready:
    run_id: str
    step_id: str
    queue: str
    remaining_s: float
    """The longest chain of typical latencies from the start of this step to the end of its episode."""
    priority: int = DEFAULT_PRIORITY
    cost_uusd: int = 0
    """What it is expected to cost on this queue, in micro-dollars (`farm.runs.budget`): checked against the
    run's budget when it is admitted."""


@dataclass(frozen=True)
class Admitted:
    run_id: str
    step_id: str
    queue: str


@dataclass(frozen=True)
class Announcement:
    """What one worker tells the dispatchers about the lane it drains."""

    slots: int
    cap: int | None = None
    """The provider's limit this worker enforces (fal in flight, pod jobs); None when there is none."""
    policy: RankingPolicy = field(default_factory=RankingPolicy)


@dataclass(frozen=True)
class Lane:
    queue: str
    slots: int | None
    """Live workers' slots; None when no worker has announced itself."""
    cap: int | None
    policy: RankingPolicy

    @property
    def limit(self) -> int | None:
        """How many of the lane's steps may be admitted at once; None: no limit."""
        known = [n for n in (self.slots, self.cap) if n is not None]
        return min(known) if known else None


@dataclass(frozen=True)
class LaneView:
    lane: Lane
    admitted: int
    ready: list[tuple[str, str, float]]
    """(run id, step id, score) best first."""
    ready_count: int


def member(run_id: str, step_id: str) -> str:
    return f"{run_id}{SEPARATOR}{step_id}"


def _split(raw: bytes | str) -> tuple[str, str]:
    text = raw.decode() if isinstance(raw, bytes) else raw
    run_id, _, step_id = text.partition(SEPARATOR)
    return run_id, step_id


class Scheduler:
    """Ready sets, slots and worker announcements in Redis; every method is safe from any process."""

    def __init__(
        self, client: redis.Redis, queues: Sequence[str] = QUEUES, *, lanes_ttl_s: float = 0.0
    ) -> None:
        """`lanes_ttl_s`: how long a lane read from the announcements may be reused. A worker keeps them a
        second (they change every few seconds), which saves a round trip on most dependency hops."""
        self.r = client
        self.queues = tuple(queues)
        self._admit = client.register_script(_ADMIT)
        self._unhold = client.register_script(_UNHOLD)
        self._lanes_ttl_s = lanes_ttl_s
        self._lanes_cache: dict[str, tuple[float, Lane]] = {}

    @staticmethod
    def ready_key(queue: str) -> str:
        return f"farm:sched:ready:{queue}"

    @staticmethod
    def slots_key(queue: str) -> str:
        return f"farm:sched:slots:{queue}"

    @staticmethod
    def pool_key(queue: str) -> str:
        return f"farm:sched:pool:{queue}"

    @staticmethod
    def held_key(queue: str) -> str:
        """Steps that reached admission but did not fit their run's budget, with their rank."""
        return f"farm:sched:held:{queue}"

    # workers ------------------------------------------------------------------------------------
    def announce(self, queue: str, worker: str, note: Announcement, now: float | None = None) -> None:
        moment = time.time() if now is None else now
        doc = {**asdict(note), "expires": moment + ANNOUNCE_TTL_S}
        self.r.hset(self.pool_key(queue), worker, json.dumps(doc))

    def withdraw(self, queue: str, worker: str) -> None:
        self.r.hdel(self.pool_key(queue), worker)

    def live_workers(self, now: float | None = None) -> set[str]:
        """Names of the workers whose announcement has not expired, on any of this scheduler's queues."""
        moment = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.hgetall(self.pool_key(queue))
        return {
            as_text(worker)
            for announced in pipe.execute()
            for worker, blob in announced.items()
            if json.loads(blob)["expires"] > moment
        }

    def lanes(self, queues: Iterable[str], now: float | None = None) -> dict[str, Lane]:
        """Each queue's limit and policy from its live workers (expired announcements are dropped)."""
        wanted = list(dict.fromkeys(queues))
        moment = time.time() if now is None else now
        clock = time.monotonic()
        fresh = {q: hit[1] for q in wanted if (hit := self._lanes_cache.get(q)) and clock < hit[0]}
        names = [q for q in wanted if q not in fresh]
        if not names:
            return fresh
        pipe = self.r.pipeline(transaction=False)
        for queue in names:
            pipe.hgetall(self.pool_key(queue))
        lanes = dict(fresh)
        for queue, raw in zip(names, pipe.execute(), strict=True):
            live: list[dict[str, Any]] = []
            for worker, blob in raw.items():
                doc = json.loads(blob)
                if doc["expires"] > moment:
                    live.append(doc)
                else:
                    self.r.hdel(self.pool_key(queue), worker)
            lanes[queue] = _lane(queue, live)
            if self._lanes_ttl_s > 0:
                self._lanes_cache[queue] = (clock + self._lanes_ttl_s, lanes[queue])
        return lanes

    # steps --------------------------------------------------------------------------------------
    def offer(self, entries: Sequence[Ready], now: float | None = None) -> None:
        """Put ready steps in their queues' ready sets (a step already there keeps its rank)."""
        if not entries:
            return
        moment = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        self._queue_offers(pipe, entries, self.lanes({e.queue for e in entries}, moment), moment)
        pipe.execute()

    def admit(self, queues: Iterable[str], now: float | None = None) -> list[Admitted]:
        """Admit the best-ranked ready steps while each lane has room; they are in their run's outbox
        until sent (so a crash right here loses nothing: `farm.runs.dispatch.resend_unsent`)."""
        return self.settle([], queues=queues, now=now)

    def settle(
        self,
        entries: Sequence[Ready],
        *,
        finished: tuple[str, str] | None = None,
        queues: Iterable[str] = (),
        now: float | None = None,
        along: pipelines.Build | None = None,
    ) -> list[Admitted]:
        """In one round trip (two when the lanes must be read): give back the slot of the `finished` step,
        offer `entries` (a step already waiting keeps its rank) and admit on every lane that may have room
        now. `along` queues more writes on the same pipeline; they must be safe to repeat."""
        moment = time.time() if now is None else now
        touched = set(self.queues) if finished else {*queues, *(e.queue for e in entries)}
        lanes = self.lanes(touched, moment)
        ended = member(*finished) if finished else ""
        order = sorted(touched)

        def build(pipe: Any) -> None:  # twice only if Redis forgot the script: ZADD NX keeps ranks
            if along:
                along(pipe)
            self._queue_offers(pipe, entries, lanes, moment)
            for queue in order:
                limit = lanes[queue].limit
                keys = [self.ready_key(queue), self.slots_key(queue), self.held_key(queue)]
                pipelines.call(pipe, self._admit, keys, [-1 if limit is None else limit, moment, ended])

        replies = pipelines.run(self.r, build, [self._admit])
        replies = replies[len(replies) - len(order) :]  # the admissions come last
        admitted: list[Admitted] = []
        over_budget: Counter[str] = Counter()
        for queue, (got, over) in zip(order, replies, strict=True):
            admitted += [Admitted(*_split(raw), queue) for raw in got]
            over_budget.update(_split(raw)[0] for raw in over)
        for run_id, count in over_budget.items():
            log.warning(
                "run %s: %d step(s) wait for more budget (`farm budget %s USD`)", run_id, count, run_id
            )
        return admitted

    def _queue_offers(
        self, pipe: Any, entries: Sequence[Ready], lanes: dict[str, Lane], moment: float
    ) -> None:
        """Add the entries' ZADDs (a step already waiting keeps its rank) to `pipe`."""
        by_queue: dict[str, dict[str, float]] = {}
        for e in entries:
            score = lanes[e.queue].policy.score(e.remaining_s, e.priority, moment)
            by_queue.setdefault(e.queue, {})[member(e.run_id, e.step_id)] = score
            if e.cost_uusd > 0:  # before the ZADD: admission reads it
                pipe.hset(f"farm:run:{e.run_id}:estimate", e.step_id, str(e.cost_uusd))
        for queue, scores in by_queue.items():
            pipe.zadd(self.ready_key(queue), scores, nx=True)

    def finish(self, run_id: str, step_id: str) -> list[str]:
        """The step ended (or moves elsewhere): give back its slot. Returns the queues that got room."""
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrem(self.slots_key(queue), member(run_id, step_id))
        return [q for q, n in zip(self.queues, pipe.execute(), strict=True) if n]

    def drop(self, run_id: str, step_ids: Iterable[str]) -> None:
        """Forget steps that will never run (a cancel): they leave the ready sets and free their slots."""
        members = [member(run_id, s) for s in step_ids]
        if not members:
            return
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrem(self.ready_key(queue), *members)
            pipe.zrem(self.slots_key(queue), *members)
            pipe.zrem(self.held_key(queue), *members)
        pipe.execute()

    def waiting_of(self, run_id: str) -> dict[str, list[str]]:
        """Per queue, the run's steps waiting in its ready set."""
        return self._members_of(run_id, self.ready_key)

    def ready_members(self) -> set[str]:
        """Every step waiting in any ready set or for budget, as `member(run id, step id)`, in one round
        trip."""
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrange(self.ready_key(queue), 0, -1)
            pipe.zrange(self.held_key(queue), 0, -1)
        return {as_text(raw) for members in pipe.execute() for raw in members}

    def held_of(self, run_id: str) -> dict[str, list[str]]:
        """Per queue, the run's steps waiting for more budget."""
        return self._members_of(run_id, self.held_key)

    def unhold(self, run_id: str) -> list[str]:
        """Put the run's budget-held steps back in their ready sets with their rank, to be admitted against
        its budget again (atomically: a step in neither set would look lost to the reconciler). Returns the
        queues they went back to; admit on them next (which marks the run paused again if one is held)."""
        keys = [k for q in self.queues for k in (self.held_key(q), self.ready_key(q))]
        moved = self._unhold(keys=keys, args=[member(run_id, ""), f"farm:run:{run_id}"])
        return [self.queues[int(i) - 1] for i in moved]

    def _members_of(self, run_id: str, key: Callable[[str], str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for queue in self.queues:
            steps = [_split(m)[1] for m, _ in self.r.zscan_iter(key(queue), match=member(run_id, "*"))]
            if steps:
                found[queue] = steps
        return found

    def rerank(self, run_id: str, entries: Sequence[Ready], ready_at: dict[str, float]) -> None:
        """Score waiting steps again (a new priority), as if offered when they first became ready."""
        lanes = self.lanes({e.queue for e in entries})
        pipe = self.r.pipeline(transaction=False)
        for e in entries:
            score = lanes[e.queue].policy.score(
                e.remaining_s, e.priority, ready_at.get(e.step_id, time.time())
            )
            pipe.zadd(self.ready_key(e.queue), {member(run_id, e.step_id): score}, xx=True)
        pipe.execute()

    def holds_slot(self, run_id: str, step_id: str) -> bool:
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zscore(self.slots_key(queue), member(run_id, step_id))
        return any(score is not None for score in pipe.execute())

    # views --------------------------------------------------------------------------------------
    def view(self, queue: str, top: int = 5) -> LaneView:
        lane = self.lanes([queue])[queue]
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(self.slots_key(queue))
        pipe.zcard(self.ready_key(queue))
        pipe.zrevrange(self.ready_key(queue), 0, top - 1, withscores=True)
        admitted, count, best = pipe.execute()
        entries = [(*_split(raw), float(score)) for raw, score in best]
        return LaneView(lane, int(admitted), entries, int(count))

    def ready_counts(self, queues: Iterable[str]) -> dict[str, int]:
        return self._counts(queues, self.ready_key)

    def admitted_counts(self, queues: Iterable[str]) -> dict[str, int]:
        return self._counts(queues, self.slots_key)

    def _counts(self, queues: Iterable[str], key: Callable[[str], str]) -> dict[str, int]:
        names = list(queues)
        pipe = self.r.pipeline(transaction=False)
        for queue in names:
            pipe.zcard(key(queue))
        return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))


def _lane(queue: str, live: list[dict[str, Any]]) -> Lane:
    if not live:
        return Lane(queue, None, None, RankingPolicy())
    caps = [int(d["cap"]) for d in live if d.get("cap") is not None]
    newest = max(live, key=lambda d: float(d["expires"]))
    return Lane(
        queue,
        slots=sum(int(d["slots"]) for d in live),
        cap=min(caps) if caps else None,
        policy=RankingPolicy(**newest["policy"]),
    )
