"""What every chaos case checks once its fault has played out, and the small episodes they run.

A chaos case passes only if the run settled with nothing lost (no step left queued, running or held: a
step still `waiting` must be downstream of a failed one), nothing half-written (no temp file, every file
whole) and, where money is involved, one paid submit per paid step. These helpers say so with the run's
counts in the message, so a failure on a loaded machine shows where the run stood.
"""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from PIL import Image

from farm.planning.plan import Plan
from farm.runs.progress import snapshot
from tests.conftest import Doc
from tests.integration.conftest import FarmHandle
from tests.integration.test_fal_farm import variant, write_episode
from workers.media import probe

T = TypeVar("T")
ENDED = frozenset({"done", "cached", "failed", "cancelled"})
TEMP_MARKERS = (".partial", ".tmp", ".manifest-")
"""Names of files still being written: media's `.partial`, the store's `.<name>.<hex>.tmp`, a manifest's
mkstemp file."""


def two_shot_episode(folder: Path, sample_doc: Doc, registry_doc: Doc, project: str, mark: str = "") -> Path:
    """Shot 6 of the sample (a still held for 2 s: t2i, upscale, hold) and a copy of it as shot 7 whose
    first frame starts with `mark` (an emulator's fault keyword), cut into one episode: the smallest run
    with paid steps, a branch a fault can hit alone, and a concat that needs both."""
    doc = variant(sample_doc, project)
    shot = next(s for s in doc["shots"] if s["shot"] == 6)
    second = {**copy.deepcopy(shot), "shot": 7, "first_frame": f"{mark} {shot['first_frame']}".strip()}
    doc["shots"] = [shot, second]
    return write_episode(folder, doc, registry_doc)


def wait_until(
    condition: Callable[[], T], what: str, show: Callable[[], object], timeout_s: float = 180
) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout_s` saying what was awaited
    and where things stood (`show`)."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not after {timeout_s:g} s; {show()}"
        time.sleep(0.1)
    return value


def run_state(handle: FarmHandle, run_id: str) -> str:
    progress = snapshot(handle.runs, run_id)
    return f"run {run_id} {progress.status}: {progress.counts}; failures {progress.failures}"


def downstream(plan: Plan, roots: Iterable[str]) -> set[str]:
    """Every step that needs one of `roots`' outputs, directly or through other steps."""
    consumers = plan.consumers()
    found: set[str] = set()
    todo = list(roots)
    while todo:
        for step in consumers.get(todo.pop(), []):
            if step.id not in found:
                found.add(step.id)
                todo.append(step.id)
    return found


def assert_nothing_lost(handle: FarmHandle, run_id: str, plan: Plan) -> None:
    """Every step ended (done, cached, failed, cancelled) or waits on a failed input: none is left queued,
    running or held, which is what a lost step looks like."""
    states = handle.runs.states(run_id)
    assert set(states) == {s.id for s in plan.steps}
    blocked = downstream(plan, [s for s, state in states.items() if state == "failed"])
    stuck = {s: state for s, state in states.items() if state not in ENDED and s not in blocked}
    waiting = {s: state for s, state in states.items() if s in blocked and state != "waiting"}
    assert not stuck and not waiting, f"steps lost: {stuck or waiting}; {Counter(states.values())}"


def assert_whole_files(*roots: Path) -> None:
    """No temp file anywhere under `roots`, and every file there whole: images decode, clips are H.264 with
    frames, JSON parses. Returns nothing; fails naming the first bad file."""
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                assert not any(m in path.name for m in TEMP_MARKERS), f"half-written file left: {path}"
                assert_whole(path)


def assert_whole(path: Path) -> None:
    suffix = path.suffix.lower()
    if suffix in (".png", ".jpg", ".jpeg"):
        with Image.open(path) as image:
            image.load()
    elif suffix == ".mp4":
        clip = probe(path)
        assert clip.codec == "h264" and clip.frames > 0, f"{path}: {clip}"
    elif suffix == ".json":
        json.loads(path.read_text("utf-8"))


def started_part(plan: Plan, states: dict[str, str]) -> Plan:
    """The plan cut to the steps that started (not still waiting): what `assert_one_submit_per_paid_step`
    should find paid for once each, when a failed branch kept the rest from starting."""
    return plan.model_copy(update={"steps": tuple(s for s in plan.steps if states[s.id] != "waiting")})
