"""`farm dailies RUN --serve`: the dailies page live on a loopback port, where its keys and buttons approve,
retake or flag shots.

The page is rebuilt from Redis on every GET, so it is never stale. Anything that changes state is a POST
that carries the session's token in a header: the token is only in the served page, and a page from another
site can neither read it (same-origin policy) nor send that header without a CORS preflight this server
never answers. Every request must name this server in its Host header, so a DNS-rebinding page that reached
the port under its own host name gets nothing. Files are served by looking their name up among the run's
own outputs and this server's thumbnails, never by joining a path from the request.

Reading needs a session too, since the page shows prompts, costs and the run's files: the command prints a
link carrying a one-time key (`/dailies/?key=...`); the server trades it, once, for an HttpOnly,
SameSite=Strict cookie and redirects to the clean URL. Every other request without that cookie is refused,
so another local user, or a page in the browser that guesses the port, reads nothing.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import mimetypes
import secrets
import shutil
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

from farm.dailies.assets import CONTENT_SECURITY_POLICY
from farm.dailies.page import ACTIONS, THUMBS_DIR, make_thumbs, page_dir, render
from farm.dailies.sheet import gather, run_files
from farm.runs import review
from farm.runs.dispatch import Sender
from farm.runs.progress import snapshot
from farm.runs.state import RunStore

log = logging.getLogger(__name__)

TOKEN_HEADER = "X-Farm-Token"
ACTION_PATH = "/api/review"
PAGE_PATHS = ("/dailies/", "/dailies/index.html")
THUMBS_PREFIX = "/dailies/thumbs/"
MAX_BODY_BYTES = 4096
"""An action is a shot number and a word; anything bigger is not one."""
TOKEN_BYTES = 32
KEY_PARAM = "key"
"""The query parameter of the printed link that carries the one-time key."""
COOKIE_PREFIX = "farm_dailies_"
"""Followed by the port: cookies are not kept apart by port, two servers' sessions must be."""
POLL_INTERVAL_S = 0.2
"""How often the serving loop checks for shutdown."""


class NotLoopback(ValueError):
    """The page hands out a token that can start paid renders: it is never exposed beyond this machine."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    file: Path | None = None
    """Streamed instead of `body`."""
    headers: dict[str, str] = field(default_factory=dict)


def loopback(host: str) -> str:
    """`host` if it is a loopback address literal (127.0.0.0/8, ::1); NotLoopback otherwise."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise NotLoopback(f"{host!r} is not an IP address; use 127.0.0.1 or ::1") from None
    if not address.is_loopback:
        raise NotLoopback(
            f"{host} is not a loopback address: the dailies server listens on this machine only "
            "(reach it from elsewhere through an SSH tunnel, ssh -L)"
        )
    return host


class DailiesServer(ThreadingHTTPServer):
    """The page, its thumbnails, the run's files and the review actions of one run, for one session."""

    daemon_threads = True

    def __init__(self, runs: RunStore, sender: Sender, run_id: str, host: str, port: int) -> None:
        address = ipaddress.ip_address(loopback(host))
        self.address_family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
        self.runs, self.sender, self.run_id = runs, sender, run_id
        self.token = secrets.token_urlsafe(TOKEN_BYTES)
        self.session = secrets.token_urlsafe(TOKEN_BYTES)
        """The cookie's value: what every request must carry."""
        self._key: str | None = secrets.token_urlsafe(TOKEN_BYTES)
        """The one-time key of the printed link; None once traded for the cookie."""
        self._lock = threading.Lock()
        self._thumbs: dict[str, Path] = {}
        super().__init__((host, port), _Handler)
        bound = f"[{host}]" if address.version == 6 else host
        self.authority = f"{bound}:{self.server_address[1]}"
        """What every request's Host header must say."""
        self.cookie_name = f"{COOKIE_PREFIX}{self.server_address[1]}"

    @property
    def url(self) -> str:
        """The page, for a browser that has the session cookie."""
        return f"http://{self.authority}{PAGE_PATHS[0]}"

    @property
    def login_url(self) -> str:
        """The link to print: the page with the one-time key (empty once the key was used)."""
        return f"{self.url}?{KEY_PARAM}={self._key or ''}"

    def sign_in(self, key: str) -> bool:
        """Trade the one-time key for the session: true once, for the right key."""
        with self._lock:
            if self._key is None or not secrets.compare_digest(key.encode(), self._key.encode()):
                return False
            self._key = None
            return True

    def signed_in(self, cookies: str) -> bool:
        """Whether a Cookie header carries this server's session."""
        try:
            morsel = SimpleCookie(cookies).get(self.cookie_name)
        except CookieError:
            return False
        return morsel is not None and secrets.compare_digest(morsel.value.encode(), self.session.encode())

    def session_cookie(self) -> str:
        """Set-Cookie: for this server's pages only (Path=/ on its own host and port), never readable by
        script, never sent with a request another site starts."""
        return f"{self.cookie_name}={self.session}; Path=/; HttpOnly; SameSite=Strict"

    def serve_until_interrupted(self) -> None:
        """Serve in the foreground until Ctrl-C; the port is released either way."""
        try:
            self.serve_forever(POLL_INTERVAL_S)
        except KeyboardInterrupt:
            pass
        finally:
            self.server_close()

    # answers -------------------------------------------------------------------------------------------

    def page(self) -> Reply:
        with self._lock:
            dailies = gather(self.runs, self.run_id)
            thumbs = make_thumbs(dailies)
            folder = page_dir(dailies) / THUMBS_DIR
            self._thumbs.update({name: folder / name for name in thumbs.values()})
        text = render(dailies, thumbs, token=self.token)
        return Reply(200, text.encode(), "text/html; charset=utf-8")

    def thumbnail(self, name: str) -> Reply:
        with self._lock:
            path = self._thumbs.get(name)
        return _file(path)

    def output(self, name: str) -> Reply:
        return _file(run_files(self.runs, self.run_id).get(name))

    def act(self, body: bytes) -> Reply:
        """One review action; the token was checked by the caller."""
        try:
            doc = json.loads(body)
            shot, action = doc["shot"], doc["action"]
        except (ValueError, TypeError, KeyError):
            return _error(400, 'send JSON {"shot": N, "action": "approve" | "retake" | "needs_review"}')
        if not isinstance(shot, int) or isinstance(shot, bool) or action not in [a for a, _, _ in ACTIONS]:
            return _error(400, f"no action {action!r} on shot {shot!r}")
        if self.runs.meta(self.run_id).get("review") != "1":
            return _error(409, f"run {self.run_id} was not submitted with --review: nothing to approve")
        try:
            with self._lock:
                message = self._decide(shot, action)
        except review.UnknownShots as exc:
            return _error(404, str(exc))
        row = next(r for r in snapshot(self.runs, self.run_id).shots if r.shot == shot)
        doc = {"shot": shot, "review": row.review, "state": row.state, "done": row.done, "total": row.total}
        return _json(200, {**doc, "message": message})

    def _decide(self, shot: int, action: str) -> str:
        if action == "approve":
            released = review.approve(self.runs, self.sender, self.run_id, [shot])
            return f"approved: {len(released.steps)} video step(s) started"
        review.mark(self.runs, self.run_id, [shot], action)  # retake, needs_review: a decision only
        return f"marked {action.replace('_', ' ')}"


