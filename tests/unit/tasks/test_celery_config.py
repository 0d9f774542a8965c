"""The Celery settings that make long, paid steps safe: checked as data, no broker needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from celery.exceptions import ImproperlyConfigured
from pydantic import ValidationError

from farm.config.settings import Settings
from farm.planning.plan import StepKind
from farm.planning.routing import QUEUES, ROUTES, queue_for
from tasks.app import require_own_cert_trusted, signing_of
from tasks.config import (
    TIME_LIMITS_S,
    VISIBILITY_TIMEOUT_S,
    Signing,
    celery_config,
    signing_config,
    task_name,
)
from tests.support.signing_keys import make_signing_pair


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


def test_signing_signs_tasks_and_control_and_accepts_only_signed(tmp_path: Path) -> None:
    conf = {**celery_config("redis://127.0.0.1:1/0"), **signing_config(Signing(tmp_path, tmp_path, tmp_path))}
    assert conf["task_serializer"] == "auth" and conf["accept_content"] == ["auth"]
    assert conf["security_digest"] == "sha256"
    assert conf["event_serializer"] == "json" and conf["result_accept_content"] == ["json"]


def test_signing_settings_come_all_three_or_not_at_all(tmp_path: Path) -> None:
    key, cert = make_signing_pair(tmp_path, "farm")
    with pytest.raises(ValidationError, match=r"set all three or none \(missing: FARM_SIGNING_CERT_STORE\)"):
        Settings(home=tmp_path, signing_key=key, signing_cert=cert)
    with pytest.raises(ValidationError, match="FARM_SIGNING_CERT_STORE: no such file or directory"):
        Settings(home=tmp_path, signing_key=key, signing_cert=cert, signing_cert_store=tmp_path / "nope")
    assert signing_of(Settings(home=tmp_path)) is None
    both = Settings(home=tmp_path, signing_key=key, signing_cert=cert, signing_cert_store=tmp_path / "*.pem")
    assert signing_of(both) == Signing(key, cert, tmp_path / "*.pem")


def test_a_farm_whose_certificate_is_not_in_its_store_is_refused_at_start(tmp_path: Path) -> None:
    key, cert = make_signing_pair(tmp_path / "farm", "farm")
    _, other = make_signing_pair(tmp_path / "other", "other")
    store = tmp_path / "store"
    store.mkdir()
    (store / "other.pem").write_bytes(other.read_bytes())
    with pytest.raises(ImproperlyConfigured, match="could not read its own messages"):
        require_own_cert_trusted(Signing(key, cert, store))
    with pytest.raises(ImproperlyConfigured, match="Invalid certificate"):
        require_own_cert_trusted(Signing(key, cert, tmp_path / "farm"))  # holds the key file too
    (store / "farm.pem").write_bytes(cert.read_bytes())
    require_own_cert_trusted(Signing(key, cert, store))
