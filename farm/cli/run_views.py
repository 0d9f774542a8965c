"""Terminal views of a running or finished run: the status table and live progress bars."""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, Group, JustifyMethod
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from farm.planning.figures import duration, usd
from farm.runs.progress import RunProgress

STATE_STYLE = {
    "done": "green",
    "failed": "red",
    "running": "cyan",
    "waiting": "dim",
    "cancelled": "yellow",
    "held": "magenta",
    "blocked": "red",
}


def status_table(progress: RunProgress) -> Table:
    table = Table(
        title=f"{progress.run_id}  {escape(progress.title)}  [bold]{progress.status}[/]", title_justify="left"
    )
    reviewed = any(s.review for s in progress.shots)
    retaken = any(s.take > 1 for s in progress.shots)
    columns: list[tuple[str, JustifyMethod]] = [("shot", "right"), ("approach", "left"), ("steps", "right")]
    if retaken:
        columns.append(("take", "left"))
    columns.append(("state", "left"))
    if reviewed:
        columns.append(("review", "left"))
    columns += [("elapsed", "right"), ("est. $", "right"), ("spent $", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify)
    for shot in progress.shots:
        style = STATE_STYLE.get(shot.state, "")
        state = f"[{style}]{shot.state}[/]" if style else shot.state
        table.add_row(
            str(shot.shot) if shot.shot is not None else "episode",
            shot.approach,
            f"{shot.done}/{shot.total}",
            *([f"T{shot.take:02d}" if shot.shot is not None else ""] if retaken else []),
            f"{state} {escape(shot.activity)}" if shot.activity else state,
            *([shot.review or "-"] if reviewed else []),
            duration(shot.elapsed_s) if shot.elapsed_s is not None else "-",
            usd(shot.estimated_usd),
            usd(shot.spent_usd),
        )
    counts = ", ".join(f"{n} {state}" for state, n in sorted(progress.counts.items()))
    table.add_row(
        "[bold]total[/]",
        "",
        f"{progress.done}/{progress.total}",
        *([""] if retaken else []),
        counts,
        *([""] if reviewed else []),
        duration(progress.elapsed_s),
        usd(progress.estimated_usd),
        usd(progress.spent_usd),
    )
    return table


def print_status(console: Console, progress: RunProgress) -> None:
    console.print(status_table(progress))
    if progress.earlier_takes_usd:
        console.print(f"of which earlier takes: {usd(progress.earlier_takes_usd)}")
    ledger = progress.ledger
    if ledger is not None and (ledger.budget_usd is not None or ledger.paused):
        style = "yellow" if ledger.paused else ""
        line = escape(ledger.describe(progress.run_id))
        console.print(f"[{style}]{line}[/]" if style else line)
    for failure in progress.failures:
        where = f"shot {failure.shot}" if failure.shot is not None else "episode"
        console.print(f"[red]failed[/] {where} {failure.label}: {escape(failure.reason)}")
    if blocked := progress.counts.get("blocked", 0):
        console.print(
            f"[red]blocked[/] {blocked} step(s) wait on a failed step and cannot start; "
            f"`farm retake {progress.run_id} SHOT` renders a failed shot again"
        )


def watch(console: Console, poll: Callable[[], RunProgress], interval_s: float = 0.5) -> RunProgress:
    """Live bars (overall and per shot) until the run settles; returns the final picture."""
    current = poll()
    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[state]}"),
        TimeElapsedColumn(),
        console=console,
    )
    overall = bars.add_task("[bold]episode", total=current.total, state=current.status)
    per_shot: dict[int | None, TaskID] = {
        s.shot: bars.add_task(
            f"shot {s.shot}" if s.shot is not None else "concat", total=s.total, state=s.state
        )
        for s in current.shots
    }
    with Live(Group(bars), console=console, refresh_per_second=4, transient=False):
        while True:
            overall_state = "paused: budget" if current.waiting_for_budget else current.status
            bars.update(overall, completed=current.done, state=overall_state)
            for shot in current.shots:
                state = f"{shot.state} {shot.activity}" if shot.activity else shot.state
                bars.update(per_shot[shot.shot], completed=shot.done, state=escape(state))
            if current.finished or current.awaiting_review or current.waiting_for_budget:
                break
            time.sleep(interval_s)
            current = poll()
    console.print()
    return current
