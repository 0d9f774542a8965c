"""`farm` command line: one Typer app over the command groups, each in its own module. Exit 2 means the
input is wrong."""

from __future__ import annotations

import typer

from farm.cli import budget, dailies, episode, farm_up, ops, review, runs, schedule
from farm.cli.pods import pods_app

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="Render farm for AI-made episodic video: storyboard in, episode out.",
)
app.add_typer(pods_app, name="pods")
for group in (review, dailies, ops, schedule, budget, episode, runs, farm_up):
    group.register(app)

if __name__ == "__main__":
    app()
