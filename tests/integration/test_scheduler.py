"""The scheduler's admission order and capacity, against a real redis-server.

The simulations drive the real Lua admission with a simulated clock: each admitted step "runs" for its
card latency, and the makespan is compared with the critical path and with the work the cap allows.
"""

from __future__ import annotations

import heapq
import time
from pathlib import Path

import pytest
import redis

from farm.episode.validate import load_episode
from farm.planning.estimate import critical_path, makespan_at_limits, remaining_path_s
from farm.planning.plan import Plan, Step, build_plan
from farm.runs import dispatch, keys
from farm.runs.scheduler import Announcement, RankingPolicy, Ready, Scheduler
from farm.runs.state import RunStore

T0 = 1_800_000_000.0


def sample_plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, run_id: str, step: Step, queue: str) -> None:
        self.sent.append((run_id, step.id, queue))

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        self.revoked = step_ids


def simulate(
    client: redis.Redis, plans: dict[str, tuple[Plan, int]], cap: int, policy: RankingPolicy
) -> dict[str, float]:
    """Run every plan through one lane of `cap` slots on a simulated clock; return each run's makespan."""
    runs, sched = RunStore(client), Scheduler(client)
    now = T0

    def admit() -> list[tuple[str, str]]:
        sched.announce("post", "sim", Announcement(slots=cap, policy=policy), now=now)
        return [(a.run_id, a.step_id) for a in sched.admit(["post"], now=now)]

    def offer(run_id: str, step_ids: list[str]) -> None:
        plan, priority = plans[run_id]
        remaining = remaining_path_s(plan)
        sched.offer([Ready(run_id, s, "post", remaining[s], priority) for s in step_ids], now=now)

    latency = {run_id: {s.id: s.latency_s for s in plan.steps} for run_id, (plan, _) in plans.items()}
    for run_id, (plan, _) in plans.items():
        offer(run_id, runs.create(run_id, plan, {}))
    running: list[tuple[float, str, str]] = []
    finished: dict[str, float] = {}
    while True:
        for run_id, step_id in admit():
            assert runs.begin(run_id, step_id) == 1
            heapq.heappush(running, (now + latency[run_id][step_id], run_id, step_id))
        assert len(running) <= cap, "never more admitted than the lane's limit"
        if not running:
            break
        now, run_id, step_id = heapq.heappop(running)
        completion = runs.complete(run_id, step_id)
        sched.finish(run_id, step_id)
        offer(run_id, completion.released)
        if completion.outcome:
            finished[run_id] = now - T0
    assert sorted(finished) == sorted(plans), "every run finished"
    return finished


