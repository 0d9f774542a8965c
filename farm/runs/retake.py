"""Retakes: take T+1 of a shot with new prompts, a new seed or strength, re-rendering only what changes.

A run keeps the storyboard it was planned from. A retake edits that shot in it, checks the result as if it
were a new file, and plans the episode again. Step ids are content addresses, so the new plan's steps that
the run already has are the same steps, reused as they are; the others (the shot's changed steps, the shots
that continue from it, the episode concat) are new, named with the next take, and run. The steps they
replace stay in the run's history with their files on disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from farm.episode.validate import Episode, check_episode
from farm.planning.estimate import remaining_path_s
from farm.planning.naming import FIRST_TAKE
from farm.planning.plan import Plan, Step, build_plan, derive_seed
from farm.runs.dispatch import Sender, release
from farm.runs.keys import RunStatus, StepStatus
from farm.runs.review import GATED_KINDS, UnknownShots
from farm.runs.state import Extension, RunStore

PROMPT_FIELDS = {
    "first": "first_frame",
    "last": "last_frame",
    "hero": "hero_frame",
    "motion": "motion_prompt",
}
RESTARTED = (StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SUPERSEDED)
"""States in which a step of the new plan runs again although the run has it."""


class RetakeError(ValueError):
    """The retake cannot be made (nothing changes, the run was cancelled, it keeps no storyboard)."""


@dataclass(frozen=True)
class Changes:
    """What a retake changes in its shot; nothing at all means a new seed."""

    prompts: dict[str, str] = field(default_factory=dict)
    """first | last | hero | motion -> new prose."""
    seed: int | None = None
    strength: float | None = None

    def __post_init__(self) -> None:
        unknown = sorted(set(self.prompts) - set(PROMPT_FIELDS))
        if unknown:
            raise ValueError(f"unknown prompt(s) {', '.join(unknown)}; known: {', '.join(PROMPT_FIELDS)}")

    @property
    def empty(self) -> bool:
        return not self.prompts and self.seed is None and self.strength is None


@dataclass(frozen=True)
class RetakePlan:
    run_id: str
    shots: list[int]
    """The shots retaken on purpose."""
    takes: dict[int, int]
    """Every shot that gets a new take (the retaken ones and those continuing from them) -> its new take."""
    cut: int
    """The episode cut the retake produces (a new one whenever any clip changes)."""
    rerun: list[Step]
    """What will run: the new steps, plus any step of the plan that had failed."""
    reused: int
    """Steps of the new plan the run has already rendered."""
    seeds: dict[int, int]
    """The seeds the retake drew for shots it was given no change for."""
    extension: Extension

    @property
    def cost_usd(self) -> Decimal:
        """At most this (a step whose output the store already has is reused for nothing)."""
        return sum((s.cost_usd for s in self.rerun), Decimal(0))


def run_source(episode: Episode) -> dict[str, str]:
    """What a run keeps of its input so that a retake can plan it again."""
    storyboard, registry = episode.documents
    return {
        "storyboard": json.dumps(storyboard, ensure_ascii=False),
        "registry": json.dumps(registry, ensure_ascii=False),
        "storyboard_file": str(episode.storyboard_file),
        "registry_file": str(episode.registry_file),
    }


def plan_retake(runs: RunStore, run_id: str, wanted: Mapping[int, Changes]) -> RetakePlan:
    """Work out a retake of one or more shots (in one new cut) without changing anything. Raises
    UnknownShots, RetakeError or the storyboard's InputError (the edited shots checked like a file)."""
    meta, source = runs.meta(run_id), runs.source(run_id)
    if meta.get("status") in (RunStatus.CANCELLING, RunStatus.CANCELLED):
        raise RetakeError(f"run {run_id} was cancelled: submit the storyboard again instead")
    if "storyboard" not in source:
        raise RetakeError(f"run {run_id} keeps no storyboard to plan again (a previz run, or an older one)")
    doc: dict[str, Any] = json.loads(source["storyboard"])
    takes, cut = runs.takes(run_id), int(meta.get("cut", "1"))
    entries = _shot_entries(doc, sorted(wanted))
    drawn: dict[int, int] = {}
    for shot, changes in sorted(wanted.items()):
        if changes.empty:
            take = takes.get(shot, FIRST_TAKE) + 1
            drawn[shot] = derive_seed(doc["project"], doc["episode"], shot, f"take {take}")
        _apply(entries[shot], Changes(seed=drawn[shot]) if shot in drawn else changes)
    episode = check_episode(
        doc, json.loads(source["registry"]), Path(source["storyboard_file"]), Path(source["registry_file"])
    )
    known, states = runs.step_ids(run_id), runs.states(run_id)
    trial = build_plan(episode, takes, cut)
    fresh = [s for s in trial.steps if s.id not in known]
    changed = sorted({s.shot for s in fresh if s.shot is not None})
    for shot in sorted(set(wanted) - set(changed)):
        take = takes.get(shot, FIRST_TAKE)
        strength = wanted[shot].strength is not None
        hint = " (--strength acts only on frames made from the shot's first frame)" if strength else ""
        raise RetakeError(f"nothing changes: take T{take:02d} of shot {shot} already renders this{hint}")
    new_takes = {n: takes.get(n, FIRST_TAKE) + 1 for n in changed}
    new_cut = cut + 1 if any(s.shot is None for s in fresh) else cut
    plan = build_plan(episode, {**takes, **new_takes}, new_cut)
    rerun = [s for s in plan.steps if s.id not in known or states.get(s.id) in RESTARTED]
    extension = Extension(
        order=[s.id for s in plan.steps],
        new_steps=[s for s in plan.steps if s.id not in known],
        inputs={s.id: list(s.inputs) for s in plan.steps},
        gate=_gate(runs, run_id, meta, plan, changed),
        shots=changed,
        takes=new_takes,
        storyboard=json.dumps(doc, ensure_ascii=False),
        cut=new_cut,
        remaining=remaining_path_s(plan),
    )
    reused = len(plan.steps) - len(rerun)
    return RetakePlan(run_id, sorted(wanted), new_takes, new_cut, rerun, reused, drawn, extension)


