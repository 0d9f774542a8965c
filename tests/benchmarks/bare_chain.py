"""A bare Celery app for the hop benchmark: one no-op task and the farm's own Celery settings.

Its worker runs as `celery -A tests.benchmarks.bare_chain worker -Q bench-hop ...` with the same pool and
flags as the farm's worker for the queue being compared; the broker comes from the farm's settings
(FARM_REDIS_URL), so it shares the farm's Redis. Each task notes its start and end times in a Redis list,
which is all the benchmark reads.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, Task

from farm.config.settings import load_settings
from tasks.app import broker_url
from tasks.config import celery_config

QUEUE = "bench-hop"
TASK = "bench.noop"

_clients: dict[int, redis.Redis] = {}


def _client(url: str) -> redis.Redis:
    """One connection per process (a prefork child must not share its parent's)."""
    pid = os.getpid()
    if pid not in _clients:
        _clients[pid] = redis.Redis.from_url(url)
    return _clients[pid]


def noop(task: Task[Any, Any], index: int, key: str) -> None:
    """Do nothing but note when it ran."""
    started = time.time()
    _client(str(task.app.conf.broker_url)).rpush(key, json.dumps([index, started, time.time()]))


def make_app(url: str) -> Celery:
    """An app with the farm's Celery settings and the one task (registered with this app only)."""
    celery = Celery("bench_hop")
    celery.conf.update(celery_config(url))
    celery.conf.task_default_queue = QUEUE
    celery.task(name=TASK, bind=True, shared=False)(noop)
    return celery


app = make_app(broker_url(load_settings()))
