"""The GPU pool's pod records and leases against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from workers.gpu.pod_ledger import LedgerKnownHosts, PodLedger


def test_a_lease_has_one_holder_and_lapses_by_itself(client: redis.Redis) -> None:
    pods = PodLedger(client)
    pods.register("p1", "farm-gpu-1", gpu="A100 80GB", cost_per_hr=1.19, state="running")
    assert pods.lease("p1", "worker-a", ttl_s=0.3)
    assert not pods.lease("p1", "worker-b", ttl_s=0.3)
    assert pods.get("p1") is not None and pods.get("p1").lease_holder == "worker-a"  # type: ignore[union-attr]
    assert not pods.renew("p1", "worker-b", ttl_s=5), "only the holder renews"
    time.sleep(0.4)
    assert pods.lease("p1", "worker-b", ttl_s=5), "a dead holder's lease lapses"


def test_release_records_last_use_family_and_busy_time(client: redis.Redis) -> None:
    pods = PodLedger(client)
    pods.register("p2", "farm-gpu-2", gpu="A100 80GB", cost_per_hr=1.19, state="running")
    pods.lease("p2", "w", ttl_s=5)
    assert not pods.release("p2", "someone-else", family="wan", busy_s=3)
    assert pods.release("p2", "w", family="wan", busy_s=3.5)
    record = pods.get("p2")
    assert record is not None and record.lease_holder is None
    assert record.family == "wan" and record.busy_s == 3.5


def test_candidates_prefer_warm_pods_with_the_same_models(client: redis.Redis) -> None:
    pods = PodLedger(client)
    for pod_id, state, family in (
        ("a", "stopped", "wan"),
        ("b", "running", "qwen"),
        ("c", "running", "wan"),
        ("d", "running", "wan"),
    ):
        pods.register(pod_id, f"farm-gpu-{pod_id}", gpu="A100", cost_per_hr=1.19, state=state)
        pods.set(pod_id, family=family)
    pods.lease("d", "busy", ttl_s=5)
    assert [p.id for p in pods.candidates("wan")] == ["c", "b", "a"]
    assert pods.hourly_cost() == 1.19 * 3


def test_idle_lists_running_unleased_pods_past_the_timeout(client: redis.Redis) -> None:
    pods = PodLedger(client)
    pods.register("old", "farm-gpu-old", gpu="A100", cost_per_hr=1.19, state="running")
    pods.set("old", last_used=time.time() - 700)
    pods.register("fresh", "farm-gpu-fresh", gpu="A100", cost_per_hr=1.19, state="running")
    pods.register("held", "farm-gpu-held", gpu="A100", cost_per_hr=1.19, state="running")
    pods.set("held", last_used=time.time() - 700)
    pods.lease("held", "w", ttl_s=5)
    assert [p.id for p in pods.idle(600)] == ["old"]


def test_a_retried_step_takes_over_its_dead_predecessors_lease_only(client: redis.Redis) -> None:
    pods = PodLedger(client)
    pods.register("p5", "farm-gpu-5", gpu="A100 80GB", cost_per_hr=1.19, state="running")
    assert pods.lease("p5", "host:101:step-a", ttl_s=60)
    assert not pods.take_over("p5", "host:202:step-b", ttl_s=60, step_id="step-b"), "another step waits"
    assert pods.take_over("p5", "host:202:step-a", ttl_s=60, step_id="step-a")
    assert pods.get("p5").lease_holder == "host:202:step-a"  # type: ignore[union-attr]
    assert pods.release("p5", "host:202:step-a", family="wan", busy_s=1)
    assert pods.take_over("p5", "host:303:step-b", ttl_s=60, step_id="step-b"), "a free pod is taken"


def test_the_pod_holding_a_steps_run_is_remembered_until_the_outputs_are_fetched(client: redis.Redis) -> None:
    pods = PodLedger(client)
    assert pods.run_pod("step-z") is None
    pods.remember_run("step-z", "p6")
    assert pods.run_pod("step-z") == "p6"
    pods.forget_run("step-z")
    assert pods.run_pod("step-z") is None


def test_a_pod_with_two_slots_runs_two_jobs_and_is_idle_only_when_both_end(client: redis.Redis) -> None:
    pods = PodLedger(client, slots=2)
    pods.register("p7", "farm-gpu-7", gpu="A100 80GB", cost_per_hr=1.19, state="running")
    assert pods.lease("p7", "host:1:step-a", ttl_s=60) and pods.lease("p7", "host:2:step-b", ttl_s=60)
    assert not pods.lease("p7", "host:3:step-c", ttl_s=60), "two jobs at a time"
    assert pods.candidates("wan") == []
    record = pods.get("p7")
    assert record is not None and set(record.lease_holders) == {"host:1:step-a", "host:2:step-b"}
    assert pods.renew("p7", "host:2:step-b", ttl_s=60)
    assert pods.release("p7", "host:1:step-a", family="wan", busy_s=2)
    assert [p.id for p in pods.candidates("wan")] == ["p7"] and pods.idle(0) == []
    assert pods.take_over("p7", "host:9:step-b", ttl_s=60, step_id="step-b"), "its own slot, not a new one"
    assert pods.get("p7").lease_holders == ("host:9:step-b",)  # type: ignore[union-attr]
    assert pods.release("p7", "host:9:step-b", family="wan", busy_s=1)
    time.sleep(0.01)
    assert [p.id for p in pods.idle(0)] == ["p7"]


def test_one_worker_at_a_time_sets_a_pod_up(client: redis.Redis) -> None:
    pods = PodLedger(client, slots=2)
    with (
        pods.setup_lock("p8", ttl_s=30, wait_s=1),
        pytest.raises(TimeoutError, match="setting up pod p8"),
        pods.setup_lock("p8", ttl_s=30, wait_s=0.3),
    ):
        pass
    with pods.setup_lock("p8", ttl_s=30, wait_s=0.3):
        pass  # released: the next worker gets it at once


def test_a_new_host_key_is_taken_only_within_the_window_the_pool_opened(client: redis.Redis) -> None:
    registry = PodLedger(client)
    registry.register("pod-k", "farm-gpu-k", gpu="A100", cost_per_hr=1.19)
    known = LedgerKnownHosts(registry)
    assert not known.expects_new_key("pod-k"), "a pod the pool did not just start shows no new key"
    known.expect_new_key("pod-k", within_s=60)
    assert known.expects_new_key("pod-k")
    known.pin("pod-k", "ssh-ed25519 AAAAfirst")
    assert not known.expects_new_key("pod-k"), "the first contact pinned it and closed the window"
    known.expect_new_key("pod-k", within_s=-1)  # resumed, but the window has passed
    assert known.get("pod-k") is None and not known.expects_new_key("pod-k")
