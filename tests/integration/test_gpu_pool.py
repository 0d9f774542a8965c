"""The GPU pool against the RunPod emulator driven by the real runpod SDK, with a real redis-server."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator

import pytest
import redis

from emulators.runpod_server import FakeBackend, RunpodEmulator, RunpodFaults
from farm.ops.autoscaler import Autoscaler
from farm.ops.pod_scaling import POD_POOL, PodPoolScaling
from farm.ops.scaling_rules import ScalingPolicy
from workers.base import CapacityWait
from workers.gpu.pod_ledger import PodLedger
from workers.gpu.pods import NoCapacity, PodSpec, RunpodAuthError, RunpodPods
from workers.gpu.pool import GpuPool, PoolFull, PoolLimits

KEY = "pool-test-key"


@pytest.fixture
def emulator() -> Iterator[RunpodEmulator]:
    with RunpodEmulator(
        api_key=KEY, backend=FakeBackend(), faults=RunpodFaults(runtime_delay_polls=1)
    ) as emu:
        yield emu


@pytest.fixture
def pool(emulator: RunpodEmulator, client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> GpuPool:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    pods = RunpodPods(
        KEY,
        base_url=emulator.url,
        spec=PodSpec(network_volume_id="vol-models", public_key="ssh-ed25519 AAAAtest farm"),
    )
    return GpuPool(
        pods,
        PodLedger(client),
        PoolLimits(max_pods=2, max_usd_per_hr=3.0, idle_timeout_s=0.5, lease_ttl_s=5, ssh_wait_s=10),
    )


def test_a_pod_is_created_with_the_farm_spec_and_its_ssh_endpoint_read(
    pool: GpuPool, emulator: RunpodEmulator
) -> None:
    lease = pool.acquire("qwen", "worker-1")
    assert lease.endpoint.host == "127.0.0.1" and lease.endpoint.port > 0
    deploy = next(q for q in emulator.queries() if "podFindAndDeployOnDemand" in q)
    for expected in ("NVIDIA A100 80GB PCIe", "vol-models", "22/tcp,8188/http", "/workspace", "PUBLIC_KEY"):
        assert expected in deploy
    assert pool.registry.get(lease.pod_id).lease_holder == "worker-1"  # type: ignore[union-attr]


def test_warm_pods_are_reused_and_the_caps_hold(pool: GpuPool) -> None:
    first = pool.acquire("wan", "w1")
    pool.release(first, family="wan", busy_s=2.0)
    again = pool.acquire("wan", "w2")
    assert again.pod_id == first.pod_id, "a warm pod with the same models is reused"
    second = pool.acquire("qwen", "w3")
    assert second.pod_id != first.pod_id
    with pytest.raises(PoolFull):
        pool.acquire("qwen", "w4")  # two pods at $1.19/h: a third would pass the $3/h cap


def test_idle_pods_are_stopped_and_resumed_on_a_new_ssh_port(pool: GpuPool) -> None:
    lease = pool.acquire("qwen", "w1")
    pool.release(lease, family="qwen", busy_s=1.0)
    time.sleep(0.6)
    report = pool.reap()
    assert report.stopped_idle == [lease.pod_id]
    assert pool.pods.get(lease.pod_id).status == "EXITED"
    resumed = pool.acquire("qwen", "w2")
    assert resumed.pod_id == lease.pod_id and resumed.resumed
    assert resumed.endpoint.port != lease.endpoint.port, "the endpoint is read again after a resume"


@pytest.mark.chaos
def test_reconcile_stops_orphans_and_forgets_vanished_pods(pool: GpuPool, emulator: RunpodEmulator) -> None:
    orphan_id = pool.pods.create("farm-gpu-orphan")  # e.g. a worker crashed before registering it
    kept = pool.acquire("qwen", "w1")
    gone = pool.acquire("wan", "w2")
    emulator.vanish(gone.pod_id)
    report = pool.reap()
    assert report.stopped_orphans == [orphan_id]
    assert report.forgotten == [gone.pod_id]
    assert pool.pods.get(orphan_id).status == "EXITED"
    assert pool.pods.get(kept.pod_id).status == "RUNNING", "a leased pod is never stopped"


def test_errors_are_translated(pool: GpuPool, emulator: RunpodEmulator) -> None:
    emulator.set_faults(RunpodFaults(no_capacity=True))
    with pytest.raises(NoCapacity, match="retry later"):
        pool.acquire("qwen", "w1")
    emulator.set_faults(RunpodFaults(unauthorized=True))
    with pytest.raises(RunpodAuthError):
        pool.pods.list()


def test_a_sold_out_gpu_type_falls_back_to_the_configured_others(
    pool: GpuPool, emulator: RunpodEmulator
) -> None:
    main, sxm, h100 = "NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB", "NVIDIA H100 80GB HBM3"
    emulator.set_faults(RunpodFaults(runtime_delay_polls=1, sold_out=(main, sxm)))
    pool.limits = dataclasses.replace(pool.limits, fallback_gpu_types=(sxm, h100))
    lease = pool.acquire("qwen", "w1")
    assert emulator.pods()[lease.pod_id]["machine"]["gpuDisplayName"] == "H100 SXM"
    assert pool.registry.get(lease.pod_id).gpu == "H100 SXM"  # type: ignore[union-attr]
    emulator.set_faults(RunpodFaults(sold_out=(main, sxm, h100)))
    with pytest.raises(NoCapacity, match=f"none of {main}, {sxm}, {h100}") as caught:
        pool.acquire("qwen", "w2")
    assert isinstance(caught.value, CapacityWait), "waiting for stock does not use up a step's retries"


def test_a_pod_that_never_gets_a_runtime_is_terminated(pool: GpuPool, emulator: RunpodEmulator) -> None:
    emulator.set_faults(RunpodFaults(never_runtime=True))
    pool.limits = PoolLimits(ssh_wait_s=0.5, ssh_poll_s=0.05)
    with pytest.raises(Exception, match="no SSH endpoint"):
        pool.acquire("qwen", "w1")
    assert emulator.pods() == {}, "a pod that never came up is not left running"
    assert pool.registry.pods() == []


def test_the_gpu_backlog_starts_pods_within_the_caps_and_stops_only_idle_ones_when_it_drains(
    pool: GpuPool, emulator: RunpodEmulator, client: redis.Redis
) -> None:
    scaling = PodPoolScaling(pool)
    policy = ScalingPolicy(0, 3, per_worker=1, up_cooldown_s=0, down_cooldown_s=0.5)  # 3 > what $3/h buys
    autoscaler = Autoscaler(client, {POD_POOL: scaling}, {POD_POOL: policy}, sources={POD_POOL: "pods-test"})
    client.lpush("pods-test", *[json.dumps({"headers": {}}) for _ in range(5)])
    try:
        (grow,) = autoscaler.tick()
        assert (grow.action, grow.target) == ("up", 3)
        for start in scaling.starts:
            start.join(30)
        assert scaling.count() == 2, "the $3/h cap stops the third pod ($1.19/h each)"
        running = [p for p in emulator.pods().values() if p["desiredStatus"] == "RUNNING"]
        assert len(running) == 2
        busy = pool.acquire("qwen", "worker-1")
    finally:
        client.delete("pods-test")
    (wait,) = autoscaler.tick()
    assert wait.action == "hold" and "down-cooldown" in wait.reason
    time.sleep(0.6)
    (shrink,) = autoscaler.tick()
    assert (shrink.action, shrink.target) == ("down", 0)
    states = {p.id: p.state for p in pool.registry.pods()}
    assert states.pop(busy.pod_id) == "running", "a pod a step holds is never stopped"
    assert list(states.values()) == ["stopped"]
    assert pool.pods.get(next(iter(states))).status == "EXITED"
