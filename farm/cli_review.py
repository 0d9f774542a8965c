"""`farm approve` and `farm render-video`: the reviewer's side of a run submitted with `--review`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from farm import review
from farm.cli_runtime import INPUT_ERROR, RunArg, connect, console, require_run
from farm.settings import load_settings

ShotsArg = Annotated[list[int] | None, typer.Argument(help="Shot numbers.", show_default=False)]


def approve(
    run_id: RunArg,
    shots: ShotsArg = None,
    every: Annotated[bool, typer.Option("--all", help="Approve every shot of the run.")] = False,
) -> None:
    """Approve shots: their held video steps start now; the episode is cut once every shot is approved."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    chosen = sorted(review.shot_states(runs, run_id)) if every else list(shots or [])
    if not chosen:
        print("name the shots to approve, or --all", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    try:
        released = review.approve(runs, sender, run_id, chosen)
    except review.UnknownShots as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR) from None
    console.print(
        f"approved shot(s) {', '.join(map(str, released.shots))}: {len(released.steps)} video step(s) started"
    )


def render_video(run_id: RunArg) -> None:
    """Start the video of every approved shot that is still held; list the shots still waiting."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    released, waiting = review.render_video(runs, sender, run_id)
    console.print(f"{len(released.steps)} video step(s) started for shot(s) {_shots(released.shots)}")
    console.print(f"waiting for approval: {_shots(waiting)}")


def _shots(shots: list[int]) -> str:
    return ", ".join(map(str, shots)) or "none"


def register(app: typer.Typer) -> None:
    app.command()(approve)
    app.command("render-video")(render_video)