def lower_bound(plan: Plan, cap: int) -> float:
    """No schedule with `cap` slots is faster than: the critical path; the work spread over every slot; and,
    for the n steps of at least p seconds, ceil(n / cap) rounds of p between the earliest any of them can
    start and the shortest way from any of them to the end (the sample's five long videos on four slots)."""
    _, path_s = critical_path(plan)
    bound = max(path_s, sum(s.latency_s for s in plan.steps) / cap)
    remaining, head = remaining_path_s(plan), dict[str, float]()
    for step in plan.steps:
        head[step.id] = max((head[i] + plan.step(i).latency_s for i in step.inputs), default=0.0)
    for p in {s.latency_s for s in plan.steps}:
        long = [s for s in plan.steps if s.latency_s >= p]
        rounds = -(-len(long) // cap)
        least_tail = min(remaining[s.id] - s.latency_s for s in long)
        bound = max(bound, min(head[s.id] for s in long) + rounds * p + least_tail)
    return bound


@pytest.mark.parametrize("cap", [2, 3, 4, 6])
def test_critical_path_first_is_near_the_bound_and_beats_fifo(
    client: redis.Redis, sample_path: Path, cap: int
) -> None:
    plan = sample_plan(sample_path)
    bound = lower_bound(plan, cap)
    ranked = simulate(client, {"cp": (plan, 5)}, cap, RankingPolicy())["cp"]
    client.flushdb()
    fifo = simulate(client, {"fifo": (plan, 5)}, cap, RankingPolicy(order="fifo"))["fifo"]
    assert bound <= ranked <= 1.15 * bound, (ranked, bound)
    assert ranked < fifo, (ranked, fifo)
    predicted = makespan_at_limits(plan, lambda _: "post", {"post": cap})
    assert ranked == pytest.approx(predicted, rel=0.05), "`farm estimate` predicts what the scheduler does"


def test_with_room_for_everything_the_episode_takes_its_critical_path(
    client: redis.Redis, sample_path: Path
) -> None:
    plan = sample_plan(sample_path)
    _, path_s = critical_path(plan)
    makespan = simulate(client, {"wide": (plan, 5)}, 1000, RankingPolicy())["wide"]
    assert makespan == pytest.approx(path_s)


def test_a_higher_priority_run_finishes_first_and_the_lower_one_still_progresses(
    client: redis.Redis, sample_path: Path
) -> None:
    plan = sample_plan(sample_path)
    finished = simulate(client, {"urgent": (plan, 9), "routine": (plan, 1)}, 3, RankingPolicy())
    alone = simulate(client, {"solo": (plan, 5)}, 3, RankingPolicy())["solo"]
    assert finished["urgent"] < finished["routine"]
    assert finished["urgent"] <= 1.15 * alone, "the urgent run barely notices the other"


def test_aging_bounds_how_long_a_low_priority_step_waits(client: redis.Redis) -> None:
    policy = RankingPolicy(priority_head_start_s=300.0, aging=0.25)
    sched = Scheduler(client)
    sched.announce("post", "w", Announcement(slots=1, policy=policy), now=T0)
    sched.offer([Ready("low", "a", "post", 100.0, 1)], now=T0)
    # A steady stream of urgent steps (priority 9: 8 levels = 2400 s of head start) arrives every minute.
    gap_s = (100.0 + 2400.0 - 100.0) / 0.25  # rank gap over aging: when "a" catches up
    admitted_low_at = None
    for minute in range(0, int(gap_s / 60) + 3):
        now = T0 + 60 * minute
        client.hset(keys.states("low"), "a", "queued")
        client.hset(keys.states("high"), f"s{minute}", "queued")
        sched.offer([Ready("high", f"s{minute}", "post", 100.0, 9)], now=now)
        sched.announce("post", "w", Announcement(slots=1, policy=policy), now=now)
        (got,) = sched.admit(["post"], now=now)
        sched.finish(got.run_id, got.step_id)
        if got.run_id == "low":
            admitted_low_at = now - T0
            break
    assert admitted_low_at is not None, "the low-priority step was starved"
    assert gap_s - 60 <= admitted_low_at <= gap_s + 60


def test_lane_limit_is_the_smaller_of_live_slots_and_the_provider_cap(client: redis.Redis) -> None:
    sched = Scheduler(client)
    assert sched.lanes(["cloud"])["cloud"].limit is None, "no worker yet: everything is admitted"
    sched.announce("cloud", "w1", Announcement(slots=64, cap=10), now=T0)
    sched.announce("cloud", "w2", Announcement(slots=64, cap=10), now=T0)
    sched.announce("post", "p1", Announcement(slots=2), now=T0)
    sched.announce("post", "p2", Announcement(slots=3), now=T0 - 100)  # stopped refreshing
    lanes = sched.lanes(["cloud", "post"], now=T0 + 1)
    assert (lanes["cloud"].slots, lanes["cloud"].limit) == (128, 10)
    assert (lanes["post"].slots, lanes["post"].limit) == (2, 2)
    assert client.hkeys(keys.pool("post")) == [b"p1"], "the stale announcement is dropped"


def test_a_worker_reuses_a_lane_it_read_until_its_ttl_runs_out(client: redis.Redis) -> None:
    """Workers keep lanes a second (one round trip fewer per hop); the CLI reads them every time."""
    cached, fresh = Scheduler(client, lanes_ttl_s=0.2), Scheduler(client)
    cached.announce("post", "p1", Announcement(slots=2))
    assert cached.lanes(["post"])["post"].limit == 2
    cached.announce("post", "p1", Announcement(slots=5))
    assert cached.lanes(["post"])["post"].limit == 2, "within the ttl: the lane read before"
    assert fresh.lanes(["post"])["post"].limit == 5
    time.sleep(0.25)
    assert cached.lanes(["post"])["post"].limit == 5, "after the ttl: read again"


def test_a_slot_whose_step_ended_without_telling_is_taken_back(client: redis.Redis) -> None:
    sched = Scheduler(client)
    state = keys.states("r")
    client.hset(state, mapping={"a": "queued", "b": "queued"})
    sched.announce("post", "w", Announcement(slots=1), now=T0)
    sched.offer([Ready("r", "a", "post", 10.0), Ready("r", "b", "post", 5.0)], now=T0)
    assert [a.step_id for a in sched.admit(["post"], now=T0)] == ["a"]
    assert sched.admit(["post"], now=T0) == [], "the lane is full while a runs"
    client.hset(state, "a", "failed")  # its worker died after marking it, before freeing the slot
    assert [a.step_id for a in sched.admit(["post"], now=T0)] == ["b"]


def test_cancelled_and_superseded_steps_are_never_admitted(client: redis.Redis) -> None:
    sched = Scheduler(client)
    state = keys.states("r")
    client.hset(state, mapping={"a": "cancelled", "b": "superseded", "c": "queued"})
    sched.offer([Ready("r", s, "post", 1.0) for s in "abc"], now=T0)
    assert [a.step_id for a in sched.admit(["post"], now=T0)] == ["c"]
    assert client.zcard(keys.ready("post")) == 0


def test_release_sends_only_what_the_lane_admits_and_finishing_admits_the_next(
    client: redis.Redis, sample_path: Path
) -> None:
    plan = sample_plan(sample_path)
    runs, sched, sender = RunStore(client), Scheduler(client), Recorder()
    sched.announce("post", "w", Announcement(slots=2))
    run_id = dispatch.submit(
        runs, sender, plan, backend="local", namespace="n", output=Path("/tmp/out"), storyboard="s.json"
    )
    remaining = remaining_path_s(plan)
    roots = [s.id for s in plan.steps if not s.inputs]
    best = sorted(roots, key=lambda s: -remaining[s])[:2]
    assert sorted(s for _, s, _ in sender.sent) == sorted(best), "the two roots with most ahead go first"
    waiting = sorted(set(roots) - set(best))
    assert runs.outbox(run_id) == waiting, "sent steps leave the outbox; the others wait in the ready set"
    assert client.zcard(keys.ready("post")) == len(waiting)
    first = sender.sent[0][1]
    runs.begin(run_id, first)
    completion = runs.complete(run_id, first)
    dispatch.step_ended(runs, sender, run_id, first, completion.released, scheduler=sched)
    assert len(sender.sent) == 3, "its slot went to exactly one more step"
    assert client.zcard(keys.slots("post")) == 2


def test_priority_is_checked_and_kept_on_the_run(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    with pytest.raises(ValueError, match="1 to 9"):
        dispatch.submit(
            runs,
            Recorder(),
            plan,
            backend="local",
            namespace="n",
            output=Path("/o"),
            storyboard="s",
            priority=0,
        )
    assert runs.runs() == [], "nothing is stored for a refused submit"
    run_id = dispatch.submit(
        runs, Recorder(), plan, backend="local", namespace="n", output=Path("/o"), storyboard="s", priority=8
    )
    assert runs.meta(run_id)["priority"] == "8"


def test_cancel_takes_the_runs_steps_out_of_the_ready_set(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs, sched = RunStore(client), Scheduler(client)
    sched.announce("post", "w", Announcement(slots=1))
    sender = Recorder()
    run_id = dispatch.submit(
        runs, sender, plan, backend="local", namespace="n", output=Path("/o"), storyboard="s"
    )
    assert client.zcard(keys.ready("post")) > 0
    dispatch.cancel(runs, sender, run_id)
    assert client.zcard(keys.ready("post")) == 0
    assert client.zcard(keys.slots("post")) == 0


def test_a_step_admitted_but_never_sent_is_sent_again(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs, sched = RunStore(client), Scheduler(client)
    roots = runs.create("r", plan, {"backend": "local", "status": "running"})
    remaining = remaining_path_s(plan)
    sched.offer([Ready("r", s, "post", remaining[s]) for s in roots])
    sched.announce("post", "w", Announcement(slots=1))
    (admitted,) = sched.admit(["post"])  # the dispatcher dies here, before sending
    sender = Recorder()
    assert dispatch.resend_unsent(runs, sender, sched) == 1
    assert [s for _, s, _ in sender.sent] == [admitted.step_id], "only the admitted one; the rest wait"
    assert runs.outbox("r") == sorted(set(roots) - {admitted.step_id})
