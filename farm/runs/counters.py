"""What workers count as it happens, into Redis hashes the `/metrics` endpoint reads: step durations by kind
and engine, retries and failures by reason, paid calls and their cost by endpoint. Every worker on every
machine adds to the same totals, and a restart loses none."""

from __future__ import annotations

from decimal import Decimal

import redis

from farm.runs import keys

DURATION_BUCKETS_S = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0)
SEP = "|"


def record_step(client: redis.Redis, kind: str, engine: str, seconds: float) -> None:
    """A step that rendered (a reused output is not a render and is not timed)."""
    bucket = next((str(b) for b in DURATION_BUCKETS_S if seconds <= b), "+Inf")
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS_STEPS, SEP.join((kind, engine, bucket)), 1)
    pipe.hincrbyfloat(keys.METRICS_STEPS, SEP.join((kind, engine, "sum")), seconds)
    pipe.execute()


def record_paid(client: redis.Redis, endpoint: str, cost_usd: Decimal) -> None:
    pipe = client.pipeline(transaction=False)
    pipe.hincrby(keys.METRICS_PAID, SEP.join((endpoint, "calls")), 1)
    pipe.hincrbyfloat(keys.METRICS_PAID, SEP.join((endpoint, "usd")), float(cost_usd))
    pipe.execute()


def record_retry(client: redis.Redis, kind: str, reason: str) -> None:
    """`reason` is a short class of reason (an exception name), never free text: labels must stay few."""
    client.hincrby(keys.METRICS_RETRIES, SEP.join((kind, reason)), 1)


def record_failure(client: redis.Redis, kind: str, reason: str) -> None:
    client.hincrby(keys.METRICS_FAILURES, SEP.join((kind, reason)), 1)
