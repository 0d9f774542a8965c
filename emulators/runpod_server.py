"""A loopback emulator of RunPod's GraphQL pod API (as spoken by the runpod 1.12.0 Python SDK).

It follows the project's protocol note (shared/protocols/runpod.md, §3-§5): `POST /graphql` with
`Authorization: Bearer <key>` and a body `{"query": text}` (the SDK never sends variables, it pastes the
arguments into the text), dispatched on substrings of the text and answered `{"data": ...}` or
`{"errors": [{"message": ...}], "data": null}` with HTTP 200.

Pods have a lifecycle (deploy -> RUNNING, stop -> EXITED, resume -> RUNNING, terminate -> gone) and a
`PodBackend` behind them: on every start the backend brings up the pod's SSH server and says on which
127.0.0.1 port it listens, and the pod's `runtime.ports` entry for `22/tcp` points there once the
configured number of `runtime: null` polls has passed. Faults (no capacity, 401, an HTML 502, pods that
never get a runtime) are switched with `set_faults`.

Point the real SDK at it with the environment, read on every call:

    >>> with RunpodEmulator(backend=my_sshd) as emu:
    ...     os.environ["RUNPOD_API_BASE_URL"] = emu.url
    ...     runpod.api_key = "test-runpod-key"
"""

from __future__ import annotations

import copy
import json
import logging
import re
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from emulators.http_base import POLL_INTERVAL_S as POLL_INTERVAL_S
from emulators.http_base import EmulatorRequestHandler, LoopbackEmulator
from emulators.http_base import Reply as Reply
from emulators.http_base import json_reply as json_reply

LOG = logging.getLogger(__name__)

DEFAULT_API_KEY = "test-runpod-key"

NO_CAPACITY_MSG = (
    "There are no longer any instances available with the requested specifications. "
    "Please refresh and try again."
)
NO_GPUS_ON_HOST_MSG = "There are not enough free GPUs on the host machine to start this pod."
"""Resume failure when the pod's host is full (`RunpodFaults.resume_no_gpus`; wording approximated)."""
POD_NOT_FOUND_MSG = "Pod not found"
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n</body>\r\n</html>\r\n"
)
DEFAULT_VOLUMES: tuple[dict[str, Any], ...] = (
    {"id": "vol-models", "name": "models", "size": 200, "dataCenterId": "EU-RO-1"},
)
MYSELF_FIELDS = frozenset({"id", "pubKey", "networkVolumes", "pods"})
"""What `myself { ... }` can be asked here; anything else (endpoints, templates, ...) is a GraphQL error."""
POD_ID_ALPHABET = string.ascii_lowercase + string.digits
POD_ID_LENGTH = 12


def _gpu(gpu_id: str, display: str, memory: int, price: float, cuda_cores: int) -> dict[str, Any]:
    return {
        "id": gpu_id,
        "displayName": display,
        "manufacturer": "Nvidia",
        "memoryInGb": memory,
        "cudaCores": cuda_cores,
        "secureCloud": True,
        "communityCloud": True,
        "securePrice": price,
        "communityPrice": price,
        "oneMonthPrice": round(price * 0.9, 2),
        "threeMonthPrice": round(price * 0.85, 2),
        "oneWeekPrice": round(price * 0.95, 2),
        "communitySpotPrice": round(price * 0.6, 2),
        "secureSpotPrice": round(price * 0.6, 2),
        "maxGpuCount": 8,
        "lowestPrice": {"minimumBidPrice": round(price * 0.6, 2), "uninterruptablePrice": price},
    }


