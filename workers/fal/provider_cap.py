"""A provider's concurrency cap, held across every worker and machine: leases in one Redis sorted set.

Each in-flight request holds a lease (member = the step's request key, score = lease expiry). A worker
that dies stops renewing, so its lease lapses and the slot comes back without anyone cleaning up.
"""

from __future__ import annotations

import time
from typing import Any

import redis

_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[4], ARGV[3])
  return 1
end
return 0
"""


class ProviderCap:
    def __init__(self, client: redis.Redis, provider: str, limit: int, lease_s: float = 120.0) -> None:
        self.r = client
        self.key = f"farm:cap:{provider}"
        self.limit = limit
        self.lease_s = lease_s
        self._acquire = client.register_script(_ACQUIRE)

    def acquire(self, holder: str) -> bool:
        """Take a slot (or renew the one `holder` has); False when the cap is reached."""
        now = time.time()
        args: list[Any] = [now, self.limit, holder, now + self.lease_s]
        return bool(self._acquire(keys=[self.key], args=args))

    def renew(self, holder: str) -> None:
        self.r.zadd(self.key, {holder: time.time() + self.lease_s}, xx=True)

    def release(self, holder: str) -> None:
        self.r.zrem(self.key, holder)

    def in_flight(self) -> int:
        self.r.zremrangebyscore(self.key, "-inf", time.time())
        return int(self.r.zcard(self.key))
