"""The loopback RunPod GraphQL emulator, driven only through the real runpod 1.12.0 SDK."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import runpod  # type: ignore[import-untyped]  # heavy (~1.7 s): imported once for the module
from runpod.error import AuthenticationError, QueryError  # type: ignore[import-untyped]

from emulators.runpod_server import NO_CAPACITY_MSG, RunpodEmulator, RunpodFaults

KEY = "test-runpod-key"
A100 = "NVIDIA A100 80GB PCIe"
PUBLIC_KEY = "ssh-ed25519 AAAA test"

MakeEmulator = Callable[..., RunpodEmulator]


class StubBackend:
    """Hands out increasing SSH ports (nothing listens) and records the lifecycle calls."""

    def __init__(self, first_port: int = 42001) -> None:
        self._next = first_port
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str, int | None]] = []

    def start(self, pod_id: str) -> int:
        with self._lock:
            port, self._next = self._next, self._next + 1
            self.calls.append(("start", pod_id, port))
            return port

    def stop(self, pod_id: str) -> None:
        with self._lock:
            self.calls.append(("stop", pod_id, None))


@pytest.fixture
def make_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeEmulator]:
    """Start an emulator (stopped after the test) and point the SDK at it through the environment."""
    started: list[RunpodEmulator] = []
    monkeypatch.setattr(runpod, "api_key", KEY)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")

    def make(**kwargs: Any) -> RunpodEmulator:
        emulator = RunpodEmulator(**{"api_key": KEY, **kwargs}).start()
        started.append(emulator)
        monkeypatch.setenv("RUNPOD_API_BASE_URL", emulator.url)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def backend() -> StubBackend:
    return StubBackend()


@pytest.fixture
def emu(make_emulator: MakeEmulator, backend: StubBackend) -> RunpodEmulator:
    return make_emulator(backend=backend)


def create(**overrides: Any) -> str:
    """The farm's deploy call; returns the pod id."""
    kwargs: dict[str, Any] = {
        "name": "farm-gpu-1",
        "image_name": "img:tag",
        "gpu_type_id": A100,
        "gpu_count": 1,
        "ports": "22/tcp,8188/http",
        "volume_mount_path": "/workspace",
        "network_volume_id": "vol-models",
        "support_public_ip": True,
        "start_ssh": True,
        "env": {"PUBLIC_KEY": PUBLIC_KEY},
        **overrides,
    }
    pod = runpod.create_pod(**kwargs)
    pod_id: str = pod["id"]
    return pod_id


def wait_runtime(pod_id: str, limit: int = 10) -> tuple[dict[str, Any], int]:
    """Poll get_pod until the runtime shows: (the pod, how many polls it took)."""
    for polls in range(1, limit + 1):
        pod: dict[str, Any] = runpod.get_pod(pod_id)
        if pod["runtime"] is not None:
            return pod, polls
    raise AssertionError(f"no runtime after {limit} polls")


def ssh_port(pod: dict[str, Any]) -> int:
    """The protocol note's rule: the public tcp entry for private port 22."""
    ports = pod["runtime"]["ports"]
    entry = next(p for p in ports if p["privatePort"] == 22 and p["isIpPublic"] and p["type"] == "tcp")
    assert entry["ip"] == "127.0.0.1"
    port: int = entry["publicPort"]
    return port


# lifecycle ------------------------------------------------------------------------------------------------


def test_create_answers_the_deploy_fields_without_a_status(emu: RunpodEmulator) -> None:
    pod = runpod.create_pod(
        name="farm-gpu-1", image_name="img:tag", gpu_type_id=A100, env={"PUBLIC_KEY": PUBLIC_KEY}
    )
    assert set(pod) >= {"id", "imageName", "env", "machineId", "machine"}
    assert "desiredStatus" not in pod
    assert len(pod["id"]) == 12 and pod["id"].isalnum() and pod["id"].islower()
    assert pod["imageName"] == "img:tag"
    assert pod["env"] == [f"PUBLIC_KEY={PUBLIC_KEY}"]
    assert pod["machine"]["podHostId"].startswith(pod["id"])


def test_runtime_appears_after_the_configured_polls(emu: RunpodEmulator, backend: StubBackend) -> None:
    pod_id = create()
    assert backend.calls == [("start", pod_id, 42001)]
    pod, polls = wait_runtime(pod_id)
    assert polls == 3  # runtime_delay_polls=2 null answers, then the runtime
    assert pod["desiredStatus"] == "RUNNING"
    assert ssh_port(pod) == 42001
    http = next(p for p in pod["runtime"]["ports"] if p["privatePort"] == 8188)
    assert http["type"] == "http" and http["isIpPublic"] is False
    assert pod["name"] == "farm-gpu-1" and pod["imageName"] == "img:tag"
    assert pod["gpuCount"] == 1 and pod["costPerHr"] == pytest.approx(1.19)
    assert pod["machine"]["gpuDisplayName"] == "A100 80GB"
    assert pod["volumeMountPath"] == "/workspace" and pod["ports"] == "22/tcp,8188/http"
    assert pod["env"] == [f"PUBLIC_KEY={PUBLIC_KEY}"]
    assert emu.pods()[pod_id] == pod | {"uptimeSeconds": emu.pods()[pod_id]["uptimeSeconds"]}


