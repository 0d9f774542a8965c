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
from workers.backends import BackendServices, make_backend
from workers.base import Backend


@dataclass
class WorkerContext:
    settings: Settings
    runs: RunStore
    store: ArtifactStore
    sender: CelerySender
    scheduler: Scheduler
    backends: dict[str, Backend] = field(default_factory=dict)
    _backends_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def backend(self, name: str) -> Backend:
        """One backend per name and process, however many threads ask at once (a cloud worker's first
        burst would otherwise build a fal client per thread)."""
        with self._backends_lock:
            if name not in self.backends:
                self.backends[name] = make_backend(name, BackendServices(self.settings, self.runs.r))
            return self.backends[name]


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
