"""The GPU pool's own record of its pods, in Redis: state, price, last use, loaded model family, leases.

A GPU worker holds a pod through a lease with a TTL, renewed while it works; a worker that dies stops
renewing, the lease lapses, and the reaper sees an idle pod. A pod has `slots` leases (jobs at a time,
one unless configured otherwise); each is a key of its own, so leasing is one atomic script. The SSH
endpoint is deliberately not kept: it changes on every resume and is always read from RunPod's API.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis

from farm.config.redis_text import as_text, as_texts

PODS_KEY = "farm:pods"
RUN_POD_TTL_S = 24 * 3600
"""How long the pool remembers which pod holds a step's ComfyUI run (longer than any redelivery)."""
LIVE_STATES = ("starting", "running")
MAX_SLOTS = 8
"""Jobs per pod are capped here; reads look at every possible slot, whatever this process's setting."""

# KEYS: a pod's slot keys. ARGV: holder, ttl in ms.
_LEASE = """
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then return i end
end
return 0
"""
_RENEW = """
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[i], ARGV[2]) end
end
return 0
"""
# ARGV[3]: ":<step id>", the end of every holder name for that step.
_TAKE_OVER = """
local free = nil
for i = 1, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder and string.sub(holder, -string.len(ARGV[3])) == ARGV[3] then
    redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    return 1
  end
  if not holder and not free then free = i end
end
if free then
  redis.call('SET', KEYS[free], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# KEYS[1]: the pod's record, then its slot keys. ARGV: holder, now, family, busy seconds.
_RELEASE = """
for i = 2, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    redis.call('HSET', KEYS[1], 'last_used', ARGV[2], 'family', ARGV[3])
    redis.call('HINCRBYFLOAT', KEYS[1], 'busy_s', ARGV[4])
    return 1
  end
end
return 0
"""


@dataclass(frozen=True)
class PodRecord:
    id: str
    name: str
    state: str
    gpu: str
    cost_per_hr: float
    created_at: float
    last_used: float
    family: str
    busy_s: float
    lease_holders: tuple[str, ...]
    comfy_pid: int | None
    comfy_nodes: str = ""
    """The fingerprint of the custom-node list the pod was set up for."""

    @property
    def lease_holder(self) -> str | None:
        """Who holds the pod (several names when it runs several jobs), None when nobody does."""
        return ", ".join(self.lease_holders) or None

    @property
    def idle_s(self) -> float:
        return time.time() - self.last_used if not self.lease_holders else 0.0


class PodLedger:
    def __init__(self, client: redis.Redis, slots: int = 1) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"jobs per pod must be between 1 and {MAX_SLOTS}, not {slots}")
        self.r = client
        self.slots = slots
        self._lease = client.register_script(_LEASE)
        self._unlock = client.register_script(_UNLOCK)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._take_over = client.register_script(_TAKE_OVER)

    @staticmethod
    def key(pod_id: str, part: str = "") -> str:
        return f"farm:pod:{pod_id}" + (f":{part}" if part else "")

    def register(
        self, pod_id: str, name: str, *, gpu: str, cost_per_hr: float, state: str = "starting"
    ) -> None:
        now = time.time()
        fields: dict[Any, Any] = {
            "name": name,
            "state": state,
            "gpu": gpu,
            "cost_per_hr": cost_per_hr,
            "created_at": now,
            "last_used": now,
            "family": "",
            "busy_s": 0,
        }
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key(pod_id), mapping=fields)
        pipe.sadd(PODS_KEY, pod_id)
        pipe.execute()

    def set(self, pod_id: str, **fields: Any) -> None:
        self.r.hset(self.key(pod_id), mapping=dict(fields.items()))

    def forget(self, pod_id: str) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(self.key(pod_id), self.key(pod_id, "setup"), *self._slot_keys(pod_id, MAX_SLOTS))
        pipe.srem(PODS_KEY, pod_id)
        pipe.execute()

    # leases --------------------------------------------------------------------------------------
    def _slot_keys(self, pod_id: str, count: int | None = None) -> list[str]:
        return [self.key(pod_id, f"lease:{n}") for n in range(count or self.slots)]

    def lease(self, pod_id: str, holder: str, ttl_s: float) -> bool:
        """Take a free slot of the pod, if it has one."""
        return bool(self._lease(keys=self._slot_keys(pod_id), args=[holder, int(ttl_s * 1000)]))

    def take_over(self, pod_id: str, holder: str, ttl_s: float, step_id: str) -> bool:
        """Lease a pod that is free or held for the same step: a redelivered step inherits the lease its
        dead predecessor never released, instead of waiting out the TTL or rendering elsewhere."""
        args: list[str | int] = [holder, int(ttl_s * 1000), f":{step_id}"]
        return bool(self._take_over(keys=self._slot_keys(pod_id), args=args))

    def renew(self, pod_id: str, holder: str, ttl_s: float) -> bool:
        return bool(self._renew(keys=self._slot_keys(pod_id), args=[holder, int(ttl_s * 1000)]))

    def release(self, pod_id: str, holder: str, *, family: str, busy_s: float) -> bool:
        keys = [self.key(pod_id), *self._slot_keys(pod_id)]
        return bool(self._release(keys=keys, args=[holder, time.time(), family, busy_s]))

    @contextlib.contextmanager
    def setup_lock(
        self, pod_id: str, ttl_s: float, wait_s: float, tick: Callable[[], object] = lambda: None
    ) -> Iterator[None]:
        """One worker at a time gets ComfyUI ready on a pod (jobs sharing a pod would start it twice).
        TimeoutError when another worker holds it longer than `wait_s`; `tick` runs while waiting."""
        key, token = self.key(pod_id, "setup"), secrets.token_hex(8)
        deadline = time.monotonic() + wait_s
        while not self.r.set(key, token, nx=True, px=int(ttl_s * 1000)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"another worker has been setting up pod {pod_id} for over {wait_s:g} s")
            tick()
            time.sleep(0.2)
        try:
            yield
        finally:
            self._unlock(keys=[key], args=[token])

    # where a step's ComfyUI run lives ---------------------------------------------------------------
    def remember_run(self, step_id: str, pod_id: str) -> None:
        """Noted before a step's prompt is submitted: its retry goes back to that pod's history."""
        self.r.set(f"farm:pod-run:{step_id}", pod_id, ex=RUN_POD_TTL_S)

    def run_pod(self, step_id: str) -> str | None:
        raw = self.r.get(f"farm:pod-run:{step_id}")
        return as_text(raw) if raw is not None else None

    def forget_run(self, step_id: str) -> None:
        self.r.delete(f"farm:pod-run:{step_id}")

    # reads ---------------------------------------------------------------------------------------
    def get(self, pod_id: str) -> PodRecord | None:
        raw = self.r.hgetall(self.key(pod_id))
        if not raw:
            return None
        holders = tuple(as_text(h) for h in self.r.mget(self._slot_keys(pod_id, MAX_SLOTS)) if h is not None)
        return _record(pod_id, as_texts(raw), holders)

    def pods(self) -> list[PodRecord]:
        records = [self.get(as_text(p)) for p in sorted(self.r.smembers(PODS_KEY))]
        return [r for r in records if r is not None]

    def candidates(self, family: str) -> list[PodRecord]:
        """Free pods in the order worth trying: warm with the same models, warm, then stopped ones."""
        free = [
            p for p in self.pods() if len(p.lease_holders) < self.slots and p.state in ("running", "stopped")
        ]
        return sorted(
            free,
            key=lambda p: (p.state != "running", p.family != family, len(p.lease_holders), -p.last_used),
        )

    def idle(self, timeout_s: float) -> list[PodRecord]:
        return [
            p for p in self.pods() if p.state == "running" and not p.lease_holders and p.idle_s > timeout_s
        ]

    def hourly_cost(self) -> float:
        """What the pool's live pods cost per hour right now (the $/hour cap is checked against it)."""
        return sum(p.cost_per_hr for p in self.pods() if p.state in LIVE_STATES)