GPU_CATALOGUE: tuple[dict[str, Any], ...] = (
    _gpu("NVIDIA A100 80GB PCIe", "A100 80GB", 80, 1.19, 6912),
    _gpu("NVIDIA A100-SXM4-80GB", "A100 80GB", 80, 1.19, 6912),
    _gpu("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.69, 16896),
    _gpu("NVIDIA RTX A6000", "RTX A6000", 48, 0.49, 10752),
    _gpu("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 0.69, 16384),
)
"""The fixed `gpuTypes` catalogue; any other id gets an empty list (the SDK then raises ValueError)."""


# backends and faults --------------------------------------------------------------------------------------


class PodBackend(Protocol):
    """What stands behind an emulated pod: e.g. a real SSH server. The emulator calls these on lifecycle
    changes (deploy and resume call `start`, stop, terminate and `vanish` call `stop`)."""

    def start(self, pod_id: str) -> int:
        """Bring the pod's SSH server up; return its port on 127.0.0.1 (it may differ on every start)."""
        ...

    def stop(self, pod_id: str) -> None: ...


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (nothing is left listening on it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class FakeBackend:
    """The default backend: a fresh free port on every start, never one handed out before, with nothing
    listening on it. `started` and `stopped` record the calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._given: set[int] = set()
        self.started: list[tuple[str, int]] = []
        self.stopped: list[str] = []

    def start(self, pod_id: str) -> int:
        with self._lock:
            port = free_port()
            for _ in range(20):
                if port not in self._given:
                    break
                port = free_port()
            self._given.add(port)
            self.started.append((pod_id, port))
            return port

    def stop(self, pod_id: str) -> None:
        with self._lock:
            self.stopped.append(pod_id)


@dataclass
class RunpodFaults:
    """Injected failures. Read on every request, so `set_faults` takes effect at once; the runtime delay
    is fixed for a pod when it is deployed or resumed."""

    no_capacity: bool = False
    """Deploy answers the GraphQL error NO_CAPACITY_MSG (the SDK raises QueryError); no pod is created."""
    sold_out: tuple[str, ...] = ()
    """GPU type ids with no capacity (deploying one answers NO_CAPACITY_MSG); other types deploy."""
    unauthorized: bool = False
    """Every call answers HTTP 401, whatever the key (the SDK raises AuthenticationError)."""
    html_502: bool = False
    """Every call answers HTTP 502 with an HTML body (the SDK raises requests' JSONDecodeError)."""
    runtime_delay_polls: int = 2
    """Reads of a pod (`pod(...)` or `myself { pods }`) answer `runtime: null` this many times after
    deploy/resume before exposing the ports."""
    never_runtime: bool = False
    """Pods never get a runtime (a slow boot with the runtime missing), while desiredStatus says RUNNING."""
    resume_no_gpus: bool = False
    """Resume answers the GraphQL error NO_GPUS_ON_HOST_MSG; the pod stays EXITED."""

    def __post_init__(self) -> None:
        if self.runtime_delay_polls < 0:
            raise ValueError("runtime_delay_polls must not be negative")


class GraphQLError(Exception):
    """Answered as `{"errors": [{"message": str(exc)}], "data": null}` with HTTP 200."""


# pods -----------------------------------------------------------------------------------------------------


@dataclass
class DeployInput:
    """The arguments of `podFindAndDeployOnDemand(input: {...})` the emulator understands."""

    name: str
    image_name: str
    gpu_type_id: str
    gpu_count: int = 1
    cloud_type: str = "ALL"
    support_public_ip: bool = False
    ports: str = ""
    volume_mount_path: str = ""
    volume_in_gb: int = 0
    container_disk_in_gb: int = 0
    network_volume_id: str | None = None
    data_center_id: str | None = None
    docker_args: str = ""
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Pod:
    """One emulated pod. `polls_left` counts the `runtime: null` reads still due before the runtime shows."""

    id: str
    spec: DeployInput
    gpu_display_name: str
    cost_per_hr: float
    machine_id: str
    pod_host_id: str
    docker_id: str
    desired_status: str = "RUNNING"
    last_status_change: str = ""
    ssh_port: int | None = None
    http_ports: dict[int, int] = field(default_factory=dict)
    polls_left: int = 0
    runtime_since: float | None = None

    def read(self, never_runtime: bool, now: float) -> dict[str, Any]:
        """The pod as one API read sees it; consumes one of the `runtime: null` polls."""
        if self.desired_status == "RUNNING" and self.polls_left > 0:
            self.polls_left -= 1
            return self.to_json(never_runtime, now, allow_runtime=False)
        return self.to_json(never_runtime, now)

    def to_json(self, never_runtime: bool, now: float, *, allow_runtime: bool = True) -> dict[str, Any]:
        shows = allow_runtime and self._has_runtime(never_runtime)
        if shows and self.runtime_since is None:
            self.runtime_since = now
        spec = self.spec
        return {
            "id": self.id,
            "name": spec.name,
            "imageName": spec.image_name,
            "desiredStatus": self.desired_status,
            "costPerHr": self.cost_per_hr,
            "gpuCount": spec.gpu_count,
            "containerDiskInGb": spec.container_disk_in_gb,
            "volumeInGb": spec.volume_in_gb,
            "volumeMountPath": spec.volume_mount_path,
            "ports": spec.ports,
            "port": None,
            "env": [f"{key}={value}" for key, value in spec.env.items()],
            "dockerArgs": spec.docker_args,
            "dockerId": self.docker_id if self.desired_status == "RUNNING" else None,
            "machineId": self.machine_id,
            "machine": {"gpuDisplayName": self.gpu_display_name, "podHostId": self.pod_host_id},
            "memoryInGb": 117 * spec.gpu_count,
            "vcpuCount": 8 * spec.gpu_count,
            "podType": "RESERVED",
            "lastStatusChange": self.last_status_change,
            "uptimeSeconds": int(now - self.runtime_since) if shows and self.runtime_since else 0,
            "networkVolumeId": spec.network_volume_id,
            "dataCenterId": spec.data_center_id,
            "runtime": {"ports": self._runtime_ports()} if shows else None,
        }

    def _has_runtime(self, never_runtime: bool) -> bool:
        return self.desired_status == "RUNNING" and not never_runtime and self.polls_left == 0

    def _runtime_ports(self) -> list[dict[str, Any]]:
        """One entry per requested port: `22/tcp` is the backend's SSH port, public when the deploy asked
        for `supportPublicIp: true`; other ports get stable made-up public ports."""
        entries = []
        for private, kind in parse_ports(self.spec.ports):
            public = self.ssh_port if (private, kind) == (22, "tcp") else self.http_ports.get(private)
            entries.append(
                {
                    "ip": "127.0.0.1",
                    "isIpPublic": kind == "tcp" and self.spec.support_public_ip,
                    "privatePort": private,
                    "publicPort": public,
                    "type": kind,
                }
            )
        return entries


def parse_ports(ports: str) -> list[tuple[int, str]]:
    """`"22/tcp,8188/http"` -> [(22, "tcp"), (8188, "http")]; malformed items are skipped."""
    found = []
    for item in ports.split(","):
        match = re.fullmatch(r"\s*(\d+)/(tcp|http|udp)\s*", item)
        if match:
            found.append((int(match.group(1)), match.group(2)))
    return found


def status_stamp(verb: str) -> str:
    """`lastStatusChange` in RunPod's style: "Rented by User: Tue Mar 05 2024 10:00:00 GMT+0000 (...)"."""
    now = datetime.now(UTC).strftime("%a %b %d %Y %H:%M:%S")
    return f"{verb} by User: {now} GMT+0000 (Coordinated Universal Time)"


def new_pod_id() -> str:
    return "".join(secrets.choice(POD_ID_ALPHABET) for _ in range(POD_ID_LENGTH))


# query parsing --------------------------------------------------------------------------------------------


def quoted(text: str, key: str) -> str | None:
    """The value of `key: "value"` in `text` (no escapes: the SDK does not escape either)."""
    match = re.search(rf"\b{key}\s*:\s*\"([^\"]*)\"", text)
    return match.group(1) if match else None


def integer(text: str, key: str) -> int | None:
    match = re.search(rf"\b{key}\s*:\s*(-?\d+)", text)
    return int(match.group(1)) if match else None


def boolean(text: str, key: str) -> bool | None:
    match = re.search(rf"\b{key}\s*:\s*(true|false)\b", text)
    return match.group(1) == "true" if match else None


def enum(text: str, key: str) -> str | None:
    match = re.search(rf"\b{key}\s*:\s*([A-Z_]+)\b", text)
    return match.group(1) if match else None


ENV_LIST = re.compile(r"\benv\s*:\s*\[(?P<items>[^\]]*)\]")
ENV_ITEM = re.compile(r"\{\s*key\s*:\s*\"(?P<key>[^\"]*)\"\s*,\s*value\s*:\s*\"(?P<value>[^\"]*)\"\s*\}")


def parse_env(text: str) -> tuple[dict[str, str], str]:
    """(the `env: [{key: "K", value: "V"}, ...]` items, the text with the env list cut out)."""
    match = ENV_LIST.search(text)
    if match is None:
        return {}, text
    env = {item["key"]: item["value"] for item in ENV_ITEM.finditer(match["items"])}
    return env, text[: match.start()] + text[match.end() :]


def operation_input(query: str, operation: str) -> str:
    """The text of `operation(input: { ... })`, up to the closing parenthesis of the call."""
    match = re.search(rf"\b{operation}\s*\(\s*input\s*:\s*\{{(?P<body>.*?)\}}\s*\)", query, re.DOTALL)
    if match is None:
        raise GraphQLError(f"{operation}: missing input")
    return match["body"]


def parse_deploy(query: str) -> DeployInput:
    env, rest = parse_env(operation_input(query, "podFindAndDeployOnDemand"))
    name, image, gpu = quoted(rest, "name"), quoted(rest, "imageName"), quoted(rest, "gpuTypeId")
    if name is None or image is None or gpu is None:
        raise GraphQLError("podFindAndDeployOnDemand: name, imageName and gpuTypeId are required")
    return DeployInput(
        name=name,
        image_name=image,
        gpu_type_id=gpu,
        gpu_count=integer(rest, "gpuCount") or 1,
        cloud_type=enum(rest, "cloudType") or "ALL",
        support_public_ip=bool(boolean(rest, "supportPublicIp")),
        ports=quoted(rest, "ports") or "",
        volume_mount_path=quoted(rest, "volumeMountPath") or "",
        volume_in_gb=integer(rest, "volumeInGb") or 0,
        container_disk_in_gb=integer(rest, "containerDiskInGb") or 0,
        network_volume_id=quoted(rest, "networkVolumeId"),
        data_center_id=quoted(rest, "dataCenterId"),
        docker_args=quoted(rest, "dockerArgs") or "",
        env=env,
    )


def pod_id_arg(query: str, operation: str) -> str:
    pod_id = quoted(operation_input(query, operation), "podId")
    if pod_id is None:
        raise GraphQLError(f"{operation}: podId is required")
    return pod_id


def selected_fields(query: str, parent: str) -> list[str]:
    """The field names selected directly inside `parent { ... }` (arguments and sub-selections skipped)."""
    match = re.search(rf"(?<!query )(?<!mutation )\b{parent}\s*\{{", query)
    if match is None:
        return []
    fields: list[str] = []
    depth, parens = 1, 0
    for token in re.finditer(r"[{}()]|\w+", query[match.end() :]):
        text = token.group()
        parens += {"(": 1, ")": -1}.get(text, 0)
        depth += {"{": 1, "}": -1}.get(text, 0) if parens == 0 else 0
        if depth == 0:
            break
        if depth == 1 and parens == 0 and text not in "{}()":
            fields.append(text)
    return fields


def operation_name(query: str) -> str:
    """The first field of the operation (`podStop`, `gpuTypes`, ...), to name what was not understood."""
    match = re.search(r"^\s*(?:(?:query|mutation)\b[^{]*)?\{\s*(\w+)", query)
    return match.group(1) if match else query.strip()[:60]


# HTTP replies ---------------------------------------------------------------------------------------------


def graphql_error(message: str) -> Reply:
    return json_reply(200, {"errors": [{"message": message}], "data": None})


Handler = Callable[[str], dict[str, Any]]


# the emulator ---------------------------------------------------------------------------------------------


class _RequestHandler(EmulatorRequestHandler):
    """`RunpodEmulator`'s handler: even its own failures are answered as GraphQL errors."""

    server_version = "runpod-emulator/1"
    log = LOG
    label = "runpod emulator"

    def error_reply(self, exc: Exception) -> Reply:
        return graphql_error(f"emulator error: {exc}")


class RunpodEmulator(LoopbackEmulator):
    """RunPod's GraphQL pod API on 127.0.0.1. Start it (or use it as a context manager), then point the
    SDK at `url` through the env var RUNPOD_API_BASE_URL and set `runpod.api_key` to `api_key`.

    `cost_per_hr` is per GPU: a pod's `costPerHr` is `cost_per_hr * gpuCount`. `network_volumes` is
    what `myself { networkVolumes }` lists (default: one volume "vol-models" in EU-RO-1); a deploy naming
    any other `networkVolumeId` is refused.

    `stop()` also stops the backend of every pod still running, so no SSH server outlives the emulator.
    """

    handler_class = _RequestHandler
    name = "RunPod emulator"
    thread_name = "runpod-emulator"

    def __init__(
        self,
        *,
        api_key: str = DEFAULT_API_KEY,
        backend: PodBackend | None = None,
        faults: RunpodFaults | None = None,
        cost_per_hr: float = 1.19,
        network_volumes: list[dict[str, Any]] | None = None,
        port: int = 0,
    ) -> None:
        super().__init__(port=port)
        self.api_key = api_key
        self.backend: PodBackend = backend if backend is not None else FakeBackend()
        self.cost_per_hr = cost_per_hr
        self.network_volumes = copy.deepcopy(
            network_volumes if network_volumes is not None else list(DEFAULT_VOLUMES)
        )
        self._faults = faults or RunpodFaults()
        self._lock = threading.Lock()
        """Guards the pod table, the query log and the faults: held briefly, never across a backend call."""
        self._lifecycle = threading.Lock()
        """Serialises deploy/stop/resume/terminate/vanish, backend calls included."""
        self._pods: dict[str, Pod] = {}
        self._queries: list[str] = []
        self._next_http_port = 60000
        self._handlers: list[tuple[re.Pattern[str], Handler]] = [
            (re.compile(r"\bpodFindAndDeployOnDemand\s*\("), self._deploy),
            (re.compile(r"\bpodStop\s*\("), self._stop_pod),
            (re.compile(r"\bpodResume\s*\("), self._resume_pod),
            (re.compile(r"\bpodTerminate\s*\("), self._terminate_pod),
            (re.compile(r"\bgpuTypes\b"), self._gpu_types),
            (re.compile(r"\bpod\s*\(\s*input\b"), self._get_pod),
            (re.compile(r"\bmyself\s*\{"), self._myself),
        ]

    # lifecycle: `start()`, `stop()`, `url` and the context manager come from LoopbackEmulator

    def _after_shutdown(self) -> None:
        with self._lifecycle:
            for pod in self._snapshot():
                if pod.desired_status == "RUNNING":
                    self._backend_stop(pod.id)

    # inspection and control

    @property
    def faults(self) -> RunpodFaults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: RunpodFaults) -> None:
        with self._lock:
            self._faults = faults

    def queries(self) -> list[str]:
        """Every query text received (faulted and refused ones included), oldest first."""
        with self._lock:
            return list(self._queries)

    def pods(self) -> dict[str, dict[str, Any]]:
        """id -> the pod JSON as `get_pod` would return it now, without consuming a `runtime: null` poll."""
        now = time.monotonic()
        never = self.faults.never_runtime
        with self._lock:
            return {pod_id: pod.to_json(never, now) for pod_id, pod in self._pods.items()}

    def vanish(self, pod_id: str) -> None:
        """The pod disappears at RunPod, as if deleted out of band: its backend is stopped (if it was
        running) and its record removed. KeyError for an unknown id."""
        with self._lifecycle:
            pod = self._pod(pod_id)
            if pod is None:
                raise KeyError(pod_id)
            if pod.desired_status == "RUNNING":
                self._backend_stop(pod_id)
            with self._lock:
                self._pods.pop(pod_id, None)

    # HTTP entry point

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if path.split("?", 1)[0].rstrip("/") != "/graphql":
            return json_reply(404, {"error": f"Not Found: {path}"})
        if method != "POST":
            return json_reply(405, {"error": "Method Not Allowed"})
        query = self._query_text(body)
        if query is not None:
            with self._lock:
                self._queries.append(query)
        faults = self.faults
        if faults.html_502:
            return Reply(502, HTML_502, "text/html")
        if faults.unauthorized or not self._authorized(headers):
            return json_reply(401, {"error": "Unauthorized"})
        if query is None:
            return json_reply(400, {"errors": [{"message": 'the body must be JSON {"query": "..."}'}]})
        return self.answer(query)

    def answer(self, query: str) -> Reply:
        """Dispatch one (authorised) query text to its handler."""
        for pattern, handler in self._handlers:
            if pattern.search(query):
                try:
                    return json_reply(200, {"data": handler(query)})
                except GraphQLError as exc:
                    return graphql_error(str(exc))
        return graphql_error(
            f"The RunPod emulator does not understand the operation {operation_name(query)!r}"
        )

    @staticmethod
    def _query_text(body: bytes) -> str | None:
        try:
            doc = json.loads(body)
        except ValueError:
            return None
        query = doc.get("query") if isinstance(doc, dict) else None
        return query if isinstance(query, str) else None

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        given = headers.get("authorization", "")
        return secrets.compare_digest(given.encode(), f"Bearer {self.api_key}".encode())

    # queries

    def _gpu_types(self, query: str) -> dict[str, Any]:
        wanted = quoted(query, "id")
        found = [gpu for gpu in GPU_CATALOGUE if wanted is None or gpu["id"] == wanted]
        return {"gpuTypes": copy.deepcopy(found)}

    def _get_pod(self, query: str) -> dict[str, Any]:
        pod_id = pod_id_arg(query, "pod")
        never = self.faults.never_runtime
        with self._lock:
            pod = self._pods.get(pod_id)
            return {"pod": pod.read(never, time.monotonic()) if pod is not None else None}

    def _myself(self, query: str) -> dict[str, Any]:
        unknown = [name for name in selected_fields(query, "myself") if name not in MYSELF_FIELDS]
        if unknown:
            raise GraphQLError(f"The RunPod emulator does not understand myself.{unknown[0]}")
        never = self.faults.never_runtime
        now = time.monotonic()
        with self._lock:
            pods = [pod.read(never, now) for pod in self._pods.values()] if "pods" in query else []
        return {
            "myself": {
                "id": "user-emulated",
                "pubKey": "",
                "networkVolumes": copy.deepcopy(self.network_volumes),
                "pods": pods,
            }
        }

    # mutations

    def _deploy(self, query: str) -> dict[str, Any]:
        spec = parse_deploy(query)
        gpu = next((item for item in GPU_CATALOGUE if item["id"] == spec.gpu_type_id), None)
        if self.faults.no_capacity or gpu is None or spec.gpu_type_id in self.faults.sold_out:
            raise GraphQLError(NO_CAPACITY_MSG)
        self._check_volume(spec)
        pod_id = new_pod_id()
        pod = Pod(
            id=pod_id,
            spec=spec,
            gpu_display_name=str(gpu["displayName"]),
            cost_per_hr=round(self.cost_per_hr * spec.gpu_count, 4),
            machine_id=secrets.token_hex(6),
            pod_host_id=f"{pod_id}-{secrets.token_hex(4)}",
            docker_id=secrets.token_hex(16),
        )
        with self._lifecycle:
            self._boot(pod, "Rented")
            with self._lock:
                self._pods[pod_id] = pod
        return {"podFindAndDeployOnDemand": self._deploy_fields(pod)}

    def _check_volume(self, spec: DeployInput) -> None:
        if spec.network_volume_id is None:
            return
        volume = next((v for v in self.network_volumes if v.get("id") == spec.network_volume_id), None)
        if volume is None:
            raise GraphQLError(f"Network volume {spec.network_volume_id} not found")
        if spec.data_center_id is None:
            spec.data_center_id = volume.get("dataCenterId")

    def _stop_pod(self, query: str) -> dict[str, Any]:
        pod_id = pod_id_arg(query, "podStop")
        with self._lifecycle:
            pod = self._existing(pod_id)
            if pod.desired_status == "RUNNING":
                self._backend_stop(pod_id)
                with self._lock:
                    pod.desired_status, pod.ssh_port, pod.runtime_since = "EXITED", None, None
                    pod.last_status_change = status_stamp("Stopped")
            return {"podStop": {"id": pod.id, "desiredStatus": pod.desired_status}}

    def _resume_pod(self, query: str) -> dict[str, Any]:
        pod_id = pod_id_arg(query, "podResume")
        gpu_count = integer(operation_input(query, "podResume"), "gpuCount")
        with self._lifecycle:
            pod = self._existing(pod_id)
            if pod.desired_status != "RUNNING":
                if self.faults.resume_no_gpus:
                    raise GraphQLError(NO_GPUS_ON_HOST_MSG)
                if gpu_count:
                    with self._lock:
                        pod.spec.gpu_count = gpu_count
                        pod.cost_per_hr = round(self.cost_per_hr * gpu_count, 4)
                self._boot(pod, "Resumed")
            return {"podResume": {**self._deploy_fields(pod), "desiredStatus": pod.desired_status}}

    def _terminate_pod(self, query: str) -> dict[str, Any]:
        pod_id = pod_id_arg(query, "podTerminate")
        with self._lifecycle:
            pod = self._existing(pod_id)
            if pod.desired_status == "RUNNING":
                self._backend_stop(pod_id)
            with self._lock:
                self._pods.pop(pod_id, None)
        return {"podTerminate": None}

    # helpers

    def _boot(self, pod: Pod, verb: str) -> None:
        """Start the pod's backend (caller holds `_lifecycle`); the runtime shows after the delay."""
        try:
            ssh_port = self.backend.start(pod.id)
        except Exception as exc:
            LOG.exception("runpod emulator: backend.start(%s) failed", pod.id)
            raise GraphQLError(f"Something went wrong starting pod {pod.id}: {exc}") from exc
        with self._lock:
            pod.ssh_port = ssh_port
            for private, kind in parse_ports(pod.spec.ports):
                if (private, kind) != (22, "tcp") and private not in pod.http_ports:
                    pod.http_ports[private] = self._next_http_port
                    self._next_http_port += 1
            pod.desired_status = "RUNNING"
            pod.polls_left = self._faults.runtime_delay_polls
            pod.runtime_since = None
            pod.last_status_change = status_stamp(verb)

    def _backend_stop(self, pod_id: str) -> None:
        try:
            self.backend.stop(pod_id)
        except Exception:
            LOG.exception("runpod emulator: backend.stop(%s) failed", pod_id)

    def _pod(self, pod_id: str) -> Pod | None:
        with self._lock:
            return self._pods.get(pod_id)

    def _existing(self, pod_id: str) -> Pod:
        pod = self._pod(pod_id)
        if pod is None:
            raise GraphQLError(POD_NOT_FOUND_MSG)
        return pod

    def _snapshot(self) -> list[Pod]:
        with self._lock:
            return list(self._pods.values())

    @staticmethod
    def _deploy_fields(pod: Pod) -> dict[str, Any]:
        """What deploy and resume answer: `id imageName env machineId machine{podHostId}`."""
        return {
            "id": pod.id,
            "imageName": pod.spec.image_name,
            "env": [f"{key}={value}" for key, value in pod.spec.env.items()],
            "machineId": pod.machine_id,
            "machine": {"podHostId": pod.pod_host_id},
        }
