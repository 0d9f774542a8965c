"""Backlog readings from real Celery messages in a real redis-server: every priority list, and the
messages a worker has taken (with late acks they stay in the transport's `unacked` hash until done)."""

from __future__ import annotations

import json
import time
from typing import Any

import redis

from farm.runs import keys
from farm.runs.scheduler import Announcement, Ready, Scheduler
from tasks.app import make_app
from tasks.backlog import UNACKED_KEY, priority_lists, read_backlogs


def take(client: redis.Redis, queue_list: str, tag: str, queue: str) -> None:
    """What kombu's Redis transport does when a worker takes a message: list -> unacked hash."""
    raw = client.rpop(queue_list)
    assert isinstance(raw, bytes)
    client.hset(UNACKED_KEY, tag, json.dumps([json.loads(raw), "", queue]))


def test_backlog_counts_every_priority_and_taken_messages_and_sets_countdowns_apart(
    client: redis.Redis, redis_url: str
) -> None:
    app = make_app(redis_url)
    app.send_task("farm.t2i", args=["run", "late"], queue="bk-post", countdown=600)
    for priority in (0, 0, 3, 9):
        app.send_task("farm.t2i", args=["run", "step"], queue="bk-post", priority=priority)
    app.send_task("farm.video", args=["run", "clip"], queue="bk-cloud")
    lists = priority_lists("bk-post")
    assert [client.llen(k) for k in lists] == [3, 1, 0, 1], "priorities 3 and 9 have lists of their own"

    take(client, "bk-post", "tag-1", "bk-post")  # the oldest, the countdown one: a worker holds it
    take(client, "bk-cloud", "tag-2", "bk-cloud")
    readings = read_backlogs(client, ["bk-post", "bk-cloud", "bk-gpu"])

    post, cloud, gpu = readings["bk-post"], readings["bk-cloud"], readings["bk-gpu"]
    assert (post.waiting, post.reserved, post.delayed, post.load) == (4, 0, 1, 4)
    assert (cloud.waiting, cloud.reserved, cloud.load) == (0, 1, 1)
    assert gpu.load == 0
    later = read_backlogs(client, ["bk-post"], now=time.time() + 3600)["bk-post"]
    assert (later.reserved, later.delayed) == (1, 0), "once its countdown is over it wants a worker"


def test_ready_steps_held_for_a_slot_are_load_but_those_held_by_a_provider_cap_are_not(
    client: redis.Redis,
) -> None:
    sched = Scheduler(client)
    states: dict[Any, Any] = {f"s{i}": "queued" for i in range(12)}
    client.hset(keys.states("r"), mapping=states)
    sched.announce("post", "p", Announcement(slots=2))
    sched.announce("cloud", "c", Announcement(slots=128, cap=4))
    sched.offer([Ready("r", f"s{i}", "post", 1.0) for i in range(6)])
    sched.offer([Ready("r", f"s{i}", "cloud", 1.0) for i in range(6, 12)])
    admitted = sched.admit(["post", "cloud"])
    assert len(admitted) == 2 + 4
    readings = read_backlogs(client, ["post", "cloud"])
    assert readings["post"].ready == 4, "two slots busy, four steps wait for more workers"
    assert readings["cloud"].ready == 0, "the two left wait for fal's cap, not for a worker"
    admitted_cloud = next(a.step_id for a in admitted if a.queue == "cloud")
    client.hset(keys.states("r"), admitted_cloud, "done")
    sched.finish("r", admitted_cloud)
    assert read_backlogs(client, ["cloud"])["cloud"].ready == 1, "one cap slot came free"
