"""Which waiting steps can no longer start, and which failed steps stand in their way.

A step starts when all of its inputs are done; one whose input failed (directly, or further up the chain)
would wait for ever. The run's state keeps it `waiting` (a retake or a retry of the failed step can still
release it), so this is worked out where the run is shown: the manifest, `farm status`.
"""

from __future__ import annotations

from collections.abc import Mapping
from graphlib import TopologicalSorter

from farm.planning.plan import Step
from farm.runs.keys import StepStatus


def blocked_by(steps: Mapping[str, Step], states: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    """For each waiting step with a failed step upstream: those failed steps, in plan order."""
    order = TopologicalSorter({i: [d for d in s.inputs if d in steps] for i, s in steps.items()})
    position = {step_id: n for n, step_id in enumerate(steps)}
    culprits: dict[str, set[str]] = {}
    for step_id in order.static_order():
        found: set[str] = set()
        for dep in steps[step_id].inputs:
            if states.get(dep) == StepStatus.FAILED:
                found.add(dep)
            found |= culprits.get(dep, set())
        if found:
            culprits[step_id] = found
    return {
        step_id: tuple(sorted(found, key=position.__getitem__))
        for step_id, found in culprits.items()
        if states.get(step_id) == StepStatus.WAITING
    }