def test_zero_delay_exposes_the_runtime_on_the_first_poll(make_emulator: MakeEmulator) -> None:
    make_emulator(faults=RunpodFaults(runtime_delay_polls=0))
    _, polls = wait_runtime(create())
    assert polls == 1


def test_get_pods_lists_every_pod(emu: RunpodEmulator) -> None:
    first, second = create(name="farm-gpu-1"), create(name="farm-gpu-2")
    pods = runpod.get_pods()
    assert {pod["id"]: pod["name"] for pod in pods} == {first: "farm-gpu-1", second: "farm-gpu-2"}
    assert all(pod["desiredStatus"] == "RUNNING" for pod in pods)


def test_stop_resume_moves_the_ssh_port(emu: RunpodEmulator, backend: StubBackend) -> None:
    pod_id = create()
    first_port = ssh_port(wait_runtime(pod_id)[0])
    assert runpod.stop_pod(pod_id) == {"id": pod_id, "desiredStatus": "EXITED"}
    stopped = runpod.get_pod(pod_id)
    assert stopped["desiredStatus"] == "EXITED" and stopped["runtime"] is None
    resumed = runpod.resume_pod(pod_id, 1)
    assert resumed["id"] == pod_id and resumed["desiredStatus"] == "RUNNING"
    assert "podHostId" in resumed["machine"]
    pod, polls = wait_runtime(pod_id)
    assert polls == 3
    assert ssh_port(pod) == 42002 != first_port
    assert backend.calls == [("start", pod_id, 42001), ("stop", pod_id, None), ("start", pod_id, 42002)]


def test_stop_and_resume_are_idempotent(emu: RunpodEmulator, backend: StubBackend) -> None:
    pod_id = create()
    runpod.resume_pod(pod_id, 1)  # already running: no second backend start
    runpod.stop_pod(pod_id)
    runpod.stop_pod(pod_id)
    assert [call[0] for call in backend.calls] == ["start", "stop"]


def test_terminate_removes_the_pod(emu: RunpodEmulator, backend: StubBackend) -> None:
    pod_id = create()
    assert runpod.terminate_pod(pod_id) is None
    assert runpod.get_pod(pod_id) is None
    assert runpod.get_pods() == []
    assert emu.pods() == {}
    assert backend.calls[-1] == ("stop", pod_id, None)


def test_vanish_deletes_out_of_band(emu: RunpodEmulator, backend: StubBackend) -> None:
    pod_id = create()
    emu.vanish(pod_id)
    assert backend.calls[-1] == ("stop", pod_id, None)
    assert runpod.get_pod(pod_id) is None
    with pytest.raises(QueryError, match="Pod not found"):
        runpod.terminate_pod(pod_id)
    with pytest.raises(KeyError):
        emu.vanish(pod_id)


@pytest.mark.parametrize("call", ["stop", "resume", "terminate"])
def test_unknown_pod_ids(emu: RunpodEmulator, call: str) -> None:
    assert runpod.get_pod("nosuchpod000") is None
    actions: dict[str, Callable[[], Any]] = {
        "stop": lambda: runpod.stop_pod("nosuchpod000"),
        "resume": lambda: runpod.resume_pod("nosuchpod000", 1),
        "terminate": lambda: runpod.terminate_pod("nosuchpod000"),
    }
    with pytest.raises(QueryError, match="Pod not found"):
        actions[call]()


def test_emulator_stop_stops_running_backends(make_emulator: MakeEmulator, backend: StubBackend) -> None:
    emu = make_emulator(backend=backend)
    running, stopped = create(name="a"), create(name="b")
    runpod.stop_pod(stopped)
    emu.stop()
    assert backend.calls.count(("stop", running, None)) == 1
    assert backend.calls.count(("stop", stopped, None)) == 1


def test_default_backend_hands_out_distinct_ports(make_emulator: MakeEmulator) -> None:
    make_emulator(faults=RunpodFaults(runtime_delay_polls=0))
    pod_id = create()
    first = ssh_port(wait_runtime(pod_id)[0])
    runpod.stop_pod(pod_id)
    runpod.resume_pod(pod_id, 1)
    assert ssh_port(wait_runtime(pod_id)[0]) != first


