"""Scheduling commands: `farm queue` (each lane's limit, use and best-ranked ready steps) and
`farm priority RUN N` (move a run ahead of, or behind, the others)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from farm.cli.runtime import INPUT_ERROR, RunArg, connect, console, require_run
from farm.config.settings import load_settings
from farm.planning.routing import QUEUES
from farm.runs import dispatch
from farm.runs.scheduler import DEFAULT_PRIORITY, PRIORITIES, LaneView, Scheduler
from farm.runs.state import RunStore

__all__ = ["DEFAULT_PRIORITY", "PriorityOpt", "register"]

PriorityOpt = Annotated[
    int,
    typer.Option(
        "--priority",
        min=PRIORITIES.start,
        max=PRIORITIES.stop - 1,
        help="1-9: a higher-priority run's ready steps go first (waiting ones still age in, none starve).",
    ),
]


def queue_command(
    top: Annotated[int, typer.Option("--top", help="Ready steps to list per queue, best first.")] = 5,
) -> None:
    """Per queue: how many steps may run at once and why (provider cap, live workers' slots), how many are
    admitted, how many wait ready, and which go next."""
    runs, _ = connect(load_settings())
    scheduler = Scheduler(runs.r)
    table = Table(box=None)
    for column in ("queue", "limit", "provider cap", "worker slots", "admitted", "ready", "order"):
        table.add_column(column)
    views = [scheduler.view(queue, top) for queue in QUEUES]
    for view in views:
        lane = view.lane
        table.add_row(
            lane.queue,
            "none" if lane.limit is None else str(lane.limit),
            "-" if lane.cap is None else str(lane.cap),
            "no worker" if lane.slots is None else str(lane.slots),
            str(view.admitted),
            str(view.ready_count),
            lane.policy.order,
        )
    console.print(table)
    for view in views:
        if view.ready:
            _next_up(runs, view)


def _next_up(runs: RunStore, view: LaneView) -> None:
    table = Table(box=None, title=f"next on {view.lane.queue}", title_justify="left")
    for column in ("run", "step", "priority", "remaining path"):
        table.add_column(column)
    for run_id, step_id, _score in view.ready:
        try:
            name = runs.step(run_id, step_id).asset_name
        except KeyError:
            name = step_id
        remaining = runs.remaining(run_id, [step_id])[step_id]
        priority = dispatch.run_priority(runs.meta(run_id))
        table.add_row(run_id, escape(name), str(priority), f"{remaining:g} s")
    console.print(table)


def priority_command(
    run_id: RunArg,
    priority: Annotated[
        int, typer.Argument(min=PRIORITIES.start, max=PRIORITIES.stop - 1, help="1-9, 9 first.")
    ],
) -> None:
    """Change a run's priority: its steps already waiting are ranked again, its later ones follow."""
    runs, _ = connect(load_settings())
    require_run(runs, run_id)
    status = runs.meta(run_id).get("status")
    if status not in ("running", "review"):
        print(f"run {run_id} is {status}: nothing of it waits to be scheduled", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    moved = dispatch.reprioritise(runs, run_id, priority)
    print(f"{run_id}: priority {priority} ({moved} waiting step(s) ranked again)")


def register(app: typer.Typer) -> None:
    app.command("queue")(queue_command)
    app.command("priority")(priority_command)
