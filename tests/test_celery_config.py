"""The Celery settings that make long, paid steps safe: checked as data, no broker needed."""

from __future__ import annotations

from farm.plan import StepKind
from farm.routing import QUEUES, ROUTES, queue_for
from tasks.config import TIME_LIMITS_S, VISIBILITY_TIMEOUT_S, celery_config, task_name


def test_only_json_is_accepted() -> None:
    conf = celery_config("redis://127.0.0.1:1/0")
    assert conf["accept_content"] == ["json"]
    assert conf["task_serializer"] == conf["result_serializer"] == conf["event_serializer"] == "json"


def test_late_acks_requeue_on_worker_loss_and_one_message_at_a_time() -> None:
    conf = celery_config("redis://127.0.0.1:1/0")
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1


def test_every_kind_has_time_limits_below_the_visibility_timeout() -> None:
    conf = celery_config("redis://127.0.0.1:1/0")
    assert set(TIME_LIMITS_S) == set(StepKind)
    for kind, (soft, hard) in TIME_LIMITS_S.items():
        assert 0 < soft < hard < VISIBILITY_TIMEOUT_S
        assert conf["task_annotations"][task_name(kind)] == {"soft_time_limit": soft, "time_limit": hard}
    assert conf["broker_transport_options"]["visibility_timeout"] == VISIBILITY_TIMEOUT_S


def test_routing_table_covers_every_kind_and_backend() -> None:
    assert set(ROUTES.values()) <= set(QUEUES)
    assert queue_for(StepKind.VIDEO, "local") == "post"
    assert queue_for(StepKind.VIDEO, "fal") == "cloud"
    assert queue_for(StepKind.T2I, "comfyui") == "gpu"
    for backend in ("local", "fal", "comfyui"):
        for kind in (StepKind.SPLIT, StepKind.KEN_BURNS, StepKind.HOLD, StepKind.CONCAT):
            assert queue_for(kind, backend) == "post"
