"""Live progress of one ComfyUI run over its websocket, so `farm status` can say "video 12/30".

Optional by design (protocol note §4): polling `/history` decides when a run is finished, because it survives
tunnel drops; the websocket only adds progress. If it cannot connect or drops, progress stops, nothing else.
The socket is opened before the prompt is submitted and under the client id the prompt is submitted with, so
no event is missed and a retried step that finds its run still going gets that run's events.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from websockets.exceptions import WebSocketException
from websockets.sync.client import connect

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepProgress:
    node: str
    value: int
    max: int


def client_id_for(prompt_id: str) -> str:
    """Derived from the prompt id: a retry listens under the id the run was submitted with."""
    return f"farm-{prompt_id}"


class ProgressWatcher:
    """A thread that passes the run's `progress` events to `report` until the run ends or `close()`."""

    def __init__(self, base_url: str, prompt_id: str, report: Callable[[StepProgress], None]) -> None:
        ws_base = base_url.replace("http://", "ws://", 1)
        self.url = f"{ws_base}/ws?clientId={client_id_for(prompt_id)}"
        self.prompt_id = prompt_id
        self.report = report
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name=f"progress-{prompt_id[:8]}", daemon=True)

    def __enter__(self) -> ProgressWatcher:
        self._thread.start()
        self._connected.wait(timeout=10)  # subscribed before the prompt is submitted
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _follow(self) -> None:
        try:
            with connect(self.url, proxy=None, open_timeout=10, close_timeout=2) as socket:
                self._connected.set()
                while not self._stop.is_set():
                    try:
                        raw = socket.recv(timeout=0.5)
                    except TimeoutError:
                        continue
                    if isinstance(raw, str) and not self._handle(raw):
                        return
        except (OSError, TimeoutError, WebSocketException) as exc:
            LOG.debug("progress of %s: websocket unavailable (%s); polling only", self.prompt_id, exc)
        finally:
            self._connected.set()

    def _handle(self, raw: str) -> bool:
        """Pass on one text event; False once the run is over (`executing` with no node)."""
        try:
            event = json.loads(raw)
            data = event.get("data") or {}
        except (ValueError, AttributeError):
            return True
        if not isinstance(data, dict) or data.get("prompt_id") != self.prompt_id:
            return True
        kind = event.get("type")
        if kind == "executing" and data.get("node") is None:
            return False
        if kind == "progress":
            try:
                progress = StepProgress(str(data.get("node")), int(data["value"]), int(data["max"]))
            except (KeyError, TypeError, ValueError):
                return True  # a malformed event costs its progress line, nothing else
            try:
                self.report(progress)
            except Exception:  # progress is a nicety: it must never break the render
                LOG.warning("progress of %s could not be recorded", self.prompt_id, exc_info=True)
        return True
