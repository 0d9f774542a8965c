"""The reconciler against a real redis-server and real Celery messages (kombu's Redis transport)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from farm.cli.app import app
from farm.config.redis_text import as_text
from farm.episode.validate import load_episode
from farm.planning.plan import build_plan
from farm.runs import dispatch, keys
from farm.runs.scheduler import Announcement, Scheduler
from farm.runs.state import RunStore
from tasks.app import make_app
from tasks.reconcile import ORPHAN, Reconciled, broker_task_ids, reconcile, take_turn
from tasks.sender import CelerySender

pytestmark = pytest.mark.chaos
GRACE_S = 30.0


def submit(client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path) -> tuple[str, list[str]]:
    """The sample episode submitted with the real Celery sender; returns the run and its sent roots."""
    runs = RunStore(client)
    plan = build_plan(load_episode(sample_path))
    run_id = dispatch.submit(
        runs, sender(redis_url), plan, backend="local", namespace="ns", output=tmp_path, storyboard="sb.json"
    )
    roots = [s.id for s in plan.steps if not s.inputs]
    return run_id, roots


def sender(redis_url: str) -> CelerySender:
    return CelerySender(make_app(redis_url))


def test_the_broker_view_finds_waiting_and_unacked_messages(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    ids = broker_task_ids(client)
    assert ids == {dispatch.task_id(run_id, r) for r in roots}, "every root's message waits in 'post'"
    raw = client.rpop("post")  # a worker takes one: kombu keeps it in `unacked` until the ack
    assert isinstance(raw, bytes)
    client.hset("unacked", "tag-1", json.dumps([json.loads(raw), "", "post"]))
    assert broker_task_ids(client) == ids


def test_a_lost_message_is_sent_again_by_a_later_pass_only(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    runs, sched, celery = RunStore(client), Scheduler(client), sender(redis_url)
    assert reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0).resent == 0, "nothing lost yet"
    client.delete("post")  # the messages are gone (a Redis restart that missed the last second, a flush)
    first = reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0)
    assert (first.missing, first.resent) == (len(roots), 0), "a delivery takes a moment: not yet"
    assert client.llen("post") == 0
    early = reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0 + GRACE_S / 2)
    assert early.resent == 0 and early.missing == len(roots), "first-seen times are kept between passes"
    later = reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0 + GRACE_S)
    assert (later.missing, later.resent) == (0, len(roots))
    assert broker_task_ids(client) == {dispatch.task_id(run_id, r) for r in roots}
    again = reconcile(runs, celery, sched, grace_s=GRACE_S, now=2000.0)
    assert (again.missing, again.resent) == (0, 0), "sent once: present now, never sent twice"
    assert not client.exists(keys.RECONCILE_MISSING)


def test_a_message_that_shows_up_again_is_not_sent(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    _run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    runs, sched, celery = RunStore(client), Scheduler(client), sender(redis_url)
    saved = client.lrange("post", 0, -1)
    client.delete("post")
    assert reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0).missing == len(roots)
    client.rpush("post", *saved)  # it was only being handed over (a worker's fetch)
    later = reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0 + 2 * GRACE_S)
    assert (later.missing, later.resent) == (0, 0)
    assert client.llen("post") == len(roots)


def test_finished_steps_and_steps_waiting_for_a_slot_have_no_message_and_need_none(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    sched = Scheduler(client)
    sched.announce("post", "w1", Announcement(slots=1))  # one slot: the other roots wait in the ready set
    _run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    runs, celery = RunStore(client), sender(redis_url)
    assert client.llen("post") == 1 and sched.ready_counts(["post"])["post"] == len(roots) - 1
    client.delete("post")
    assert reconcile(runs, celery, sched, grace_s=0.0, now=1000.0).resent == 1, "only the admitted one"
    assert client.llen("post") == 1 and sched.ready_counts(["post"])["post"] == len(roots) - 1


def test_released_steps_left_in_an_outbox_are_offered_again_with_their_rank(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    sched = Scheduler(client)
    sched.announce("post", "w1", Announcement(slots=1))
    _run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    runs, celery = RunStore(client), sender(redis_url)
    client.delete(keys.ready("post"))  # offered ranks lost; the steps are still in the outbox
    reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0)
    assert sched.ready_counts(["post"])["post"] == 0, "a live dispatcher may be offering them right now"
    result = reconcile(runs, celery, sched, grace_s=GRACE_S, now=1000.0 + GRACE_S)
    assert (result.from_outbox, result.resent, result.missing) == (0, 0, 0), "the lane is still full"
    assert sched.ready_counts(["post"])["post"] == len(roots) - 1


def test_one_reconciler_per_period(client: redis.Redis) -> None:
    assert take_turn(client, "worker-a", 60.0)
    assert not take_turn(client, "worker-b", 60.0)


def test_the_command_runs_one_pass_and_says_what_it_sent(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    client.delete("post")
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    first = CliRunner().invoke(app, ["reconcile"])
    assert first.exit_code == 0, first.output
    assert f"{len(roots)} without a message" in first.output and client.llen("post") == 0
    now = CliRunner().invoke(app, ["reconcile", "--grace-s", "0"])
    assert now.exit_code == 0, now.output
    assert f"{len(roots)} whose message was lost" in now.output and client.llen("post") == len(roots)


def take_like_a_worker(client: redis.Redis, queue: str = "post") -> tuple[str, str]:
    """What kombu's Redis QoS does when a worker takes a message (acks late): the message moves from the
    queue into `unacked` under its delivery tag, indexed by time. Returns (tag, task id)."""
    raw = client.rpop(queue)
    assert isinstance(raw, bytes)
    payload = json.loads(raw)
    properties = payload["properties"]
    tag, delivery = properties["delivery_tag"], properties["delivery_info"]
    client.zadd("unacked_index", {tag: time.time()})
    client.hset("unacked", tag, json.dumps([payload, delivery["exchange"], delivery["routing_key"]]))
    return tag, payload["headers"]["id"]


def orphan_entries(client: redis.Redis) -> list[str]:
    """The reconciler's first-seen entries for gone workers' messages (it keeps nothing else about them)."""
    return [key for key in map(as_text, client.hkeys(keys.RECONCILE_MISSING)) if key.startswith(ORPHAN)]


def claimed_by(runs: RunStore, task: str, node: str, attempt: int = 0) -> str:
    """The step of `task` claimed by worker `node`, as the executor records it; returns the step id."""
    run_id, _, step_id = task.partition(":")
    assert runs.begin(run_id, step_id) == 1
    runs.set_info(run_id, step_id, node=node, attempt=attempt)
    return step_id


def test_a_gone_workers_running_step_is_put_back_on_its_queue_by_a_later_pass(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    _run_id, roots = submit(client, redis_url, sample_path, tmp_path)
    runs, sched, celery = RunStore(client), Scheduler(client), sender(redis_url)
    dead_tag, dead_task = take_like_a_worker(client)
    live_tag, live_task = take_like_a_worker(client)
    claimed_by(runs, dead_task, "post.dead@box")
    claimed_by(runs, live_task, "post.live@box")
    sched.announce("post", "post.dead@box", Announcement(slots=4), now=900.0)  # long expired by 1000
    waiting = client.llen("post")

    def beat(moment: float) -> Reconciled:
        """A pass at `moment`, the live worker having announced itself just before."""
        sched.announce("post", "post.live@box", Announcement(slots=4), now=moment)
        return reconcile(runs, celery, sched, grace_s=GRACE_S, restore=celery.restore, now=moment)

    first = beat(1000.0)
    assert (first.orphaned, first.restored, first.resent) == (1, 0, 0), "it may only be slow to announce"
    assert client.hexists("unacked", dead_tag) and client.llen("post") == waiting
    later = beat(1000.0 + GRACE_S)
    assert (later.orphaned, later.restored) == (0, 1)
    assert not client.hexists("unacked", dead_tag) and client.zscore("unacked_index", dead_tag) is None
    assert client.hexists("unacked", live_tag), "a live worker's step is left with it"
    assert client.llen("post") == waiting + 1, "one message, back on its queue"
    back = [json.loads(m) for m in client.lrange("post", 0, -1)]
    again = [m for m in back if m["headers"]["id"] == dead_task]
    assert len(again) == 1 and again[0]["headers"]["redelivered"] is True
    assert broker_task_ids(client) >= {dead_task, live_task}
    final = beat(1000.0 + 2 * GRACE_S)
    assert (final.orphaned, final.restored, final.resent) == (0, 0, 0), "put back once"
    assert not orphan_entries(client) and len(roots) == waiting + 2


def test_a_message_for_a_later_attempt_than_the_gone_worker_ran_is_not_its_own(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    """A step waiting out a retry countdown is a new message (retries + 1), held by whichever worker took
    it, while the step's info still names the worker of the attempt before."""
    submit(client, redis_url, sample_path, tmp_path)
    runs, sched, celery = RunStore(client), Scheduler(client), sender(redis_url)
    tag, task = take_like_a_worker(client)
    claimed_by(runs, task, "post.dead@box", attempt=1)  # the message taken carries retries=0
    for moment in (1000.0, 1000.0 + GRACE_S, 1000.0 + 2 * GRACE_S):
        result = reconcile(runs, celery, sched, grace_s=GRACE_S, restore=celery.restore, now=moment)
        assert (result.orphaned, result.restored) == (0, 0)
    assert client.hexists("unacked", tag)


def test_a_step_the_gone_worker_no_longer_runs_is_left_alone(
    client: redis.Redis, redis_url: str, sample_path: Path, tmp_path: Path
) -> None:
    submit(client, redis_url, sample_path, tmp_path)
    runs, sched, celery = RunStore(client), Scheduler(client), sender(redis_url)
    tag, task = take_like_a_worker(client)
    step_id = claimed_by(runs, task, "post.dead@box")
    assert reconcile(runs, celery, sched, grace_s=GRACE_S, restore=celery.restore, now=1000.0).orphaned == 1
    runs.complete(task.partition(":")[0], step_id)  # it finished; only its ack was lost
    later = reconcile(runs, celery, sched, grace_s=GRACE_S, restore=celery.restore, now=1000.0 + GRACE_S)
    assert (later.orphaned, later.restored) == (0, 0) and client.hexists("unacked", tag)
    assert not orphan_entries(client)
