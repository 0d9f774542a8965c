"""The ComfyUI emulator's `GET /ws?clientId=…`: run events pushed to the client that queued the run.

As in ComfyUI (protocol note §4), `status` goes to a socket when it connects, and run-specific events only to
the socket registered under the run's `client_id`; reconnecting with the same id replaces the old socket.
The websocket framing is the `websockets` library's sans-I/O server protocol over the handler's own socket.
"""

from __future__ import annotations

import json
import queue
import socket
import threading
from collections.abc import Callable, Mapping
from typing import Any

from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

_RECV_SLICE_S = 0.05


class EventSockets:
    """Who listens under which client id; `send` drops events nobody listens for, as ComfyUI does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[str, queue.Queue[dict[str, Any]]] = {}

    def subscribe(self, client_id: str) -> queue.Queue[dict[str, Any]]:
        inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            self._listeners[client_id] = inbox  # replaces an older socket of the same client
        return inbox

    def unsubscribe(self, client_id: str, inbox: queue.Queue[dict[str, Any]]) -> None:
        with self._lock:
            if self._listeners.get(client_id) is inbox:
                del self._listeners[client_id]

    def send(self, client_id: object, event_type: str, data: Mapping[str, Any]) -> None:
        if not isinstance(client_id, str):
            return
        with self._lock:
            inbox = self._listeners.get(client_id)
        if inbox is not None:
            inbox.put({"type": event_type, "data": dict(data)})


def is_upgrade(headers: Mapping[str, str]) -> bool:
    """`headers` with lower-cased names."""
    return headers.get("upgrade", "").lower() == "websocket"


def serve(
    sock: socket.socket,
    path: str,
    headers: Mapping[str, str],
    sockets: EventSockets,
    client_id: str,
    greeting: dict[str, Any],
    stopping: Callable[[], bool],
) -> None:
    """Complete the handshake on `sock`, send `greeting`, then push events until either side closes."""
    protocol = ServerProtocol()
    # http.server has parsed the request already; the protocol reads it again so that its parser moves on
    # to websocket frames afterwards.
    lines = [f"GET {path} HTTP/1.1", *(f"{name}: {value}" for name, value in headers.items()), "", ""]
    protocol.receive_data("\r\n".join(lines).encode("latin-1"))
    request = next(e for e in protocol.events_received() if isinstance(e, Request))
    response = protocol.accept(request)
    protocol.send_response(response)
    _flush(sock, protocol)
    if response.status_code != 101:
        return
    inbox = sockets.subscribe(client_id)
    sock.settimeout(_RECV_SLICE_S)
    try:
        protocol.send_text(json.dumps(greeting).encode())
        while protocol.state is State.OPEN and not stopping():
            while not inbox.empty():
                protocol.send_text(json.dumps(inbox.get_nowait()).encode())
            _flush(sock, protocol)
            try:
                data = sock.recv(65536)
            except TimeoutError:
                continue
            if not data:
                protocol.receive_eof()
                break
            protocol.receive_data(data)
            protocol.events_received()  # pings are answered and closes completed by the protocol itself
        _flush(sock, protocol)
    except OSError:
        pass  # the client went away
    finally:
        sockets.unsubscribe(client_id, inbox)


def _flush(sock: socket.socket, protocol: ServerProtocol) -> None:
    for chunk in protocol.data_to_send():
        if chunk:
            sock.sendall(chunk)
