"""Paid requests by step: claimed before submitting, the provider's request id stored the moment it is
known. A redelivered task finds the id and resumes the same request instead of paying for a new one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import redis

RECORD_TTL_S = 14 * 24 * 3600
"""Kept two weeks: a resubmitted run of the same step joins a request still in flight."""


@dataclass(frozen=True)
class RequestRecord:
    state: str
    """claimed: submit under way (id unknown yet); submitted: id known; failed: the provider gave up."""
    request_id: str | None
    endpoint: str | None
    claimed_at: float
    attempts: int
    """How many paid submits were made for this step (more than one only after a provider failure)."""


class RequestBook:
    def __init__(self, client: redis.Redis, provider: str) -> None:
        self.r = client
        self.provider = provider

    def _key(self, step_id: str) -> str:
        return f"farm:req:{self.provider}:{step_id}"

    def get(self, step_id: str) -> RequestRecord | None:
        raw = self.r.get(self._key(step_id))
        return _decode(raw) if raw is not None else None

    def claim(self, step_id: str, endpoint: str) -> bool:
        """Atomically become the one submitter for this step; False when another attempt got there first."""
        record = {
            "state": "claimed",
            "request_id": None,
            "endpoint": endpoint,
            "claimed_at": time.time(),
            "attempts": self._attempts(step_id),
        }
        return bool(self.r.set(self._key(step_id), json.dumps(record), nx=True, ex=RECORD_TTL_S))

    def submitted(self, step_id: str, request_id: str, endpoint: str) -> None:
        record = {
            "state": "submitted",
            "request_id": request_id,
            "endpoint": endpoint,
            "claimed_at": time.time(),
            "attempts": self._attempts(step_id) + 1,
        }
        self.r.set(self._key(step_id), json.dumps(record), ex=RECORD_TTL_S)

    def release(self, step_id: str) -> None:
        """Forget the claim: the submit provably never reached the provider, or its request failed there."""
        record = self.get(step_id)
        attempts = record.attempts if record else 0
        self.r.delete(self._key(step_id))
        self.r.set(self._attempts_key(step_id), attempts, ex=RECORD_TTL_S)

    def _attempts_key(self, step_id: str) -> str:
        return self._key(step_id) + ":attempts"

    def _attempts(self, step_id: str) -> int:
        current = self.get(step_id)
        if current is not None:
            return current.attempts
        raw = self.r.get(self._attempts_key(step_id))
        return int(raw) if raw is not None else 0


def _decode(raw: Any) -> RequestRecord:
    data = json.loads(raw)
    return RequestRecord(
        data["state"],
        data.get("request_id"),
        data.get("endpoint"),
        float(data["claimed_at"]),
        int(data.get("attempts", 0)),
    )
