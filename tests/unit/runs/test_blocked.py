"""Which waiting steps a failure stops, worked out from the plan's inputs."""

from __future__ import annotations

from pathlib import Path

from farm.episode.validate import load_episode
from farm.planning.plan import build_plan
from farm.runs.blocked import blocked_by


def test_every_waiting_step_below_a_failure_is_blocked_by_it_and_nothing_else_is(sample_path: Path) -> None:
    plan = build_plan(load_episode(sample_path))
    steps = {s.id: s for s in plan.steps}
    first, second = (next(s for s in plan.steps if s.shot == n and not s.inputs) for n in (1, 2))
    below: dict[str, set[str]] = {first.id: set(), second.id: set()}
    for step in plan.steps:  # plan order puts every step after its inputs
        for failed, seen in below.items():
            if failed in step.inputs or seen & set(step.inputs):
                seen.add(step.id)
    states = {s.id: "waiting" for s in plan.steps}
    states[first.id] = states[second.id] = "failed"
    episode = plan.steps[-1].id
    states[next(iter(below[second.id] - below[first.id] - {episode}))] = "running"  # started before

    found = blocked_by(steps, states)
    expected = {
        i: tuple(f for f in (first.id, second.id) if i in below[f])
        for i in below[first.id] | below[second.id]
        if states[i] == "waiting"
    }
    assert found == expected
    assert found[episode] == (first.id, second.id), "both failures, in plan order"
    assert blocked_by(steps, {s.id: "waiting" for s in plan.steps}) == {}, "no failure, nothing blocked"
