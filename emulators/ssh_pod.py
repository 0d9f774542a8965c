"""A loopback test double of a RunPod pod's SSH server (asyncssh on its own event-loop thread).

It speaks real SSH on 127.0.0.1 only, so `workers.gpu.ssh.PodShell` (paramiko) is tested against the wire
protocol rather than a mock:

- key auth only, with exactly one authorized client key;
- exec runs the command for real with `/bin/sh -c <command>` in a subprocess whose cwd is `root`, with
  `HOME` and `PODROOT` set to `root` (and nothing else from this process's environment but `PATH`);
  every exec'd command is recorded, split with `shlex.split`, for tests to assert on quoting;
- SFTP is chrooted to `root`;
- direct-tcpip to `127.0.0.1:<pod port>` goes to the mapped local port (`forwards`), anything else is
  refused the way sshd refuses it (SSH_OPEN_CONNECT_FAILED, "Connection refused");
- `restart()` comes back on a new port with the same host key (RunPod maps a new port on every resume),
  `drop_connections()` aborts every live connection ("SSH dropped mid-job"), and a new `SSHPod` with a
  different `host_key` simulates a pod whose host key changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import threading
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar, cast

import asyncssh

T = TypeVar("T")

LOOPBACK = "127.0.0.1"
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
_CALL_TIMEOUT_S = 10.0
_CHUNK = 65536


def public_key_line(key: asyncssh.SSHKey) -> str:
    """`"ssh-ed25519 AAAA…"`: key type and base64 blob, no comment (the form `KnownHosts` pins)."""
    fields = key.export_public_key("openssh").decode("ascii").split()
    return f"{fields[0]} {fields[1]}"


class SSHPod:
    """One fake pod. `start()` it (or use it as a context manager), then point a `PodShell` at `port`."""

    def __init__(
        self,
        *,
        root: Path,
        authorized_key: str,
        host_key: asyncssh.SSHKey | None = None,
        port: int = 0,
        forwards: dict[int, int] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.authorized_key = authorized_key
        self.host_key = host_key if host_key is not None else asyncssh.generate_private_key("ssh-ed25519")
        self.port = port
        self.forwards: dict[int, int] = dict(forwards or {})
        self._authorized = asyncssh.import_authorized_keys(authorized_key)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._acceptor: asyncssh.SSHAcceptor | None = None
        self._conns: set[asyncssh.SSHServerConnection] = set()
        self._procs: set[asyncio.subprocess.Process] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()
        self._commands: list[list[str]] = []

    @property
    def host_key_line(self) -> str:
        """The public host key as `KnownHosts` pins it."""
        return public_key_line(self.host_key)

    # -- lifecycle (called from the test's thread) ------------------------------------------------------

    def start(self) -> SSHPod:
        if self._loop is not None:
            raise RuntimeError("SSHPod already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name=f"ssh-pod-{id(self):x}", daemon=True)
        self._thread.start()
        self.port = self._call(self._listen(self.port))
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._shutdown(final=True))
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_CALL_TIMEOUT_S)
            loop.close()
            self._loop = self._thread = None

    def restart(self, new_port: bool = True) -> int:
        """Drop every connection and listen again with the same host key; on a new port unless told not to."""
        old = self.port
        self._call(self._shutdown())
        self.port = self._call(self._listen(0 if new_port else old))
        while new_port and self.port == old:  # the OS handed back the same port: ask again
            self._call(self._shutdown())
            self.port = self._call(self._listen(0))
        return self.port

    def drop_connections(self) -> None:
        """Abort every live connection abruptly, as a pod that vanished mid-job would."""
        self._call(self._abort_all())

    def commands(self) -> list[list[str]]:
        """Every command exec'd so far, split with `shlex.split`, oldest first."""
        with self._lock:
            return [list(argv) for argv in self._commands]

    def __enter__(self) -> SSHPod:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("SSHPod is not running: call start() first")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_TIMEOUT_S)

    # -- on the event-loop thread -----------------------------------------------------------------------

    async def _listen(self, port: int) -> int:
        self._acceptor = await asyncssh.create_server(
            lambda: _PodServer(self),
            LOOPBACK,
            port,
            server_host_keys=[self.host_key],
            authorized_client_keys=self._authorized,
            process_factory=self._exec,
            sftp_factory=self._sftp,
            encoding=None,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
        return self._acceptor.get_port()

    async def _shutdown(self, *, final: bool = False) -> None:
        if self._acceptor is not None:
            self._acceptor.close()
            await self._acceptor.wait_closed()
            self._acceptor = None
        await self._abort_all()
        for proc in list(self._procs):
            _kill(proc)
        if self._tasks:  # let every exec handler reap its subprocess before the loop goes away
            await asyncio.wait(set(self._tasks), timeout=_CALL_TIMEOUT_S)
        if final:
            await _cancel_others()

    async def _abort_all(self) -> None:
        conns = list(self._conns)
        for conn in conns:
            conn.abort()
        for conn in conns:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.wait_closed(), _CALL_TIMEOUT_S)

    def _sftp(self, chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=os.fsencode(self.root))

    def _record(self, command: str) -> None:
        try:
            argv = shlex.split(command)
        except ValueError:  # unbalanced quotes: record it whole, the shell will complain anyway
            argv = [command]
        with self._lock:
            self._commands.append(argv)

    async def _exec(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        command = process.command
        if command is None:
            process.stderr.write(b"this test pod has no interactive shell\n")
            process.exit(1)
            return
        self._record(command)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._run(process, command)
        finally:
            if task is not None:
                self._tasks.discard(task)

    async def _run(self, process: asyncssh.SSHServerProcess[bytes], command: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=self.root,
            env=self._env(),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # so a timeout or a drop kills the whole process group
        )
        self._procs.add(proc)
        try:
            code = await self._supervise(process, proc)
        finally:
            self._procs.discard(proc)
            _kill(proc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), _CALL_TIMEOUT_S)
        if code is not None:
            process.exit(code)

    async def _supervise(
        self, process: asyncssh.SSHServerProcess[bytes], proc: asyncio.subprocess.Process
    ) -> int | None:
        """Copy stdin/stdout/stderr until the command ends; None if the channel closed first."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        work: asyncio.Future[Any] = asyncio.ensure_future(
            asyncio.gather(
                _feed(process.stdin, proc.stdin),
                _copy(proc.stdout, process.stdout),
                _copy(proc.stderr, process.stderr),
                proc.wait(),
            )
        )
        closed: asyncio.Future[Any] = asyncio.ensure_future(process.channel.wait_closed())
        await asyncio.wait({work, closed}, return_when=asyncio.FIRST_COMPLETED)
        closed.cancel()
        if not work.done():
            _kill(proc)
            work.cancel()
            with contextlib.suppress(BaseException):
                await work
            return None
        if work.exception() is not None:
            return None
        rc = proc.returncode if proc.returncode is not None else 255
        return rc if rc >= 0 else 128 - rc  # killed by signal N: report 128+N as a shell would

    def _env(self) -> dict[str, str]:
        root = str(self.root)
        return {
            "HOME": root,
            "PODROOT": root,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
        }


class _PodServer(asyncssh.SSHServer):
    """Per-connection hooks: track live connections and map direct-tcpip pod ports to local ports."""

    def __init__(self, pod: SSHPod) -> None:
        self._pod = pod
        self._conn: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._pod._conns.add(conn)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._pod._conns.discard(self._conn)

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool | Awaitable[asyncssh.SSHTCPSession[bytes]]:
        local_port = self._pod.forwards.get(dest_port) if dest_host in _LOOPBACK_NAMES else None
        if local_port is None or self._conn is None:
            return False  # asyncssh answers SSH_OPEN_CONNECT_FAILED "Connection refused", as sshd does
        # asyncssh itself casts forward_connection's SSHForwarder to a TCP session (it is one by duck typing)
        forwarder = self._conn.forward_connection(LOOPBACK, local_port)
        return cast("Awaitable[asyncssh.SSHTCPSession[bytes]]", forwarder)


async def _feed(source: asyncssh.SSHReader[bytes], sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the command exited without reading all of its stdin
    finally:
        sink.close()


async def _copy(source: asyncio.StreamReader, sink: asyncssh.SSHWriter[bytes]) -> None:
    while data := await source.read(_CHUNK):
        sink.write(data)
        await sink.drain()


async def _cancel_others() -> None:
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


def _kill(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
