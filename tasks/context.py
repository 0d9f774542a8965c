"""Per-process worker resources, made after fork: settings, Redis, run store, artifact store, engines."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import redis

from farm.config.settings import Settings, load_settings
from farm.runs.scheduler import Scheduler
from farm.runs.state import RunStore
from farm.storage.artifacts import store_from_settings
from farm.storage.stores import ArtifactStore
from tasks.app import app, broker_url
from tasks.sender import CelerySender
from workers.backends import EngineServices, make_engine
from workers.base import Engine


@dataclass
class WorkerContext:
    settings: Settings
    runs: RunStore
    store: ArtifactStore
    sender: CelerySender
    scheduler: Scheduler
    engines: dict[str, Engine] = field(default_factory=dict)
    _engines_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def engine(self, name: str) -> Engine:
        """One engine per name and process, however many threads ask at once (a cloud worker's first
        burst would otherwise build a fal client per thread)."""
        with self._engines_lock:
            if name not in self.engines:
                self.engines[name] = make_engine(name, EngineServices(self.settings, self.runs.r))
            return self.engines[name]


LANES_TTL_S = 1.0
"""How long a worker reuses a lane's limit read from the announcements (refreshed every 5 s)."""

_by_pid: dict[int, WorkerContext] = {}
_by_pid_lock = threading.Lock()


def context() -> WorkerContext:
    """One context per process: Redis connections must not be shared across a fork."""
    pid = os.getpid()
    with _by_pid_lock:
        if pid not in _by_pid:
            settings = load_settings()
            client = redis.Redis.from_url(broker_url(settings))
            _by_pid[pid] = WorkerContext(
                settings,
                RunStore(client),
                store_from_settings(settings),
                CelerySender(app),
                Scheduler(client, lanes_ttl_s=LANES_TTL_S),
            )
        return _by_pid[pid]
