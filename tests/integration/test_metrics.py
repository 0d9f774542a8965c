"""The /metrics endpoint over a real redis-server: what workers counted and what the scrape reads, and only
for a scraper with the credentials."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
import redis

from farm.config.settings import Settings
from farm.ops.metrics import metric_value, metrics_credentials, serve_metrics
from farm.runs import counters, keys
from tests.conftest import ROOT
from tests.integration.conftest import read_until
from workers.gpu.pod_ledger import PodLedger

SCRAPER = ("prometheus", "scrape-test-password")


@pytest.fixture
def endpoint(client: redis.Redis) -> Iterator[str]:
    server, thread = serve_metrics(client, ("mt-post", "mt-gpu"), "127.0.0.1", 0, credentials=SCRAPER)
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def scrape(endpoint: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=endpoint, auth=SCRAPER) as web:
        yield web


def test_counted_events_and_pods_are_exported(client: redis.Redis, scrape: httpx.Client) -> None:
    for key in (keys.METRICS_STEPS, keys.METRICS_RETRIES, keys.METRICS_FAILURES, keys.METRICS_PAID):
        client.delete(key)
    for seconds in (0.5, 3.0, 3.0, 4000.0):
        counters.record_step(client, "video", "wan22", seconds)
    counters.record_retry(client, "video", "TransientError")
    counters.record_retry(client, "video", "wait:PoolFull")
    counters.record_failure(client, "t2i", "refused")
    counters.record_paid(client, "fal-ai/wan/v2.2", Decimal("0.15"))
    counters.record_paid(client, "fal-ai/wan/v2.2", Decimal("0.15"))
    registry = PodLedger(client)
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


def test_a_scrape_without_the_credentials_gets_401_and_no_metrics(endpoint: str) -> None:
    user, password = SCRAPER
    wrong = [
        {},
        {"Authorization": basic(user, "guess")},
        {"Authorization": basic("admin", password)},
        {"Authorization": basic(user, password + "x")},
        {"Authorization": basic(user, password[:-1])},
        {"Authorization": f"Bearer {password}"},
        {"Authorization": "Basic %%%not-base64"},
    ]
    with httpx.Client(base_url=endpoint) as web:
        for headers in wrong:
            refused = web.get("/metrics", headers=headers)
            assert refused.status_code == 401, headers
            assert refused.headers["www-authenticate"].startswith('Basic realm="farm metrics"')
            assert "farm_queue_waiting" not in refused.text
        allowed = web.get("/metrics", headers={"Authorization": basic(user, password)})
    assert allowed.status_code == 200 and "farm_queue_waiting" in allowed.text


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_scrape_password_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    user, password, generated = metrics_credentials(settings)
    assert generated and user == "prometheus" and len(password) >= 20
    assert (tmp_path / "metrics.json").stat().st_mode & 0o077 == 0
    assert metrics_credentials(settings) == (user, password, False)


def test_the_command_serves_on_loopback_behind_auth(redis_url: str, tmp_path: Path) -> None:
    env = {"FARM_REDIS_URL": redis_url, "FARM_HOME": str(tmp_path), "FARM_METRICS_PASSWORD": "cli-scrape"}
    command = [sys.executable, "-m", "farm.cli", "metrics", "--port", "0"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env_with(env), cwd=ROOT
    ) as child:
        try:
            banner = read_until(child, "(Ctrl-C stops)", timeout_s=30)
            url = next(word for word in banner.split() if word.startswith("http://"))
            assert url.startswith("http://127.0.0.1:"), "loopback unless told otherwise"
            assert "cli-scrape" not in banner, "a configured password is never printed"
            assert httpx.get(url).status_code == 401
            assert httpx.get(url, auth=("prometheus", "wrong")).status_code == 401
            assert httpx.get(url, auth=("prometheus", "cli-scrape")).status_code == 200
        finally:
            child.terminate()
            child.wait(10)


def env_with(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any FARM_* of the caller's, plus `extra`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("FARM_")}, **extra}
