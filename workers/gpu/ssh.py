"""SSH to a rented GPU pod: commands, file transfer and a local port forward, over paramiko.

This is the only module in the project that imports paramiko. Its rules come from running pods by hand:

- Direct TCP only (RunPod's proxy SSH blocks automation), and the endpoint is the one the API reports now:
  the mapped port changes on every resume, so host keys are pinned per *pod id*, never per host:port.
- A host key is learnt only from a container this farm has just created or resumed: the pool opens a
  window (`KnownHosts.expects_new_key`) and the first contact inside it pins the key. Any other contact
  without a pin raises `HostKeyUnknown`, and one offered a key other than the pin raises `HostKeyChanged`,
  both before authenticating or running anything.
- Key auth only (no agent, no ~/.ssh lookups, no passwords), and a timeout on every blocking step.
- Commands are argv lists joined with `shlex.join`, so every argument is quoted; there is no way to pass a
  pre-built command line. Prompts, workflows and scripts travel as files over SFTP, never inside a command
  (pasting long commands broke them). Stop remote processes with `kill <pid>`, never `pkill -f`, which can
  match and kill the SSH session itself.
- Failures are translated here: anything a dropped or slow connection causes is a `TransientError` (worth
  retrying, usually on a fresh endpoint), a refused key or a non-zero exit is a `PermanentError`.

Nothing here logs key material or file contents. A `PodShell` is meant for one thread at a time; the
`Forward` threads only open channels on its transport, which paramiko allows.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import io
import logging
import os
import select
import shlex
import socket
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Protocol

import paramiko  # type: ignore[import-untyped, unused-ignore]

from workers.base import BackendError, PermanentError, TransientError, scratch_room

LOG = logging.getLogger(__name__)

_CHUNK = 65536
_DRAIN_GRACE_S = 2.0
"""How long to wait for stdout/stderr EOF after the exit status arrived (a background child may hold them)."""
_STDERR_TAIL = 500
_REMOTE_MISSING = (errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR)


class HostKeyChanged(PermanentError):
    """The pod offered a host key other than the one pinned for its id: refused, nothing was sent."""


class HostKeyUnknown(PermanentError):
    """No key is pinned for the pod and it is not a container this farm has just started: refused."""


class KnownHosts(Protocol):
    """Where pinned host keys live, keyed by pod id; keys are `"<type> <base64>"` ("ssh-ed25519 AAAA…")."""

    def get(self, pod_id: str) -> str | None: ...

    def pin(self, pod_id: str, key: str) -> None: ...

    def expects_new_key(self, pod_id: str) -> bool:
        """True while a container this farm created or resumed waits for its first contact: the only time
        an unpinned key is taken (and pinned)."""
        ...


def normalize_key(key: str) -> str:
    """`"<type> <base64>"` from a public key line (an OpenSSH comment is dropped); ValueError if malformed."""
    fields = key.split()
    if len(fields) < 2:
        raise ValueError("a public key line is '<type> <base64>'")
    try:
        base64.b64decode(fields[1], validate=True)
    except binascii.Error as exc:
        raise ValueError("the public key is not valid base64") from exc
    return f"{fields[0]} {fields[1]}"


def fingerprint(key: str) -> str:
    """OpenSSH-style `SHA256:…` fingerprint of a public key line (safe to log, unlike the key itself)."""
    blob = base64.b64decode(normalize_key(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


@dataclass(frozen=True)
class Endpoint:
    """Where a pod's SSH server is reachable right now (public IP + mapped port; changes on every resume)."""

    host: str
    port: int
    user: str = "root"

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    stdout: str
    stderr: str


