"""A point-in-time picture of a run for `farm status` and `farm watch`: per shot and in total."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from decimal import Decimal

from farm.planning.naming import FIRST_TAKE
from farm.planning.plan import Step
from farm.runs.blocked import blocked_by
from farm.runs.budget import RunLedger, read_ledger
from farm.runs.keys import RunStatus, StepStatus
from farm.runs.review import review_states
from farm.runs.state import RunStore

FINAL_STATUSES = (RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED)
MANIFEST_GRACE_S = 30.0
"""How long a settled run may wait for its manifest before watchers stop waiting for it."""
DONE = (StepStatus.DONE, StepStatus.CACHED)


@dataclass(frozen=True)
class ShotProgress:
    shot: int | None
    approach: str
    total: int
    done: int
    state: str
    elapsed_s: float | None
    estimated_usd: Decimal
    spent_usd: Decimal
    """What the provider charged for this shot's finished steps (reused outputs cost nothing)."""
    activity: str = ""
    """What its running steps report from inside the render, e.g. "video 12/30"."""
    review: str = ""
    """Its review state in a review run (`farm.runs.review`), else ''."""
    take: int = FIRST_TAKE


@dataclass(frozen=True)
class Failure:
    shot: int | None
    label: str
    reason: str


@dataclass(frozen=True)
class RunProgress:
    run_id: str
    status: str
    title: str
    total: int
    counts: dict[str, int]
    elapsed_s: float
    estimated_usd: Decimal
    spent_usd: Decimal
    """What the run has cost so far, earlier takes included."""
    shots: list[ShotProgress] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in DONE)

    manifest: str | None = None
    settled_for_s: float = 0.0
    earlier_takes_usd: Decimal = Decimal(0)
    """What the steps that retakes replaced cost (part of `spent_usd`)."""
    ledger: RunLedger | None = None
    """The run's budget as admission counts it (`farm.runs.budget`)."""

    @property
    def waiting_for_budget(self) -> bool:
        """Nothing runs and every step still to start waits for the budget to be raised."""
        if self.ledger is None or not self.ledger.paused or self.status != RunStatus.RUNNING:
            return False
        running, queued = self.counts.get(StepStatus.RUNNING, 0), self.counts.get(StepStatus.QUEUED, 0)
        return running == 0 and queued <= self.ledger.held

    @property
    def awaiting_review(self) -> bool:
        """Nothing runs and held video steps wait for a reviewer: watching has nothing more to show."""
        return self.status == RunStatus.REVIEW

    @property
    def finished(self) -> bool:
        """Settled and its manifest written (or the worker that should write it is long gone)."""
        return self.status in FINAL_STATUSES and (
            self.manifest is not None or self.settled_for_s > MANIFEST_GRACE_S
        )


def snapshot(runs: RunStore, run_id: str) -> RunProgress:
    meta = runs.meta(run_id)
    steps = runs.steps(run_id)
    states = runs.states(run_id)
    info = runs.info(run_id)
    approaches = {int(k): str(v) for k, v in json.loads(meta.get("approaches", "{}")).items()}
    reviews = review_states(runs, run_id, meta, steps, states)
    takes = runs.takes(run_id)
    blocked = blocked_by(steps, states)
    shown = {step_id: StepStatus.BLOCKED if step_id in blocked else s for step_id, s in states.items()}
    replaced = sum((_actual(info.get(s.id, {})) for s in runs.history(run_id)), Decimal(0))
    shots = sorted({s.shot for s in steps.values()}, key=lambda n: (n is None, n or 0))
    created = float(meta.get("created_at", time.time()))
    ended = float(meta["finished_at"]) if meta.get("finished_at") else time.time()
    return RunProgress(
        run_id=run_id,
        status=meta.get("status", "unknown"),
        title=f'{meta.get("project", "")} EP{int(meta.get("episode", 0)):03d} "{meta.get("title", "")}"',
        total=len(steps),
        counts=dict(Counter(shown.values())),
        elapsed_s=ended - created,
        manifest=meta.get("manifest"),
        settled_for_s=time.time() - ended if meta.get("finished_at") else 0.0,
        estimated_usd=sum((s.cost_usd for s in steps.values()), Decimal(0)),
        spent_usd=replaced
        + sum((_actual(info.get(i, {})) for i in steps if states.get(i) in DONE), Decimal(0)),
        earlier_takes_usd=replaced,
        ledger=read_ledger(runs, run_id, states),
        shots=[
            replace(
                _shot(n, [s for s in steps.values() if s.shot == n], shown, info, approaches, reviews),
                take=takes.get(n, FIRST_TAKE) if n is not None else FIRST_TAKE,
            )
            for n in shots
        ],
        failures=[
            Failure(s.shot, f"{s.kind.value} {s.role}", str(info.get(s.id, {}).get("error", "")))
            for s in steps.values()
            if states.get(s.id) == StepStatus.FAILED
        ],
    )


def _shot(
    number: int | None,
    steps: list[Step],
    states: dict[str, str],
    info: dict[str, dict[str, object]],
    approaches: dict[int, str],
    reviews: dict[int, str],
) -> ShotProgress:
    mine = [states.get(s.id, "") for s in steps]
    done = sum(1 for s in mine if s in DONE)
    starts = [float(str(info[s.id]["started_at"])) for s in steps if "started_at" in info.get(s.id, {})]
    ends = [float(str(info[s.id]["finished_at"])) for s in steps if "finished_at" in info.get(s.id, {})]
    running = any(s in (StepStatus.RUNNING, StepStatus.QUEUED) for s in mine)
    elapsed = None
    if starts:
        elapsed = (time.time() if running or not ends else max(ends)) - min(starts)
    return ShotProgress(
        shot=number,
        approach=approaches.get(number, "episode") if number is not None else "episode",
        total=len(steps),
        done=done,
        state=_shot_state(mine, done),
        elapsed_s=elapsed,
        estimated_usd=sum((s.cost_usd for s in steps), Decimal(0)),
        spent_usd=sum(
            (_actual(info.get(s.id, {})) for s, st in zip(steps, mine, strict=True) if st in DONE), Decimal(0)
        ),
        activity=", ".join(
            _activity(s, info.get(s.id, {}))
            for s, st in zip(steps, mine, strict=True)
            if st == StepStatus.RUNNING
        ).strip(", "),
        review=reviews.get(number, "") if number is not None else "",
    )


def _activity(step: Step, info: dict[str, object]) -> str:
    progress = info.get("progress")
    if not isinstance(progress, dict) or "value" not in progress:
        return ""
    return f"{step.kind.value} {progress['value']}/{progress.get('max', '?')}"


def _shot_state(states: list[str], done: int) -> str:
    if StepStatus.FAILED in states:
        return StepStatus.FAILED
    if done == len(states):
        return StepStatus.DONE
    if StepStatus.RUNNING in states or StepStatus.QUEUED in states:
        return StepStatus.RUNNING
    if StepStatus.HELD in states:
        return StepStatus.HELD
    if StepStatus.BLOCKED in states:
        return StepStatus.BLOCKED
    if StepStatus.CANCELLED in states:
        return StepStatus.CANCELLED
    return StepStatus.WAITING


def _actual(info: dict[str, object]) -> Decimal:
    return Decimal(str(info.get("actual_cost_usd", "0")))
