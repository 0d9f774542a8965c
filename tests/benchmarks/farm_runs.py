"""Shared harness for the scheduling benchmarks: run one plan on a fresh farm and read back its timings.

Every run gets its own FARM_HOME (artifact store) and its own redis-server, so nothing is reused from an
earlier run: no cached output, no stored fal request, no lease of the provider cap. The bounds a run is
compared with are computed from that same run's measured step durations (finished_at - started_at), so
they move with the machine's speed and only the farm's scheduling and hand-over gaps show in the ratios.

The fal emulator draws and encodes its outputs on this machine, work real fal does on its own GPUs: a
stand-in clip costs seconds of CPU (ffmpeg), an image about 0.1 s, and on two cores that would make the
makespan measure this machine's cores instead of the farm's scheduling. So the emulator here copies a
stored still image or still clip of the requested size and length, each made once (the clips before the
clock starts); payload checks, uploads, queue states, polling and downloads are the real protocol.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from unittest import mock

import redis
from PIL import Image

from emulators.fal_server import FalEmulator, FileStore, Job, Renderer
from farm.config.settings import Settings
from farm.episode.engine_cards import CARDS, VIDEO_ENGINE
from farm.ops.supervisor import Farm, free_port, start_farm, stop_farm
from farm.planning.plan import Plan
from farm.runs import dispatch
from farm.runs.state import RunStore
from farm.storage.artifacts import namespace_for
from tasks.app import make_app
from tasks.sender import CelerySender
from workers.base import StepJob
from workers.local import LocalBackend

FAL_KEY = "bench-key"
SETTLED = ("succeeded", "failed", "cancelled")


# timings of one run ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTiming:
    step_id: str
    kind: str
    inputs: tuple[str, ...]
    queue: str
    state: str
    cached: bool
    queued_at: float
    started_at: float
    finished_at: float
    retries: int = 0
    """Attempts handed back after a transient error (the last attempt's start is `started_at`)."""
    cap_waits: int = 0
    retry_reason: str = ""

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass(frozen=True)
class RunTimes:
    """Everything the benchmarks compute from one run: its steps in plan (dependency) order."""

    run_id: str
    status: str
    created_at: float
    steps: tuple[StepTiming, ...]
    worker_cpu_s: dict[str, float] = field(default_factory=dict)
    """CPU seconds each queue's worker process (its main process, not a prefork pool's children) used
    between the submit and the run settling."""

    def worker_cores(self, queue: str) -> float:
        """That CPU time over the makespan: how many cores the worker kept busy on average."""
        return self.worker_cpu_s.get(queue, 0.0) / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def finished(self) -> int:
        """Steps that ran to the end (done or cached) and have both timestamps."""
        return sum(1 for s in self.steps if s.state in ("done", "cached") and s.finished_at > 0)

    @property
    def cached(self) -> int:
        return sum(1 for s in self.steps if s.cached)

    @property
    def retries(self) -> int:
        return sum(s.retries for s in self.steps)

    @property
    def cap_waits(self) -> int:
        return sum(s.cap_waits for s in self.steps)

    @property
    def retry_reasons(self) -> list[str]:
        return sorted({s.retry_reason for s in self.steps if s.retry_reason})

    @property
    def makespan_s(self) -> float:
        """From the run's creation to the last step's finish."""
        return max((s.finished_at for s in self.steps), default=self.created_at) - self.created_at

    @property
    def sequential_s(self) -> float:
        """All measured durations end to end: one step at a time."""
        return sum(s.duration_s for s in self.steps)

    def work_s(self, queue: str) -> float:
        return sum(s.duration_s for s in self.steps if s.queue == queue)

    def count(self, queue: str) -> int:
        return sum(1 for s in self.steps if s.queue == queue)

    @property
    def critical_path_s(self) -> float:
        """The longest chain through the plan's DAG, weighted by measured durations: no schedule, however
        many workers, can finish sooner."""
        finish: dict[str, float] = {}
        for step in self.steps:
            finish[step.step_id] = step.duration_s + max((finish[i] for i in step.inputs), default=0.0)
        return max(finish.values(), default=0.0)

    def gaps_s(self, kinds: tuple[str, ...] | None = None) -> list[float]:
        """For every step with inputs that started: its start minus its last input's finish (release,
        admission, queue and pickup)."""
        by_id = {s.step_id: s for s in self.steps}
        return [
            s.started_at - max(by_id[i].finished_at for i in s.inputs)
            for s in self.steps
            if s.inputs and s.started_at > 0 and (kinds is None or s.kind in kinds)
        ]


def collect(runs: RunStore, run_id: str) -> RunTimes:
    info, states, meta = runs.info(run_id), runs.states(run_id), runs.meta(run_id)
    counters = runs.counters(run_id)
    steps = []
    for step_id, step in runs.steps(run_id).items():
        facts: Mapping[str, Any] = info.get(step_id, {})
        steps.append(
            StepTiming(
                step_id=step_id,
                kind=step.kind.value,
                inputs=step.inputs,
                queue=str(facts.get("queue", "")),
                state=states.get(step_id, ""),
                cached=bool(facts.get("cached", False)),
                queued_at=float(facts.get("queued_at", 0.0)),
                started_at=float(facts.get("started_at", 0.0)),
                finished_at=float(facts.get("finished_at", 0.0)),
                retries=counters.get(step_id, {}).get("retries", 0),
                cap_waits=counters.get(step_id, {}).get("cap_waits", 0),
                retry_reason=str(facts.get("last_retry_reason", "")),
            )
        )
    return RunTimes(run_id, meta.get("status", ""), float(meta.get("created_at", 0.0)), tuple(steps))


# running a plan on a fresh farm ------------------------------------------------------------------------


def farm_env(home: Path, **settings: str | int | float) -> dict[str, str]:
    """FARM_* variables for a private farm under `home`; keyword names are settings in lower case."""
    env = {"FARM_HOME": str(home), "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    env.update({f"FARM_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@dataclass
class FreshFarm:
    """A running private farm as the benchmarks drive it."""

    farm: Farm
    home: Path
    runs: RunStore
    sender: CelerySender

    def run(self, plan: Plan, backend: str, timeout_s: float = 900.0) -> RunTimes:
        """Submit the plan, wait until the run settles (or the timeout passes), return its timings."""
        pids = {queue: worker.pid for queue, worker in self.farm.workers.items()}
        before = {queue: cpu_seconds(pid) for queue, pid in pids.items()}
        run_id = dispatch.submit(
            self.runs,
            self.sender,
            plan,
            backend=backend,
            namespace=namespace_for(backend),
            output=self.home / "out",
            storyboard="bench.json",
        )
        _wait_settled(self.runs, run_id, timeout_s)
        used = {queue: cpu_seconds(pid) - before[queue] for queue, pid in pids.items()}
        return replace(collect(self.runs, run_id), worker_cpu_s=used)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (Linux /proc; 0 where it cannot be read)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fresh_farm(queues: tuple[str, ...], settings: Mapping[str, str | int | float]) -> Iterator[FreshFarm]:
    """Start a farm (fresh home and Redis) with these FARM_* settings; stop it afterwards.

    The settings stay in this process's environment while the farm runs, so a dispatcher that reads them
    here (the submit releases the root steps) sees the same values as the workers.
    """
    with tempfile.TemporaryDirectory(prefix="farm-bench-") as tmp:
        home = Path(tmp)
        with mock.patch.dict(os.environ, farm_env(home, **settings)):
            farm = start_farm(
                Settings(), queues=queues, flower=False, redis_port=free_port(), private_dir=home / "private"
            )
            client = redis.Redis.from_url(farm.broker_url)
            try:
                yield FreshFarm(farm, home, RunStore(client), CelerySender(make_app(farm.broker_url)))
            finally:
                client.close()
                stop_farm(farm, timeout_s=30)


def run_plan(
    plan: Plan,
    *,
    backend: str,
    queues: tuple[str, ...],
    settings: Mapping[str, str | int | float],
    timeout_s: float = 900.0,
) -> RunTimes:
    """Run one plan on a farm of its own."""
    with fresh_farm(queues, settings) as bench:
        return bench.run(plan, backend, timeout_s)


def _wait_settled(runs: RunStore, run_id: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while runs.meta(run_id).get("status") not in SETTLED and time.monotonic() < deadline:
        time.sleep(0.1)


# the fal emulator with stored stand-ins ----------------------------------------------------------------


class StandIns:
    """Stand-in outputs of a given shape, made once and then copied: a still PNG per image size, a still
    H.264 clip (rendered by the embedded engine) per clip size and length."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()
        self._made: dict[tuple[int, ...], Path] = {}

    def image(self, width: int, height: int) -> Path:
        with self._lock:
            if (width, height) not in self._made:
                self._made[(width, height)] = self._still(width, height)
            return self._made[(width, height)]

    def clip(self, width: int, height: int, fps: int, frames: int) -> Path:
        still = self.image(width, height)
        shape = (width, height, fps, frames)
        with self._lock:
            if shape not in self._made:
                out = self.folder / f"clip-{width}x{height}-{fps}-{frames}.mp4"
                params = {"width": width, "height": height, "fps": fps, "duration_s": frames / fps}
                LocalBackend().run(StepJob(f"clip-{frames}", "hold", "bench", None, params, [still], [out]))
                self._made[shape] = out
            return self._made[shape]

    def prepare(self) -> None:
        """Render the clip shapes the video engine card asks for (whole clips and split-FLF segments)."""
        card = CARDS[VIDEO_ENGINE]
        width, height = card.sizes["production"]
        assert card.fps is not None
        for operation in ("video", "video_segment"):
            frames = card.op(operation).frames
            if frames is not None:
                self.clip(width, height, card.fps, frames)

    def _still(self, width: int, height: int) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"still-{width}x{height}.png"
        Image.new("RGB", (width, height), (40, 70, 90)).save(path)
        return path


class StandInRenderer(Renderer):
    """The emulator's renderer (payload checks, input fetches, output JSON) with each output file copied
    from the stand-ins instead of drawn and encoded here."""

    def __init__(self, store: FileStore, scratch: Path, nsfw_keyword: str, stand_ins: StandIns) -> None:
        super().__init__(store, scratch, nsfw_keyword)
        self.stand_ins = stand_ins

    def _run(self, job: Job, kind: str, params: dict[str, Any], inputs: list[Path], name: str) -> None:
        width, height = int(params["width"]), int(params["height"])
        if kind == "video":
            source = self.stand_ins.clip(width, height, int(params["fps"]), int(params["num_frames"]))
        else:
            source = self.stand_ins.image(width, height)
        shutil.copyfile(source, self.store.path(name))


@contextmanager
def fal_emulator(latency_scale: float, stand_ins: StandIns, scratch: Path) -> Iterator[FalEmulator]:
    """A running fal emulator whose latencies are the cards' typical ones times `latency_scale`."""
    with FalEmulator(latency_scale=latency_scale, key=FAL_KEY) as emulator:
        emulator.renderer = StandInRenderer(emulator.store, scratch, emulator.nsfw_keyword, stand_ins)
        yield emulator


def fal_settings(emulator: FalEmulator, **extra: str | int | float) -> dict[str, str | int | float]:
    """Settings for a farm whose image and video steps go to the emulator."""
    return {"engine": "fal", "fal_key": FAL_KEY, "fal_url": emulator.url, **extra}


# the scheduling runs: one episode against the emulator -------------------------------------------------

LATENCY_SCALE = 0.05
"""Card latencies x 0.05: a 138 s WAN clip takes 6.9 s, a 39 s segment 2 s, a 4 s Z-Image frame 0.2 s."""
POLL_INTERVAL_S = 0.25
CLOUD_CONCURRENCY = 250
"""Threads in the one cloud worker: more than the episode ever has ready, so the fal cap is the limit."""
POST_CONCURRENCY = 4
UNCAPPED = 1000


def run_on_fal(
    plan: Plan,
    stand_ins: StandIns,
    *,
    latency_scale: float,
    cap: int,
    order: str,
    timeout_s: float = 900.0,
) -> RunTimes:
    """One run of the plan on a fresh farm (a cloud and a post worker) against a fresh emulator."""
    with (
        tempfile.TemporaryDirectory(prefix="farm-bench-fal-") as scratch,
        fal_emulator(latency_scale, stand_ins, Path(scratch)) as emulator,
    ):
        settings = fal_settings(
            emulator,
            fal_max_in_flight=cap,
            fal_poll_interval_s=POLL_INTERVAL_S,
            cloud_concurrency=CLOUD_CONCURRENCY,
            post_concurrency=POST_CONCURRENCY,
            schedule_order=order,
        )
        return run_plan(plan, backend="fal", queues=("cloud", "post"), settings=settings, timeout_s=timeout_s)
