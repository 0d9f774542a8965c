"""What every backend promises the task layer, checked the same way on each: local, fal and comfyui.

The task layer hands a backend local input files and output paths and reacts to what comes back: files of
the planned size, a StepResult, or an exception from the `BackendError` tree that says whether to retry.
Steps are the project's own example episode's, shrunk to thumbnail sizes so the suite stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest
from PIL import Image, UnidentifiedImageError

from farm.episode.validate import load_episode
from farm.planning.plan import Step, StepKind, build_plan
from tests.conftest import EXAMPLE
from tests.contract.conftest import BackendUnderTest
from workers.backends import BACKENDS
from workers.base import BackendError, CapacityWait, PermanentError, StepJob, StepResult

SIZE = {"width": 96, "height": 160}
SOURCE_SIZE = (48, 80)
"""An upscale's source: smaller than SIZE with the same aspect ratio, as the plan's sources are."""


@cache
def plan_step(kind: StepKind) -> Step:
    """The example episode's first step of `kind`: a real engine card, endpoint, operation and params."""
    return next(s for s in build_plan(load_episode(EXAMPLE)).steps if s.kind == kind)


def job_for(kind: StepKind, step_id: str, folder: Path, inputs: list[Path]) -> StepJob:
    step = plan_step(kind)
    out = folder / "out" / f"{kind.value}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {**step.params, **SIZE}
    return StepJob(step_id, kind.value, step.engine, step.endpoint, params, inputs, [out], step.operation)


def source_image(folder: Path, size: tuple[int, int] = SOURCE_SIZE) -> Path:
    path = folder / "in" / "source.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (40, 90, 160)).save(path)
    return path


def image_job(kind: StepKind, step_id: str, folder: Path) -> StepJob:
    inputs = [] if kind == StepKind.T2I else [source_image(folder)]
    return job_for(kind, step_id, folder, inputs)


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        image.verify()  # a whole, decodable file, not just a readable header
    with Image.open(path) as image:
        return image.size


def test_its_name_is_the_one_the_routing_table_uses(backend: BackendUnderTest) -> None:
    """Routing and the manifest find a backend by `name`; it must be its key in BACKENDS."""
    assert backend.name in BACKENDS


@pytest.mark.parametrize("kind", [StepKind.T2I, StepKind.IMG2IMG, StepKind.UPSCALE], ids=lambda k: k.value)
def test_an_image_step_writes_a_whole_image_of_the_planned_size(
    backend: BackendUnderTest, kind: StepKind, step_id: str, tmp_path: Path
) -> None:
    """Later steps and the edit are planned around exact sizes; every backend must deliver them."""
    job = image_job(kind, step_id, tmp_path)
    result = backend.backend.run(job)
    assert size_of(job.outputs[0]) == (SIZE["width"], SIZE["height"])
    assert isinstance(result, StepResult)
    assert isinstance(result.cost_usd, Decimal) and result.cost_usd >= 0
    assert isinstance(result.metadata, dict)
    assert sorted(p.name for p in job.outputs[0].parent.iterdir()) == [job.outputs[0].name], "no leftovers"


def test_running_a_step_again_neither_renders_nor_pays_for_it_twice(
    backend: BackendUnderTest, step_id: str, tmp_path: Path
) -> None:
    """A redelivered task runs the same step again: it must come back with the same output, from the
    provider's earlier work where the provider bills (fal's request book, the pod's ComfyUI history),
    and for nothing where nothing is billed (the embedded engine renders again, byte for byte)."""
    job = image_job(StepKind.T2I, step_id, tmp_path)
    first = backend.backend.run(job)
    produced = job.outputs[0].read_bytes()
    job.outputs[0].unlink()  # a new worker starts without the old one's scratch files
    again = backend.backend.run(job)
    assert job.outputs[0].read_bytes() == produced
    if backend.renders is None:
        assert first.cost_usd == again.cost_usd == 0
    else:
        assert backend.renders(job) == 1, "the provider ran the step once"
    if backend.resumed_key is not None:
        assert not first.metadata.get(backend.resumed_key)
        assert again.metadata[backend.resumed_key] is True


