"""Celery settings for long, paid tasks. Kept apart from the app so tests can read them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.config.redis_connection import celery_ssl
from farm.planning.plan import StepKind

TIME_LIMITS_S: dict[StepKind, tuple[int, int]] = {
    StepKind.T2I: (300, 360),
    StepKind.IMG2IMG: (300, 360),
    StepKind.UPSCALE: (300, 360),
    StepKind.SPLIT: (60, 90),
    StepKind.VIDEO: (1500, 1800),
    StepKind.KEN_BURNS: (300, 360),
    StepKind.HOLD: (300, 360),
    StepKind.CONCAT: (600, 720),
}
"""(soft, hard) seconds per step kind. Soft fails the step with a reason; hard kills a stuck child."""

VISIBILITY_TIMEOUT_S = max(hard for _, hard in TIME_LIMITS_S.values()) + 600
"""A message unacked this long is handed to another worker: it must outlast the longest hard limit,
or a slow video would be delivered twice while still running."""


MIN_SOFT_S = 60


def scaled_limits(scale: float) -> tuple[dict[StepKind, tuple[int, int]], int]:
    """Time limits and visibility timeout shrunk (or grown) together, keeping their order.

    Limits never drop below 60 s soft / 65 s hard, so a shrunk farm (tests on a busy machine) still has
    time for real work.
    """
    limits = {}
    for kind, (soft, hard) in TIME_LIMITS_S.items():
        scaled_soft = max(MIN_SOFT_S, round(soft * scale))
        limits[kind] = (scaled_soft, max(scaled_soft + 5, round(hard * scale)))
    longest = max(hard for _, hard in limits.values())
    return limits, max(longest + 10, round(VISIBILITY_TIMEOUT_S * scale))


def task_name(kind: StepKind) -> str:
    return f"farm.{kind.value}"


def celery_config(broker_url: str, time_limit_scale: float = 1.0) -> dict[str, Any]:
    limits, visibility = scaled_limits(time_limit_scale)
    return {
        "broker_url": broker_url,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": visibility},
        # JSON only: a pickled message is refused, never executed.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        # Paid, long steps: ack after the work, requeue if the worker process dies, one message at a time.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Step state lives in the farm's own Redis keys, so no result backend is needed.
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # Flower sees every step: sent, started, succeeded, failed.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_default_queue": "post",
        "task_create_missing_queues": True,
        "worker_hijack_root_logger": False,
        "task_annotations": {
            task_name(kind): {"soft_time_limit": soft, "time_limit": hard}
            for kind, (soft, hard) in limits.items()
        },
        **redis_tls(broker_url),
    }


def redis_tls(broker_url: str) -> dict[str, Any]:
    """For a rediss:// broker, the TLS options kombu and a Redis result backend need in their own settings
    (Flower's Redis view reads `broker_use_ssl` too); nothing for plain redis://."""
    options = celery_ssl(broker_url)
    if options is None:
        return {}
    return {"broker_use_ssl": options, "redis_backend_use_ssl": options}


@dataclass(frozen=True)
class Signing:
    """Where a signing farm process finds its private key, its certificate and the certificates it trusts."""

    key: Path
    cert: Path
    cert_store: Path


def signing_config(signing: Signing) -> dict[str, Any]:
    """Celery's `auth` serializer for tasks and remote control: every message is signed by its sender and
    refused unless its signature verifies against a certificate in the store. Events stay JSON: Flower's
    event receiver accepts JSON whatever is configured, so signing them would only cost time. Results are
    ignored (`task_ignore_result`), so their JSON-only setting stays."""
    return {
        "task_serializer": "auth",
        "accept_content": ["auth"],
        "security_key": str(signing.key),
        "security_certificate": str(signing.cert),
        "security_cert_store": str(signing.cert_store),
        "security_digest": "sha256",
    }
