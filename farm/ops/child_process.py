"""Children that die with the farm process that started them, so none is left holding a port or a pod."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends SIGTERM if the farm process goes away (Redis writes
    its AOF and exits, a worker finishes warmly)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def tied_to_parent() -> Callable[[], None] | None:
    """A `preexec_fn` for subprocess.Popen on Linux; None elsewhere (no such kernel feature)."""
    return _die_with_parent if sys.platform.startswith("linux") else None
