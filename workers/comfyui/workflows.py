"""ComfyUI workflows as data: API-format graphs shipped in `api_workflows/` beside this module, filled in
per plan step.

Each JSON file is a graph ComfyUI's `POST /prompt` accepts as is (`{node_id: {class_type, inputs, _meta}}`),
built from core nodes plus VideoHelperSuite's `VHS_VideoCombine` (installed on the pod). A value that
varies per step is a whole-string placeholder `"{{name}}"`; `fill` swaps it for a typed JSON value (an int
stays an int), walking the template only, so a value is never spliced into another string and never
expanded again: a prompt holding quotes, braces or `{{seed}}` reaches ComfyUI byte for byte.

Workflows and the model family each loads (for pod affinity):

- `qwen_t2i` (qwen): production text-to-image. Qwen Image, CLIPLoader type `qwen_image`, 50 steps,
  cfg 4.0, euler/simple (the studio's lessons).
- `zimage_t2i` (zimage): t2i steps cast to Z-Image Turbo. CLIPLoader type `lumina2`, 4 steps, cfg 1.0,
  res_multistep/simple.
- `img2img` (qwen): Qwen Image with the plan's `strength` as the KSampler denoise (the studio tested Qwen
  img2img on the pod); the source is fitted to the planned size first.
- `upscale` (upscale): a 4x model (`RealESRGAN_x4plus.pth`, which the pod must hold in models/upscale_models)
  then a lanczos resample, centre-cropped to the planned size.
- `wan_flf` (wan): WAN 2.2 I2V A14B first-last-frame with core nodes: high-noise expert for steps 0-15,
  low-noise expert for 15-30, cfg 6.0, shift 5.0 (the studio's local fallback settings), euler/simple,
  `wan_2.1_vae.safetensors` (the 2.2 VAE has 48 channels and breaks the 14B models), h264 MP4 via
  VHS_VideoCombine at the plan's fps (16).

The plan's `steps` and `guidance` are fal card values and are not used: each workflow fixes its own.

LoRAs are not applied on the pod. The plan carries LoRA URLs trained for fal's Z-Image, Flux 2 and WAN
endpoints; the production pod image model (Qwen Image) cannot use Z-Image or Flux 2 LoRAs, the files would
first have to be fetched into the pod's models/loras, and a variable number of LoRAs means a variable graph.
So `values_for_step` ignores `loras`, and a character rendered on the GPU pool keeps only its prompt.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

from workers.base import PermanentError

Graph = dict[str, Any]

PLACEHOLDER = re.compile(r"\{\{([A-Za-z_][A-Za-z0-9_]*)\}\}")
"""A named parameter: the whole of a string value, never part of one."""
OUTPUT_NODES = frozenset({"SaveImage", "SaveVideo", "VHS_VideoCombine"})
PREFIX = "prefix"
"""The placeholder every workflow has for its `filename_prefix`."""


class WorkflowError(PermanentError):
    """A workflow that cannot be loaded, filled or submitted; `problems` lists every reason at once."""

    def __init__(self, subject: str, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{subject}: {'; '.join(self.problems)}")


@dataclass(frozen=True)
class Workflow:
    name: str
    family: str
    """The model family it loads ("qwen", "zimage", "wan", "upscale"): send it to a pod that has it warm."""
    graph: Graph
    """The template, placeholders included. `fill` never changes it."""
    parameters: dict[str, type]
    """Placeholder name -> the Python type its value must have (int, float or str)."""


@dataclass(frozen=True)
class _Spec:
    family: str
    parameters: Mapping[str, type]


_TEXT_TO_IMAGE: dict[str, type] = {"prompt": str, "seed": int, "width": int, "height": int, PREFIX: str}
SPECS: dict[str, _Spec] = {
    "qwen_t2i": _Spec("qwen", _TEXT_TO_IMAGE),
    "zimage_t2i": _Spec("zimage", _TEXT_TO_IMAGE),
    "img2img": _Spec("qwen", {**_TEXT_TO_IMAGE, "image": str, "strength": float}),
    "upscale": _Spec("upscale", {"image": str, "width": int, "height": int, PREFIX: str}),
    "wan_flf": _Spec(
        "wan",
        {**_TEXT_TO_IMAGE, "start_image": str, "end_image": str, "num_frames": int, "fps": int},
    ),
}
WORKFLOW_NAMES = tuple(SPECS)

_KIND_WORKFLOWS = {"t2i": "qwen_t2i", "img2img": "img2img", "upscale": "upscale", "video": "wan_flf"}
"""Which workflow renders a step kind on the GPU pool (t2i: unless cast to Z-Image Turbo)."""
_KIND_INPUTS: dict[str, tuple[str, ...]] = {
    "t2i": (),
    "img2img": ("image",),
    "upscale": ("image",),
    "video": ("start_image", "end_image"),
}
"""The placeholders a step's uploaded input files fill, in plan input order."""


