"""workers.gpu.ssh.PodShell (paramiko) against emulators.ssh_pod.SSHPod (asyncssh) on loopback."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import asyncssh
import httpx
import pytest

from emulators.ssh_pod import SSHPod, public_key_line
from tests.support.known_hosts import FileKnownHosts, MemoryKnownHosts
from workers.base import PermanentError, TransientError
from workers.gpu.ssh import (
    CommandResult,
    Endpoint,
    HostKeyChanged,
    HostKeyUnknown,
    PodShell,
    fingerprint,
)

POD_ID = "pod-abc123"


@dataclass(frozen=True)
class ClientKey:
    path: Path
    public: str


def make_key(directory: Path, name: str) -> ClientKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    path = directory / name
    key.write_private_key(str(path), "openssh")
    path.chmod(0o600)
    return ClientKey(path, public_key_line(key))


@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    return make_key(tmp_path_factory.mktemp("keys"), "id_ed25519")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._reply(json.dumps({"path": self.path}).encode())

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self._reply(body)

    def _reply(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_port() -> Iterator[int]:
    """A tiny HTTP server standing in for ComfyUI on the pod's 127.0.0.1:8188."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def pod(tmp_path: Path, client_key: ClientKey, http_port: int) -> Iterator[SSHPod]:
    with SSHPod(root=tmp_path / "pod", authorized_key=client_key.public, forwards={8188: http_port}) as p:
        yield p


@pytest.fixture
def known() -> MemoryKnownHosts:
    return MemoryKnownHosts()


def shell_for(pod: SSHPod, key: ClientKey, known: MemoryKnownHosts, pod_id: str = POD_ID) -> PodShell:
    return PodShell(
        pod_id, Endpoint("127.0.0.1", pod.port), key.path, known, connect_timeout_s=5, command_timeout_s=10
    )


@pytest.fixture
def shell(pod: SSHPod, client_key: ClientKey, known: MemoryKnownHosts) -> Iterator[PodShell]:
    with shell_for(pod, client_key, known) as sh:
        yield sh


# -- commands ------------------------------------------------------------------------------------------


def test_echo(shell: PodShell) -> None:
    assert shell.run(["echo", "hello"]) == CommandResult(0, "hello\n", "")


def test_exit_code_and_stderr_are_separate(shell: PodShell, pod: SSHPod) -> None:
    result = shell.run(["sh", "-c", "echo out; echo err >&2; exit 3"], check=False)
    assert result == CommandResult(3, "out\n", "err\n")
    assert pod.commands()[-1] == ["sh", "-c", "echo out; echo err >&2; exit 3"]


def test_check_raises_permanent_with_first_word_code_and_stderr(shell: PodShell) -> None:
    with pytest.raises(PermanentError, match=r"`ls` exited 2 .*no-such-dir"):
        shell.run(["ls", "no-such-dir"])


def test_runs_in_pod_root_with_home_and_podroot(shell: PodShell, pod: SSHPod) -> None:
    result = shell.run(["sh", "-c", 'pwd; echo "$HOME"; echo "$PODROOT"'])
    assert result.stdout.split() == [str(pod.root)] * 3


def test_metacharacters_come_back_byte_identical_and_run_nothing(shell: PodShell, pod: SSHPod) -> None:
    prompt = (
        "$(touch pwned); rm -rf / \"quotes\" 'single' \\ backslash ; | & > < `touch pwned2` $HOME\nline 2 ✓"
    )
    result = shell.run(["printf", "%s", prompt])
    assert result.stdout == prompt
    assert pod.commands()[-1] == ["printf", "%s", prompt]
    assert not (pod.root / "pwned").exists()
    assert not (pod.root / "pwned2").exists()


def test_a_prebuilt_command_line_is_refused(shell: PodShell) -> None:
    with pytest.raises(TypeError, match="argv list"):
        shell.run("echo hello")
    with pytest.raises(ValueError):
        shell.run([])


def test_stdin(shell: PodShell) -> None:
    data = bytes(range(256)) * 1000
    result = shell.run(["sh", "-c", "wc -c"], stdin=data)
    assert result.stdout.strip() == str(len(data))


def test_large_stdout_and_stderr_at_once_do_not_deadlock(shell: PodShell) -> None:
    script = "head -c 3000000 /dev/zero | tr '\\0' e >&2; head -c 3000000 /dev/zero | tr '\\0' o"
    result = shell.run(["sh", "-c", script])
    assert (len(result.stdout), len(result.stderr)) == (3_000_000, 3_000_000)


