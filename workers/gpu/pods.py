"""RunPod pods through the real runpod SDK: create, wait for SSH, stop, resume, terminate, list.

The SDK pastes arguments into GraphQL text without escaping, so every value sent is checked here first.
The SSH endpoint changes on every resume: it is always read from the API, never cached across restarts.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from workers.base import CapacityWait, PermanentError, TransientError
from workers.gpu.ssh import Endpoint

SAFE_VALUE = re.compile(r"^[A-Za-z0-9 ._:/@+=,-]*$")
NO_CAPACITY = "no longer any instances available"


class NoCapacity(CapacityWait):
    """RunPod has no machine of this GPU type right now: try later, or another type."""

    def __init__(self, message: str, retry_after_s: float | None = 30.0) -> None:
        super().__init__(message, retry_after_s)


class PodNotFound(PermanentError):
    pass


class RunpodAuthError(PermanentError):
    pass


@dataclass(frozen=True)
class PodSpec:
    """What every farm pod is created with."""

    gpu_type: str = "NVIDIA A100 80GB PCIe"
    image: str = "runpod/comfyui:latest"
    network_volume_id: str | None = None
    mount_path: str = "/workspace"
    ports: str = "22/tcp,8188/http"
    public_key: str | None = None


@dataclass(frozen=True)
class PodInfo:
    id: str
    name: str
    status: str
    """RunPod's desiredStatus: RUNNING, EXITED (stopped), ..."""
    cost_per_hr: float
    gpu: str
    uptime_s: int
    ssh: Endpoint | None
    """Only while the container runs and exposes port 22 publicly."""


def safe(value: str, field: str) -> str:
    """Refuse what would break (or inject into) the SDK's hand-built GraphQL."""
    if not SAFE_VALUE.match(value):
        raise PermanentError(
            f"{field} {value!r} has characters RunPod's API cannot take (quotes, backslashes, newlines)"
        )
    return value


class RunpodPods:
    """A thin, typed, error-translating face of the runpod SDK."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str | None = None,
        spec: PodSpec | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        import runpod  # type: ignore[import-untyped]  # heavy (~1.7 s): imported only where pods are managed

        self._sdk = runpod
        self._errors = runpod.error
        runpod.api_key = api_key
        if base_url:
            os.environ["RUNPOD_API_BASE_URL"] = base_url
        self.spec = spec or PodSpec()
        self._clock = clock

    def create(self, name: str, gpu_type: str | None = None) -> str:
        """Deploy one pod of the farm's spec, on `gpu_type` if given (a fallback) or the spec's type."""
        spec = self.spec
        gpu = gpu_type or spec.gpu_type
        env = {"PUBLIC_KEY": safe(spec.public_key, "public key")} if spec.public_key else None
        reply = self._call(
            lambda: self._sdk.create_pod(
                name=safe(name, "pod name"),
                image_name=safe(spec.image, "image"),
                gpu_type_id=safe(gpu, "GPU type"),
                gpu_count=1,
                support_public_ip=True,
                start_ssh=True,
                ports=safe(spec.ports, "ports"),
                volume_mount_path=safe(spec.mount_path, "mount path"),
                network_volume_id=safe(spec.network_volume_id, "volume") if spec.network_volume_id else None,
                env=env,
            ),
            gpu,
        )
        return str(reply["id"])

    def get(self, pod_id: str) -> PodInfo:
        pod = self._call(lambda: self._sdk.get_pod(safe(pod_id, "pod id")))
        if not pod:
            raise PodNotFound(f"RunPod has no pod {pod_id}")
        return _info(pod)

    def list(self, prefix: str = "") -> list[PodInfo]:
        pods = self._call(self._sdk.get_pods) or []
        return [_info(p) for p in pods if str(p.get("name", "")).startswith(prefix)]

    def wait_for_ssh(self, pod_id: str, timeout_s: float = 300, interval_s: float = 2.0) -> Endpoint:
        """Poll until the API reports a public IP and mapped port 22; a clear error when it never does."""
        deadline = self._clock() + timeout_s
        while True:
            info = self.get(pod_id)
            if info.ssh is not None:
                return info.ssh
            if self._clock() > deadline:
                raise TransientError(
                    f"pod {pod_id} reported no SSH endpoint within {timeout_s:g} s (status {info.status})"
                )
            time.sleep(interval_s)

    def stop(self, pod_id: str) -> None:
        self._call(lambda: self._sdk.stop_pod(safe(pod_id, "pod id")))

    def resume(self, pod_id: str) -> None:
        self._call(lambda: self._sdk.resume_pod(safe(pod_id, "pod id"), 1))

    def terminate(self, pod_id: str) -> None:
        self._call(lambda: self._sdk.terminate_pod(safe(pod_id, "pod id")))

    def _call(self, call: Callable[[], Any], gpu_type: str | None = None) -> Any:
        """The SDK's errors into the farm's: no capacity, auth, unknown pod, transport."""
        gpu = gpu_type or self.spec.gpu_type
        try:
            return call()
        except self._errors.AuthenticationError as exc:
            raise RunpodAuthError("RunPod refused the API key (check FARM_RUNPOD_API_KEY)") from exc
        except self._errors.QueryError as exc:
            message = str(getattr(exc, "message", exc))
            if NO_CAPACITY in message.lower():
                raise NoCapacity(f"RunPod has no {gpu} available right now; retry later") from exc
            if "not found" in message.lower():
                raise PodNotFound(message) from exc
            raise PermanentError(f"RunPod refused the request: {message}") from exc
        except ValueError as exc:
            if type(exc).__name__ == "JSONDecodeError":  # an HTML error page instead of GraphQL
                raise TransientError("RunPod's API answered with something that is not JSON") from exc
            raise PermanentError(f"RunPod does not offer GPU type {gpu!r}") from exc
        except OSError as exc:  # requests' connection errors and timeouts derive from it
            raise TransientError(f"RunPod's API is unreachable: {exc}") from exc


def _info(pod: dict[str, Any]) -> PodInfo:
    return PodInfo(
        id=str(pod["id"]),
        name=str(pod.get("name") or ""),
        status=str(pod.get("desiredStatus") or "UNKNOWN"),
        cost_per_hr=float(pod.get("costPerHr") or 0.0),
        gpu=str((pod.get("machine") or {}).get("gpuDisplayName") or ""),
        uptime_s=int(pod.get("uptimeSeconds") or 0),
        ssh=_ssh_endpoint(pod),
    )


def _ssh_endpoint(pod: dict[str, Any]) -> Endpoint | None:
    runtime = pod.get("runtime") or {}
    for port in runtime.get("ports") or []:
        if port.get("privatePort") == 22 and port.get("isIpPublic") and port.get("type") == "tcp":
            return Endpoint(str(port["ip"]), int(port["publicPort"]))
    return None
