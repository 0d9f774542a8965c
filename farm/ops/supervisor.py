"""Start and stop a whole farm on one machine: Redis (if needed), one worker per queue, Flower.

Children are tied to this process (they get SIGTERM if it dies, so no orphan keeps a pod or a port),
and stopping is warm: workers get SIGTERM, finish their current step, and only then exit.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from farm.config.credentials import kept_credentials
from farm.config.redis_connection import embedded_password, redis_url
from farm.config.settings import Settings
from farm.ops.child_process import tied_to_parent
from farm.ops.redis_server import RedisServer, is_up, wait_for_redis
from farm.planning.routing import QUEUES

POOLS = {"post": "prefork", "cloud": "threads", "gpu": "threads"}
"""post is CPU work (processes); cloud and gpu mostly wait on the network (threads)."""

log = logging.getLogger(__name__)


@dataclass
class FlowerAccess:
    url: str
    user: str
    password: str
    generated: bool


@dataclass
class Farm:
    settings: Settings
    broker_url: str
    env: dict[str, str]
    log_dir: Path = Path()
    redis: RedisServer | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    flower: subprocess.Popen[bytes] | None = None
    flower_access: FlowerAccess | None = None


def flower_credentials(settings: Settings) -> tuple[str, str, bool]:
    """From settings; else generated once and kept (mode 0600) under the farm's home."""
    return kept_credentials(settings.home / "flower.json", settings.flower_user, settings.flower_password)


def start_farm(
    settings: Settings,
    *,
    queues: tuple[str, ...] = QUEUES,
    flower: bool = True,
    redis_port: int | None = None,
    private_dir: Path | None = None,
) -> Farm:
    """Bring up Redis (own or given), one worker per queue and Flower; wait until they are ready.

    With `private_dir`, Redis data and logs live there (a throwaway farm for one render); artifacts
    stay in the shared store so a later render still reuses them.
    """
    settings.home.mkdir(parents=True, exist_ok=True)
    state_dir = private_dir or settings.home
    farm = Farm(settings, "", {}, log_dir=state_dir / "logs")
    try:
        farm.broker_url = _broker(farm, redis_port or settings.redis_port, state_dir / "redis")
        farm.env = _child_env(settings, farm.broker_url)
        farm.log_dir.mkdir(parents=True, exist_ok=True)
        for queue in queues:
            farm.workers[queue] = start_worker(farm, queue)
        if flower:
            _start_flower(farm)
        for queue in queues:
            _wait_for_log(farm.log_dir / f"worker-{queue}.log", " ready.", farm.workers[queue], 60)
        if flower:
            _wait_for_flower_events(farm, queues, 60)
    except BaseException:
        stop_farm(farm)
        raise
    return farm


def stop_farm(farm: Farm, timeout_s: float = 60.0) -> None:
    """Warm shutdown: SIGTERM, wait for running steps to finish, then make sure nothing is left."""
    children = [p for p in [*farm.workers.values(), farm.flower] if p is not None]
    for process in children:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for process in children:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if farm.redis is not None:
        farm.redis.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def worker_command(queue: str, settings: Settings, name: str) -> list[str]:
    concurrency = settings.concurrency(queue)
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "worker",
        "-Q",
        queue,
        "-P",
        POOLS[queue],
        "-c",
        str(concurrency),
        "-n",
        name,
        "--without-gossip",
        "--without-mingle",
        "-E",
        "-l",
        "INFO",
    ]


def _broker(farm: Farm, port: int, data_dir: Path) -> str:
    """The URL of FARM_REDIS_URL's Redis, or of the farm's own password-protected redis-server (started
    unless one already answers on the port with the same password)."""
    settings = farm.settings
    if settings.redis_url is not None:
        url = redis_url(settings)
        wait_for_redis(url, 10)
        return url
    server = RedisServer(data_dir, port, embedded_password(settings))
    if not is_up(server.url):
        farm.redis = server
        server.start()
    return server.url


REDIS_ACCESS_VARIABLES = (
    "FARM_REDIS_PASSWORD",
    "FARM_REDIS_TLS_CA",
    "FARM_REDIS_TLS_CERT",
    "FARM_REDIS_TLS_KEY",
)
"""Children get all of this inside FARM_REDIS_URL; left in their environment, it would be applied to the
farm's own (plain, loopback) redis-server's URL too."""