# loading ------------------------------------------------------------------------------------------------


def load_workflow(name: str) -> Workflow:
    """The named workflow from package data, checked against its declared parameters."""
    spec = SPECS.get(name)
    if spec is None:
        raise WorkflowError(f"unknown workflow {name!r}", [f"known: {', '.join(WORKFLOW_NAMES)}"])
    graph = json.loads(_read(name))
    problems = _template_problems(graph, spec)
    if problems:
        raise WorkflowError(f"workflow {name}", problems)
    return Workflow(name, spec.family, graph, dict(spec.parameters))


@cache
def _read(name: str) -> str:
    return (resources.files("workers.comfyui") / "api_workflows" / f"{name}.json").read_text("utf-8")


def placeholders(graph: Graph) -> set[str]:
    """Every placeholder name in a graph."""
    return set(_placeholders(graph))


def _template_problems(graph: Any, spec: _Spec) -> list[str]:
    problems = _structure_problems(graph)
    if problems:
        return problems
    found, declared = placeholders(graph), set(spec.parameters)
    problems += [f"placeholder {{{{{n}}}}} is not declared" for n in sorted(found - declared)]
    problems += [f"declared parameter {n!r} has no placeholder" for n in sorted(declared - found)]
    problems += [f"{{{{ inside a literal string: {s!r}" for s in _strings(graph) if _is_stray(s)]
    return problems


def _is_stray(text: str) -> bool:
    return "{{" in text and not PLACEHOLDER.fullmatch(text)


# filling ------------------------------------------------------------------------------------------------


def fill(workflow: Workflow, values: Mapping[str, object]) -> Graph:
    """A new graph with every placeholder replaced by its typed value; all problems are reported at once."""
    problems = _value_problems(workflow.parameters, values)
    if problems:
        raise WorkflowError(f"cannot fill workflow {workflow.name}", problems)
    typed = {name: _coerce(kind, values[name]) for name, kind in workflow.parameters.items()}
    filled: Graph = _substitute(workflow.graph, typed)
    return filled


def _value_problems(parameters: Mapping[str, type], values: Mapping[str, object]) -> list[str]:
    missing = sorted(set(parameters) - set(values))
    unknown = sorted(set(values) - set(parameters))
    problems = [f"missing value for {name!r}" for name in missing]
    problems += [f"unknown parameter {name!r}" for name in unknown]
    for name, kind in parameters.items():
        if name in values and not _type_ok(kind, values[name]):
            value = values[name]
            problems.append(f"{name!r} must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return problems


def _type_ok(kind: type, value: object) -> bool:
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, int | float) and math.isfinite(value)
    return isinstance(value, kind)


def _coerce(kind: type, value: object) -> object:
    """An int given for a float parameter becomes a float; everything else is inserted as given."""
    if kind is float and isinstance(value, int):
        return float(value)
    return value


def _substitute(value: Any, typed: Mapping[str, object]) -> Any:
    if isinstance(value, dict):
        return {key: _substitute(item, typed) for key, item in value.items()}
    if isinstance(value, list):
        return [_substitute(item, typed) for item in value]
    name = _placeholder_name(value)
    return value if name is None else typed[name]