def test_concurrent_deploys_get_distinct_pods(emu: RunpodEmulator, backend: StubBackend) -> None:
    ids: list[str] = []
    threads = [threading.Thread(target=lambda i=i: ids.append(create(name=f"w{i}"))) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 6 == len(emu.pods())
    assert len({call[2] for call in backend.calls}) == 6


# what the SDK sends ---------------------------------------------------------------------------------------


def test_queries_record_the_deploy_text(emu: RunpodEmulator) -> None:
    create()
    queries = emu.queries()
    assert len(queries) == 3  # gpuTypes pre-check, myself.networkVolumes lookup, the deploy
    assert f'gpuTypes(input: {{id: "{A100}"}})' in queries[0]
    assert "networkVolumes" in queries[1]
    deploy = queries[2]
    assert "podFindAndDeployOnDemand" in deploy
    for fragment in (
        f'gpuTypeId: "{A100}"',
        'networkVolumeId: "vol-models"',
        'dataCenterId: "EU-RO-1"',  # the SDK copied it from myself.networkVolumes
        'ports: "22/tcp,8188/http"',
        f'{{ key: "PUBLIC_KEY", value: "{PUBLIC_KEY}" }}',
        "supportPublicIp: true",
        "startSsh: true",
        "cloudType: ALL",
        'volumeMountPath: "/workspace"',
    ):
        assert fragment in deploy, fragment


def test_gpu_catalogue(emu: RunpodEmulator) -> None:
    for gpu_id in (A100, "NVIDIA A100-SXM4-80GB"):
        gpu = runpod.get_gpu(gpu_id)
        assert gpu["id"] == gpu_id and gpu["displayName"] == "A100 80GB" and gpu["memoryInGb"] == 80
        assert gpu["securePrice"] == gpu["communityPrice"] == pytest.approx(1.19)
    assert {g["id"] for g in runpod.get_gpus()} >= {A100, "NVIDIA A100-SXM4-80GB"}


def test_unknown_gpu_fails_the_sdk_pre_check(emu: RunpodEmulator) -> None:
    with pytest.raises(ValueError, match="No GPU found"):
        create(gpu_type_id="NVIDIA B9000")
    assert not any("podFindAndDeployOnDemand" in query for query in emu.queries())
    assert emu.pods() == {}


def test_unknown_network_volume_is_refused(emu: RunpodEmulator) -> None:
    with pytest.raises(QueryError, match="vol-nope"):
        create(network_volume_id="vol-nope")


def test_unknown_operations_are_named(emu: RunpodEmulator) -> None:
    with pytest.raises(QueryError, match=r"myself\.endpoints"):
        runpod.get_endpoints()
    with pytest.raises(QueryError, match="deployCpuPod"):
        runpod.create_pod(name="cpu", image_name="img:tag")  # no GPU: the SDK deploys a CPU pod


# faults ---------------------------------------------------------------------------------------------------


def test_no_capacity(emu: RunpodEmulator, backend: StubBackend) -> None:
    emu.set_faults(RunpodFaults(no_capacity=True))
    with pytest.raises(QueryError, match="no longer any instances") as caught:
        create()
    assert caught.value.message == NO_CAPACITY_MSG
    assert "podFindAndDeployOnDemand" in caught.value.query
    assert emu.pods() == {} and backend.calls == []
    emu.set_faults(RunpodFaults())
    assert create()


def test_resume_without_free_gpus(emu: RunpodEmulator, backend: StubBackend) -> None:
    pod_id = create()
    runpod.stop_pod(pod_id)
    emu.set_faults(RunpodFaults(resume_no_gpus=True))
    with pytest.raises(QueryError, match="not enough free GPUs"):
        runpod.resume_pod(pod_id, 1)
    assert runpod.get_pod(pod_id)["desiredStatus"] == "EXITED"
    assert [call[0] for call in backend.calls] == ["start", "stop"]


class BrokenBackend(StubBackend):
    def start(self, pod_id: str) -> int:
        raise OSError("sshd would not start")


def test_a_failing_backend_is_a_graphql_error(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(backend=BrokenBackend())
    with pytest.raises(QueryError, match="sshd would not start"):
        create()
    assert emu.pods() == {}


def test_unauthorized(emu: RunpodEmulator) -> None:
    emu.set_faults(RunpodFaults(unauthorized=True))
    with pytest.raises(AuthenticationError):
        runpod.get_pods()
    with pytest.raises(AuthenticationError):
        create()


def test_wrong_key_is_401(emu: RunpodEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runpod, "api_key", "wrong-key")
    with pytest.raises(AuthenticationError):
        runpod.get_pods()
    assert runpod.get_pods(api_key=KEY) == []


def test_html_502(emu: RunpodEmulator) -> None:
    emu.set_faults(RunpodFaults(html_502=True))
    with pytest.raises(ValueError) as caught:
        runpod.get_pods()
    assert isinstance(caught.value, requests.exceptions.JSONDecodeError)


def test_never_runtime(emu: RunpodEmulator) -> None:
    emu.set_faults(RunpodFaults(never_runtime=True))
    pod_id = create()
    for _ in range(20):
        pod = runpod.get_pod(pod_id)
        assert pod["desiredStatus"] == "RUNNING" and pod["runtime"] is None
    emu.set_faults(RunpodFaults(runtime_delay_polls=0))  # the boot finally completes
    assert wait_runtime(pod_id)[1] == 1
