"""Every backend and every artifact store, built the way their own tests build them, behind one face.

The contract tests ask for `backend` or `store` and get each implementation in turn. A backend comes as a
`BackendUnderTest`: the backend itself plus what a test needs from outside it (how many times the provider
really rendered a step, a way to use up the provider's capacity, and what the backend calls a resumed run).
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import asyncssh
import pytest
import redis
from pydantic import SecretStr

from emulators.fal_server import FalEmulator
from emulators.runpod_server import RunpodEmulator, RunpodFaults
from farm.config.settings import Settings
from farm.storage.stores import ArtifactStore, open_store
from tests.conftest import MOTO_BUCKET
from tests.integration.test_fal_backend import KEY as FAL_KEY
from tests.integration.test_gpu_farm import RUNPOD_KEY, PodFleet
from workers.backends import BackendServices, build_gpu_pool
from workers.base import Backend, StepJob
from workers.comfyui.backend import ComfyBackend, prompt_id_for
from workers.fal.backend import FalBackend
from workers.fal.provider_cap import ProviderCap
from workers.fal.request_book import RequestBook
from workers.local import LocalBackend

BACKEND_NAMES = ("local", "fal", "comfyui")
STORE_KINDS = ("local", "s3")
GPU_DB = 13
"""The GPU pool keeps its pod ledger in its own Redis database: the module-wide pod outlives the per-test
`client` fixture, which empties database 0."""


@dataclass(frozen=True)
class BackendUnderTest:
    backend: Backend
    renders: Callable[[StepJob], int] | None
    """How many times the provider really ran (and billed) this step; None for the embedded engine, which
    renders every time and charges nothing."""
    saturate: Callable[[], AbstractContextManager[None]] | None
    """Holds every unit of the provider's capacity for someone else while open; None for the embedded
    engine, which has no capacity of its own to run out of."""
    resumed_key: str | None
    """The metadata key that is True when a run picked up the provider's earlier work instead of redoing
    it; None where there is nothing to pick up."""

    @property
    def name(self) -> str:
        return self.backend.name


@pytest.fixture
def local_backend() -> BackendUnderTest:
    return BackendUnderTest(LocalBackend(), renders=None, saturate=None, resumed_key=None)


@pytest.fixture
def fal_backend(client: redis.Redis, tmp_path: Path) -> Iterator[BackendUnderTest]:
    """As tests/integration/test_fal_backend.py builds it: a fresh emulator per test, fast latencies, a cap
    of two in the session Redis."""
    with FalEmulator(latency_scale=0.01, key=FAL_KEY) as emulator:
        settings = Settings(
            home=tmp_path, fal_key=SecretStr(FAL_KEY), fal_url=emulator.url, fal_poll_interval_s=0.05
        )
        cap = ProviderCap(client, "fal", limit=2)
        backend = FalBackend(settings, RequestBook(client, "fal"), cap)

        @contextmanager
        def saturate() -> Iterator[None]:
            others = [f"elsewhere-{n}" for n in range(cap.limit)]
            assert all(cap.acquire(holder) for holder in others)
            try:
                yield
            finally:
                for holder in others:
                    cap.release(holder)

        # One emulator per test: every accepted submit in its ledger belongs to this test's step.
        yield BackendUnderTest(
            backend, renders=lambda job: len(emulator.ledger()), saturate=saturate, resumed_key="resumed"
        )


@pytest.fixture(scope="module")
def comfy_rig(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackendUnderTest]:
    """As tests/integration/test_gpu_farm.py builds its pods (the RunPod emulator in front of a PodFleet of
    real SSH servers that start the ComfyUI emulator by PID), but with the backend driven in this process
    and one pod for the whole module: creating a pod and starting ComfyUI is the slow part."""
    home = tmp_path_factory.mktemp("gpu-contract")
    key = asyncssh.generate_private_key("ssh-ed25519")
    key_path = home / "ssh" / "id_ed25519"
    key_path.parent.mkdir(parents=True)
    key.write_private_key(str(key_path))
    public = key.export_public_key().decode().strip()
    key_path.with_suffix(".pub").write_text(public + "\n")
    fleet = PodFleet(home / "pods", public)
    faults = RunpodFaults(runtime_delay_polls=0)
    with (
        pytest.MonkeyPatch.context() as env,
        RunpodEmulator(api_key=RUNPOD_KEY, backend=fleet, faults=faults) as runpod,
        redis.Redis.from_url(urlsplit(redis_url)._replace(path=f"/{GPU_DB}").geturl()) as r,
    ):
        env.setenv("NO_PROXY", "127.0.0.1,localhost")
        env.setenv("no_proxy", "127.0.0.1,localhost")
        r.flushdb()
        settings = Settings(
            home=home,
            runpod_api_key=SecretStr(RUNPOD_KEY),
            runpod_url=runpod.url,
            gpu_ssh_key=key_path,
            gpu_max_pods=1,  # ComfyBackend resumes from the history of the pod that ran the step: keep one
            comfy_dir="ComfyUI",
            comfy_command=f"{sys.executable} main.py --listen 127.0.0.1 --port 8188",
        )
        pool, registry, comfy = build_gpu_pool(BackendServices(settings, r))
        # Test pacing only: poll the emulators every 50 ms instead of every 1-2 s.
        pool.limits = dataclasses.replace(pool.limits, ssh_poll_s=0.05)
        backend = ComfyBackend(pool, registry, dataclasses.replace(comfy, poll_s=0.05))

        def renders(job: StepJob) -> int:
            return fleet.executed().count(prompt_id_for(job.step_id))

        @contextmanager
        def saturate() -> Iterator[None]:
            if not registry.pods():
                pool.start_new()  # the pool is at its one-pod cap only once that pod exists
            held = [p for p in registry.pods() if registry.lease(p.id, "elsewhere", ttl_s=60)]
            assert held
            try:
                yield
            finally:
                for pod in held:
                    registry.release(pod.id, "elsewhere", family=pod.family, busy_s=0.0)

        try:
            yield BackendUnderTest(backend, renders=renders, saturate=saturate, resumed_key="resumed_run")
        finally:
            r.flushdb()


@pytest.fixture(params=BACKEND_NAMES)
def backend(request: pytest.FixtureRequest) -> BackendUnderTest:
    """Each backend in turn; only the one a test runs with is built."""
    rig: BackendUnderTest = request.getfixturevalue(
        "comfy_rig" if request.param == "comfyui" else f"{request.param}_backend"
    )
    return rig


@pytest.fixture
def step_id() -> str:
    """A step id of its own per test, so the module's pod never has a run of it already."""
    return uuid.uuid4().hex[:16]


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """A fresh, empty store of each kind: a folder under tmp_path, or its own prefix in the moto bucket."""
    if request.param == "local":
        return open_store("local", root=tmp_path / "store")
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return open_store("s3", bucket=MOTO_BUCKET, prefix=f"contract/{uuid.uuid4().hex}", endpoint_url=endpoint)
