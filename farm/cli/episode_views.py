"""Human-readable views of a plan and its estimate (rich tables); the CLI stays a thin shell."""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from farm.episode.validate import Episode
from farm.planning.estimate import Estimate
from farm.planning.figures import duration, usd
from farm.planning.plan import Plan, Step


def label(step: Step) -> str:
    where = f"S{step.shot}" if step.shot is not None else "EP"
    return f"{where} {step.kind.value} {step.role}"


def validation_summary(console: Console, episode: Episode, plan: Plan, est: Estimate) -> None:
    board = episode.storyboard
    approaches = Counter(s.generation_approach for s in board.shots)
    engines = Counter(s.engine for s in plan.shots)
    scenes = {s.scene for s in board.shots if s.scene is not None}
    console.print(
        f"[green]valid[/]: {escape(str(episode.storyboard_file))} "
        f"(registry {escape(str(episode.registry_file))})"
    )
    console.print(
        f'{board.project} EP{board.episode:03d} "{escape(board.title)}": {len(board.shots)} shots '
        f"in {len(scenes)} scenes ({', '.join(f'{n} {a}' for a, n in approaches.most_common())})"
    )
    used = sorted({c for s in board.shots for c in s.characters_in_shot})
    console.print(
        f"characters: {', '.join(used) or 'none'}; "
        f"engines: {', '.join(f'{e} x{n}' for e, n in engines.most_common())}"
    )
    console.print(
        f"plan: {len(plan.steps)} steps, estimated {usd(est.cost_usd)}, "
        f"critical path {duration(est.critical_path_s)} (sequential {duration(est.sequential_s)})"
    )
    for warning in episode.warnings:
        console.print(f"[yellow]warning[/]: {escape(str(warning))}")


def plan_view(console: Console, plan: Plan, est: Estimate, detail_shot: int | None = None) -> None:
    by_id = {s.id: s for s in plan.steps}
    console.print(
        f'[bold]{plan.project} EP{plan.episode:03d} "{escape(plan.title)}"[/]: {len(plan.steps)} steps'
    )
    for shot in plan.shots:
        if detail_shot is not None and shot.shot != detail_shot:
            continue
        steps = [s for s in plan.steps if s.shot == shot.shot]
        cost = est.cost_by_shot.get(shot.shot, Decimal(0))
        who = ", ".join(shot.characters) or "no characters"
        console.print(
            f"\n[bold]Shot {shot.shot}[/] scene {shot.scene}: {shot.approach}, {shot.engine}, {who}; "
            f"clip {shot.clip_s:.2f} s, {usd(cost)}"
        )
        for note in shot.notes:
            console.print(f"  [dim]{escape(note)}[/]")
        console.print(f"  outputs: {shot.stem}_*")
        console.print(_steps_table(steps, by_id, shot.stem))
        if detail_shot is not None:
            _step_details(console, steps)
    episode_steps = [s for s in plan.steps if s.shot is None]
    if detail_shot is None and episode_steps:
        console.print("\n[bold]Episode[/]")
        console.print(_steps_table(episode_steps, by_id))
    if detail_shot is None:
        totals_view(console, est)
        critical_path_view(console, plan, est)


def _steps_table(steps: list[Step], by_id: dict[str, Step], stem: str = "") -> Table:
    table = Table(box=None, pad_edge=False, show_edge=False)
    for column in ("id", "kind", "role", "engine", "inputs", "output", "cost", "typ. s"):
        table.add_column(column, overflow="fold")
    for step in steps:
        inputs = ", ".join(label(by_id[i]) for i in step.inputs) or "-"
        table.add_row(
            step.id[:8],
            step.kind.value,
            step.role,
            step.engine,
            inputs,
            step.asset_name.removeprefix(stem + "_") if stem else step.asset_name,
            usd(step.cost_usd),
            f"{step.latency_s:g}",
        )
    return table


def _step_details(console: Console, steps: list[Step]) -> None:
    for step in steps:
        console.print(f"\n  [bold]{step.id}[/] {step.kind.value} {step.role} -> {', '.join(step.outputs)}")
        console.print(f"    endpoint: {step.endpoint or 'local'}")
        for key, value in step.params.items():
            console.print(f"    {key}: {escape(str(value))}")
        for note in step.notes:
            console.print(f"    [yellow]note[/]: {escape(note)}")


def totals_view(console: Console, est: Estimate) -> None:
    table = Table(title="Steps by kind", title_justify="left")
    table.add_column("kind")
    table.add_column("steps", justify="right")
    table.add_column("cost", justify="right")
    for kind, count in est.steps_by_kind.items():
        table.add_row(kind, str(count), usd(est.cost_by_kind[kind]))
    table.add_row("[bold]total[/]", str(sum(est.steps_by_kind.values())), f"[bold]{usd(est.cost_usd)}[/]")
    console.print()
    console.print(table)


def critical_path_view(console: Console, plan: Plan, est: Estimate) -> None:
    chain = " -> ".join(label(plan.step(i)) for i in est.critical_path)
    console.print(
        f"\n[bold]Critical path[/] {duration(est.critical_path_s)} ({est.critical_path_s:g} s): {chain}"
    )
    console.print(
        f"Sequential (one step after another): {duration(est.sequential_s)} ({est.sequential_s:g} s)"
    )


def estimate_view(console: Console, plan: Plan, est: Estimate) -> None:
    table = Table(title=f"{plan.project} EP{plan.episode:03d}: cost per shot", title_justify="left")
    for column in ("shot", "approach", "engine", "paid calls", "cost"):
        table.add_column(column, justify="right" if column in {"shot", "paid calls", "cost"} else "left")
    for shot in plan.shots:
        paid = sum(1 for s in plan.steps if s.shot == shot.shot and s.cost_usd > 0)
        table.add_row(
            str(shot.shot),
            shot.approach,
            shot.engine,
            str(paid),
            usd(est.cost_by_shot.get(shot.shot, Decimal(0))),
        )
    episode_cost = est.cost_by_shot.get(None, Decimal(0))
    table.add_row("episode", "concat", "post", "0", usd(episode_cost))
    table.add_row(
        "[bold]total[/]", "", "", str(sum(c.calls for c in est.paid_calls)), f"[bold]{usd(est.cost_usd)}[/]"
    )
    console.print(table)
    calls = Table(title="Paid calls per endpoint", title_justify="left")
    for column in ("endpoint", "calls", "cost"):
        calls.add_column(column, justify="left" if column == "endpoint" else "right")
    for call in est.paid_calls:
        calls.add_row(call.endpoint, str(call.calls), usd(call.cost_usd))
    console.print()
    console.print(calls)
    critical_path_view(console, plan, est)
    ratio = est.sequential_s / est.critical_path_s if est.critical_path_s else 1.0
    console.print(f"Running in parallel could finish up to {ratio:.1f}x sooner than sequential.")
