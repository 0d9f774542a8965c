"""ComfyUI workflows as data: shipped graphs, placeholder filling, graph checks, and the plan step mapping."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from farm.episode.validate import load_episode
from farm.planning.plan import Plan, Step, StepKind, build_plan
from workers.base import PermanentError
from workers.comfyui.on_pod import CustomNode
from workers.comfyui.workflows import (
    WARM_UP_SIZE,
    WORKFLOW_NAMES,
    Workflow,
    WorkflowError,
    fill,
    load_workflow,
    placeholders,
    validate_graph,
    values_for_step,
    warm_up_values,
    workflow_for_step,
)

SAMPLES: dict[type, object] = {int: 7, float: 0.5, str: "sample.png"}
NASTY_PROMPT = (
    'She says "don\'t" \\ {braces} {{seed}} {{prompt}} }} {{\n'
    "second line\ttab $(rm -rf /) `id` ; | & > /tmp/x $HOME * ? ! 'single' \u00e9\u6f22 \U0001f30a"
)
GPU_KINDS = (StepKind.T2I, StepKind.IMG2IMG, StepKind.UPSCALE, StepKind.VIDEO)


@pytest.fixture(scope="module")
def plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


def sample_values(workflow: Workflow) -> dict[str, object]:
    return {name: SAMPLES[kind] for name, kind in workflow.parameters.items()}


def nodes_of(graph: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [node["inputs"] for node in graph.values() if node["class_type"] == class_type]


def uploaded(step: Step) -> list[str]:
    return [f"{input_id}.png" for input_id in step.inputs]


# shipped workflows --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_every_workflow_loads_and_declares_exactly_its_placeholders(name: str) -> None:
    workflow = load_workflow(name)
    assert workflow.name == name
    assert placeholders(workflow.graph) == set(workflow.parameters)
    assert set(workflow.parameters.values()) <= {int, float, str}
    for node in workflow.graph.values():
        assert set(node) == {"class_type", "inputs", "_meta"} and node["_meta"]["title"]


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_filled_sample_passes_validation_and_leaves_the_template_alone(name: str) -> None:
    workflow = load_workflow(name)
    before = json.dumps(workflow.graph, sort_keys=True)
    graph = fill(workflow, sample_values(workflow))
    validate_graph(graph)
    assert json.dumps(workflow.graph, sort_keys=True) == before
    assert placeholders(graph) == set()


def test_families_for_pod_affinity() -> None:
    families = {name: load_workflow(name).family for name in WORKFLOW_NAMES}
    assert families == {
        "qwen_t2i": "qwen",
        "zimage_t2i": "zimage",
        "img2img": "qwen",
        "upscale": "upscale",
        "wan_flf": "wan",
    }


def test_unknown_workflow_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError, match="unknown workflow 'flux_t2i'"):
        load_workflow("flux_t2i")


# fixed settings from the studio's notes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "unet", "clip", "clip_type", "vae", "sampler", "steps", "cfg"),
    [
        (
            "qwen_t2i",
            "qwen_image_fp8_e4m3fn.safetensors",
            "qwen_2.5_vl_7b_fp8_scaled.safetensors",
            "qwen_image",
            "qwen_image_vae.safetensors",
            "euler",
            50,
            4.0,
        ),
        (
            "img2img",
            "qwen_image_fp8_e4m3fn.safetensors",
            "qwen_2.5_vl_7b_fp8_scaled.safetensors",
            "qwen_image",
            "qwen_image_vae.safetensors",
            "euler",
            50,
            4.0,
        ),
        (
            "zimage_t2i",
            "z_image_turbo_bf16.safetensors",
            "qwen_3_4b.safetensors",
            "lumina2",
            "ae.safetensors",
            "res_multistep",
            4,
            1.0,
        ),
    ],
)
def test_image_model_settings_match_the_seed(
    name: str, unet: str, clip: str, clip_type: str, vae: str, sampler: str, steps: int, cfg: float
) -> None:
    graph = load_workflow(name).graph
    assert [n["unet_name"] for n in nodes_of(graph, "UNETLoader")] == [unet]
    assert [(n["clip_name"], n["type"]) for n in nodes_of(graph, "CLIPLoader")] == [(clip, clip_type)]
    assert [n["vae_name"] for n in nodes_of(graph, "VAELoader")] == [vae]
    (sampler_inputs,) = nodes_of(graph, "KSampler")
    assert sampler_inputs["steps"] == steps and sampler_inputs["cfg"] == cfg
    assert (sampler_inputs["sampler_name"], sampler_inputs["scheduler"]) == (sampler, "simple")


def test_img2img_strength_is_the_denoise() -> None:
    (sampler_inputs,) = nodes_of(load_workflow("img2img").graph, "KSampler")
    assert sampler_inputs["denoise"] == "{{strength}}"


def test_wan_settings_match_the_seed() -> None:
    graph = load_workflow("wan_flf").graph
    assert sorted(n["unet_name"] for n in nodes_of(graph, "UNETLoader")) == [
        "wan2.2_i2v_high_noise_14B_fp8_scaled.safetensors",
        "wan2.2_i2v_low_noise_14B_fp8_scaled.safetensors",
    ]
    assert [n["vae_name"] for n in nodes_of(graph, "VAELoader")] == ["wan_2.1_vae.safetensors"]
    assert [(n["clip_name"], n["type"]) for n in nodes_of(graph, "CLIPLoader")] == [
        ("umt5_xxl_fp8_e4m3fn_scaled.safetensors", "wan")
    ]
    assert [n["clip_name"] for n in nodes_of(graph, "CLIPVisionLoader")] == ["clip_vision_h.safetensors"]
    assert [n["shift"] for n in nodes_of(graph, "ModelSamplingSD3")] == [5.0, 5.0]
    samplers = nodes_of(graph, "KSamplerAdvanced")
    assert [(s["steps"], s["cfg"]) for s in samplers] == [(30, 6.0), (30, 6.0)]
    assert [(s["start_at_step"], s["end_at_step"]) for s in samplers] == [(0, 15), (15, 10000)]
    (video,) = nodes_of(graph, "VHS_VideoCombine")
    assert video["format"] == "video/h264-mp4" and video["frame_rate"] == "{{fps}}"


# filling ------------------------------------------------------------------------------------------------


def test_fill_keeps_types() -> None:
    workflow = load_workflow("img2img")
    values = {**sample_values(workflow), "seed": 2**32 - 1, "strength": 1, "width": 768}
    graph = fill(workflow, values)
    (sampler_inputs,) = nodes_of(graph, "KSampler")
    assert sampler_inputs["seed"] == 2**32 - 1 and type(sampler_inputs["seed"]) is int
    assert sampler_inputs["denoise"] == 1.0 and type(sampler_inputs["denoise"]) is float
    (scale,) = nodes_of(graph, "ImageScale")
    assert type(scale["width"]) is int


def test_fill_reports_every_problem_at_once() -> None:
    workflow = load_workflow("img2img")
    values: dict[str, object] = {
        "prompt": "a frame",
        "seed": "42",
        "width": 768.0,
        "height": True,
        "strength": float("nan"),
        "steps": 50,
        "loras": [],
    }
    with pytest.raises(WorkflowError) as caught:
        fill(workflow, values)
    problems = caught.value.problems
    assert "missing value for 'image'" in problems and "missing value for 'prefix'" in problems
    assert "unknown parameter 'loras'" in problems and "unknown parameter 'steps'" in problems
    for name in ("seed", "width", "height", "strength"):
        assert any(p.startswith(f"{name!r} must be") for p in problems), name
    assert len(problems) == 8
    assert isinstance(caught.value, PermanentError)


@pytest.mark.parametrize("name", ["qwen_t2i", "wan_flf"])
def test_hostile_prompt_is_carried_verbatim(name: str) -> None:
    workflow = load_workflow(name)
    graph = fill(workflow, {**sample_values(workflow), "prompt": NASTY_PROMPT, "seed": 99})
    validate_graph(graph)
    texts = [n["text"] for n in nodes_of(graph, "CLIPTextEncode")]
    assert NASTY_PROMPT in texts
    assert next(t for t in texts if t == NASTY_PROMPT).encode() == NASTY_PROMPT.encode()
    assert json.loads(json.dumps(graph)) == graph
    assert json.loads(json.dumps(graph, ensure_ascii=False)) == graph
    seeds = [v for n in graph.values() for k, v in n["inputs"].items() if k in ("seed", "noise_seed")]
    assert seeds and all(s == 99 for s in seeds)


def test_a_value_is_never_expanded_again() -> None:
    workflow = load_workflow("qwen_t2i")
    graph = fill(workflow, {**sample_values(workflow), "prefix": "{{prompt}}", "prompt": "{{seed}} x"})
    (save,) = nodes_of(graph, "SaveImage")
    assert save["filename_prefix"] == "{{prompt}}"
    assert "{{seed}} x" in [n["text"] for n in nodes_of(graph, "CLIPTextEncode")]


# validation ---------------------------------------------------------------------------------------------


def filled(name: str) -> dict[str, Any]:
    workflow = load_workflow(name)
    return fill(workflow, sample_values(workflow))


def test_validate_catches_a_dangling_link() -> None:
    graph = filled("qwen_t2i")
    graph["7"]["inputs"]["model"] = ["99", 0]
    with pytest.raises(WorkflowError, match="links to missing output 99:0"):
        validate_graph(graph)


def test_validate_catches_a_graph_without_outputs() -> None:
    graph = {k: v for k, v in filled("upscale").items() if v["class_type"] != "SaveImage"}
    with pytest.raises(WorkflowError, match="no output node"):
        validate_graph(graph)


def test_validate_catches_malformed_nodes_and_leftover_placeholders() -> None:
    graph = filled("qwen_t2i")
    del graph["8"]["class_type"]
    graph["3"]["inputs"] = None
    with pytest.raises(WorkflowError) as caught:
        validate_graph(graph)
    assert caught.value.problems == ("node 3 has no inputs object", "node 8 has no class_type")
    with pytest.raises(WorkflowError, match=r"node 6 still has placeholder \{\{width\}\}"):
        validate_graph(load_workflow("qwen_t2i").graph)
    with pytest.raises(WorkflowError, match="non-empty object"):
        validate_graph({})


# plan steps ---------------------------------------------------------------------------------------------


def test_workflow_for_each_step_kind() -> None:
    assert workflow_for_step("t2i", "flux2") == "qwen_t2i"
    assert workflow_for_step(StepKind.T2I, "z_image_turbo") == "zimage_t2i"
    assert workflow_for_step("img2img", "z_image_turbo") == "img2img"
    assert workflow_for_step("upscale", "seedvr2") == "upscale"
    assert workflow_for_step("video", "wan22") == "wan_flf"
    for kind in ("split", "ken_burns", "hold", "concat"):
        with pytest.raises(WorkflowError):
            workflow_for_step(kind, "post")
        with pytest.raises(WorkflowError):
            values_for_step(kind, {}, [], "x")


def test_every_gpu_step_of_the_sample_plan_fills_and_validates(plan: Plan) -> None:
    steps = [s for s in plan.steps if s.kind in GPU_KINDS]
    assert {s.kind for s in steps} == set(GPU_KINDS)
    for step in steps:
        workflow = load_workflow(workflow_for_step(step.kind, step.engine))
        values = values_for_step(step.kind, step.params, uploaded(step), f"run1/{step.id}")
        graph = fill(workflow, values)
        validate_graph(graph)
        (save,) = [n for n in graph.values() if n["class_type"] in ("SaveImage", "VHS_VideoCombine")]
        assert save["inputs"]["filename_prefix"] == f"run1/{step.id}"


def test_t2i_steps_pick_the_model_by_engine(plan: Plan) -> None:
    engines = {s.engine: workflow_for_step(s.kind, s.engine) for s in plan.steps if s.kind is StepKind.T2I}
    assert engines == {"z_image_turbo": "zimage_t2i", "flux2": "qwen_t2i"}
    step = next(s for s in plan.steps if s.kind is StepKind.T2I)
    values = values_for_step(step.kind, step.params, [], "p")
    assert values == {
        "prompt": step.params["prompt"],
        "seed": step.params["seed"],
        "width": step.params["width"],
        "height": step.params["height"],
        "prefix": "p",
    }


def test_img2img_values(plan: Plan) -> None:
    step = next(s for s in plan.steps if s.kind is StepKind.IMG2IMG and s.params["loras"])
    values = values_for_step(step.kind, step.params, ["src.png"], "p")
    assert values["image"] == "src.png" and values["strength"] == step.params["strength"]
    assert "loras" not in values and "steps" not in values
    (sampler_inputs,) = nodes_of(fill(load_workflow("img2img"), values), "KSampler")
    assert sampler_inputs["denoise"] == step.params["strength"] and sampler_inputs["steps"] == 50


def test_upscale_values(plan: Plan) -> None:
    step = next(s for s in plan.steps if s.kind is StepKind.UPSCALE)
    values = values_for_step(step.kind, step.params, ["gen.png"], "p")
    assert values == {"image": "gen.png", "width": 768, "height": 1344, "prefix": "p"}


def test_video_values(plan: Plan) -> None:
    frames = set()
    for step in (s for s in plan.steps if s.kind is StepKind.VIDEO):
        values = values_for_step(step.kind, step.params, ["first.png", "last.png"], "p")
        assert (values["start_image"], values["end_image"]) == ("first.png", "last.png")
        graph = fill(load_workflow("wan_flf"), values)
        (flf,) = nodes_of(graph, "WanFirstLastFrameToVideo")
        assert (flf["width"], flf["height"], flf["length"]) == (720, 1280, step.params["num_frames"])
        (video,) = nodes_of(graph, "VHS_VideoCombine")
        assert video["frame_rate"] == 16
        frames.add(flf["length"])
    assert frames == {81, 49}


def test_wrong_input_count_is_rejected(plan: Plan) -> None:
    step = next(s for s in plan.steps if s.kind is StepKind.VIDEO)
    with pytest.raises(WorkflowError, match="expects 2 input file"):
        values_for_step(step.kind, step.params, ["only.png"], "p")


def test_missing_params_surface_in_fill() -> None:
    values = values_for_step("video", {"prompt": "p", "seed": 1}, ["a.png", "b.png"], "p")
    with pytest.raises(WorkflowError) as caught:
        fill(load_workflow("wan_flf"), values)
    assert {p for p in caught.value.problems if p.startswith("missing")} == {
        "missing value for 'width'",
        "missing value for 'height'",
        "missing value for 'num_frames'",
        "missing value for 'fps'",
    }


@pytest.mark.parametrize("name", WORKFLOW_NAMES)
def test_every_workflow_has_a_small_complete_warm_up(name: str) -> None:
    workflow = load_workflow(name)
    graph = fill(workflow, warm_up_values(workflow, image="farm_warm_up.png"))
    validate_graph(graph)
    sizes = [v for node in graph.values() for k, v in node["inputs"].items() if k in ("width", "height")]
    assert all(size == WARM_UP_SIZE for size in sizes)


@pytest.mark.parametrize(
    ("text", "name", "ref"),
    [
        ("https://github.com/example/ComfyUI-Nodes.git", "ComfyUI-Nodes", None),
        ("https://github.com/example/ComfyUI-Nodes#v1.2", "ComfyUI-Nodes", "v1.2"),
        ("git@github.com:example/video-helper.git", "video-helper", None),
        ("file:///srv/nodes/local-node/", "local-node", None),
    ],
)
def test_custom_node_repositories_name_their_folder(text: str, name: str, ref: str | None) -> None:
    node = CustomNode.parse(text)
    assert (node.name, node.ref) == (name, ref)


@pytest.mark.parametrize("text", ["", "#main", "--upload-pack=touch x", "https://example.com/.hidden"])
def test_a_custom_node_that_is_not_a_repository_url_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a repository URL"):
        CustomNode.parse(text)
