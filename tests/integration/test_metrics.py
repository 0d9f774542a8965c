"""The /metrics endpoint over a real redis-server: what workers counted and what the scrape reads."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest
import redis

from farm import metrics
from farm.metrics import metric_value, serve_metrics
from farm.pod_registry import PodRegistry


@pytest.fixture
def scrape(client: redis.Redis) -> Iterator[httpx.Client]:
    server, thread = serve_metrics(client, ("mt-post", "mt-gpu"), "127.0.0.1", 0)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.server_port}") as web:
            yield web
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_counted_events_and_pods_are_exported(client: redis.Redis, scrape: httpx.Client) -> None:
    for key in (metrics.STEPS_KEY, metrics.RETRIES_KEY, metrics.FAILURES_KEY, metrics.PAID_KEY):
        client.delete(key)
    for seconds in (0.5, 3.0, 3.0, 4000.0):
        metrics.record_step(client, "video", "wan22", seconds)
    metrics.record_retry(client, "video", "TransientError")
    metrics.record_retry(client, "video", "wait:PoolFull")
    metrics.record_failure(client, "t2i", "refused")
    metrics.record_paid(client, "fal-ai/wan/v2.2", Decimal("0.15"))
    metrics.record_paid(client, "fal-ai/wan/v2.2", Decimal("0.15"))
    registry = PodRegistry(client)
    registry.register("mt-pod-1", "farm-gpu-a", gpu="A100", cost_per_hr=1.19, state="running")
    registry.register("mt-pod-2", "farm-gpu-b", gpu="A100", cost_per_hr=1.19, state="stopped")
    client.lpush("mt-post", "x", "y")
    try:
        text = scrape.get("/metrics").text
    finally:
        registry.forget("mt-pod-1")
        registry.forget("mt-pod-2")
        client.delete("mt-post")

    video = {"kind": "video", "engine": "wan22"}
    assert metric_value(text, "farm_step_duration_seconds_count", video) == 4
    assert metric_value(text, "farm_step_duration_seconds_sum", video) == pytest.approx(4006.5)
    assert metric_value(text, "farm_step_duration_seconds_bucket", {**video, "le": "1.0"}) == 1
    assert metric_value(text, "farm_step_duration_seconds_bucket", {**video, "le": "5.0"}) == 3
    assert metric_value(text, "farm_step_duration_seconds_bucket", {**video, "le": "1800.0"}) == 3
    assert metric_value(text, "farm_step_duration_seconds_bucket", {**video, "le": "+Inf"}) == 4
    assert metric_value(text, "farm_step_retries_total", {"kind": "video", "reason": "wait:PoolFull"}) == 1
    assert metric_value(text, "farm_step_failures_total", {"kind": "t2i", "reason": "refused"}) == 1
    assert metric_value(text, "farm_paid_calls_total", {"endpoint": "fal-ai/wan/v2.2"}) == 2
    assert metric_value(text, "farm_paid_usd_total", {"endpoint": "fal-ai/wan/v2.2"}) == pytest.approx(0.30)
    assert metric_value(text, "farm_pods", {"state": "running"}) == 1
    assert metric_value(text, "farm_pods", {"state": "stopped"}) == 1
    assert metric_value(text, "farm_pods_usd_per_hour") == pytest.approx(1.19), "a stopped pod costs nothing"
    assert metric_value(text, "farm_queue_waiting", {"queue": "mt-post"}) == 2
    assert metric_value(text, "farm_queue_waiting", {"queue": "mt-gpu"}) == 0
