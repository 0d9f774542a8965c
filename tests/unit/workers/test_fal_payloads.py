"""fal request bodies built from compiled step parameters, checked against the endpoint schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from farm.episode.validate import load_episode
from farm.planning.plan import Plan, Step, StepKind, build_plan
from workers.base import PermanentError, StepJob
from workers.fal.payloads import build_payload


@pytest.fixture(scope="module")
def plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


def job_for(step: Step, inputs: list[Path]) -> StepJob:
    return StepJob(
        step.id, step.kind.value, step.engine, step.endpoint, step.params, inputs, [], step.operation
    )


def fake_upload(path: Path) -> str:
    return f"https://files.example.invalid/{path.name}"


def find(plan: Plan, shot: int, kind: StepKind, role: str) -> Step:
    return next(s for s in plan.steps if s.shot == shot and s.kind == kind and s.role == role)


def test_z_image_text_to_image_sends_no_guidance(plan: Plan) -> None:
    step = find(plan, 7, StepKind.T2I, "first")
    payload = build_payload(job_for(step, []), fake_upload)
    assert "guidance_scale" not in payload
    assert payload["image_size"] == {"width": 768, "height": 1344}
    assert payload["num_inference_steps"] == 8 and payload["seed"] == step.params["seed"]
    assert payload["prompt"] == step.params["prompt"]
    assert payload["loras"] == [
        {"path": "https://example.invalid/loras/jinx_zimage_v1.safetensors", "scale": 1.3}
    ]


def test_flux2_sends_guidance_and_dual_loras(plan: Plan) -> None:
    payload = build_payload(job_for(find(plan, 5, StepKind.T2I, "hero"), []), fake_upload)
    assert payload["guidance_scale"] == 2.5 and payload["num_inference_steps"] == 28
    assert [lora["scale"] for lora in payload["loras"]] == [0.5, 0.5]


def test_img2img_uploads_its_source_and_sends_the_strength(plan: Plan, tmp_path: Path) -> None:
    step = find(plan, 3, StepKind.IMG2IMG, "first")
    payload = build_payload(job_for(step, [tmp_path / "source.png"]), fake_upload)
    assert payload["image_url"].endswith("/source.png")
    assert payload["strength"] == 0.3


def test_upscale_asks_for_the_factor_that_reaches_the_planned_width(plan: Plan, tmp_path: Path) -> None:
    panel = tmp_path / "panel.png"
    Image.new("RGB", (512, 912)).save(panel)
    payload = build_payload(job_for(find(plan, 4, StepKind.UPSCALE, "hero"), [panel]), fake_upload)
    assert payload["upscale_mode"] == "factor" and payload["upscale_factor"] == 1.5
    assert payload["image_url"].endswith("/panel.png")


def test_video_sends_both_frames_and_the_wan_lora_pair(plan: Plan, tmp_path: Path) -> None:
    step = find(plan, 2, StepKind.VIDEO, "clip")
    payload = build_payload(job_for(step, [tmp_path / "first.png", tmp_path / "last.png"]), fake_upload)
    assert payload["image_url"].endswith("/first.png") and payload["end_image_url"].endswith("/last.png")
    assert (
        payload["num_frames"],
        payload["frames_per_second"],
        payload["resolution"],
        payload["aspect_ratio"],
    ) == (81, 16, "720p", "9:16")
    assert [lora["transformer"] for lora in payload["loras"]] == ["high", "low"]
    assert payload["interpolator_model"] == "none"
    assert payload["seed"] == step.params["seed"]


def test_post_steps_have_no_fal_endpoint(plan: Plan) -> None:
    with pytest.raises(PermanentError):
        build_payload(job_for(find(plan, 4, StepKind.SPLIT, "split"), []), fake_upload)
