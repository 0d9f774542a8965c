"""The backends, by name: a plain dict, as the routing table and settings refer to them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from farm.config.settings import Settings
from workers.base import Backend
from workers.local import LocalBackend

if TYPE_CHECKING:  # the GPU pool's modules load only where it is used
    from workers.comfyui.on_pod import ComfySettings
    from workers.gpu.pod_ledger import PodLedger
    from workers.gpu.pool import GpuPool


@dataclass(frozen=True)
class BackendServices:
    """What a backend may use besides its own SDK: the settings and the farm's Redis."""

    settings: Settings
    redis: redis.Redis


def _fal(services: BackendServices) -> Backend:
    from workers.fal.backend import FalBackend  # imported only where fal is used
    from workers.fal.provider_cap import ProviderCap
    from workers.fal.request_book import RequestBook

    cap = ProviderCap(services.redis, "fal", services.settings.fal_max_in_flight)
    return FalBackend(services.settings, RequestBook(services.redis, "fal"), cap)


def build_gpu_pool(services: BackendServices) -> tuple[GpuPool, PodLedger, ComfySettings]:
    """The GPU pool, its registry and ComfyUI settings from the farm's settings (engine and `farm pods`)."""
    import shlex

    from workers.comfyui.on_pod import ComfySettings, CustomNode
    from workers.gpu.pod_ledger import PodLedger
    from workers.gpu.pods import PodSpec, RunpodPods
    from workers.gpu.pool import GpuPool, PoolLimits

    s = services.settings
    if s.runpod_api_key is None:
        raise ValueError("the GPU pool needs RUNPOD_API_KEY (or FARM_RUNPOD_API_KEY) in the settings")
    key = s.ssh_key_path()
    public = key.with_suffix(".pub").read_text().strip() if key.with_suffix(".pub").exists() else None
    spec = PodSpec(
        gpu_type=s.gpu_type,
        image=s.gpu_image,
        network_volume_id=s.gpu_network_volume,
        mount_path=s.gpu_mount_path,
        public_key=public,
    )
    pods = RunpodPods(s.runpod_api_key.get_secret_value(), base_url=s.runpod_url, spec=spec)
    registry = PodLedger(services.redis, slots=s.gpu_jobs_per_pod)
    limits = PoolLimits(
        max_pods=s.gpu_max_pods,
        max_usd_per_hr=s.gpu_max_usd_per_hr,
        expected_cost_per_hr=s.gpu_expected_usd_per_hr,
        idle_timeout_s=s.gpu_idle_timeout_s,
        name_prefix=s.gpu_pod_prefix,
        fallback_gpu_types=tuple(t.strip() for t in s.gpu_fallback_types.split(",") if t.strip()),
    )
    comfy = ComfySettings(
        key_path=key,
        comfy_dir=s.comfy_dir,
        command=tuple(shlex.split(s.comfy_command)),
        custom_nodes=tuple(CustomNode.parse(n) for n in s.comfy_custom_nodes.split(",") if n.strip()),
        warm_up=s.comfy_warm_up,
    )
    return GpuPool(pods, registry, limits), registry, comfy


def _comfyui(services: BackendServices) -> Backend:
    from workers.comfyui.backend import ComfyBackend

    pool, registry, comfy = build_gpu_pool(services)
    return ComfyBackend(pool, registry, comfy)


BACKENDS: dict[str, Callable[[BackendServices], Backend]] = {
    "local": lambda services: LocalBackend(),
    "fal": _fal,
    "comfyui": _comfyui,
}


def make_backend(name: str, services: BackendServices) -> Backend:
    try:
        factory = BACKENDS[name]
    except KeyError:
        raise ValueError(f"no {name!r} engine in this farm yet; known: {', '.join(BACKENDS)}") from None
    return factory(services)