def retake(runs: RunStore, sender: Sender, run_id: str, wanted: Mapping[int, Changes]) -> RetakePlan:
    """Make the retake: switch the run to the new plan and send what can start now."""
    planned = plan_retake(runs, run_id, wanted)
    completion = runs.extend(run_id, planned.extension)
    if completion.duplicate:
        raise RetakeError(f"run {run_id} was cancelled meanwhile; nothing changed")
    released = [runs.step(run_id, i) for i in completion.released]  # a step may have failed since planning
    release(runs, sender, run_id, released, runs.meta(run_id)["backend"])
    return planned


def marked_for_retake(runs: RunStore, run_id: str) -> list[int]:
    """Shots a reviewer marked `retake` on the dailies page and not retaken since."""
    return sorted(shot for shot, decision in runs.reviews(run_id).items() if decision == "retake")


def _shot_entries(doc: dict[str, Any], shots: list[int]) -> dict[int, dict[str, Any]]:
    entries = {e.get("shot"): e for e in doc.get("shots", []) if isinstance(e, dict)}
    unknown = [str(n) for n in shots if n not in entries]
    if unknown or not shots:
        known = ", ".join(str(n) for n in entries)
        raise UnknownShots(f"the run has no shot {', '.join(unknown) or '(none named)'}; its shots: {known}")
    return {n: entries[n] for n in shots}


def _apply(entry: dict[str, Any], changes: Changes) -> None:
    for name, prose in changes.prompts.items():
        entry[PROMPT_FIELDS[name]] = prose
    if changes.seed is not None:
        entry["seed"] = changes.seed
    if changes.strength is not None:
        entry["img2img_strength"] = changes.strength


def _gate(runs: RunStore, run_id: str, meta: dict[str, str], plan: Plan, changed: list[int]) -> list[str]:
    """In a review run, a new take's video waits for approval again; an approved shot's stays released."""
    if meta.get("review") != "1":
        return []
    approved = {n for n, decision in runs.reviews(run_id).items() if decision == "approved"}
    return [
        s.id for s in plan.steps if s.kind in GATED_KINDS and (s.shot in changed or s.shot not in approved)
    ]
