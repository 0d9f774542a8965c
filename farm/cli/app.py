"""`farm` command line: thin over the core modules. Exit 2 means the input is wrong."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import redis
import typer
from pydantic import SecretStr
from rich.markup import escape
from rich.table import Table

from farm.cli.episode_views import estimate_view, plan_view, validation_summary
from farm.cli.run_views import print_status, watch
from farm.cli.runtime import FAILED, INPUT_ERROR, PAUSED, RunArg, connect, console, require_run, safe_url
from farm.config.settings import Settings, load_settings
from farm.dailies.previz_sheet import write_previz
from farm.episode.problems import InputError
from farm.episode.validate import Episode, load_episode
from farm.ops.metrics import metrics_credentials, serve_metrics
from farm.ops.supervisor import Farm, free_port, restart_exited_workers, start_farm, stop_farm, worker_command
from farm.planning.estimate import estimate as estimate_plan
from farm.planning.figures import duration, usd
from farm.planning.plan import Plan, Step, build_plan, build_previz_plan
from farm.planning.plan_json import money, plan_document
from farm.planning.routing import QUEUES
from farm.runs import dispatch
from farm.runs.budget import Pricing
from farm.runs.lanes import time_at_limits
from farm.runs.progress import RunProgress, snapshot
from farm.runs.retake import run_source
from farm.runs.review import gated_steps
from farm.runs.state import RunStore
from farm.storage.artifacts import namespace_for

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Render farm for AI-made episodic video: storyboard in, episode out.",
)
from farm.cli.budget import BudgetOpt, budget_option  # noqa: E402
from farm.cli.budget import register as register_budget  # noqa: E402
from farm.cli.dailies import register as register_dailies  # noqa: E402
from farm.cli.ops import checked_queues, local_autoscaler, metrics_login, show_decisions_in_console  # noqa: E402
from farm.cli.ops import register as register_ops  # noqa: E402
from farm.cli.pods import PodReaper, pods_app  # noqa: E402
from farm.cli.review import register as register_review  # noqa: E402
from farm.cli.schedule import DEFAULT_PRIORITY, PriorityOpt  # noqa: E402
from farm.cli.schedule import register as register_schedule  # noqa: E402
from farm.ops.autoscaler import Autoscaler  # noqa: E402

app.add_typer(pods_app, name="pods")
register_review(app)
register_dailies(app)
register_ops(app)
register_schedule(app)
register_budget(app)

StoryboardArg = Annotated[Path, typer.Argument(help="Storyboard JSON (schema v3).", show_default=False)]
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry", help="LoRA registry JSON [default: lora_registry.json beside the storyboard]."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the machine-readable contract instead.")]


def _load(storyboard: Path, registry: Path | None, *, to_stdout: bool = False) -> tuple[Episode, Plan]:
    """Load, check and plan; on bad input print every problem (and nothing else) and exit 2."""
    try:
        episode = load_episode(storyboard, registry)
    except InputError as exc:
        stream = sys.stdout if to_stdout else sys.stderr
        for problem in exc.problems:
            print(problem, file=stream)
        raise typer.Exit(INPUT_ERROR) from None
    return episode, build_plan(episode)


@app.command()
def validate(storyboard: StoryboardArg, registry: RegistryOpt = None) -> None:
    """Check a storyboard and its LoRA registry; list every problem at once (exit 2) or print a summary."""
    episode, plan = _load(storyboard, registry, to_stdout=True)
    validation_summary(console, episode, plan, estimate_plan(plan))


@app.command()
def plan(
    storyboard: StoryboardArg,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
    shot: Annotated[int | None, typer.Option(help="Show one shot with every compiled parameter.")] = None,
) -> None:
    """Show the render plan: steps per shot, totals by kind and the critical path."""
    _, the_plan = _load(storyboard, registry)
    est = estimate_plan(the_plan)
    if as_json:
        print(json.dumps(plan_document(the_plan, est), indent=2, ensure_ascii=False))
        return
    if shot is not None and shot not in {s.shot for s in the_plan.shots}:
        print(f"{storyboard}: there is no shot {shot}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    plan_view(console, the_plan, est, detail_shot=shot)


@app.command()
def estimate(storyboard: StoryboardArg, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Cost per shot and in total, paid calls per endpoint, critical-path and sequential time."""
    _, the_plan = _load(storyboard, registry)
    est = estimate_plan(the_plan)
    timing = time_at_limits(the_plan, load_settings())
    if as_json:
        doc = plan_document(the_plan, est)
        keys = (
            "project",
            "episode",
            "shots",
            "totals",
            "cost_by_kind",
            "paid_calls",
            "cost_usd",
            "critical_path_s",
            "sequential_s",
        )
        extra = {"at_limits_s": round(timing.seconds, 3), "limits": timing.limits, "backend": timing.backend}
        print(json.dumps({**{k: doc[k] for k in keys}, **extra}, indent=2))
        return
    estimate_view(console, the_plan, est)
    shown = ", ".join(f"{q} {n}" for q, n in timing.limits.items())
    about = duration(timing.seconds)
    console.print(f"On the {timing.backend} backend at this farm's limits ({shown} at once): about {about}")
    console.print(f"[bold]Total: {money(est.cost_usd):.4f} USD[/]")


