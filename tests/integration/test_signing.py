"""Message signing (FARM_SIGNING_*): a farm that signs renders as usual, and refuses what is not signed by
a certificate it trusts: a plain JSON message, and messages signed with another key."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.security.certificate import Certificate
from celery.security.key import PrivateKey
from celery.security.serialization import SecureSerializer

from farm.config.settings import Settings
from farm.runs.progress import snapshot
from tasks.app import make_app
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle, running_farm
from tests.support.signing_keys import make_signing_pair


@pytest.fixture(scope="module")
def signed_farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FarmHandle]:
    """A post-only farm on the embedded engine whose processes sign, and accept only what its store
    trusts (its own certificate)."""
    home = tmp_path_factory.mktemp("signed-home")
    key, cert = make_signing_pair(home / "keys", "farm")
    store = home / "trusted"
    store.mkdir()
    (store / "farm.pem").write_bytes(cert.read_bytes())
    settings = Settings(home=home, signing_key=key, signing_cert=cert, signing_cert_store=store)
    with running_farm(home, {"FARM_HOME": str(home)}, ("post",), settings=settings) as running:
        yield FarmHandle(running, home / "out")


def one_shot(folder: Path, sample_doc: Doc, registry_doc: Doc) -> Path:
    """Shot 6 of the sample (2 s, 7 steps) under its own project code."""
    doc = {**sample_doc, "project": "SIG", "shots": [s for s in sample_doc["shots"] if s["shot"] == 6]}
    (folder / "lora_registry.json").write_text(json.dumps(registry_doc))
    (folder / "storyboard.json").write_text(json.dumps(doc))
    return folder / "storyboard.json"


def publish_signed_by(farm: FarmHandle, serializer: SecureSerializer, task_id: str, args: list[str]) -> None:
    """A well-formed `farm.t2i` message on the post queue, its body signed by `serializer`."""
    app = make_app(farm.farm.broker_url)
    message = app.amqp.as_task_v2(task_id, "farm.t2i", args=tuple(args), kwargs={})
    with app.producer_or_acquire() as producer:
        producer.publish(
            serializer.serialize(message.body),
            routing_key="post",
            exchange="",
            headers=message.headers,
            content_type="application/data",
            content_encoding="utf-8",
            **message.properties,
        )


def wait_for_lines(log: Path, marker: str, count: int, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while (text := log.read_text(errors="replace")).count(marker) < count:
        assert time.monotonic() < deadline, f"fewer than {count} {marker!r} lines in {log}"
        time.sleep(0.2)
    return text


@pytest.mark.chaos
def test_a_signing_farm_renders_and_refuses_unsigned_and_foreign_signed_messages(
    signed_farm: FarmHandle, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    """Every message of a render (the submitter's, the workers' releases) is signed and verified; a plain
    JSON message and messages signed with another key are dropped unread, with a line in the log."""
    run_id, plan = signed_farm.submit(one_shot(tmp_path, sample_doc, registry_doc))
    assert signed_farm.wait(run_id, timeout_s=120) == "succeeded", snapshot(signed_farm.runs, run_id).failures
    assert set(signed_farm.runs.states(run_id).values()) == {"done"}

    log = signed_farm.farm.log_dir / "worker-post.log"
    before = log.read_text(errors="replace")
    ids = {kind: f"{kind}-{uuid.uuid4().hex[:8]}" for kind in ("unsigned", "foreign", "forged", "control")}
    # The step is settled, so a message that gets through is received and skipped: it renders nothing.
    args = [run_id, next(s.id for s in plan.steps if s.kind.value == "t2i")]
    make_app(signed_farm.farm.broker_url).send_task(
        "farm.t2i", args=args, queue="post", task_id=ids["unsigned"], serializer="json"
    )
    rogue_key, rogue_cert = make_signing_pair(tmp_path / "rogue", "farm")
    farm_key = PrivateKey(Path(str(signed_farm.farm.settings.signing_key)).read_text())
    farm_cert = Certificate(Path(str(signed_farm.farm.settings.signing_cert)).read_text())
    rogue = PrivateKey(rogue_key.read_text())
    publish_signed_by(
        signed_farm, SecureSerializer(rogue, Certificate(rogue_cert.read_text())), ids["foreign"], args
    )
    publish_signed_by(signed_farm, SecureSerializer(rogue, farm_cert), ids["forged"], args)  # farm's name
    publish_signed_by(signed_farm, SecureSerializer(farm_key, farm_cert), ids["control"], args)

    text = wait_for_lines(log, f"Task farm.t2i[{ids['control']}] succeeded", 1)
    new = text[len(before) :]
    logged = [line for line in new.splitlines() if line.startswith("[")]  # not the tracebacks' lines
    assert sum("Refusing to deserialize untrusted content of type json" in line for line in logged) == 1
    refused = [line for line in logged if "Can't decode message body" in line]
    assert "Unknown certificate" in next(line for line in refused if ids["foreign"] in line)
    # A signature that does not verify surfaces as Celery's own TypeError (celery/celery#5553) inside the
    # SecurityError; the message is refused all the same.
    assert "Unable to deserialize" in next(line for line in refused if ids["forged"] in line)
    for kind in ("unsigned", "foreign", "forged"):
        assert f"[{ids[kind]}] received" not in new, f"the {kind} message reached the pool"
    assert f"Task farm.t2i[{ids['control']}] received" in new, "the same message signed by the farm runs"
    assert signed_farm.redis.llen("post") == 0, "refused messages are dropped, not retried"
