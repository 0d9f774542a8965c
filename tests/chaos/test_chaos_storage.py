"""The artifact store failing mid-write during a farm run, after fal was paid for what it could not keep.

(a) Local store, the disk fills up: while a flag file exists the workers' writes into the store stop half
    way with ENOSPC (tests/chaos/disk_full.py says why it is injected this way).
(b) S3, throttled: a proxy in front of the moto server answers every PUT with S3's own `503 SlowDown` for
    a while, long enough for boto3's retries to give up.

Either way a paid step whose output could not be stored is retried later, like a provider's 5xx, and the
retry resumes its stored fal request (free) instead of submitting again; no partial object or temp file is
left, and once the store takes writes again the run finishes with one paid submit per paid step.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import httpx
import pytest

from farm.planning.plan import Plan
from farm.runs.progress import snapshot
from tests.chaos import disk_full
from tests.chaos.support import (
    assert_nothing_lost,
    assert_whole,
    assert_whole_files,
    run_state,
    two_shot_episode,
    wait_until,
)
from tests.conftest import MOTO_BUCKET, Doc
from tests.integration.test_fal_farm import FalFarm, assert_one_submit_per_paid_step, running_fal_farm

pytestmark = pytest.mark.chaos


def refused_steps(farm: FalFarm, run_id: str, plan: Plan, words: str) -> dict[str, dict[str, Any]]:
    """Paid steps retried because the store refused their output (`words` in the reason), by id; fails at
    once if a step failed instead."""
    failures = snapshot(farm.runs, run_id).failures
    assert not failures, f"a step failed instead of waiting for the store: {failures}"
    info = farm.runs.info(run_id)
    return {
        s.id: info[s.id]
        for s in plan.steps
        if s.cost_usd > 0 and words in str(info.get(s.id, {}).get("last_retry_reason", ""))
    }


def assert_resumed_not_paid_again(farm: FalFarm, run_id: str, plan: Plan, refused: set[str]) -> None:
    """The whole run paid once per paid step; each step the store refused came back and resumed its fal
    request (the manifest's `resumed`), so what was rendered was fetched again, not bought again."""
    assert_one_submit_per_paid_step(farm.emulator, plan)
    manifest = json.loads(Path(farm.runs.meta(run_id)["manifest"]).read_text())
    records = {r["id"]: r for r in manifest["steps"]}
    for step_id in refused:
        record = records[step_id]
        assert record["retries"] >= 1 and record["provider"].get("resumed") is True, record


def test_a_full_disk_under_the_local_store_holds_paid_steps_until_space_returns(
    sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    home, store, flag = tmp_path / "home", tmp_path / "home" / "store", tmp_path / "disk-full"
    env = {"FARM_STORE_ROOT": str(store), **disk_full.worker_env(tmp_path / "hook", flag, store)}
    path = two_shot_episode(tmp_path / "episode", sample_doc, registry_doc, "ENO")
    with running_fal_farm(home, env=env) as farm:
        run_id, plan = farm.submit(path)

        def show() -> str:
            return run_state(farm, run_id)

        flag.touch()  # the disk fills as the run starts: the first renders come back from fal to no space
        refused = wait_until(
            lambda: refused_steps(farm, run_id, plan, "No space left on device"), "a refused store", show
        )
        flag.unlink()  # space again
        assert farm.wait(run_id, timeout_s=300) == "succeeded", show()

        assert disk_full.hits(flag), "the full disk refused writes into the store"
        assert_resumed_not_paid_again(farm, run_id, plan, set(refused))
        assert_nothing_lost(farm, run_id, plan)
        assert_whole_files(Path(farm.runs.meta(run_id)["output_dir"]), store)
        assert not list((home / "work").iterdir()), "no step's work folder left behind"


SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>chaos</RequestId></Error>"
)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length", "host"})


class ThrottlingS3:
    """An HTTP proxy in front of an S3 server that, while `throttled` is set, answers every PUT with S3's
    `503 SlowDown` without passing it on (the object is never written); everything else goes through."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.throttled = threading.Event()
        self.refused = 0
        self._lock = threading.Lock()
        self._client = httpx.Client(timeout=60)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> ThrottlingS3:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
        self._client.close()

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        if method == "PUT" and self.throttled.is_set():
            with self._lock:
                self.refused += 1
            return httpx.Response(503, content=SLOW_DOWN, headers={"Content-Type": "application/xml"})
        return self._client.request(method, self.upstream + path, headers=headers, content=body)


def _handler(proxy: ThrottlingS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and `100 Continue` for boto3's PUTs

        def relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            sent = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            reply = proxy.answer(self.command, self.path, sent, body)
            self.send_response(reply.status_code)
            for name, value in reply.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    self.send_header(name, value)
            length = reply.headers.get("content-length", str(len(reply.content)))
            self.send_header("Content-Length", length if self.command == "HEAD" else str(len(reply.content)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.content)

        do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = relay

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def throttling_s3(moto_endpoint: str) -> Iterator[ThrottlingS3]:
    with ThrottlingS3(moto_endpoint) as proxy:
        yield proxy


def test_s3_throttling_every_put_holds_paid_steps_until_it_takes_writes_again(
    throttling_s3: ThrottlingS3, sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    env = {
        "FARM_STORE": "s3",
        "FARM_S3_BUCKET": MOTO_BUCKET,
        "FARM_S3_PREFIX": prefix,
        "FARM_S3_ENDPOINT_URL": throttling_s3.url,
    }
    path = two_shot_episode(tmp_path / "episode", sample_doc, registry_doc, "SLW")
    with running_fal_farm(tmp_path / "home", env=env) as farm:
        run_id, plan = farm.submit(path)

        def show() -> str:
            return f"{run_state(farm, run_id)}; PUTs refused {throttling_s3.refused}"

        throttling_s3.throttled.set()  # as the run starts: the first renders come back from fal to 503s
        refused = wait_until(lambda: refused_steps(farm, run_id, plan, "SlowDown"), "a refused store", show)
        throttling_s3.throttled.clear()
        assert farm.wait(run_id, timeout_s=300) == "succeeded", show()

        assert throttling_s3.refused >= 3, "boto3's own retries of a PUT were spent before the farm's"

        assert_resumed_not_paid_again(farm, run_id, plan, set(refused))
        assert_nothing_lost(farm, run_id, plan)
        assert_whole_files(Path(farm.runs.meta(run_id)["output_dir"]))
        assert not list((tmp_path / "home" / "work").iterdir()), "no step's work folder left behind"
    s3 = boto3.session.Session().client("s3", endpoint_url=throttling_s3.url)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=MOTO_BUCKET, Prefix=prefix).get("Contents", [])]
    assert keys and not [k for k in keys if ".tmp" in k or ".partial" in k]
    for key in keys:  # every object there is whole
        copy = tmp_path / "s3" / key
        copy.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(MOTO_BUCKET, key, str(copy))
        assert_whole(copy)
