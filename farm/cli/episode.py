"""`farm validate`, `farm plan` and `farm estimate`: a storyboard read, checked, planned and priced, with
no farm running."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from farm.cli.episode_views import estimate_view, plan_view, validation_summary
from farm.cli.runtime import (
    INPUT_ERROR,
    JsonOpt,
    RegistryOpt,
    StoryboardArg,
    console,
    load_or_exit,
)
from farm.config.settings import load_settings
from farm.planning.estimate import estimate as estimate_plan
from farm.planning.figures import duration
from farm.planning.plan_json import money, plan_document
from farm.runs.lanes import time_at_limits


def validate(storyboard: StoryboardArg, registry: RegistryOpt = None) -> None:
    """Check a storyboard and its LoRA registry; list every problem at once (exit 2) or print a summary."""
    episode, plan = load_or_exit(storyboard, registry, to_stdout=True)
    validation_summary(console, episode, plan, estimate_plan(plan))


def plan(
    storyboard: StoryboardArg,
    registry: RegistryOpt = None,
    as_json: JsonOpt = False,
    shot: Annotated[int | None, typer.Option(help="Show one shot with every compiled parameter.")] = None,
) -> None:
    """Show the render plan: steps per shot, totals by kind and the critical path."""
    _, the_plan = load_or_exit(storyboard, registry)
    est = estimate_plan(the_plan)
    if as_json:
        print(json.dumps(plan_document(the_plan, est), indent=2, ensure_ascii=False))
        return
    if shot is not None and shot not in {s.shot for s in the_plan.shots}:
        print(f"{storyboard}: there is no shot {shot}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    plan_view(console, the_plan, est, detail_shot=shot)


def estimate(storyboard: StoryboardArg, registry: RegistryOpt = None, as_json: JsonOpt = False) -> None:
    """Cost per shot and in total, paid calls per endpoint, critical-path and sequential time."""
    _, the_plan = load_or_exit(storyboard, registry)
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


def register(app: typer.Typer) -> None:
    app.command()(validate)
    app.command()(plan)
    app.command()(estimate)
