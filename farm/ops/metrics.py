"""Prometheus metrics of the whole farm, from one place: Redis.

Workers count what happens (step durations by kind and engine, retries and failures by reason, paid calls
and their cost by endpoint) into Redis hashes as it happens, so every worker on every machine adds to the
same totals and a restart loses none. Everything else is read when Prometheus scrapes: each queue's backlog
(the broker's lists and unacked messages, which Flower does not show), the autoscaler's last decision per
queue (wanted, target and actual workers) and the GPU pool's pods by state with their $/hour.

The endpoint answers only requests with the scrape credential (HTTP basic auth, FARM_METRICS_USER and
FARM_METRICS_PASSWORD): what the farm spends and runs is not for anyone who can reach the port.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import socket
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from farm.config.credentials import kept_credentials
from farm.config.redis_text import as_text
from farm.config.settings import Settings
from farm.ops.autoscaler import last_decisions
from farm.runs import keys
from farm.runs.counters import DURATION_BUCKETS_S, SEP
from tasks.backlog import read_backlogs
from workers.gpu.pod_ledger import PodLedger

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

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
        for field, value in _hash(self.client, keys.METRICS_STEPS):
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
            (keys.METRICS_RETRIES, "farm_step_retries", "Step retries by kind and reason"),
            (keys.METRICS_FAILURES, "farm_step_failures", "Failed steps by kind and reason"),
        ):
            family = CounterMetricFamily(name, text, labels=["kind", "reason"])
            for field, value in _hash(self.client, key):
                family.add_metric(field.split(SEP), float(value))
            yield family
        calls = CounterMetricFamily("farm_paid_calls", "Paid provider calls by endpoint", labels=["endpoint"])
        cost = CounterMetricFamily("farm_paid_usd", "Dollars paid by endpoint", labels=["endpoint"])
        for field, value in _hash(self.client, keys.METRICS_PAID):
            endpoint, what = field.rsplit(SEP, 1)
            (calls if what == "calls" else cost).add_metric([endpoint], float(value))
        yield calls
        yield cost

    def _pods(self) -> Iterator[GaugeMetricFamily]:
        registry = PodLedger(self.client)
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


# serving ----------------------------------------------------------------------------------------------------

REALM = "farm metrics"


def metrics_credentials(settings: Settings) -> tuple[str, str, bool]:
    """(user, password, generated): FARM_METRICS_USER / FARM_METRICS_PASSWORD, else a password generated once
    and kept (mode 0600) in <home>/metrics.json."""
    return kept_credentials(settings.home / "metrics.json", settings.metrics_user, settings.metrics_password)


def require_basic_auth(app: WSGIApplication, user: str, password: str) -> WSGIApplication:
    """`app` behind HTTP basic auth: 401 with a challenge unless the request carries `user` and `password`.
    Both are compared in constant time, so timing tells nothing about how much of a guess was right."""
    expected_user, expected_password = user.encode(), password.encode()

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        sent_user, sent_password = _basic_credentials(environ.get("HTTP_AUTHORIZATION", ""))
        user_ok = secrets.compare_digest(sent_user, expected_user)
        if secrets.compare_digest(sent_password, expected_password) & user_ok:
            return app(environ, start_response)
        challenge = f'Basic realm="{REALM}", charset="UTF-8"'
        headers = [("WWW-Authenticate", challenge), ("Content-Type", "text/plain; charset=utf-8")]
        start_response("401 Unauthorized", headers)
        return [b"401: this endpoint needs the farm's metrics credentials (FARM_METRICS_USER/PASSWORD)\n"]

    return guarded


def _basic_credentials(header: str) -> tuple[bytes, bytes]:
    """(user, password) from an `Authorization: Basic ...` header; empty ones for anything else."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return b"", b""
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return b"", b""
    user, _, password = decoded.partition(b":")
    return user, password


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per scrape, none outliving the server."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No line on stderr per scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_metrics(
    client: redis.Redis, queues: Iterable[str], host: str, port: int, *, credentials: tuple[str, str]
) -> tuple[WSGIServer, threading.Thread]:
    """Serve /metrics behind basic auth (`credentials` = user, password) in a background thread; returns the
    server (its port) and thread, to stop them."""
    registry = CollectorRegistry()
    registry.register(FarmCollector(client, queues))
    app = require_basic_auth(make_wsgi_app(registry), *credentials)
    family, address = _listen_address(host, port)

    class MetricsServer(_Server):
        address_family = family

    server = make_server(address, port, app, MetricsServer, handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server, thread


def _listen_address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The address family and literal address to bind `host` (a name, an IPv4 or an IPv6 address) to."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    return family, str(sockaddr[0])


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
