"""Real parts: a real redis-server per session, and a whole farm (workers per queue, Flower) per module."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from farm.redis_server import RedisServer
from farm.supervisor import free_port


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = RedisServer(tmp_path_factory.mktemp("redis"), free_port())
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(redis_url)
    r.flushdb()
    yield r
    r.close()


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def read_until(process: subprocess.Popen[str], marker: str, timeout_s: float = 90) -> str:
    """Read a child's merged output line by line until `marker` shows up; fail if it exits first."""
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + timeout_s
    while marker not in seen:
        assert time.monotonic() < deadline and process.poll() is None, seen
        seen += process.stdout.readline()
    return seen