class _Handler(BaseHTTPRequestHandler):
    """HTTP in and out; what to answer is `DailiesServer`'s. HTTP/1.0: one request per connection."""

    server: DailiesServer

    def do_GET(self) -> None:
        self._answer(self._get)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _get(self) -> Reply:
        target = self.path.split("?", 1)[0]
        if target == "/":
            return Reply(303, headers={"Location": PAGE_PATHS[0]})
        if target in PAGE_PATHS:
            return self.server.page()
        if target.startswith(THUMBS_PREFIX):
            return self.server.thumbnail(unquote(target.removeprefix(THUMBS_PREFIX)))
        if target == ACTION_PATH:
            return Reply(405, headers={"Allow": "POST"})
        return self.server.output(unquote(target.removeprefix("/")))

    def _post(self) -> Reply:
        if self.path != ACTION_PATH:
            return _error(404, "not found")
        sent = self.headers.get(TOKEN_HEADER, "")
        if not secrets.compare_digest(sent.encode(), self.server.token.encode()):
            return _error(403, f"missing or wrong {TOKEN_HEADER}: reload the page")
        length = self.headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > MAX_BODY_BYTES:
            return _error(413, "an action is a small JSON body with its Content-Length")
        return self.server.act(self.rfile.read(int(length)))

    def _answer(self, route: Callable[[], Reply]) -> None:
        try:
            reply = self._checked(route)
        except Exception:  # a broken page must still answer, not hang the browser
            log.exception("dailies: %s %s failed", self.command, self.path)
            reply = _error(500, "the page could not be built; see the server's log")
        self._send(reply)

    def _checked(self, route: Callable[[], Reply]) -> Reply:
        """This server's Host, then the session (or the one-time key, traded for it), then the route."""
        if self.headers.get("Host", "").lower() != self.server.authority:
            return _error(400, "unexpected Host")
        signed_in = self.server.signed_in(self.headers.get("Cookie", ""))
        target, _, query = self.path.partition("?")
        keys = parse_qs(query).get(KEY_PARAM)
        if self.command == "GET" and target in PAGE_PATHS and keys:
            if signed_in or self.server.sign_in(keys[0]):
                headers = {"Location": PAGE_PATHS[0], "Set-Cookie": self.server.session_cookie()}
                return Reply(303, headers=headers)
            return _error(403, "this link was used already; `farm dailies RUN --serve` prints a new one")
        if not signed_in:
            return _error(403, "open the link `farm dailies RUN --serve` printed")
        return route()

    def _send(self, reply: Reply) -> None:
        size = reply.file.stat().st_size if reply.file else len(reply.body)
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(size))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            if reply.file is None:
                self.wfile.write(reply.body)
            else:
                with reply.file.open("rb") as source:
                    shutil.copyfileobj(source, self.wfile)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser stopped reading (a clip it no longer wants)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("dailies: " + format, *args)


def _file(path: Path | None) -> Reply:
    if path is None or not path.is_file():
        return _error(404, "not found")
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return Reply(200, content_type=kind, file=path)


def _json(status: int, doc: dict[str, Any]) -> Reply:
    return Reply(status, json.dumps(doc).encode())


def _error(status: int, message: str) -> Reply:
    return _json(status, {"error": message})
