"""Prometheus metrics of the whole farm, from one place: Redis.

Workers count what happens (step durations by kind and engine, retries and failures by reason, paid calls
and their cost by endpoint) into Redis hashes as it happens, so every worker on every machine adds to the
same totals and a restart loses none. Everything else is read when Prometheus scrapes: each queue's backlog
(the broker's lists and unacked messages, which Flower does not show), the autoscaler's last decision per
queue (wanted, target and actual workers) and the GPU pool's pods by state with their $/hour.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from decimal import Decimal
from wsgiref.simple_server import WSGIServer

import redis
from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from farm.autoscaler import last_decisions
from farm.backlog import read_backlogs
from farm.pod_registry import PodRegistry
from farm.redis_values import as_text

STEPS_KEY = "farm:metrics:steps"
RETRIES_KEY = "farm:metrics:retries"
FAILURES_KEY = "farm:metrics:failures"
PAID_KEY = "farm:metrics:paid"
DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
SEP = "|"


# recording (workers) ----------------------------------------------------------------------------------------


def record_step(client: redis.Redis, kind: str, engine: str, seconds: float) -> None:
    """A step that rendered (a reused output is not a render and is not timed)."""
    bucket = next((str(b) for b in DURATION_BUCKETS_S if seconds <= b), "+Inf")
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(STEPS_KEY, SEP.join((kind, engine, bucket)), 1)
    pipe.hincrbyfloat(STEPS_KEY, SEP.join((kind, engine, "sum")), seconds)
    pipe.execute()


def record_paid(client: redis.Redis, endpoint: str, cost_usd: Decimal) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(PAID_KEY, SEP.join((endpoint, "calls")), 1)
    pipe.hincrbyfloat(PAID_KEY, SEP.join((endpoint, "usd")), float(cost_usd))
    pipe.execute()


def record_retry(client: redis.Redis, kind: str, reason: str) -> None:
    """`reason` is a short class of reason (an exception name), never free text: labels must stay few."""
    client.hincrby(RETRIES_KEY, SEP.join((kind, reason)), 1)


def record_failure(client: redis.Redis, kind: str, reason: str) -> None:
    client.hincrby(FAILURES_KEY, SEP.join((kind, reason)), 1)


# reading (the endpoint) -------------------------------------------------------------------------------------


class FarmCollector(Collector):
    """Reads Redis on every scrape; nothing is cached between scrapes."""

    def __init__(self, client: redis.Redis, queues: Iterable[str]) -> None:
        self.client, self.queues = client, tuple(queues)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        yield from self._backlog()
        yield from self._workers()
        yield self._durations()
        yield from self._counted()
        yield from self._pods()

    def _backlog(self) -> Iterator[GaugeMetricFamily]:
        readings = read_backlogs(self.client, self.queues)
        parts = (
            ("waiting", "Messages waiting in the queue's lists, every priority"),
            ("reserved", "Messages taken by a worker and not yet acknowledged (running or prefetched)"),
            ("delayed", "Messages a worker holds until their countdown ends"),
            ("ready", "Ready steps the scheduler holds for want of a worker slot (within the provider cap)"),
        )
        for part, text in parts:
            family = GaugeMetricFamily(f"farm_queue_{part}", text, labels=["queue"])
            for queue, backlog in readings.items():
                family.add_metric([queue], getattr(backlog, part))
            yield family

    def _workers(self) -> Iterator[GaugeMetricFamily]:
        decisions = last_decisions(self.client)
        for field, text in (
            ("wanted", "Workers (pods for gpu-pods) the backlog asks for, within min and max"),
            ("target", "Workers the autoscaler asked the pool to have"),
            ("actual", "Workers the pool had at the last decision"),
        ):
            family = GaugeMetricFamily(f"farm_workers_{field}", text, labels=["pool"])
            for pool, doc in sorted(decisions.items()):
                family.add_metric([pool], float(str(doc[field])))
            yield family

    def _durations(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "farm_step_duration_seconds", "Seconds a rendered step took", labels=["kind", "engine"]
        )
        counts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
        for field, value in _hash(self.client, STEPS_KEY):
            kind, engine, bucket = field.split(SEP)
            counts[(kind, engine)][bucket] = float(value)
        for (kind, engine), values in sorted(counts.items()):
            running, buckets = 0.0, []
            for bound in (*map(str, DURATION_BUCKETS_S), "+Inf"):
                running += values.get(bound, 0.0)
                buckets.append((bound, running))
            family.add_metric([kind, engine], buckets, values.get("sum", 0.0))
        return family

    def _counted(self) -> Iterator[CounterMetricFamily]:
        for key, name, text in (
            (RETRIES_KEY, "farm_step_retries", "Step retries by kind and reason"),
            (FAILURES_KEY, "farm_step_failures", "Failed steps by kind and reason"),
        ):
            family = CounterMetricFamily(name, text, labels=["kind", "reason"])
            for field, value in _hash(self.client, key):
                family.add_metric(field.split(SEP), float(value))
            yield family
        calls = CounterMetricFamily("farm_paid_calls", "Paid provider calls by endpoint", labels=["endpoint"])
        cost = CounterMetricFamily("farm_paid_usd", "Dollars paid by endpoint", labels=["endpoint"])
        for field, value in _hash(self.client, PAID_KEY):
            endpoint, what = field.rsplit(SEP, 1)
            (calls if what == "calls" else cost).add_metric([endpoint], float(value))
        yield calls
        yield cost

    def _pods(self) -> Iterator[GaugeMetricFamily]:
        registry = PodRegistry(self.client)
        pods = registry.pods()
        count = GaugeMetricFamily("farm_pods", "GPU pods the pool knows, by state", labels=["state"])
        hourly = GaugeMetricFamily("farm_pods_usd_per_hour", "What the pool's live pods cost per hour")
        by_state: dict[str, int] = defaultdict(int)
        for pod in pods:
            by_state[pod.state] += 1
        for state, n in sorted(by_state.items()):
            count.add_metric([state], n)
        hourly.add_metric([], registry.hourly_cost())
        yield count
        yield hourly


def serve_metrics(
    client: redis.Redis, queues: Iterable[str], host: str, port: int
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics in a background thread; returns the server (its port) and thread, to stop them."""
    registry = CollectorRegistry()
    registry.register(FarmCollector(client, queues))
    return start_http_server(port, addr=host, registry=registry)


def _hash(client: redis.Redis, key: str) -> list[tuple[str, str]]:
    return [(as_text(k), as_text(v)) for k, v in client.hgetall(key).items()]


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """One sample from an exposition text (for tests and `farm metrics --once`)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(sample.value)
    return None
