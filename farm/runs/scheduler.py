"""Admission of ready steps to their queues: longest remaining path first, then run priority, within capacity.

A step whose inputs are all done is *ready*. It is not handed to Celery at once: it waits in its queue's
ready set (`keys.ready`, a sorted set scored by rank) and is *admitted*, best rank first, while the queue's
lane has room, that is while fewer of its steps are admitted than the lane's limit: the provider's cap
(fal's in-flight limit, the pods the caps allow) or the live workers' slots, whichever is smaller. An
admitted step holds a slot (`keys.slots`) until it ends, so the Celery queue stays short and the order
chosen here is the order steps start in.

Why not Celery priorities: the Redis transport has a handful of levels and a message, once queued, keeps
its place; a critical-path order needs a real number per step and room to put a late step ahead.

Workers announce themselves (`keys.pool`): their slots, the provider cap they enforce and the ordering
policy, refreshed every few seconds, so every dispatcher (CLI, workers) orders alike. A worker that stops
refreshing drops out. With no live worker a lane admits everything: the messages wait in Celery's
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
from farm.runs import keys, scripts

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
        self._admit = scripts.load(client, "admit")
        self._unhold = scripts.load(client, "unhold")
        self._lanes_ttl_s = lanes_ttl_s
        self._lanes_cache: dict[str, tuple[float, Lane]] = {}

    # workers ------------------------------------------------------------------------------------
    def announce(self, queue: str, worker: str, note: Announcement, now: float | None = None) -> None:
        moment = time.time() if now is None else now
        doc = {**asdict(note), "expires": moment + ANNOUNCE_TTL_S}
        self.r.hset(keys.pool(queue), worker, json.dumps(doc))

    def withdraw(self, queue: str, worker: str) -> None:
        self.r.hdel(keys.pool(queue), worker)

    def live_workers(self, now: float | None = None) -> set[str]:
        """Names of the workers whose announcement has not expired, on any of this scheduler's queues."""
        moment = time.time() if now is None else now
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.hgetall(keys.pool(queue))
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
            pipe.hgetall(keys.pool(queue))
        lanes = dict(fresh)
        for queue, raw in zip(names, pipe.execute(), strict=True):
            live: list[dict[str, Any]] = []
            for worker, blob in raw.items():
                doc = json.loads(blob)
                if doc["expires"] > moment:
                    live.append(doc)
                else:
                    self.r.hdel(keys.pool(queue), worker)
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
        along: scripts.Build | None = None,
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
                touched = [keys.ready(queue), keys.slots(queue), keys.held(queue)]
                scripts.call(pipe, self._admit, touched, [-1 if limit is None else limit, moment, ended])

        replies = scripts.run(self.r, build, [self._admit])
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
                pipe.hset(keys.estimate(e.run_id), e.step_id, str(e.cost_uusd))
        for queue, scores in by_queue.items():
            pipe.zadd(keys.ready(queue), scores, nx=True)

    def finish(self, run_id: str, step_id: str) -> list[str]:
        """The step ended (or moves elsewhere): give back its slot. Returns the queues that got room."""
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrem(keys.slots(queue), member(run_id, step_id))
        return [q for q, n in zip(self.queues, pipe.execute(), strict=True) if n]

    def drop(self, run_id: str, step_ids: Iterable[str]) -> None:
        """Forget steps that will never run (a cancel): they leave the ready sets and free their slots."""
        members = [member(run_id, s) for s in step_ids]
        if not members:
            return
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrem(keys.ready(queue), *members)
            pipe.zrem(keys.slots(queue), *members)
            pipe.zrem(keys.held(queue), *members)
        pipe.execute()

    def waiting_of(self, run_id: str) -> dict[str, list[str]]:
        """Per queue, the run's steps waiting in its ready set."""
        return self._members_of(run_id, keys.ready)

    def ready_members(self) -> set[str]:
        """Every step waiting in any ready set or for budget, as `member(run id, step id)`, in one round
        trip."""
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zrange(keys.ready(queue), 0, -1)
            pipe.zrange(keys.held(queue), 0, -1)
        return {as_text(raw) for members in pipe.execute() for raw in members}

    def held_of(self, run_id: str) -> dict[str, list[str]]:
        """Per queue, the run's steps waiting for more budget."""
        return self._members_of(run_id, keys.held)

    def unhold(self, run_id: str) -> list[str]:
        """Put the run's budget-held steps back in their ready sets with their rank, to be admitted against
        its budget again (atomically: a step in neither set would look lost to the reconciler). Returns the
        queues they went back to; admit on them next (which marks the run paused again if one is held)."""
        touched = [k for q in self.queues for k in (keys.held(q), keys.ready(q))]
        moved = self._unhold(keys=touched, args=[member(run_id, ""), keys.run(run_id)])
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
            pipe.zadd(keys.ready(e.queue), {member(run_id, e.step_id): score}, xx=True)
        pipe.execute()

    def holds_slot(self, run_id: str, step_id: str) -> bool:
        pipe = self.r.pipeline(transaction=False)
        for queue in self.queues:
            pipe.zscore(keys.slots(queue), member(run_id, step_id))
        return any(score is not None for score in pipe.execute())

    # views --------------------------------------------------------------------------------------
    def view(self, queue: str, top: int = 5) -> LaneView:
        lane = self.lanes([queue])[queue]
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(keys.slots(queue))
        pipe.zcard(keys.ready(queue))
        pipe.zrevrange(keys.ready(queue), 0, top - 1, withscores=True)
        admitted, count, best = pipe.execute()
        entries = [(*_split(raw), float(score)) for raw, score in best]
        return LaneView(lane, int(admitted), entries, int(count))

    def ready_counts(self, queues: Iterable[str]) -> dict[str, int]:
        return self._counts(queues, keys.ready)

    def admitted_counts(self, queues: Iterable[str]) -> dict[str, int]:
        return self._counts(queues, keys.slots)

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
