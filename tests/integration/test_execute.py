"""The step executor against a real redis-server and a real artifact store (no Celery needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from farm.config.settings import Settings
from farm.episode.validate import load_episode
from farm.planning.plan import Plan, Step, build_plan
from farm.runs import dispatch
from farm.runs.scheduler import Scheduler
from farm.runs.state import RunStore
from farm.storage.stores import LocalStore
from tasks.context import WorkerContext
from tasks.execute import RetryLater, StepFailed, execute
from workers.base import StepJob, StepResult
from workers.gpu.pool import PoolFull
from workers.local import LocalBackend


class CountingEngine:
    """The embedded engine, counting the jobs it is given."""

    name = "local"

    def __init__(self) -> None:
        self.jobs: list[StepJob] = []
        self.inner = LocalBackend()

    def run(self, job: StepJob) -> StepResult:
        self.jobs.append(job)
        return self.inner.run(job)


class ListSender:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, run_id: str, step: Step, queue: str) -> None:
        self.sent.append((run_id, step.id, queue))

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        raise AssertionError("not expected")


def make_context(client: redis.Redis, tmp_path: Path) -> tuple[WorkerContext, CountingEngine]:
    settings = Settings(home=tmp_path / "home", max_deliveries=3)
    engine = CountingEngine()
    ctx = WorkerContext(
        settings,
        RunStore(client),
        LocalStore(tmp_path / "store"),
        ListSender(),  # type: ignore[arg-type]
        Scheduler(client),
        {"local": engine},
    )
    return ctx, engine


def submit(ctx: WorkerContext, plan: Plan, tmp_path: Path) -> str:
    return dispatch.submit(
        ctx.runs,
        ctx.sender,
        plan,
        backend="local",
        namespace="embedded",
        output=tmp_path / "out",
        storyboard="sample.json",
    )


def held_shot_plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


@pytest.mark.chaos
def test_a_step_whose_worker_keeps_dying_fails_with_that_reason(
    client: redis.Redis, tmp_path: Path, sample_path: Path
) -> None:
    ctx, engine = make_context(client, tmp_path)
    plan = held_shot_plan(sample_path)
    run_id = submit(ctx, plan, tmp_path)
    root = plan.steps[0].id
    for _ in range(3):  # three deliveries whose worker died before finishing
        assert ctx.runs.begin(run_id, root) > 0
    with pytest.raises(StepFailed, match="died 3 times"):
        execute(ctx, run_id, root)
    assert ctx.runs.states(run_id)[root] == "failed"
    assert "died 3 times" in ctx.runs.info(run_id)[root]["error"]
    assert engine.jobs == [], "a step over the delivery cap is not run again"


def test_outputs_already_in_the_store_are_reused_not_rendered(
    client: redis.Redis, tmp_path: Path, sample_path: Path
) -> None:
    ctx, engine = make_context(client, tmp_path)
    plan = held_shot_plan(sample_path)
    root = plan.steps[0]
    first = submit(ctx, plan, tmp_path)
    execute(ctx, first, root.id)
    assert len(engine.jobs) == 1
    second = submit(ctx, plan, tmp_path)
    completion = execute(ctx, second, root.id)
    assert completion is not None and completion.released
    assert len(engine.jobs) == 1, "the second run paid for nothing"
    assert ctx.runs.states(second)[root.id] == "cached"
    assert (tmp_path / "out" / "leviathan" / "ep_001" / root.asset_name).exists()


def test_an_engine_error_fails_the_step_with_its_message(
    client: redis.Redis, tmp_path: Path, sample_path: Path
) -> None:
    ctx, _ = make_context(client, tmp_path)
    plan = held_shot_plan(sample_path)
    run_id = submit(ctx, plan, tmp_path)
    upscale = next(s for s in plan.steps if s.inputs and s.inputs[0] == plan.steps[0].id)
    ctx.runs.begin(run_id, plan.steps[0].id)
    ctx.runs.complete(run_id, plan.steps[0].id)  # marked done, but its output was never stored
    with pytest.raises(StepFailed, match="FileNotFoundError"):
        execute(ctx, run_id, upscale.id)
    assert ctx.runs.states(run_id)[upscale.id] == "failed"


class FullPoolBackend:
    """Every pod busy, every time: the step must wait, not fail."""

    name = "local"

    def run(self, job: StepJob) -> StepResult:
        raise PoolFull("every GPU pod is busy", retry_after_s=5.0)


def test_waiting_for_a_free_pod_never_uses_up_the_steps_retries(
    client: redis.Redis, tmp_path: Path, sample_path: Path
) -> None:
    ctx, _ = make_context(client, tmp_path)
    ctx.backends["local"] = FullPoolBackend()
    plan = held_shot_plan(sample_path)
    run_id = submit(ctx, plan, tmp_path)
    root = plan.steps[0].id
    attempts = ctx.settings.fal_max_retries + 3
    for _ in range(attempts):
        with pytest.raises(RetryLater) as waited:
            execute(ctx, run_id, root)
        assert waited.value.countdown == 5.0
    assert ctx.runs.states(run_id)[root] == "queued"
    assert ctx.runs.counters(run_id)[root] == {"cap_waits": attempts}
    assert "busy" in ctx.runs.info(run_id)[root]["last_wait_reason"]
