"""`farm budget RUN [USD]`: show a run's money (budget, spent, in flight, held steps) or change its budget.

A run paused for budget resumes as soon as the budget is raised enough: its held steps are admitted again
in their rank order.
"""

from __future__ import annotations

import sys
from decimal import Decimal
from typing import Annotated

import typer
from rich.markup import escape

from farm.cli.runtime import INPUT_ERROR, RunArg, connect, console, require_run
from farm.config.settings import load_settings
from farm.planning.figures import usd
from farm.runs import dispatch
from farm.runs.budget import parse_budget, read_ledger

__all__ = ["BudgetOpt", "budget_option", "register"]

BudgetOpt = Annotated[
    str | None,
    typer.Option(
        "--budget",
        help="Most USD the run may spend (e.g. 12.50, or 'none'); a paid step that would go past it waits "
        "until the budget is raised [default: FARM_DEFAULT_BUDGET_USD].",
        show_default=False,
    ),
]


def budget_option(text: str | None, default: Decimal | None) -> Decimal | None:
    """The `--budget` value, or the settings' default when it is not given; exit 2 on a bad amount."""
    return default if text is None else _parsed(text, "--budget")


def _parsed(text: str, what: str) -> Decimal | None:
    try:
        return parse_budget(text)
    except ValueError as exc:
        print(f"{what}: {exc}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR) from exc


def budget_command(
    run_id: RunArg,
    amount: Annotated[
        str | None,
        typer.Argument(help="New budget in USD, or 'none' for no limit; leave out to show the ledger."),
    ] = None,
) -> None:
    """Show a run's budget, spent money, estimates in flight and held steps; or set a new budget, which
    resumes a run paused for budget when its next step fits."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    if amount is not None:
        limit = _parsed(amount, "USD")
        admitted = dispatch.set_budget(runs, sender, run_id, limit)
        shown = "none" if limit is None else usd(limit)
        console.print(f"{run_id}: budget {shown}; {len(admitted)} held step(s) admitted")
    ledger = read_ledger(runs, run_id)
    console.print(escape(ledger.describe(run_id)))


def register(app: typer.Typer) -> None:
    app.command("budget")(budget_command)