def _record(pod_id: str, h: dict[str, str], holders: tuple[str, ...]) -> PodRecord:
    return PodRecord(
        id=pod_id,
        name=h.get("name", ""),
        state=h.get("state", "unknown"),
        gpu=h.get("gpu", ""),
        cost_per_hr=float(h.get("cost_per_hr", 0)),
        created_at=float(h.get("created_at", 0)),
        last_used=float(h.get("last_used", 0)),
        family=h.get("family", ""),
        busy_s=float(h.get("busy_s", 0)),
        lease_holders=holders,
        comfy_pid=int(h["comfy_pid"]) if h.get("comfy_pid") else None,
        comfy_nodes=h.get("comfy_nodes", ""),
    )


WINDOW_FIELD = "host_key_window_until"
"""Until when a pod the pool just created or resumed may show a host key not yet pinned."""


class LedgerKnownHosts:
    """Pinned SSH host keys kept with each pod's record, so every GPU worker on every machine agrees."""

    def __init__(self, registry: PodLedger) -> None:
        self.registry = registry

    def get(self, pod_id: str) -> str | None:
        raw = self.registry.r.hget(self.registry.key(pod_id), "host_key")
        return as_text(raw) if raw is not None else None

    def pin(self, pod_id: str, key: str) -> None:
        """Keep the key and close the window: from now on only this key is accepted."""
        pipe = self.registry.r.pipeline(transaction=True)
        pipe.hset(self.registry.key(pod_id), "host_key", key)
        pipe.hdel(self.registry.key(pod_id), WINDOW_FIELD)
        pipe.execute()

    def expects_new_key(self, pod_id: str) -> bool:
        until = self.registry.r.hget(self.registry.key(pod_id), WINDOW_FIELD)
        return until is not None and float(until) > time.time()

    def expect_new_key(self, pod_id: str, within_s: float) -> None:
        """The pool has just created or resumed the pod: a fresh container brings a fresh host key, and the
        first contact within `within_s` pins it. Any pin of the old container is forgotten."""
        pipe = self.registry.r.pipeline(transaction=True)
        pipe.hdel(self.registry.key(pod_id), "host_key")
        pipe.hset(self.registry.key(pod_id), WINDOW_FIELD, str(time.time() + within_s))
        pipe.execute()