class PodShell:
    """One SSH connection to one pod. Connect explicitly or use it as a context manager; every operation
    (re)connects when there is no live connection, re-checking the pinned host key each time."""

    def __init__(
        self,
        pod_id: str,
        endpoint: Endpoint,
        key_path: Path,
        known_hosts: KnownHosts,
        *,
        connect_timeout_s: float = 15,
        command_timeout_s: float = 120,
        keepalive_s: int = 30,
    ) -> None:
        self.pod_id = pod_id
        self.endpoint = endpoint
        self.key_path = Path(key_path)
        self.known_hosts = known_hosts
        self.connect_timeout_s = connect_timeout_s
        self.command_timeout_s = command_timeout_s
        self.keepalive_s = keepalive_s
        self._transport: paramiko.Transport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._forwards: list[Forward] = []

    def __repr__(self) -> str:
        return f"PodShell({self.pod_id!r}, {self.endpoint})"

    # -- connection ------------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the connection: check the host key against the pin (pin it on first contact), then auth."""
        if self._transport is not None and self._transport.is_active():
            return
        self._drop_connection()
        pkey = self._load_key()
        pinned = self.known_hosts.get(self.pod_id)
        with self._boundary("connecting"):
            transport = self._open_transport(pinned)
            try:
                seen = self._check_host_key(transport, pinned)
                transport.auth_publickey(self.endpoint.user, pkey)
                if pinned is None:
                    self.known_hosts.pin(self.pod_id, seen)
                    LOG.info("ssh: pinned the host key of pod %s (%s)", self.pod_id, fingerprint(seen))
            except BaseException:
                transport.close()
                raise
        transport.set_keepalive(self.keepalive_s)
        self._transport = transport
        LOG.debug("ssh: connected to pod %s at %s", self.pod_id, self.endpoint)

    def close(self) -> None:
        """Close forwards, SFTP and the connection; idempotent."""
        for forward in list(self._forwards):
            forward.close()
        self._forwards.clear()
        self._drop_connection()

    def __enter__(self) -> PodShell:
        self.connect()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _load_key(self) -> paramiko.PKey:
        try:
            return paramiko.PKey.from_path(self.key_path)
        except FileNotFoundError as exc:
            raise PermanentError(f"SSH key file {self.key_path} does not exist") from exc
        except paramiko.PasswordRequiredException as exc:
            raise PermanentError(
                f"SSH key {self.key_path} is passphrase-protected; use an unencrypted key"
            ) from exc
        except (paramiko.SSHException, ValueError, OSError) as exc:
            raise PermanentError(f"cannot read SSH key {self.key_path}: {type(exc).__name__}") from exc

    def _open_transport(self, pinned: str | None) -> paramiko.Transport:
        timeout = self.connect_timeout_s
        sock = socket.create_connection((self.endpoint.host, self.endpoint.port), timeout=timeout)
        try:
            transport = paramiko.Transport(sock)
        except BaseException:
            sock.close()
            raise
        transport.banner_timeout = timeout
        transport.handshake_timeout = timeout
        transport.auth_timeout = timeout
        if pinned is not None:
            _prefer_key_type(transport, normalize_key(pinned).split()[0])
        try:
            transport.start_client(timeout=timeout)
        except BaseException:
            transport.close()
            raise
        return transport

    def _check_host_key(self, transport: paramiko.Transport, pinned: str | None) -> str:
        """The offered host key as `"<type> <base64>"`; HostKeyChanged if it is not the pinned one,
        HostKeyUnknown if none is pinned and the farm is not waiting for this pod's first contact."""
        key = transport.get_remote_server_key()  # SSHException if negotiation timed out
        seen = f"{key.get_name()} {key.get_base64()}"
        if pinned is None and not self.known_hosts.expects_new_key(self.pod_id):
            raise HostKeyUnknown(
                f"pod {self.pod_id} at {self.endpoint} offered host key {fingerprint(seen)}, and no key is "
                "pinned for it outside the window after the farm created or resumed it; refusing to connect"
            )
        if pinned is not None and normalize_key(pinned) != seen:
            raise HostKeyChanged(
                f"host key of pod {self.pod_id} at {self.endpoint} changed: pinned {fingerprint(pinned)}, "
                f"offered {fingerprint(seen)}; refusing to connect (if the pod really was rebuilt, re-pin it)"
            )
        return seen

    def _live(self) -> paramiko.Transport:
        if self._transport is None or not self._transport.is_active():
            self.connect()
        assert self._transport is not None
        return self._transport

    def _drop_connection(self) -> None:
        sftp, transport = self._sftp, self._transport
        self._sftp = self._transport = None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()
        if transport is not None:
            transport.close()

    @contextlib.contextmanager
    def _boundary(self, what: str) -> Iterator[None]:
        """Translate paramiko and socket failures into the engine error tree."""
        try:
            yield
        except BackendError:
            raise
        except paramiko.AuthenticationException as exc:
            raise PermanentError(
                f"SSH key refused by pod {self.pod_id} at {self.endpoint} ({self.key_path.name}): {exc}"
            ) from exc
        except (paramiko.SSHException, EOFError, OSError) as exc:
            raise TransientError(
                f"SSH to pod {self.pod_id} at {self.endpoint} failed while {what}: {_describe(exc)}"
            ) from exc

    # -- commands --------------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float | None = None,
        check: bool = True,
        stdin: bytes | None = None,
    ) -> CommandResult:
        """Run one command (argv, quoted with `shlex.join`) and wait for it, at most `timeout_s`."""
        args = _checked_argv(argv)
        limit = self.command_timeout_s if timeout_s is None else timeout_s
        what = f"running `{_short(args[0])}`"
        transport = self._live()
        with self._boundary(what):
            chan = transport.open_session(timeout=self.connect_timeout_s)
            result = _Exec(chan, limit).run(shlex.join(args), stdin)
        if result is None:
            self._drop_connection()
            raise TransientError(
                f"SSH to pod {self.pod_id} at {self.endpoint} dropped while {what} (no exit status)"
            )
        if isinstance(result, _TimedOut):
            raise TransientError(f"`{_short(args[0])}` on pod {self.pod_id} timed out after {limit:g} s")
        if check and result.exit_code != 0:
            raise PermanentError(
                f"`{_short(args[0])}` exited {result.exit_code} on pod {self.pod_id}: {_tail(result.stderr)}"
            )
        return result

    # -- files -----------------------------------------------------------------------------------------

    def put(self, local: Path, remote: str) -> None:
        """Upload a file, atomically on the pod (a temp name beside `remote`, then a POSIX rename)."""
        with Path(local).open("rb") as fh:
            self._upload(fh, remote)

    def put_bytes(self, data: bytes, remote: str) -> None:
        """Upload bytes as a file, atomically like `put`."""
        self._upload(io.BytesIO(data), remote)

    def get(self, remote: str, local: Path) -> None:
        """Download to a temp name beside `local`, then `os.replace` it into place (atomic)."""
        local = Path(local)
        tmp = local.with_name(f".{local.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            with (
                scratch_room(local.parent),
                tmp.open("wb") as fh,
                self._sftp_boundary(f"downloading {remote}") as sftp,
            ):
                sftp.getfo(remote, fh)
            os.replace(tmp, local)
        finally:
            tmp.unlink(missing_ok=True)

    def _upload(self, fh: IO[bytes], remote: str) -> None:
        tmp = f"{remote}.{uuid.uuid4().hex[:8]}.part"
        with self._sftp_boundary(f"uploading {remote}") as sftp:
            try:
                sftp.putfo(fh, tmp, confirm=True)
                sftp.posix_rename(tmp, remote)
            except BaseException:
                with contextlib.suppress(Exception):
                    sftp.remove(tmp)
                raise

    @contextlib.contextmanager
    def _sftp_boundary(self, what: str) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session (opened once, kept); a missing or forbidden remote path is a PermanentError."""
        transport = self._live()
        with self._boundary(what):
            try:
                yield self._open_sftp(transport)
            except OSError as exc:
                if exc.errno in _REMOTE_MISSING:
                    raise PermanentError(f"{what} on pod {self.pod_id}: {_describe(exc)}") from exc
                self._close_sftp()  # its state is unknown after a timeout or a broken channel
                raise

    def _open_sftp(self, transport: paramiko.Transport) -> paramiko.SFTPClient:
        if self._sftp is None:
            chan = transport.open_session(timeout=self.connect_timeout_s)
            chan.settimeout(self.connect_timeout_s)
            with _watchdog(chan, self.connect_timeout_s):
                chan.invoke_subsystem("sftp")
                sftp = paramiko.SFTPClient(chan)
            chan.settimeout(self.command_timeout_s)  # per read, so long transfers are fine
            self._sftp = sftp
        return self._sftp

    def _close_sftp(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is not None:
            with contextlib.suppress(Exception):
                sftp.close()

    # -- port forward ----------------------------------------------------------------------------------

    def forward(self, remote_host: str = "127.0.0.1", remote_port: int = 8188) -> Forward:
        """Listen on 127.0.0.1:<free port> and tunnel each accepted socket to remote_host:remote_port on the
        pod. The destination is probed once first, so a closed port fails here with a TransientError."""
        transport = self._live()
        target = f"{remote_host}:{remote_port}"
        with self._boundary(f"probing {target}"):
            try:
                probe = transport.open_channel(
                    "direct-tcpip",
                    (remote_host, remote_port),
                    ("127.0.0.1", 0),
                    timeout=self.connect_timeout_s,
                )
            except paramiko.ChannelException as exc:
                raise TransientError(
                    f"pod {self.pod_id} refused a tunnel to {target} ({exc.text}, code {exc.code}): "
                    "is the service listening there yet?"
                ) from exc
            probe.close()
        forward = Forward(
            transport, (remote_host, remote_port), self.connect_timeout_s, self._forwards.remove
        )
        self._forwards.append(forward)
        return forward


class Forward:
    """A local TCP listener on 127.0.0.1 whose connections are tunnelled to one destination on the pod."""

    def __init__(
        self,
        transport: paramiko.Transport,
        remote: tuple[str, int],
        open_timeout_s: float,
        on_close: Callable[[Forward], None] | None = None,
    ) -> None:
        self.remote = remote
        self._transport = transport
        self._open_timeout_s = open_timeout_s
        self._on_close = on_close
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.25)  # the accept loop notices close() within this
        self.local_port: int = self._listener.getsockname()[1]
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pipes: set[_Pipe] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(
            target=self._accept_loop, name=f"ssh-forward-{self.local_port}", daemon=True
        )
        self._acceptor.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            pipes, threads = list(self._pipes), list(self._threads)
        for pipe in pipes:
            pipe.close()
        for thread in threads:
            thread.join(5)
        if self._on_close is not None:
            with contextlib.suppress(ValueError):
                self._on_close(self)

    def __enter__(self) -> Forward:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(None)
            thread = threading.Thread(target=self._serve, args=(sock,), name="ssh-forward-pipe", daemon=True)
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()]
                self._threads.append(thread)
            thread.start()

    def _serve(self, sock: socket.socket) -> None:
        try:
            chan = self._transport.open_channel(
                "direct-tcpip", self.remote, sock.getpeername(), timeout=self._open_timeout_s
            )
        except (paramiko.SSHException, EOFError, OSError) as exc:
            LOG.warning("ssh forward to %s:%s failed: %s", *self.remote, _describe(exc))
            sock.close()
            return
        pipe = _Pipe(sock, chan)
        with self._lock:
            self._pipes.add(pipe)
        try:
            pipe.run(self._closed)
        finally:
            with self._lock:
                self._pipes.discard(pipe)
            pipe.close()


class _Pipe:
    """Copies bytes both ways between a local socket and a channel, honouring half-closes."""

    def __init__(self, sock: socket.socket, chan: paramiko.Channel) -> None:
        self.sock = sock
        self.chan = chan

    def run(self, stop: threading.Event) -> None:
        open_ends: list[socket.socket | paramiko.Channel] = [self.sock, self.chan]
        try:
            while open_ends and not stop.is_set():
                readable, _, _ = select.select(open_ends, [], [], 0.25)
                for end in readable:
                    if not self._copy(end):
                        open_ends.remove(end)
        except (OSError, ValueError, EOFError, paramiko.SSHException) as exc:
            LOG.debug("ssh forward pipe ended: %s", _describe(exc))

    def _copy(self, src: socket.socket | paramiko.Channel) -> bool:
        """Move one chunk from src to the other end; False (after passing the EOF on) when src is done."""
        data = src.recv(_CHUNK)
        if src is self.sock:
            if not data:
                self.chan.shutdown_write()
                return False
            self.chan.sendall(data)
            return True
        if not data:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_WR)
            return False
        self.sock.sendall(data)
        return True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.chan.close()


class _TimedOut:
    """The command outlived its time limit; its channel was closed."""


class _Exec:
    """One exec on one channel, bounded by a watchdog that closes the channel at the deadline."""

    def __init__(self, chan: paramiko.Channel, limit_s: float) -> None:
        self.chan = chan
        self.limit_s = limit_s
        self.out = bytearray()
        self.err = bytearray()

    def run(self, command: str, stdin: bytes | None) -> CommandResult | _TimedOut | None:
        """The result; _TimedOut at the deadline; None if the channel closed without an exit status."""
        readers = [
            threading.Thread(target=_drain, args=(self.chan.recv, self.out), daemon=True),
            threading.Thread(target=_drain, args=(self.chan.recv_stderr, self.err), daemon=True),
        ]
        dog = _Watchdog(self.chan, self.limit_s)
        try:
            try:
                self.chan.exec_command(command)
                for reader in readers:
                    reader.start()
                if stdin:
                    self.chan.sendall(stdin)
                self.chan.shutdown_write()  # EOF on stdin, so commands that read it do not hang
            except (paramiko.SSHException, OSError, EOFError):
                if not dog.fired:
                    raise
            self.chan.status_event.wait(self.limit_s)
            return self._outcome(dog, readers)
        finally:
            dog.cancel()
            self.chan.close()
            for reader in readers:
                if reader.is_alive():
                    reader.join(1)

    def _outcome(self, dog: _Watchdog, readers: list[threading.Thread]) -> CommandResult | _TimedOut | None:
        status = self.chan.exit_status if self.chan.status_event.is_set() else -1
        if status == -1:
            return _TimedOut() if dog.fired else None
        for reader in readers:
            reader.join(_DRAIN_GRACE_S)
            if reader.is_alive():
                LOG.warning("ssh: output still open after the command exited (a background child holds it?)")
        return CommandResult(status, self.out.decode("utf-8", "replace"), self.err.decode("utf-8", "replace"))


class _Watchdog:
    """Closes a channel when its time is up (paramiko's exec/subsystem requests wait with no limit)."""

    def __init__(self, chan: paramiko.Channel, seconds: float) -> None:
        self.fired = False
        self._chan = chan
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        self._chan.close()

    def cancel(self) -> None:
        self._timer.cancel()


@contextlib.contextmanager
def _watchdog(chan: paramiko.Channel, seconds: float) -> Iterator[_Watchdog]:
    dog = _Watchdog(chan, seconds)
    try:
        yield dog
    finally:
        dog.cancel()


def _drain(recv: Callable[[int], bytes], sink: bytearray) -> None:
    """Reader thread: append everything `recv` yields until EOF or the channel closes."""
    while True:
        try:
            chunk = recv(_CHUNK)
        except TimeoutError:
            continue
        except Exception:  # the channel went away; the caller reports why
            return
        if not chunk:
            return
        sink += chunk


def _prefer_key_type(transport: paramiko.Transport, key_type: str) -> None:
    """Ask for the pinned key's type first, so a server with several host keys offers the pinned one."""
    options = transport.get_security_options()
    names = list(options.key_types)
    if key_type == "ssh-rsa":
        preferred = [n for n in names if n.startswith("rsa-sha2") or n == "ssh-rsa"]
    else:
        preferred = [n for n in names if n == key_type]
    if preferred:
        options.key_types = preferred + [n for n in names if n not in preferred]


def _checked_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, str | bytes):
        raise TypeError("run() takes an argv list, never a pre-built command line")
    args = list(argv)
    if not args:
        raise ValueError("run() needs at least a program name")
    for arg in args:
        if not isinstance(arg, str):
            raise TypeError(f"argv items must be str, not {type(arg).__name__}")
        if "\0" in arg:
            raise ValueError("argv items cannot contain NUL bytes")
    return args


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _short(word: str) -> str:
    return word if len(word) <= 60 else word[:57] + "..."


def _tail(stderr: str) -> str:
    text = stderr.strip()
    if not text:
        return "(no stderr)"
    return text if len(text) <= _STDERR_TAIL else "..." + text[-_STDERR_TAIL:]
