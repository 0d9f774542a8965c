"""Runs on a running farm: `farm submit`, `status`, `watch`, `cancel` and `runs`."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from farm.cli.budget import BudgetOpt, budget_option
from farm.cli.run_views import print_status, watch
from farm.cli.runtime import (
    FAILED,
    PAUSED,
    OutOpt,
    RegistryOpt,
    RunArg,
    StoryboardArg,
    connect,
    console,
    load_or_exit,
    require_run,
)
from farm.cli.schedule import DEFAULT_PRIORITY, PriorityOpt
from farm.config.settings import Settings, load_settings
from farm.planning.figures import duration, usd
from farm.planning.plan import build_previz_plan
from farm.runs import dispatch
from farm.runs.budget import Pricing
from farm.runs.progress import RunProgress, snapshot
from farm.runs.retake import run_source
from farm.runs.review import gated_steps
from farm.runs.state import RunStore
from farm.storage.artifacts import namespace_for


def submit_episode(
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
    episode, the_plan = load_or_exit(storyboard, registry)
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


def watch_to_end(runs: RunStore, run_id: str) -> RunProgress:
    final = watch(console, lambda: snapshot(runs, run_id))
    print_status(console, final)
    return final


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
    runs, run_id = submit_episode(
        settings, storyboard, registry, out, review=review, priority=priority, budget_usd=limit
    )
    print(run_id)
    if watch_run:
        _exit_as(watch_to_end(runs, run_id))


def _exit_as(final: RunProgress) -> None:
    """Exit 0 when the run succeeded or waits for review, PAUSED when it waits for budget, else FAILED."""
    if final.waiting_for_budget:
        raise typer.Exit(PAUSED)
    if final.status not in ("succeeded", "review"):
        raise typer.Exit(FAILED)


def status(run_id: RunArg) -> None:
    """One row per shot: approach, steps done, state, elapsed, cost; totals and failures."""
    runs, _ = connect(load_settings())
    require_run(runs, run_id)
    print_status(console, snapshot(runs, run_id))


def watch_command(run_id: RunArg) -> None:
    """Live progress bars until the run ends or waits for review or budget; exit 0 unless it failed or was
    cancelled (3 when it waits for budget)."""
    runs, _ = connect(load_settings())
    require_run(runs, run_id)
    _exit_as(watch_to_end(runs, run_id))


def cancel(run_id: RunArg) -> None:
    """Stop releasing steps and revoke queued ones; running steps finish and are kept."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    dispatch.cancel(runs, sender, run_id)
    print(f"{run_id}: {runs.meta(run_id).get('status')}")


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


def register(app: typer.Typer) -> None:
    app.command()(submit)
    app.command()(status)
    app.command("watch")(watch_command)
    app.command()(cancel)
    app.command("runs")(list_runs)
