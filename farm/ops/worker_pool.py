"""The worker processes of one queue on this machine, grown and shrunk by the autoscaler.

Shrinking is a warm shutdown (SIGTERM): the worker takes no new message, finishes the steps it is running,
and exits; a message it had taken but not started goes back to its queue when its connection closes. So a
scale-down never kills a running step. A worker leaving is `draining` until it has exited.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from dataclasses import dataclass, field
from itertools import count

from farm.ops.supervisor import Farm, start_worker

log = logging.getLogger(__name__)


@dataclass
class LocalWorkers:
    farm: Farm
    queue: str
    active: list[subprocess.Popen[bytes]] = field(default_factory=list)
    draining: list[subprocess.Popen[bytes]] = field(default_factory=list)
    retired: list[subprocess.Popen[bytes]] = field(default_factory=list)
    """Workers that left after a scale-down, once exited (their exit codes tell a warm exit from a kill)."""
    _numbers: count[int] = field(default_factory=lambda: count(1))

    def count(self) -> int:
        """Workers taking work now (a worker that died on its own is forgotten, and replaced next tick)."""
        for process in [p for p in self.active if p.poll() is not None]:
            log.warning("worker %s of %s exited with %s", process.pid, self.queue, process.returncode)
            self.active.remove(process)
        self.retired += [p for p in self.draining if p.poll() is not None]
        self.draining = [p for p in self.draining if p.poll() is None]
        return len(self.active)

    def scale_to(self, target: int) -> None:
        while len(self.active) < target:
            log_name = f"worker-{self.queue}-{next(self._numbers)}.log"
            self.active.append(start_worker(self.farm, self.queue, log_name))
        while len(self.active) > target:
            leaving = self.active.pop()  # the newest: the oldest have warmed their caches longest
            leaving.send_signal(signal.SIGTERM)
            self.draining.append(leaving)

    def stop(self, timeout_s: float = 60.0) -> None:
        """Warm shutdown of every worker, then make sure none is left."""
        self.scale_to(0)
        deadline = time.monotonic() + timeout_s
        for process in self.draining:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.retired += self.draining
        self.draining = []