def _placeholder_name(value: object) -> str | None:
    match = PLACEHOLDER.fullmatch(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


def _placeholders(value: Any) -> Iterator[str]:
    for text in _strings(value):
        name = _placeholder_name(text)
        if name is not None:
            yield name


# validation ---------------------------------------------------------------------------------------------


def validate_graph(graph: Graph) -> None:
    """Raise WorkflowError unless the graph is ready for `POST /prompt`.

    Every node has a class_type and inputs, every link `["id", n]` points at an existing node, at least one
    node is an output (SaveImage, SaveVideo, VHS_VideoCombine) and no placeholder is left. A placeholder is
    a whole string value `{{name}}`; braces inside a longer value (a prompt) are content, not placeholders.
    """
    problems = _structure_problems(graph)
    if not problems:
        problems = [
            f"node {node_id} still has placeholder {{{{{name}}}}}"
            for node_id, node in graph.items()
            for name in _placeholders(node["inputs"])
        ]
    if problems:
        raise WorkflowError("invalid ComfyUI graph", problems)


def _structure_problems(graph: Any) -> list[str]:
    if not isinstance(graph, dict) or not graph:
        return ["a graph is a non-empty object of nodes"]
    problems = [p for node_id, node in graph.items() for p in _node_problems(str(node_id), node, graph)]
    if not any(isinstance(n, dict) and n.get("class_type") in OUTPUT_NODES for n in graph.values()):
        problems.append(f"no output node (one of {', '.join(sorted(OUTPUT_NODES))})")
    return problems


def _node_problems(node_id: str, node: Any, graph: Mapping[str, Any]) -> list[str]:
    if not isinstance(node, dict):
        return [f"node {node_id} is not an object"]
    problems: list[str] = []
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or not class_type:
        problems.append(f"node {node_id} has no class_type")
    inputs = node.get("inputs")
    if not isinstance(inputs, dict):
        return [*problems, f"node {node_id} has no inputs object"]
    for name, value in inputs.items():
        if _is_link(value) and (value[0] not in graph or value[1] < 0):
            problems.append(f"node {node_id} input {name!r} links to missing output {value[0]}:{value[1]}")
    return problems


def _is_link(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


# plan steps ---------------------------------------------------------------------------------------------


def workflow_for_step(kind: str, engine: str) -> str:
    """The workflow that renders a plan step on the GPU pool; WorkflowError for kinds it does not render."""
    if kind == "t2i" and engine == "z_image_turbo":
        return "zimage_t2i"
    name = _KIND_WORKFLOWS.get(kind)
    if name is None:
        raise WorkflowError(
            f"no GPU-pool workflow for '{kind}' steps", [f"rendered: {', '.join(_KIND_WORKFLOWS)}"]
        )
    return name


def values_for_step(
    kind: str, params: Mapping[str, object], inputs: Sequence[str], prefix: str
) -> dict[str, object]:
    """A step's named values: compiled params by name, uploaded input files in plan order, and the prefix.

    Params the workflow does not take (steps, guidance, loras, resolution, ...) are left out; a param it
    needs but the step lacks is left out too, so `fill` reports it with every other problem.
    """
    slots = _KIND_INPUTS.get(kind)
    if slots is None:
        raise WorkflowError(
            f"no GPU-pool workflow for '{kind}' steps", [f"rendered: {', '.join(_KIND_INPUTS)}"]
        )
    if len(inputs) != len(slots):
        raise WorkflowError(f"{kind} step", [f"expects {len(slots)} input file(s), got {len(inputs)}"])
    wanted = set(SPECS[_KIND_WORKFLOWS[kind]].parameters) - set(slots) - {PREFIX}
    values: dict[str, object] = {name: value for name, value in params.items() if name in wanted}
    values.update(zip(slots, inputs, strict=True))
    values[PREFIX] = prefix
    return values


# warm-up ------------------------------------------------------------------------------------------------

WARM_UP_SIZE = 256
"""Small enough to be quick, a multiple of 16 as every model here wants."""


def warm_up_values(workflow: Workflow, image: str | None) -> dict[str, object]:
    """Values for a small run of `workflow` that loads its models: a grey test card in, 5 frames for video."""
    sample: dict[str, object] = {
        "prompt": "a plain grey test card",
        "seed": 0,
        "width": WARM_UP_SIZE,
        "height": WARM_UP_SIZE,
        "strength": 0.5,
        "num_frames": 5,
        "fps": 16,
        PREFIX: "farm/_warm_up",
    }
    if image is not None:
        sample.update(image=image, start_image=image, end_image=image)
    return {name: sample[name] for name in workflow.parameters if name in sample}