def test_a_provider_at_capacity_makes_the_step_wait_without_submitting_it(
    backend: BackendUnderTest, step_id: str, tmp_path: Path
) -> None:
    """A full account cap or pod pool is not a failure: CapacityWait sends the step back with a wait
    that does not use up one of its retries, and nothing is submitted (so nothing is paid) meanwhile."""
    if backend.saturate is None:
        pytest.skip("the embedded engine renders inside the worker itself: it has no capacity to run out of")
    job = image_job(StepKind.T2I, step_id, tmp_path)
    with backend.saturate(), pytest.raises(CapacityWait) as caught:
        backend.backend.run(job)
    assert caught.value.retry_after_s is not None and caught.value.retry_after_s > 0
    assert backend.renders is not None and backend.renders(job) == 0
    assert not job.outputs[0].exists()
    backend.backend.run(job)  # once capacity frees up the same step goes through
    assert backend.renders(job) == 1


# failures ----------------------------------------------------------------------------------------------


def missing_input(kind: StepKind) -> Callable[[str, Path], StepJob]:
    return lambda step_id, folder: job_for(kind, step_id, folder, [folder / "in" / "never-written.png"])


def unreadable_input(kind: StepKind) -> Callable[[str, Path], StepJob]:
    def build(step_id: str, folder: Path) -> StepJob:
        garbage = folder / "in" / "truncated.png"
        garbage.parent.mkdir(parents=True, exist_ok=True)
        garbage.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing an image decoder could use")
        return job_for(kind, step_id, folder, [garbage])

    return build


def without_prompt(step_id: str, folder: Path) -> StepJob:
    job = job_for(StepKind.T2I, step_id, folder, [])
    return replace(job, params={k: v for k, v in job.params.items() if k != "prompt"})


def unknown_kind(step_id: str, folder: Path) -> StepJob:
    return replace(job_for(StepKind.T2I, step_id, folder, []), kind="hologram", endpoint=None)


FAILURES: dict[str, Callable[[str, Path], StepJob]] = {
    "img2img-missing-input": missing_input(StepKind.IMG2IMG),
    "upscale-missing-input": missing_input(StepKind.UPSCALE),
    "img2img-unreadable-input": unreadable_input(StepKind.IMG2IMG),
    "upscale-unreadable-input": unreadable_input(StepKind.UPSCALE),
    "img2img-without-its-input": lambda step_id, folder: job_for(StepKind.IMG2IMG, step_id, folder, []),
    "t2i-without-a-prompt": without_prompt,
    "unknown-step-kind": unknown_kind,
}
"""Steps no backend can run. Each must fail with PermanentError: retrying cannot fix any of them."""

KNOWN_GAPS: dict[tuple[str, str], tuple[type[Exception], str]] = {
    ("fal", "img2img-missing-input"): (
        FileNotFoundError,
        "fal-client's upload_file opens the file and FalBackend._upload only translates HTTP errors",
    ),
    ("fal", "upscale-missing-input"): (
        FileNotFoundError,
        "fal's upscale payload opens the source with Pillow to work out the factor, untranslated",
    ),
    ("fal", "upscale-unreadable-input"): (
        UnidentifiedImageError,
        "fal's upscale payload opens the source with Pillow to work out the factor, untranslated",
    ),
    ("fal", "img2img-without-its-input"): (IndexError, "fal's payload builders index job.inputs unchecked"),
    ("fal", "t2i-without-a-prompt"): (KeyError, "fal's payload builders index job.params unchecked"),
    ("comfyui", "img2img-missing-input"): (
        FileNotFoundError,
        "ComfyClient.upload opens the file outside its HTTP error handling (after a pod was leased)",
    ),
    ("comfyui", "upscale-missing-input"): (
        FileNotFoundError,
        "ComfyClient.upload opens the file outside its HTTP error handling (after a pod was leased)",
    ),
}
"""Where a backend breaks the contract today, and with what: strict xfails, so a fix shows up as a test
failure that says to delete the entry. Product behaviour is left as it is on purpose."""


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_step_that_cannot_run_fails_permanently_and_writes_nothing(
    backend: BackendUnderTest, failure: str, step_id: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The task layer retries TransientError, reroutes ContentPolicyError and fails other BackendErrors
    with their message as the reason; anything outside the tree reaches the studio as a Python class name.
    Nothing may be left at the output path for the step to publish."""
    gap = KNOWN_GAPS.get((backend.name, failure))
    if gap is not None:
        request.applymarker(pytest.mark.xfail(raises=gap[0], reason=gap[1], strict=True))
    job = FAILURES[failure](step_id, tmp_path)
    with pytest.raises(BackendError) as caught:
        backend.backend.run(job)
    assert isinstance(caught.value, PermanentError), f"{type(caught.value).__name__}: {caught.value}"
    assert str(caught.value), "the message is the reason the studio reads"
    assert list(job.outputs[0].parent.iterdir()) == [], "no output and no partial file beside it"
