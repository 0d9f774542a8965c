"""Starting farms: `farm up`, `farm worker`, and `farm render` and `farm previz` on a private farm of
their own."""

from __future__ import annotations

import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from pydantic import SecretStr

from farm.cli.ops import checked_queues, local_autoscaler, metrics_login, show_decisions_in_console
from farm.cli.pods import PodReaper
from farm.cli.runs import submit_episode, watch_to_end
from farm.cli.runtime import (
    FAILED,
    INPUT_ERROR,
    OutOpt,
    RegistryOpt,
    StoryboardArg,
    console,
    load_or_exit,
    safe_url,
)
from farm.config.settings import load_settings
from farm.dailies.previz_sheet import write_previz
from farm.ops.autoscaler import Autoscaler
from farm.ops.metrics import metrics_credentials, serve_metrics
from farm.ops.supervisor import Farm, free_port, restart_exited_workers, start_farm, stop_farm, worker_command
from farm.planning.plan import Step
from farm.planning.routing import QUEUES

FalEmulatorOpt = Annotated[
    bool, typer.Option("--fal-emulator", help="Run image and video steps on a loopback fal.ai emulator.")
]
FalScaleOpt = Annotated[
    float, typer.Option(help="Emulated fal latency as a fraction of the cards' typical ones.")
]


def _use_fal_emulator(latency_scale: float) -> Any:
    """Start the loopback fal emulator and point this process and its children at it."""
    try:
        from emulators.fal_server import FalEmulator
    except ImportError as exc:
        console.print(
            f"[red]the fal emulator cannot start ({exc}): install the farm with its emulators, "
            "`pip install 'episode-farm[emulators]'` (`make setup` does)[/]"
        )
        raise typer.Exit(INPUT_ERROR) from None

    key = secrets.token_urlsafe(18)
    emulator = FalEmulator(latency_scale=latency_scale, key=key).start()
    os.environ.update({"FARM_ENGINE": "fal", "FAL_KEY": key, "FARM_FAL_URL": emulator.url})
    console.print(f"fal     emulator on {emulator.url} (latency x{latency_scale:g})")
    return emulator


def up(
    flower: Annotated[bool, typer.Option(help="Also start Flower on 127.0.0.1.")] = True,
    fal_emulator: FalEmulatorOpt = False,
    fal_latency_scale: FalScaleOpt = 0.05,
    autoscale: Annotated[
        bool, typer.Option("--autoscale", help="Size each queue's workers by its backlog (FARM_AUTOSCALE_*).")
    ] = False,
) -> None:
    """Start Redis (unless FARM_REDIS_URL), one worker per queue and Flower; Ctrl-C stops them warmly."""
    settings = load_settings()
    if autoscale:
        checked_queues(settings, None)
        show_decisions_in_console()
    emulator = _use_fal_emulator(fal_latency_scale) if fal_emulator else None
    farm = start_farm(settings, flower=flower, queues=() if autoscale else QUEUES)
    scaler, pools = local_autoscaler(farm, QUEUES) if autoscale else (None, {})
    _announce(farm)
    exporter = None
    if settings.metrics_port is not None:
        client = redis.Redis.from_url(farm.broker_url)
        credentials = metrics_credentials(settings)
        host, port = settings.metrics_host, settings.metrics_port
        exporter, _ = serve_metrics(client, QUEUES, host, port, credentials=credentials[:2])
        url = f"http://{host}:{exporter.server_port}/metrics"
        console.print(f"metrics {url}  {metrics_login(settings, credentials)}")
    stop = {"now": False}

    def on_signal(signum: int, frame: object) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    reaper = PodReaper(settings, farm.broker_url) if settings.runpod_api_key is not None else None
    try:
        _supervise(farm, scaler, reaper, lambda: stop["now"])
    finally:
        console.print("stopping: workers finish their current step first...")
        for pool in pools.values():
            pool.stop()
        if exporter is not None:
            exporter.shutdown()
            exporter.server_close()
        stop_farm(farm)
        if emulator is not None:
            emulator.stop()
        console.print("farm stopped")


def _supervise(
    farm: Farm, scaler: Autoscaler | None, reaper: PodReaper | None, stopping: Callable[[], bool]
) -> None:
    """`farm up`'s loop until Ctrl-C: scale (or, without the autoscaler, start again a worker that died)
    and stop idle pods."""
    next_tick = 0.0
    while not stopping():
        if scaler is not None and time.monotonic() >= next_tick:
            scaler.tick()  # replaces a worker that died, too
            next_tick = time.monotonic() + farm.settings.autoscale_interval_s
        time.sleep(0.2)
        if scaler is None:
            for queue in restart_exited_workers(farm):
                console.print(f"the {queue} worker exited; started it again")
        if reaper is not None:
            reaper.maybe_reap()


