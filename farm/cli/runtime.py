"""What the CLI's command groups share: the console, exit codes, common arguments, loading a storyboard,
and the connection to a running farm."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import redis
import typer
from rich.console import Console

from farm.config.redis_connection import (
    safe_url as safe_url,  # re-exported: farm.cli.farm_up imports it from here
)
from farm.config.settings import Settings
from farm.episode.problems import InputError
from farm.episode.validate import Episode, load_episode
from farm.ops.redis_server import is_up
from farm.planning.plan import Plan, build_plan
from farm.runs.state import RunStore

if TYPE_CHECKING:
    from tasks.sender import CelerySender

console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)
"""Piped output (CI, files) gets a fixed width instead of rich's narrow default."""

FAILED = 1
INPUT_ERROR = 2
PAUSED = 3
"""The run waits for its budget to be raised (`farm budget RUN USD`)."""

RunArg = Annotated[str, typer.Argument(help="Run id (see `farm runs`).", show_default=False)]
StoryboardArg = Annotated[Path, typer.Argument(help="Storyboard JSON (schema v3).", show_default=False)]
RegistryOpt = Annotated[
    Path | None,
    typer.Option(
        "--registry", help="LoRA registry JSON [default: lora_registry.json beside the storyboard]."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the machine-readable contract instead.")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Deliverables folder [default: FARM_OUTPUT or ./renders].")
]


def connect(settings: Settings) -> tuple[RunStore, CelerySender]:
    """Connect to the farm's Redis; a clear message (exit 1) when no farm is running."""
    from tasks.app import broker_url, make_app, signing_of
    from tasks.sender import CelerySender

    url = broker_url(settings)
    if not is_up(url):
        print(
            f"no farm answers at {safe_url(url)}: start one with `farm up` (or set FARM_REDIS_URL)",
            file=sys.stderr,
        )
        raise typer.Exit(FAILED)
    return RunStore(redis.Redis.from_url(url)), CelerySender(make_app(url, signing=signing_of(settings)))


def require_run(runs: RunStore, run_id: str) -> None:
    if not runs.exists(run_id):
        print(f"no run {run_id!r}; `farm runs` lists them", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)


def load_or_exit(storyboard: Path, registry: Path | None, *, to_stdout: bool = False) -> tuple[Episode, Plan]:
    """Load, check and plan; on bad input print every problem (and nothing else) and exit 2."""
    try:
        episode = load_episode(storyboard, registry)
    except InputError as exc:
        stream = sys.stdout if to_stdout else sys.stderr
        for problem in exc.problems:
            print(problem, file=stream)
        raise typer.Exit(INPUT_ERROR) from None
    return episode, build_plan(episode)