def _child_env(settings: Settings, broker_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REDIS_ACCESS_VARIABLES}
    env.update({"FARM_REDIS_URL": broker_url, "FARM_HOME": str(settings.home), "PYTHONUNBUFFERED": "1"})
    env.update(_signing_env(settings))
    return env


def _signing_env(settings: Settings) -> dict[str, str]:
    """This farm's message-signing paths for its children (workers and Flower sign and verify as it does),
    also when they were given to it as settings rather than in the environment."""
    paths = {
        "FARM_SIGNING_KEY": settings.signing_key,
        "FARM_SIGNING_CERT": settings.signing_cert,
        "FARM_SIGNING_CERT_STORE": settings.signing_cert_store,
    }
    return {name: str(path) for name, path in paths.items() if path is not None}


def _spawn(
    farm: Farm, command: list[str], log_name: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    env = {**farm.env, **(extra_env or {})}
    with open(farm.log_dir / log_name, "ab") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=tied_to_parent()
        )


def start_worker(farm: Farm, queue: str, log_name: str = "") -> subprocess.Popen[bytes]:
    """Start (or restart) a worker of one queue; its log continues in worker-<queue>.log (or `log_name`)."""
    name = f"{queue}.{secrets.token_hex(3)}@%h"
    return _spawn(farm, worker_command(queue, farm.settings, name), log_name or f"worker-{queue}.log")


def restart_exited_workers(farm: Farm) -> list[str]:
    """Start again every worker that exited on its own; returns their queues. A worker can die of more than
    a kill: Celery 5.7's threads-pool worker exits ("Unrecoverable error") when Redis goes away under it.
    Its steps are not lost (their messages wait in `unacked`, the reconciler covers the rest)."""
    restarted = []
    for queue, process in list(farm.workers.items()):
        if process.poll() is not None:
            log.warning("the %s worker exited with %s; starting it again", queue, process.returncode)
            farm.workers[queue] = start_worker(farm, queue)
            restarted.append(queue)
    return restarted


def flower_command(host: str, port: int) -> list[str]:
    """Flower over the farm's Celery app; its credentials go in FLOWER_BASIC_AUTH, never on this line."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tasks.app",
        "flower",
        f"--address={host}",
        f"--port={port}",
    ]


def _start_flower(farm: Farm) -> None:
    user, password, generated = flower_credentials(farm.settings)
    port = farm.settings.flower_port
    command = flower_command("127.0.0.1", port)
    farm.flower = _spawn(farm, command, "flower.log", {"FLOWER_BASIC_AUTH": f"{user}:{password}"})
    farm.flower_access = FlowerAccess(f"http://127.0.0.1:{port}", user, password, generated)


def _wait_for_flower_events(farm: Farm, queues: tuple[str, ...], timeout_s: float) -> None:
    """Wait until Flower has heard every worker through the event stream. Events are fanned out to
    whoever listens at the moment; a step sent before Flower subscribes would show there without its name
    and arguments (and the farm's first steps are sent right after start)."""
    assert farm.flower is not None and farm.flower_access is not None
    access = farm.flower_access
    deadline = time.monotonic() + timeout_s
    while not _flower_hears(access, queues):
        if farm.flower.poll() is not None:
            raise RuntimeError(f"flower exited with status {farm.flower.returncode}; see {farm.log_dir}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"flower heard no events after {timeout_s:g} s; see {farm.log_dir}")
        time.sleep(0.2)


def _flower_hears(access: FlowerAccess, queues: tuple[str, ...]) -> bool:
    """Whether Flower's event state (its /workers view, not a live inspect) holds a worker of each queue."""
    try:
        answer = httpx.get(
            f"{access.url}/workers", params={"json": 1}, auth=(access.user, access.password), timeout=5
        )
    except httpx.TransportError:
        return False  # not listening yet
    if answer.status_code != 200:
        return False
    names = [str(worker.get("hostname", "")) for worker in answer.json().get("data", [])]
    return all(any(name.startswith(f"{queue}.") for name in names) for queue in queues)


def _wait_for_log(path: Path, marker: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while marker not in path.read_text(errors="replace"):
        if process.poll() is not None:
            raise RuntimeError(f"{path.stem} exited with status {process.returncode}; see {path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path.stem} was not ready after {timeout_s:g} s; see {path}")
        time.sleep(0.1)
