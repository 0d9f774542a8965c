"""The fal engine against the emulator, one step at a time: submit-once, resume, refusals, the cap."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from emulators.fal_server import FalEmulator, Faults
from farm.config.settings import Settings
from farm.episode.validate import load_episode
from farm.planning.plan import Plan, Step, StepKind, build_plan
from workers.base import ContentPolicyError, StepJob, TransientError
from workers.fal.backend import CapReached, FalBackend
from workers.fal.provider_cap import ProviderCap
from workers.fal.request_book import RequestBook

KEY = "engine-test-key"


@pytest.fixture
def emulator() -> Iterator[FalEmulator]:
    with FalEmulator(latency_scale=0.01, key=KEY) as emu:
        yield emu


@pytest.fixture
def engine(emulator: FalEmulator, client: redis.Redis, tmp_path: Path) -> FalBackend:
    settings = Settings(home=tmp_path, fal_key=SecretStr(KEY), fal_url=emulator.url, fal_poll_interval_s=0.05)
    return FalBackend(settings, RequestBook(client, "fal"), ProviderCap(client, "fal", limit=2))


@pytest.fixture(scope="module")
def plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


def t2i_job(plan: Plan, tmp_path: Path, prompt_suffix: str = "") -> StepJob:
    step: Step = next(s for s in plan.steps if s.kind == StepKind.T2I and s.shot == 1)
    params = {**step.params, "prompt": step.params["prompt"] + prompt_suffix, "width": 64, "height": 112}
    out = tmp_path / "out.png"
    return StepJob(
        step.id + prompt_suffix.strip(), "t2i", step.engine, step.endpoint, params, [], [out], step.operation
    )


def test_a_step_is_submitted_once_and_its_output_checked(
    engine: FalBackend, emulator: FalEmulator, plan: Plan, tmp_path: Path
) -> None:
    job = t2i_job(plan, tmp_path)
    result = engine.run(job)
    assert job.outputs[0].stat().st_size > 0
    assert result.metadata["request_id"] == emulator.ledger()[0]["request_id"]
    assert float(result.cost_usd) == 0.005
    engine.run(job)  # a redelivery after success resumes the stored request
    assert len(emulator.ledger()) == 1


def test_a_refused_submit_is_not_retried_by_the_client_and_is_released(
    engine: FalBackend, emulator: FalEmulator, plan: Plan, tmp_path: Path
) -> None:
    emulator.set_faults(Faults(submit_429_rate=1.0, retry_after_s=7))
    job = t2i_job(plan, tmp_path)
    with pytest.raises(TransientError) as refused:
        engine.run(job)
    assert refused.value.retry_after_s == 7
    assert emulator.calls().get("submit") == 1, "fal-client must not retry a submit on its own"
    assert engine.book.get(job.step_id) is None and engine.cap.in_flight() == 0
    emulator.set_faults(Faults())
    engine.run(job)
    assert len(emulator.ledger()) == 1


@pytest.mark.chaos
def test_a_dropped_submit_response_keeps_the_claim_instead_of_submitting_again(
    engine: FalBackend, emulator: FalEmulator, plan: Plan, tmp_path: Path
) -> None:
    emulator.set_faults(Faults(drop_submit_response_rate=1.0))
    job = t2i_job(plan, tmp_path)
    with pytest.raises(TransientError):
        engine.run(job)
    with pytest.raises(TransientError, match="another attempt"):
        engine.run(job)  # within the grace period nobody submits again
    assert len(emulator.ledger()) == 1
    record = engine.book.get(job.step_id)
    assert record is not None and record.state == "claimed"


def test_content_policy_and_nsfw_flags_are_refusals(engine: FalBackend, plan: Plan, tmp_path: Path) -> None:
    with pytest.raises(ContentPolicyError, match="refused"):
        engine.run(t2i_job(plan, tmp_path, " FORBIDDENWORD"))
    with pytest.raises(ContentPolicyError, match="has_nsfw_concepts"):
        engine.run(t2i_job(plan, tmp_path, " NSFWFLAG"))


def test_the_cap_holds_steps_back_without_submitting(
    engine: FalBackend, emulator: FalEmulator, plan: Plan, tmp_path: Path
) -> None:
    engine.cap.acquire("someone-else-1")
    engine.cap.acquire("someone-else-2")
    with pytest.raises(CapReached):
        engine.run(t2i_job(plan, tmp_path))
    assert emulator.ledger() == []
    engine.cap.release("someone-else-1")
    engine.run(t2i_job(plan, tmp_path))
    assert len(emulator.ledger()) == 1