def test_timeout_is_transient_and_quick(shell: PodShell) -> None:
    started = time.monotonic()
    with pytest.raises(TransientError, match="timed out after 1 s"):
        shell.run(["sleep", "5"], timeout_s=1)
    assert time.monotonic() - started < 2.5
    assert shell.run(["echo", "still", "usable"]).stdout == "still usable\n"


def test_dropped_connection_mid_command_is_transient(shell: PodShell, pod: SSHPod) -> None:
    timer = threading.Timer(0.5, pod.drop_connections)
    timer.start()
    started = time.monotonic()
    try:
        with pytest.raises(TransientError, match="dropped"):
            shell.run(["sleep", "3"])
    finally:
        timer.join()
    assert time.monotonic() - started < 2.5
    assert shell.run(["echo", "back"]).stdout == "back\n"  # the next call reconnects


# -- files ---------------------------------------------------------------------------------------------


def test_put_get_round_trip(shell: PodShell, pod: SSHPod, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    shell.run(["mkdir", "-p", "workspace/inputs"])
    shell.put(src, "/workspace/inputs/in.bin")
    assert (pod.root / "workspace/inputs/in.bin").read_bytes() == data
    assert os.listdir(pod.root / "workspace/inputs") == ["in.bin"]  # no temp name left behind
    dest = tmp_path / "out" / "back.bin"
    dest.parent.mkdir()
    shell.get("/workspace/inputs/in.bin", dest)
    assert dest.read_bytes() == data
    assert os.listdir(dest.parent) == ["back.bin"]


def test_put_bytes_then_use_it_from_a_command(shell: PodShell, pod: SSHPod) -> None:
    prompt = b"a prompt with $(dangerous) 'stuff'\n"
    shell.put_bytes(prompt, "/prompt.txt")
    assert (pod.root / "prompt.txt").read_bytes() == prompt
    assert shell.run(["cat", "prompt.txt"]).stdout.encode() == prompt


def test_get_of_a_missing_file_is_permanent_and_leaves_nothing(shell: PodShell, tmp_path: Path) -> None:
    local = tmp_path / "downloads"
    local.mkdir()
    with pytest.raises(PermanentError, match=r"nope\.png"):
        shell.get("/nope.png", local / "x.png")
    assert os.listdir(local) == []


# -- port forward --------------------------------------------------------------------------------------


def test_forward_to_pod_port_8188(shell: PodShell) -> None:
    with (
        shell.forward() as fwd,
        httpx.Client(base_url=f"http://127.0.0.1:{fwd.local_port}", timeout=5) as http,
    ):
        assert http.get("/system_stats").json() == {"path": "/system_stats"}
        body = os.urandom(1_000_000)
        assert http.post("/prompt", content=body).content == body
        with httpx.Client(timeout=5) as other:  # a second, concurrent connection through the same forward
            assert other.get(f"{fwd.url}/queue").json() == {"path": "/queue"}


def test_forward_fails_fast_once_the_connection_dropped(shell: PodShell, pod: SSHPod) -> None:
    with shell.forward() as fwd, httpx.Client(timeout=5) as http:
        assert http.get(f"{fwd.url}/a").status_code == 200
        pod.drop_connections()
        started = time.monotonic()
        with pytest.raises(httpx.TransportError):
            http.get(f"{fwd.url}/b")
        assert time.monotonic() - started < 2


def test_forward_to_an_unmapped_port_fails_clearly(shell: PodShell) -> None:
    with pytest.raises(TransientError, match=r"refused a tunnel to 127\.0\.0\.1:9999"):
        shell.forward(remote_port=9999)


# -- host keys -----------------------------------------------------------------------------------------


def test_first_contact_pins_the_key_per_pod_id(
    pod: SSHPod, client_key: ClientKey, known: MemoryKnownHosts
) -> None:
    assert known.get(POD_ID) is None
    with shell_for(pod, client_key, known):
        pass
    assert known.get(POD_ID) == pod.host_key_line


def test_changed_host_key_is_refused_before_anything_runs(
    pod: SSHPod, client_key: ClientKey, known: MemoryKnownHosts, tmp_path: Path
) -> None:
    with shell_for(pod, client_key, known) as sh:
        sh.run(["true"])
    pinned = known.get(POD_ID)
    with SSHPod(root=tmp_path / "impostor", authorized_key=client_key.public) as impostor:
        sh = shell_for(impostor, client_key, known)
        with pytest.raises(HostKeyChanged, match=f"pod {POD_ID}.*changed") as caught:
            sh.run(["touch", "ran"])
        assert isinstance(caught.value, PermanentError)
        assert fingerprint(impostor.host_key_line) in str(caught.value)
        assert impostor.commands() == []
        assert not (impostor.root / "ran").exists()
    assert known.get(POD_ID) == pinned


def test_an_unknown_host_key_is_refused_unless_the_farm_just_started_the_pod(
    pod: SSHPod, client_key: ClientKey
) -> None:
    """A pod with no pinned key, reached outside the window after the pool created or resumed it (a lost
    pin, a pod from elsewhere, an endpoint that now leads to another machine), is refused before auth."""
    strict = MemoryKnownHosts(first_use=False)
    with pytest.raises(HostKeyUnknown, match=f"pod {POD_ID}.*no key is pinned") as caught:
        shell_for(pod, client_key, strict).run(["touch", "ran"])
    assert isinstance(caught.value, PermanentError)
    assert fingerprint(pod.host_key_line) in str(caught.value)
    assert pod.commands() == [] and not (pod.root / "ran").exists()
    assert strict.get(POD_ID) is None, "nothing was pinned"
    strict.first_use = True  # the pool's window for a container it has just created
    with shell_for(pod, client_key, strict) as sh:
        assert sh.run(["echo", "hello"]).stdout == "hello\n"
    assert strict.get(POD_ID) == pod.host_key_line


def test_a_host_key_of_another_type_is_a_change_too(
    pod: SSHPod, client_key: ClientKey, known: MemoryKnownHosts, tmp_path: Path
) -> None:
    known.pin(POD_ID, pod.host_key_line)  # ed25519
    rsa = asyncssh.generate_private_key("ssh-rsa", key_size=2048)
    with SSHPod(root=tmp_path / "rsa", authorized_key=client_key.public, host_key=rsa) as other:
        with pytest.raises(HostKeyChanged):
            shell_for(other, client_key, known).connect()
        assert other.commands() == []


def test_restart_on_a_new_port_then_reconnect(
    pod: SSHPod, client_key: ClientKey, known: MemoryKnownHosts
) -> None:
    with shell_for(pod, client_key, known) as sh:
        sh.run(["true"])
        old = pod.port
        new = pod.restart()
        assert new != old
        with pytest.raises(TransientError):
            sh.run(["true"])  # the old endpoint is gone
    with shell_for(pod, client_key, known) as sh:  # the endpoint the API reports after the resume
        assert sh.endpoint.port == new
        assert sh.run(["echo", "resumed"]).stdout == "resumed\n"


def test_wrong_client_key_is_permanent_and_pins_nothing(
    pod: SSHPod, known: MemoryKnownHosts, tmp_path: Path
) -> None:
    stranger = make_key(tmp_path, "stranger")
    with pytest.raises(PermanentError, match="SSH key refused by pod") as caught:
        shell_for(pod, stranger, known).connect()
    assert not isinstance(caught.value, HostKeyChanged)
    assert known.get(POD_ID) is None
    assert pod.commands() == []


def test_connection_refused_is_transient(client_key: ClientKey, known: MemoryKnownHosts) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sh = PodShell(POD_ID, Endpoint("127.0.0.1", port), client_key.path, known, connect_timeout_s=2)
    with pytest.raises(TransientError, match="ConnectionRefusedError"):
        sh.connect()


def test_missing_key_file_is_permanent(pod: SSHPod, known: MemoryKnownHosts, tmp_path: Path) -> None:
    sh = PodShell(POD_ID, Endpoint("127.0.0.1", pod.port), tmp_path / "nope", known)
    with pytest.raises(PermanentError, match="does not exist"):
        sh.connect()


def test_file_known_hosts(tmp_path: Path, pod: SSHPod) -> None:
    path = tmp_path / "pins" / "known_pods"
    hosts = FileKnownHosts(path)
    assert hosts.get("a") is None
    hosts.pin("a", pod.host_key_line + " a comment")
    other = public_key_line(asyncssh.generate_private_key("ssh-ed25519"))
    hosts.pin("b", other)
    again = FileKnownHosts(path)
    assert again.get("a") == pod.host_key_line
    assert again.get("b") == other
    again.forget("b")
    assert FileKnownHosts(path).get("b") is None
    assert os.listdir(path.parent) == ["known_pods"]
    with pytest.raises(ValueError):
        hosts.pin("c", "not-a-key")
    with pytest.raises(ValueError):
        hosts.pin("c", "ssh-ed25519 not*base64")