# running episodes -------------------------------------------------------------------------------

OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Deliverables folder [default: FARM_OUTPUT or ./renders].")
]


def _submit(
    settings: Settings,
    storyboard: Path,
    registry: Path | None,
    out: Path | None,
    *,
    review: bool = False,
    previz: bool = False,
    priority: int = DEFAULT_PRIORITY,
    budget_usd: Decimal | None = None,
) -> tuple[RunStore, str]:
    episode, the_plan = _load(storyboard, registry)
    if previz:
        the_plan = build_previz_plan(episode)
    runs, sender = connect(settings)
    run_id = dispatch.submit(
        runs,
        sender,
        the_plan,
        backend=settings.backend(),
        namespace=namespace_for(settings.backend()),
        output=(out or settings.output) / ("previz" if previz else ""),
        storyboard=str(storyboard.resolve()),
        gated=gated_steps(the_plan) if review else (),
        source=run_source(episode),
        priority=priority,
        budget_usd=budget_usd,
        pricing=Pricing.for_pods(settings.gpu_expected_usd_per_hr, settings.gpu_jobs_per_pod),
    )
    return runs, run_id


def _watch_to_end(runs: RunStore, run_id: str) -> RunProgress:
    final = watch(console, lambda: snapshot(runs, run_id))
    print_status(console, final)
    return final


@app.command()
def submit(
    storyboard: StoryboardArg,
    registry: RegistryOpt = None,
    out: OutOpt = None,
    watch_run: Annotated[bool, typer.Option("--watch", help="Show progress until the run ends.")] = False,
    review: Annotated[
        bool,
        typer.Option(
            "--review", help="Render keyframes and upscales, then hold each shot's video until approved."
        ),
    ] = False,
    priority: PriorityOpt = DEFAULT_PRIORITY,
    budget_text: BudgetOpt = None,
) -> None:
    """Validate, plan and enqueue an episode on a running farm; print the run id."""
    settings = load_settings()
    limit = budget_option(budget_text, settings.default_budget_usd)
    runs, run_id = _submit(
        settings, storyboard, registry, out, review=review, priority=priority, budget_usd=limit
    )
    print(run_id)
    if watch_run:
        _exit_as(_watch_to_end(runs, run_id))


def _exit_as(final: RunProgress) -> None:
    """Exit 0 when the run succeeded or waits for review, PAUSED when it waits for budget, else FAILED."""
    if final.waiting_for_budget:
        raise typer.Exit(PAUSED)
    if final.status not in ("succeeded", "review"):
        raise typer.Exit(FAILED)


@app.command()
def status(run_id: RunArg) -> None:
    """One row per shot: approach, steps done, state, elapsed, cost; totals and failures."""
    runs, _ = connect(load_settings())
    require_run(runs, run_id)
    print_status(console, snapshot(runs, run_id))


@app.command("watch")
def watch_command(run_id: RunArg) -> None:
    """Live progress bars until the run ends or waits for review or budget; exit 0 unless it failed or was
    cancelled (3 when it waits for budget)."""
    runs, _ = connect(load_settings())
    require_run(runs, run_id)
    _exit_as(_watch_to_end(runs, run_id))


@app.command()
def cancel(run_id: RunArg) -> None:
    """Stop releasing steps and revoke queued ones; running steps finish and are kept."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    dispatch.cancel(runs, sender, run_id)
    print(f"{run_id}: {runs.meta(run_id).get('status')}")


@app.command("runs")
def list_runs(limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20) -> None:
    """The most recent runs with their status."""
    runs, _ = connect(load_settings())
    table = Table(box=None)
    columns = ("run", "status", "episode", "priority", "steps", "elapsed", "est. $", "spent $", "budget $")
    for column in columns:
        table.add_column(column, justify="right" if column.endswith("$") else "left")
    for run_id in runs.runs(limit):
        progress = snapshot(runs, run_id)
        limit_usd = progress.ledger.budget_usd if progress.ledger else None
        table.add_row(
            run_id,
            "paused: budget" if progress.waiting_for_budget else progress.status,
            escape(progress.title),
            str(dispatch.run_priority(runs.meta(run_id))),
            f"{progress.done}/{progress.total}",
            duration(progress.elapsed_s),
            usd(progress.estimated_usd),
            usd(progress.spent_usd),
            "-" if limit_usd is None else usd(limit_usd),
        )
    console.print(table)


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


@app.command()
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


@app.command()
def worker(queue: Annotated[str, typer.Option("--queue", "-q", help=f"One of {', '.join(QUEUES)}.")]) -> None:
    """Run one worker pool in the foreground (e.g. on another machine, with FARM_REDIS_URL set)."""
    if queue not in QUEUES:
        print(f"unknown queue {queue!r}; queues: {', '.join(QUEUES)}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    settings = load_settings()
    command = worker_command(queue, settings, f"{queue}.{os.getpid()}@%h")
    os.execv(command[0], command)


@app.command()
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


@app.command()
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
    _load(storyboard, registry)  # bad input: problems listed, exit 2, nothing started
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
            runs, run_id = _submit(private_settings, storyboard, registry, out, previz=previz)
            console.print(f"run {run_id}")
            final = _watch_to_end(runs, run_id)
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


if __name__ == "__main__":
    app()
