"""Sending steps to Celery: task per kind, deterministic task id, readable args for Flower."""

from __future__ import annotations

from typing import Any

from celery import Celery

from farm.planning.plan import Step
from farm.runs.dispatch import task_id
from tasks.config import task_name


class CelerySender:
    def __init__(self, app: Celery) -> None:
        self.app = app

    def send(self, run_id: str, step: Step, queue: str) -> None:
        self.app.send_task(
            task_name(step.kind),
            args=[run_id, step.id],
            queue=queue,
            task_id=task_id(run_id, step.id),
            argsrepr=f"{run_id} {step.asset_name}",
            kwargsrepr="",
        )

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        self.app.control.revoke([task_id(run_id, s) for s in step_ids])

    def restore(self, delivery_tag: str) -> None:
        """Put a delivered, unacknowledged message back on its queue now, with kombu's own restore (the
        one its visibility timeout uses): one transaction, so it never becomes two messages."""
        with self.app.connection_for_write() as connection:
            channel: Any = connection.default_channel  # kombu's Redis channel: its QoS keeps `unacked`
            channel.qos.restore_by_tag(delivery_tag)
