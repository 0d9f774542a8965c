"""Shared fixtures: the project's own example episode, the studio's sample, and a way to edit them."""

from __future__ import annotations

import atexit
import copy
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3  # type: ignore[import-untyped]
import pytest
import redis

from farm.ops.redis_server import RedisServer
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "lighthouse" / "storyboard_ep_001.json"
SHARED_SAMPLE = ROOT.parent / "shared" / "episodes" / "leviathan" / "storyboard_ep_001.json"

Doc = dict[str, Any]
MOTO_BUCKET = "farm-artifacts"
MOTO_SECRET = "dummy-secret-do-not-leak-7f3a"

SAMPLE_TOTALS = {
    "t2i": 8,
    "img2img": 9,
    "upscale": 19,
    "split": 2,
    "video": 9,
    "ken_burns": 2,
    "hold": 1,
    "concat": 3,
}
"""Steps per kind the issue specifies for the studio's sample episode (53 in all)."""


def pytest_configure(config: pytest.Config) -> None:
    """A default farm home of this process's own. Importing `tasks.app` reads the settings and keeps a
    generated Redis password in the farm's home, which is ~/.local/share/episode-farm unless FARM_HOME or
    XDG_DATA_HOME says otherwise; so do the commands a test runs without FARM_HOME. Each pytest process
    (each xdist worker) points XDG_DATA_HOME, inherited by its children, at a folder of its own, so no test
    writes into the user's home or shares a file there with another worker. Put back at the end."""
    previous = os.environ.get("XDG_DATA_HOME")
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    own = tempfile.mkdtemp(prefix=f"farm-tests-{worker}-")
    os.environ["XDG_DATA_HOME"] = own

    def restore() -> None:
        if previous is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = previous

    config.add_cleanup(restore)
    atexit.register(shutil.rmtree, own, ignore_errors=True)  # xdist workers never unconfigure


def load_doc(path: Path) -> Doc:
    doc: Doc = json.loads(path.read_text("utf-8"))
    return doc


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real redis-server for the session, started when a test first asks for it. It requires a
    password, as the farm's own does: the URL carries it."""
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port(), secrets.token_urlsafe(18))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    """The session's Redis, emptied for each test."""
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    yield r
    r.close()


@pytest.fixture(scope="session")
def sample_path() -> Path:
    if not SHARED_SAMPLE.exists():
        pytest.skip("../shared sample episode not present")
    return SHARED_SAMPLE


@pytest.fixture
def sample_doc(sample_path: Path) -> Doc:
    return load_doc(sample_path)


@pytest.fixture
def registry_doc(sample_path: Path) -> Doc:
    return load_doc(sample_path.with_name("lora_registry.json"))


@pytest.fixture
def write_episode(tmp_path: Path, sample_doc: Doc, registry_doc: Doc) -> Callable[..., Path]:
    """Write (edited copies of) the sample storyboard and registry side by side; return the storyboard."""

    def write(
        storyboard: Doc | None = None, registry: Doc | None = None, name: str = "storyboard.json"
    ) -> Path:
        folder = tmp_path / f"ep{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "lora_registry.json").write_text(
            json.dumps(registry if registry is not None else registry_doc)
        )
        path = folder / name
        path.write_text(json.dumps(storyboard if storyboard is not None else sample_doc))
        return path

    return write


@pytest.fixture
def edit(sample_doc: Doc) -> Callable[[], Doc]:
    """A fresh deep copy of the sample storyboard to modify."""
    return lambda: copy.deepcopy(sample_doc)


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} in {timeout_s}s")


@pytest.fixture(scope="session")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 with the test bucket; dummy credentials; no metadata or proxy lookups."""
    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", MOTO_SECRET)
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        env.setenv("AWS_EC2_METADATA_DISABLED", "true")
        env.setenv("AWS_CONFIG_FILE", str(home / "config"))
        env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "credentials"))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            env.delenv(name, raising=False)
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")

        port = free_port()
        log = home / "moto.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_for_port(port, proc, log)
            endpoint = f"http://127.0.0.1:{port}"
            boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=MOTO_BUCKET)
            yield endpoint
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
