"""`farm` command line: thin over the core modules. Exit 2 means the input is wrong."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from farm.estimate import estimate as estimate_plan
from farm.plan import Plan, build_plan
from farm.plan_json import money, plan_document
from farm.problems import InputError
from farm.validate import Episode, load_episode
from farm.views import estimate_view, plan_view, validation_summary

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Render farm for AI-made episodic video: storyboard in, episode out.",
)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
"""Piped output (CI, files) gets a fixed width instead of rich's narrow default."""

INPUT_ERROR = 2

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
        print(json.dumps({k: doc[k] for k in keys}, indent=2))
        return
    estimate_view(console, the_plan, est)
    console.print(f"[bold]Total: {money(est.cost_usd):.4f} USD[/]")


if __name__ == "__main__":
    app()
