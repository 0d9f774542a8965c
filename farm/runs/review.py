"""The review gate: a review run renders keyframes and their upscales, then holds each shot's video steps
until a reviewer approves the shot. A keyframe costs cents and seconds, a clip fifteen cents and minutes,
so this is the cheapest point to catch a bad shot.

A shot's review state is `pending` (its keyframes are still rendering), `generated` (everything before
its video is there), then a reviewer's decision: `needs_review`, `approved` or `retake`.
"""

from __future__ import annotations

from dataclasses import dataclass

from farm.planning.plan import Plan, Step, StepKind
from farm.runs.dispatch import Sender, release
from farm.runs.state import SETTLED, RunStore

GATED_KINDS = (StepKind.VIDEO, StepKind.KEN_BURNS, StepKind.HOLD)
"""What a review run holds: every step that turns a shot's frames into its clip."""
DECISIONS = ("needs_review", "approved", "retake")


class UnknownShots(ValueError):
    """Shots the run does not have (all of them named at once)."""


@dataclass(frozen=True)
class Released:
    shots: list[int]
    steps: list[str]
    outcome: str
    """'' while the run goes on; the run's new status when approving settled it."""


def gated_steps(plan: Plan) -> list[str]:
    return [s.id for s in plan.steps if s.kind in GATED_KINDS]


def shot_states(runs: RunStore, run_id: str) -> dict[int, str]:
    """Every shot's review state (empty for a run submitted without review)."""
    meta = runs.meta(run_id)
    return review_states(runs, run_id, meta, runs.steps(run_id), runs.states(run_id))


def review_states(
    runs: RunStore, run_id: str, meta: dict[str, str], steps: dict[str, Step], states: dict[str, str]
) -> dict[int, str]:
    """`shot_states` from a run's metadata, steps and states already read (progress polls them anyway)."""
    if meta.get("review") != "1":
        return {}
    decisions = runs.reviews(run_id)
    result: dict[int, str] = {}
    for shot in sorted({s.shot for s in steps.values() if s.shot is not None}):
        before = [s for s in steps.values() if s.shot == shot and _before_gate(s)]
        if shot in decisions:
            result[shot] = decisions[shot]
        elif all(states.get(s.id) in SETTLED for s in before):
            result[shot] = "generated"
        else:
            result[shot] = "pending"
    return result


def approve(runs: RunStore, sender: Sender, run_id: str, shots: list[int]) -> Released:
    """Mark shots approved and release their held video steps (the others run when their inputs are done)."""
    steps = runs.steps(run_id)
    _check_shots(steps, shots)
    for shot in shots:
        runs.mark_review(run_id, shot, "approved")
    wanted, gated = set(shots), runs.gated(run_id)
    ids = [s.id for s in steps.values() if s.shot in wanted and s.id in gated]
    completion = runs.approve(run_id, ids)
    backend = runs.meta(run_id)["backend"]
    release(runs, sender, run_id, [steps[i] for i in completion.released], backend)
    return Released(sorted(wanted), completion.released, completion.outcome)


def mark(runs: RunStore, run_id: str, shots: list[int], decision: str) -> None:
    """Record a decision that releases nothing (needs_review, retake)."""
    if decision not in DECISIONS:
        raise ValueError(f"a decision is one of {', '.join(DECISIONS)}, not {decision!r}")
    _check_shots(runs.steps(run_id), shots)
    for shot in shots:
        runs.mark_review(run_id, shot, decision)


def render_video(runs: RunStore, sender: Sender, run_id: str) -> tuple[Released, list[int]]:
    """Release every approved shot still held; return that and the shots still waiting for approval."""
    states = shot_states(runs, run_id)
    approved = [shot for shot, state in states.items() if state == "approved"]
    released = approve(runs, sender, run_id, approved) if approved else Released([], [], "")
    return released, [shot for shot, state in states.items() if state != "approved"]


def _before_gate(step: Step) -> bool:
    return step.kind not in GATED_KINDS and step.kind is not StepKind.CONCAT


def _check_shots(steps: dict[str, Step], shots: list[int]) -> None:
    known = {s.shot for s in steps.values() if s.shot is not None}
    unknown = sorted(set(shots) - known)
    if unknown:
        names = ", ".join(map(str, unknown))
        raise UnknownShots(f"the run has no shot {names}; its shots: {', '.join(map(str, sorted(known)))}")
