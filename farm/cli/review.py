"""`farm approve`, `farm render-video` and `farm retake`: the reviewer's side of a run."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from farm.cli.runtime import INPUT_ERROR, RunArg, connect, console, require_run
from farm.config.settings import load_settings
from farm.episode.problems import InputError
from farm.planning.figures import usd
from farm.runs import review
from farm.runs.retake import Changes, RetakeError, RetakePlan, marked_for_retake, plan_retake
from farm.runs.retake import retake as make_retake

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


def retake(
    run_id: RunArg,
    shot: Annotated[int | None, typer.Argument(help="The shot to retake.", show_default=False)] = None,
    marked: Annotated[
        bool,
        typer.Option("--marked", help="Retake every shot marked `retake` (new seeds)."),
    ] = False,
    first: Annotated[str | None, typer.Option("--first", help="New first-frame prompt.")] = None,
    last: Annotated[str | None, typer.Option("--last", help="New last-frame prompt.")] = None,
    hero: Annotated[str | None, typer.Option("--hero", help="New hero-frame prompt.")] = None,
    motion: Annotated[str | None, typer.Option("--motion", help="New motion prompt.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed for every frame of the shot.")] = None,
    strength: Annotated[
        float | None, typer.Option("--strength", help="The shot's img2img strength (first -> last, mid).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only say what would re-render.")] = False,
) -> None:
    """Take T+1 of a shot: only its changed steps, the shots continuing from it and the episode cut re-render.
    Without changes it draws a new seed. Earlier takes keep their files and manifest entries."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    prompts = {k: v for k, v in {"first": first, "last": last, "hero": hero, "motion": motion}.items() if v}
    changes = Changes(prompts, seed, strength)
    if marked == (shot is not None) or (marked and not changes.empty):
        print("name one shot (with its changes), or --marked alone", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    wanted = {n: Changes() for n in marked_for_retake(runs, run_id)} if marked else {shot or 0: changes}
    if not wanted:
        console.print("no shot is marked for a retake")
        return
    try:
        planned = plan_retake(runs, run_id, wanted) if dry_run else make_retake(runs, sender, run_id, wanted)
    except InputError as exc:
        print("the retake does not pass the storyboard's checks:", file=sys.stderr)
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise typer.Exit(INPUT_ERROR) from None
    except (review.UnknownShots, RetakeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR) from None
    _print_retake(planned, dry_run)


def _print_retake(planned: RetakePlan, dry_run: bool) -> None:
    verb = "would re-render" if dry_run else "re-rendering"
    for number, take in sorted(planned.takes.items()):
        mine = [s for s in planned.rerun if s.shot == number]
        why = "" if number in planned.shots else " (continues from a retaken shot)"
        console.print(f"shot {number} take T{take:02d}{why}: {verb} {len(mine)} step(s)")
    if any(s.shot is None for s in planned.rerun):
        console.print(f"episode cut C{planned.cut:02d}: {verb} the concat")
    for number, seed in sorted(planned.seeds.items()):
        console.print(f"shot {number}: no change given, new seed {seed}")
    console.print(f"reused: {planned.reused} step(s); estimated cost at most {usd(planned.cost_usd)}")


def _shots(shots: list[int]) -> str:
    return ", ".join(map(str, shots)) or "none"


def register(app: typer.Typer) -> None:
    app.command()(approve)
    app.command("render-video")(render_video)
    app.command()(retake)
