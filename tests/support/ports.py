"""Ports for the servers the tests start (Redis, moto, Flower, /metrics, pod forwards), per pytest process.

`farm.ops.supervisor.free_port` asks the kernel for an ephemeral port and closes it again; the server binds
it a moment later. Under pytest-xdist that races the other workers doing the same, and every outgoing
connection on the machine, which takes its local port from that same ephemeral range. Here each xdist
worker hands out ports from a block of its own below the ephemeral range, checks each is free when it is
handed out, and gives none out twice until its block has gone round once.
"""

from __future__ import annotations

import os
import random
import socket
import threading
from pathlib import Path

LOWEST = 16384
"""The bottom of the test ports: above the well-known and most registered service ports."""


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def worker_index() -> tuple[int, int]:
    """(this xdist worker's number, how many workers): (0, 1) outside xdist."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(name[2:]) if name.startswith("gw") and name[2:].isdigit() else 0
    return index % max(count, 1), max(count, 1)


def _block() -> list[int]:
    """This worker's share of [LOWEST, start of the ephemeral range), shuffled so that another pytest run on
    the same machine (whose worker of the same number has the same block) starts elsewhere in it."""
    top = _ephemeral_start()
    if top - LOWEST < 2048:  # an unusual ephemeral range: fall back to the usual gap below 32768
        top = 32768
    index, count = worker_index()
    size = (top - LOWEST) // count
    ports = list(range(LOWEST + index * size, LOWEST + (index + 1) * size))
    random.Random(os.getpid()).shuffle(ports)
    return ports


_lock = threading.Lock()
_ports: list[int] = []
_next = 0


def _is_free(port: int) -> bool:
    """Nothing listens on, or lingers (TIME_WAIT) at, 127.0.0.1:`port`: a plain bind succeeds."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, from this worker's block, not handed out before by this process
    (until the block is used up)."""
    global _next
    with _lock:
        if not _ports:
            _ports.extend(_block())
        for _ in range(len(_ports)):
            port = _ports[_next % len(_ports)]
            _next += 1
            if _is_free(port):
                return port
    raise RuntimeError(f"no free port in this worker's block {min(_ports)}-{max(_ports)}")