def worker(queue: Annotated[str, typer.Option("--queue", "-q", help=f"One of {', '.join(QUEUES)}.")]) -> None:
    """Run one worker pool in the foreground (e.g. on another machine, with FARM_REDIS_URL set)."""
    if queue not in QUEUES:
        print(f"unknown queue {queue!r}; queues: {', '.join(QUEUES)}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    settings = load_settings()
    command = worker_command(queue, settings, f"{queue}.{os.getpid()}@%h")
    os.execv(command[0], command)


def render(
    storyboard: StoryboardArg,
    registry: RegistryOpt = None,
    out: OutOpt = None,
    fal_emulator: FalEmulatorOpt = False,
    fal_latency_scale: FalScaleOpt = 0.05,
) -> None:
    """Render an episode start to finish on a private embedded farm, then shut it down."""
    folder, steps = _render_privately(storyboard, registry, out, fal_emulator, fal_latency_scale)
    episode_step = next(s for s in steps if s.shot is None)
    print(f"episode: {folder / episode_step.asset_name}")
    print(f"manifest: {folder / 'manifest.json'}")


def previz(
    storyboard: StoryboardArg,
    registry: RegistryOpt = None,
    out: OutOpt = None,
    fal_emulator: FalEmulatorOpt = False,
    fal_latency_scale: FalScaleOpt = 0.05,
) -> None:
    """One Z-Image Turbo frame per shot at 512x896, a contact sheet and previz_manifest.json, in previz/."""
    folder, _ = _render_privately(storyboard, registry, out, fal_emulator, fal_latency_scale, previz=True)
    manifest, sheet, page = write_previz(folder / "manifest.json")
    print(f"contact sheet: {sheet}")
    print(f"page: {page}")
    print(f"previz manifest: {manifest}")


def _render_privately(
    storyboard: Path,
    registry: Path | None,
    out: Path | None,
    fal_emulator: bool,
    fal_latency_scale: float,
    *,
    previz: bool = False,
) -> tuple[Path, list[Step]]:
    """Start a private farm, run the episode (or its previz) to the end, stop the farm; exit 1 unless it
    succeeded. Returns the deliverables folder and the run's steps."""
    load_or_exit(storyboard, registry)  # bad input: problems listed, exit 2, nothing started
    emulator = _use_fal_emulator(fal_latency_scale) if fal_emulator else None
    base = load_settings()
    with tempfile.TemporaryDirectory(prefix="farm-render-") as private:
        settings = base.model_copy(update={"redis_url": None, "flower_port": free_port()})
        farm = start_farm(settings, redis_port=free_port(), private_dir=Path(private))
        try:
            _announce(farm)
            # The private farm's URL already says how to reach it; FARM_REDIS_TLS_* are for FARM_REDIS_URL's.
            tls = {"redis_tls_ca": None, "redis_tls_cert": None, "redis_tls_key": None}
            private_settings = base.model_copy(update={"redis_url": SecretStr(farm.broker_url), **tls})
            runs, run_id = submit_episode(private_settings, storyboard, registry, out, previz=previz)
            console.print(f"run {run_id}")
            final = watch_to_end(runs, run_id)
            folder = Path(runs.meta(run_id)["output_dir"])
            steps = list(runs.steps(run_id).values())
        finally:
            stop_farm(farm)
            if emulator is not None:
                emulator.stop()
    if final.status != "succeeded":
        raise typer.Exit(FAILED)
    return folder, steps


def _announce(farm: Farm) -> None:
    console.print(f"broker  {safe_url(farm.broker_url)}" + ("  (own redis-server)" if farm.redis else ""))
    workers = ", ".join(f"{q} (pid {p.pid})" for q, p in farm.workers.items()) or "by the autoscaler"
    console.print(f"workers {workers}; logs in {farm.log_dir}")
    access = farm.flower_access
    if access is not None:
        secret = (
            access.password
            if access.generated
            else f"see FARM_FLOWER_PASSWORD or {farm.settings.home}/flower.json"
        )
        console.print(f"flower  {access.url}  user {access.user}  password {secret}")


def register(app: typer.Typer) -> None:
    app.command()(up)
    app.command()(worker)
    app.command()(render)
    app.command()(previz)
