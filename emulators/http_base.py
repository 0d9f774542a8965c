"""The HTTP scaffolding the loopback emulators share: a reply, the threaded server, the request handler that
hands each request to the emulator's `handle`, and the start/stop/url/context-manager lifecycle around them.

An emulator subclasses `LoopbackEmulator` (names, hooks and `handle`) and `EmulatorRequestHandler` (its
server version, log label and error reply, plus any `do_<METHOD>` beyond GET and POST).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self

POLL_INTERVAL_S = 0.05
"""How often the serving thread checks for shutdown: `stop()` returns within about this long."""


@dataclass(frozen=True)
class Reply:
    """One HTTP answer; the handler writes it as is."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One parsed HTTP request, as an emulator's route handlers see it."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Lower-cased names."""
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)
    """Named groups of the matched route."""

    def json(self) -> Any:
        """The body parsed as JSON (an empty body is {}); ValueError when it is not JSON."""
        return json.loads(self.body or b"{}")


def json_reply(status: int, doc: Any, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(doc).encode(), "application/json", dict(headers or {}))


class EmulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    emulator: LoopbackEmulator


class EmulatorRequestHandler(BaseHTTPRequestHandler):
    """Thin translation between http.server and `LoopbackEmulator.handle`. HTTP/1.0: one request per
    connection, so a `handle` answering None (a dropped response) is simply a connection closed before the
    status line. Only GET and POST are served unless a subclass adds `do_<METHOD>`; others get http.server's
    501."""

    server: EmulatorServer
    protocol_version = "HTTP/1.0"
    log: ClassVar[logging.Logger]
    """The emulator module's logger."""
    label: ClassVar[str]
    """Prefix of its log lines, e.g. "fal emulator"."""

    def error_reply(self, exc: Exception) -> Reply:
        """The answer when `handle` raised `exc`: the emulator must answer, not hang the client."""
        raise NotImplementedError

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            reply = self.server.emulator.handle(method, self.path, headers, body)
        except Exception as exc:  # the emulator must answer, not hang the client
            self.log.exception(self.label + ": %s %s failed", method, self.path)
            reply = self.error_reply(exc)
        if reply is None:
            self.close_connection = True
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        self.log.debug(self.label + ": " + format, *args)


class LoopbackEmulator:
    """An HTTP server on `listen` (127.0.0.1 unless a subclass says otherwise) whose requests go to `handle`,
    served on a daemon thread between `start()` and `stop()`, or within a `with` block.

    Hooks, all no-ops here: `_prepare` before the port is bound, `_bound` once `url` is known (before any
    thread runs), `_workers` for threads started after the serving one, `_before_shutdown` before the
    server shuts down and `_after_shutdown` once every thread is joined.
    """

    handler_class: ClassVar[type[EmulatorRequestHandler]]
    name: ClassVar[str]
    """As in "the fal emulator is not started"."""
    thread_name: ClassVar[str]
    """The serving thread's name."""
    join_timeout_s: ClassVar[float] = 5.0
    """How long `stop()` waits for each thread."""
    listen = "127.0.0.1"

    def __init__(self, *, port: int = 0) -> None:
        self.port = port
        self._server: EmulatorServer | None = None
        self._threads: list[threading.Thread] = []
        self._url = ""

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes, /) -> Reply | None:
        """Answer one request (`headers` with lower-cased names); None means: close the connection without
        a response."""
        raise NotImplementedError

    # lifecycle

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT`, no trailing slash; set by `start()`."""
        if not self._url:
            raise RuntimeError(f"the {self.name} is not started")
        return self._url

    def start(self) -> Self:
        if self._server is not None:
            return self
        self._prepare()
        server = EmulatorServer((self.listen, self.port), self.handler_class)
        server.emulator = self
        self._server = server
        host = "127.0.0.1" if self.listen in ("", "0.0.0.0") else self.listen
        self._url = f"http://{host}:{server.server_address[1]}"
        self._bound(server)
        self._threads = [
            threading.Thread(
                target=server.serve_forever, args=(POLL_INTERVAL_S,), name=self.thread_name, daemon=True
            ),
            *self._workers(),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._before_shutdown()
        server.shutdown()
        server.server_close()
        for thread in self._threads:
            thread.join(timeout=self.join_timeout_s)
        self._after_shutdown()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # hooks

    def _prepare(self) -> None:
        """Before the port is bound."""

    def _bound(self, server: EmulatorServer) -> None:
        """The port is bound and `url` set; nothing is served yet."""

    def _workers(self) -> list[threading.Thread]:
        """Threads to start after the serving thread (and to join on `stop()`)."""
        return []

    def _before_shutdown(self) -> None:
        """Before the server shuts down."""

    def _after_shutdown(self) -> None:
        """After the server is closed and every thread joined."""
