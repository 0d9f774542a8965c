"""A loopback emulator of ComfyUI's HTTP API, as the GPU pool drives it on a pod through an SSH tunnel.

It follows the project's protocol note (shared/protocols/comfyui.md): the §2 routes (each also under `/api`),
§3 history entries, validation of §5 API-format graphs against a small list of node classes, one run at a
time on a worker thread, and the Origin check. Outputs are real files rendered by the embedded engine
(`workers.local.LocalBackend`) into `<root>/output`, sized, captioned and seeded from the graph, so downloads
through `/view` or over SFTP, probes and reuse are exercised for real. §4's websocket (`/ws?clientId=`)
pushes a run's events to the client that queued it, with one `progress` event per sampler step
(`emulators.comfy_ws`).

Deliberate differences from ComfyUI:
- a POST /prompt whose prompt_id is already queued, running or in history answers 200 with that id and runs
  nothing (ComfyUI would queue it a second time and overwrite the history entry);
- a link to a missing node is reported as `bad_linked_input` (ComfyUI raises inside validation and reports
  `exception_during_inner_validation`);
- no caching between runs (`execution_cached` always lists no nodes), no previews, no `progress_state`,
  and `status` is sent only when a socket connects.

Emulator-only routes, for a copy run as a subprocess: `GET|POST /_faults`, `POST /_restart`, `GET /_executed`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import mimetypes
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from PIL import Image

from emulators import comfy_ws, http_base
from emulators.comfy_ws import EventSockets
from emulators.http_base import POLL_INTERVAL_S as POLL_INTERVAL_S
from emulators.http_base import EmulatorRequestHandler, EmulatorServer, LoopbackEmulator
from workers.base import StepJob
from workers.local import LocalBackend

LOG = logging.getLogger(__name__)

Graph = dict[str, Any]
"""An API-format workflow: node id -> {"class_type", "inputs", "_meta"?}."""

IMAGE_OUTPUTS = frozenset({"SaveImage"})
VIDEO_OUTPUTS = frozenset({"SaveVideo", "VHS_VideoCombine"})
OUTPUT_CLASSES = IMAGE_OUTPUTS | VIDEO_OUTPUTS
SAMPLERS = ("KSampler", "KSamplerAdvanced")
"""Where a run "spends its time" and where a NODEFAIL prompt fails."""
LOADERS = ("CheckpointLoaderSimple", "UNETLoader", "CLIPLoader", "VAELoader", "CLIPVisionLoader")
FOLDER_TYPES = ("input", "output", "temp")

DEFAULT_IMAGE_SIZE = (512, 512)
"""Used when nothing in the graph says how big an image is."""
WAN_DEFAULTS = {"width": 832, "height": 480, "length": 81}
"""WanFirstLastFrameToVideo's own defaults."""
DEFAULT_FRAME_RATE = 16.0
DEFAULT_UPSCALE_FACTOR = 4
"""Upscale models are mostly 4x; a model name such as `2x-foo.pth` or `RealESRGAN_x2plus` says otherwise."""
MAX_HISTORY = 10_000
MAX_PROGRESS_STEPS = 100
"""A sampler with more steps still reports at most this many `progress` events."""
"""ComfyUI trims its in-memory history past this many entries."""

COMFYUI_VERSION = "0.3.49"
GIB = 1024**3
VRAM_TOTAL = 80 * GIB
VRAM_MODELS = 28 * GIB
"""VRAM that loaded models hold after the first run (until POST /free or a restart)."""
RAM_TOTAL = 251 * GIB
MODEL_FILES = ["emulated.safetensors"]
"""What every model-file choice in /object_info lists: the emulator loads nothing."""


# faults ---------------------------------------------------------------------------------------------------


@dataclass
class ComfyFaults:
    """Scripted behaviour: failing nodes, failing validation and how long runs take."""

    node_error_keyword: str = "NODEFAIL"
    """A prompt text containing it fails the run at its sampler node (history status_str "error")."""
    validation_error_class: str | None = None
    """A graph using this class_type is refused: HTTP 400 prompt_outputs_failed_validation."""
    run_seconds: float = 0.2
    """How long each run takes once it leaves the queue, per output node (before rendering)."""
    first_run_extra_s: float = 0.0
    """Models loading into VRAM: the first run after start, restart or POST /free takes this much longer."""

    def __post_init__(self) -> None:
        if self.run_seconds < 0 or self.first_run_extra_s < 0:
            raise ValueError("run_seconds and first_run_extra_s must not be negative")


# node classes ---------------------------------------------------------------------------------------------

CHOICE = "CHOICE"
"""An input whose value is picked from a list (model files, samplers...)."""


@dataclass(frozen=True)
class NodeSpec:
    """Just enough of a node class for /object_info: input names and types, outputs, category."""

    category: str
    required: Mapping[str, str]
    outputs: tuple[str, ...] = ()
    optional: Mapping[str, str] = field(default_factory=dict)
    output_node: bool = False
    module: str = "nodes"


_WAN_FLF_OPTIONAL = {
    "clip_vision_start_image": "CLIP_VISION_OUTPUT",
    "clip_vision_end_image": "CLIP_VISION_OUTPUT",
    "start_image": "IMAGE",
    "end_image": "IMAGE",
}
_SAMPLER = {
    "model": "MODEL",
    "seed": "INT",
    "steps": "INT",
    "cfg": "FLOAT",
    "sampler_name": CHOICE,
    "scheduler": CHOICE,
    "positive": "CONDITIONING",
    "negative": "CONDITIONING",
    "latent_image": "LATENT",
    "denoise": "FLOAT",
}
_ADVANCED_SAMPLER = {
    "model": "MODEL",
    "add_noise": CHOICE,
    "noise_seed": "INT",
    "steps": "INT",
    "cfg": "FLOAT",
    "sampler_name": CHOICE,
    "scheduler": CHOICE,
    "positive": "CONDITIONING",
    "negative": "CONDITIONING",
    "latent_image": "LATENT",
    "start_at_step": "INT",
    "end_at_step": "INT",
    "return_with_leftover_noise": CHOICE,
}
_LATENT = {"width": "INT", "height": "INT", "batch_size": "INT"}

NODES: dict[str, NodeSpec] = {
    "CheckpointLoaderSimple": NodeSpec("loaders", {"ckpt_name": CHOICE}, ("MODEL", "CLIP", "VAE")),
    "UNETLoader": NodeSpec("advanced/loaders", {"unet_name": CHOICE, "weight_dtype": CHOICE}, ("MODEL",)),
    "CLIPLoader": NodeSpec("advanced/loaders", {"clip_name": CHOICE, "type": CHOICE}, ("CLIP",)),
    "VAELoader": NodeSpec("loaders", {"vae_name": CHOICE}, ("VAE",)),
    "LoraLoaderModelOnly": NodeSpec(
        "loaders", {"model": "MODEL", "lora_name": CHOICE, "strength_model": "FLOAT"}, ("MODEL",)
    ),
    "LoraLoader": NodeSpec(
        "loaders",
        {
            "model": "MODEL",
            "clip": "CLIP",
            "lora_name": CHOICE,
            "strength_model": "FLOAT",
            "strength_clip": "FLOAT",
        },
        ("MODEL", "CLIP"),
    ),
    "CLIPTextEncode": NodeSpec("conditioning", {"text": "STRING", "clip": "CLIP"}, ("CONDITIONING",)),
    "EmptyLatentImage": NodeSpec("latent", _LATENT, ("LATENT",)),
    "EmptySD3LatentImage": NodeSpec("latent/sd3", _LATENT, ("LATENT",)),
    "KSampler": NodeSpec("sampling", _SAMPLER, ("LATENT",)),
    "KSamplerAdvanced": NodeSpec("sampling", _ADVANCED_SAMPLER, ("LATENT",)),
    "VAEDecode": NodeSpec("latent", {"samples": "LATENT", "vae": "VAE"}, ("IMAGE",)),
    "VAEEncode": NodeSpec("latent", {"pixels": "IMAGE", "vae": "VAE"}, ("LATENT",)),
    "LoadImage": NodeSpec("image", {"image": CHOICE}, ("IMAGE", "MASK")),
    "SaveImage": NodeSpec("image", {"images": "IMAGE", "filename_prefix": "STRING"}, output_node=True),
    "ImageScale": NodeSpec(
        "image/upscaling",
        {"image": "IMAGE", "upscale_method": CHOICE, "width": "INT", "height": "INT", "crop": CHOICE},
        ("IMAGE",),
    ),
    "ImageScaleBy": NodeSpec(
        "image/upscaling", {"image": "IMAGE", "upscale_method": CHOICE, "scale_by": "FLOAT"}, ("IMAGE",)
    ),
    "WanFirstLastFrameToVideo": NodeSpec(
        "conditioning/video_models",
        {
            "positive": "CONDITIONING",
            "negative": "CONDITIONING",
            "vae": "VAE",
            "width": "INT",
            "height": "INT",
            "length": "INT",
            "batch_size": "INT",
        },
        ("CONDITIONING", "CONDITIONING", "LATENT"),
        optional=_WAN_FLF_OPTIONAL,
        module="comfy_extras.nodes_wan",
    ),
    "CLIPVisionLoader": NodeSpec("loaders", {"clip_name": CHOICE}, ("CLIP_VISION",)),
    "CLIPVisionEncode": NodeSpec(
        "conditioning",
        {"clip_vision": "CLIP_VISION", "image": "IMAGE", "crop": CHOICE},
        ("CLIP_VISION_OUTPUT",),
    ),
    "ModelSamplingSD3": NodeSpec(
        "advanced/model",
        {"model": "MODEL", "shift": "FLOAT"},
        ("MODEL",),
        module="comfy_extras.nodes_model_advanced",
    ),
    "CreateVideo": NodeSpec(
        "image/video",
        {"images": "IMAGE", "fps": "FLOAT"},
        ("VIDEO",),
        optional={"audio": "AUDIO"},
        module="comfy_extras.nodes_video",
    ),
    "SaveVideo": NodeSpec(
        "image/video",
        {"video": "VIDEO", "filename_prefix": "STRING", "format": CHOICE, "codec": CHOICE},
        output_node=True,
        module="comfy_extras.nodes_video",
    ),
    "VHS_VideoCombine": NodeSpec(
        "Video Helper Suite 🎥🅥🅗🅢",
        {
            "images": "IMAGE",
            "frame_rate": "FLOAT",
            "loop_count": "INT",
            "filename_prefix": "STRING",
            "format": CHOICE,
            "pingpong": "BOOLEAN",
            "save_output": "BOOLEAN",
        },
        ("VHS_FILENAMES",),
        optional={"audio": "AUDIO"},
        output_node=True,
        module="custom_nodes.ComfyUI-VideoHelperSuite",
    ),
    "UpscaleModelLoader": NodeSpec(
        "loaders", {"model_name": CHOICE}, ("UPSCALE_MODEL",), module="comfy_extras.nodes_upscale_model"
    ),
    "ImageUpscaleWithModel": NodeSpec(
        "image/upscaling",
        {"upscale_model": "UPSCALE_MODEL", "image": "IMAGE"},
        ("IMAGE",),
        module="comfy_extras.nodes_upscale_model",
    ),
}
"""The node classes the emulator knows; any other class_type is refused with invalid_prompt."""

CHOICES: dict[str, list[str]] = {
    "sampler_name": ["euler", "euler_ancestral", "dpmpp_2m", "uni_pc"],
    "scheduler": ["simple", "normal", "karras", "beta"],
    "weight_dtype": ["default", "fp8_e4m3fn", "fp8_e5m2"],
    "type": ["stable_diffusion", "wan", "flux", "qwen_image"],
    "upscale_method": ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
    "crop": ["disabled", "center", "none"],
    "add_noise": ["enable", "disable"],
    "return_with_leftover_noise": ["disable", "enable"],
    "format": ["auto", "mp4", "video/h264-mp4", "video/h265-mp4", "image/webp"],
    "codec": ["auto", "h264"],
}
"""Choice lists for /object_info; inputs not named here (model files) list `MODEL_FILES`."""


def node_info(name: str, spec: NodeSpec, input_files: list[str]) -> dict[str, Any]:
    """One /object_info entry, in ComfyUI's shape."""

    def input_spec(input_name: str, kind: str) -> list[Any]:
        if kind != CHOICE:
            return [kind, {}]
        if name == "LoadImage":
            return [input_files, {"image_upload": True}]
        return [CHOICES.get(input_name, MODEL_FILES), {}]

    return {
        "input": {
            "required": {key: input_spec(key, kind) for key, kind in spec.required.items()},
            "optional": {key: input_spec(key, kind) for key, kind in spec.optional.items()},
        },
        "input_order": {"required": list(spec.required), "optional": list(spec.optional)},
        "output": list(spec.outputs),
        "output_is_list": [False] * len(spec.outputs),
        "output_name": list(spec.outputs),
        "name": name,
        "display_name": name,
        "description": "",
        "python_module": spec.module,
        "category": spec.category,
        "output_node": spec.output_node,
        "deprecated": False,
        "experimental": False,
    }


# replies --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply(http_base.Reply):
    """One HTTP answer; the handler writes it as is. ComfyUI answers plain text unless it says otherwise."""

    content_type: str = "text/plain; charset=utf-8"


def json_reply(doc: Any, status: int = 200) -> Reply:
    return Reply(status, json.dumps(doc).encode(), "application/json; charset=utf-8")


def error_reply(error_type: str, message: str, details: str = "", node_errors: Any = None) -> Reply:
    """ComfyUI's 400 for a refused prompt: {"error": {type, message, details, extra_info}, "node_errors"}."""
    error = {"type": error_type, "message": message, "details": details, "extra_info": {}}
    return json_reply({"error": error, "node_errors": node_errors if node_errors is not None else {}}, 400)


class Rejected(Exception):
    """A request answered with `reply` instead of going on."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


class RenderError(Exception):
    """The graph cannot be rendered (a missing input, a bad filename_prefix): the node's execution_error."""


# folders --------------------------------------------------------------------------------------------------

_ANNOTATION = re.compile(r"^(?P<name>.*?)\s*\[(?P<kind>input|output|temp)\]$")


class Folders:
    """The install's input/, output/ and temp/ folders under `root`; no path may leave its folder."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        for kind in FOLDER_TYPES:
            (self.root / kind).mkdir(parents=True, exist_ok=True)

    def folder(self, kind: str, subfolder: str = "") -> Path:
        """`root/<kind>/<subfolder>`; ValueError for an unknown kind or a subfolder that escapes it."""
        if kind not in FOLDER_TYPES:
            raise ValueError(f"unknown folder type {kind!r}")
        base = self.root / kind
        path = (base / subfolder.lstrip("/")).resolve()
        if not path.is_relative_to(base):
            raise ValueError(f"subfolder {subfolder!r} leaves the {kind} folder")
        return path

    def file(self, kind: str, relative: str) -> Path:
        """A file named relative to a folder (`sub/name.png`), checked like `folder`."""
        subfolder, _, name = relative.replace("\\", "/").rpartition("/")
        if not name or name in (".", ".."):
            raise ValueError(f"bad file name {relative!r}")
        return self.folder(kind, subfolder) / name

    def annotated(self, value: str) -> Path:
        """LoadImage's `image` value: a path under input/, or `name [output]` / `name [temp]` elsewhere."""
        match = _ANNOTATION.match(value)
        if match:
            return self.file(match["kind"], match["name"])
        return self.file("input", value)

    def listing(self, kind: str) -> list[str]:
        base = self.root / kind
        return sorted(path.relative_to(base).as_posix() for path in base.rglob("*") if path.is_file())


# the graph ------------------------------------------------------------------------------------------------


def is_link(value: Any) -> bool:
    """`["<node id>", <output index>]`: ComfyUI treats any list input as a link."""
    return isinstance(value, list)


def node_order(node_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the rest by name."""
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


class Workflow:
    """Read-only questions about one validated graph: classes, literal inputs, what feeds what."""

    def __init__(self, graph: Graph, folders: Folders) -> None:
        self.graph = graph
        self.folders = folders

    def cls(self, node_id: str) -> str:
        return str(self.graph[node_id]["class_type"])

    def inputs(self, node_id: str) -> dict[str, Any]:
        inputs = self.graph[node_id].get("inputs")
        return inputs if isinstance(inputs, dict) else {}

    def source(self, node_id: str | None, name: str) -> str | None:
        """The node feeding input `name` of `node_id`, if it is a link to an existing node."""
        if node_id is None:
            return None
        value = self.inputs(node_id).get(name)
        if not is_link(value) or not value:
            return None
        source = str(value[0])
        return source if source in self.graph else None

    def sources(self, node_id: str) -> list[str]:
        """Every existing node linked into `node_id`, in input order."""
        found = (self.source(node_id, name) for name in self.inputs(node_id))
        return [source for source in found if source is not None]

    def upstream(self, start: str) -> list[str]:
        """`start` and everything it depends on, breadth first, following inputs in order."""
        order, queue = [start], [start]
        while queue:
            for source in self.sources(queue.pop(0)):
                if source not in order:
                    order.append(source)
                    queue.append(source)
        return order

    def find(self, start: str | None, *classes: str) -> str | None:
        """The nearest node of one of `classes` at or above `start` (breadth first)."""
        if start is None:
            return None
        return next((node for node in self.upstream(start) if self.cls(node) in classes), None)

    def number(self, node_id: str | None, key: str, default: float) -> float:
        value = self.inputs(node_id).get(key) if node_id is not None else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return default
        return float(value)

    def integer(self, node_id: str | None, key: str, default: int) -> int:
        return round(self.number(node_id, key, default))

    def string(self, node_id: str, key: str, default: str) -> str:
        value = self.inputs(node_id).get(key)
        return value if isinstance(value, str) else default

    def texts(self, start: str) -> list[tuple[str, str]]:
        """(node id, text) of every CLIPTextEncode above `start` with a literal text, nearest first."""
        nodes = (node for node in self.upstream(start) if self.cls(node) == "CLIPTextEncode")
        return [(node, text) for node in nodes if isinstance(text := self.inputs(node).get("text"), str)]

    def prompt(self, start: str) -> str:
        """The first text reachable: breadth first with inputs in order, so a sampler's positive wins."""
        texts = self.texts(start)
        return texts[0][1] if texts else ""

    def seed(self, start: str) -> int:
        """The nearest sampler's `seed` (KSampler) or `noise_seed` (KSamplerAdvanced), else 0."""
        sampler = self.find(start, *SAMPLERS)
        return max(0, self.integer(sampler, "seed", self.integer(sampler, "noise_seed", 0)))

    def image_path(self, load_image: str) -> Path:
        """The file a LoadImage node reads (ValueError if its name leaves the folder)."""
        return self.folders.annotated(self.string(load_image, "image", ""))

    def size(self, node_id: str | None, seen: frozenset[str] = frozenset()) -> tuple[int, int] | None:
        """The pixel size of what `node_id` produces: its own rule, else the first sized input's size."""
        if node_id is None or node_id in seen:
            return None
        seen = seen | {node_id}
        rule = SIZE_RULES.get(self.cls(node_id))
        if rule is not None:
            return rule(self, node_id, seen)
        for source in self.sources(node_id):
            size = self.size(source, seen)
            if size is not None:
                return size
        return None


SizeRule = Callable[[Workflow, str, frozenset[str]], "tuple[int, int] | None"]


def _latent_size(wf: Workflow, node_id: str, seen: frozenset[str]) -> tuple[int, int]:
    width, height = DEFAULT_IMAGE_SIZE
    return wf.integer(node_id, "width", width), wf.integer(node_id, "height", height)


def _wan_size(wf: Workflow, node_id: str, seen: frozenset[str]) -> tuple[int, int]:
    return wf.integer(node_id, "width", WAN_DEFAULTS["width"]), wf.integer(
        node_id, "height", WAN_DEFAULTS["height"]
    )


def _loaded_size(wf: Workflow, node_id: str, seen: frozenset[str]) -> tuple[int, int] | None:
    try:
        with Image.open(wf.image_path(node_id)) as image:
            return image.size
    except (OSError, ValueError):
        return None


def _scale_size(wf: Workflow, node_id: str, seen: frozenset[str]) -> tuple[int, int] | None:
    """ImageScale: width/height, where 0 keeps the aspect of the other side (both 0: unchanged)."""
    base = wf.size(wf.source(node_id, "image"), seen)
    width, height = wf.integer(node_id, "width", 0), wf.integer(node_id, "height", 0)
    if base is None:
        return (width, height) if width > 0 and height > 0 else None
    if width <= 0 and height <= 0:
        return base
    if width <= 0:
        width = round(base[0] * height / base[1])
    if height <= 0:
        height = round(base[1] * width / base[0])
    return width, height


def _scale_by_size(wf: Workflow, node_id: str, seen: frozenset[str]) -> tuple[int, int] | None:
    base = wf.size(wf.source(node_id, "image"), seen)
    factor = wf.number(node_id, "scale_by", 1.0)
    return None if base is None else (max(1, round(base[0] * factor)), max(1, round(base[1] * factor)))


def _model_upscale_size(wf: Workflow, node_id: str, seen: frozenset[str]) -> tuple[int, int] | None:
    base = wf.size(wf.source(node_id, "image"), seen)
    loader = wf.source(node_id, "upscale_model")
    name = wf.string(loader, "model_name", "") if loader is not None else ""
    match = re.search(r"(?<![0-9])([1-8])x|x([1-8])(?![0-9])", name, re.IGNORECASE)
    factor = int(match[1] or match[2]) if match else DEFAULT_UPSCALE_FACTOR
    return None if base is None else (base[0] * factor, base[1] * factor)


SIZE_RULES: dict[str, SizeRule] = {
    "EmptyLatentImage": _latent_size,
    "EmptySD3LatentImage": _latent_size,
    "WanFirstLastFrameToVideo": _wan_size,
    "LoadImage": _loaded_size,
    "ImageScale": _scale_size,
    "ImageScaleBy": _scale_by_size,
    "ImageUpscaleWithModel": _model_upscale_size,
}
"""Nodes that decide a size; every other node passes on the size of its first sized input."""


# validation -----------------------------------------------------------------------------------------------


def validate(graph: Any, folders: Folders, bad_class: str | None) -> tuple[list[str], dict[str, Any]]:
    """The output nodes to execute and the node_errors of the others; Rejected when nothing can run."""
    nodes = _check_classes(graph)
    outputs = sorted(
        (nid for nid, node in nodes.items() if node["class_type"] in OUTPUT_CLASSES), key=node_order
    )
    if not outputs:
        raise Rejected(error_reply("prompt_no_outputs", "Prompt has no outputs"))
    wf = Workflow(nodes, folders)
    node_errors: dict[str, Any] = {}
    for output in outputs:
        for node_id in wf.upstream(output):
            errors = _node_errors(wf, node_id, bad_class)
            if errors:
                entry = node_errors.setdefault(
                    node_id, {"errors": errors, "dependent_outputs": [], "class_type": wf.cls(node_id)}
                )
                entry["dependent_outputs"].append(output)
    failed = {output for entry in node_errors.values() for output in entry["dependent_outputs"]}
    good = [output for output in outputs if output not in failed]
    if not good:
        details = "\n".join(
            f"{e['message']}: {e['details']}" for n in node_errors.values() for e in n["errors"]
        )
        raise Rejected(
            error_reply(
                "prompt_outputs_failed_validation", "Prompt outputs failed validation", details, node_errors
            )
        )
    return good, node_errors


def _check_classes(graph: Any) -> Graph:
    """Every node an object with a known class_type and an inputs object, else invalid_prompt."""
    if not isinstance(graph, dict):
        raise Rejected(
            error_reply("invalid_prompt", "Cannot execute because the prompt is not a JSON object.")
        )
    for node_id, node in graph.items():
        class_type = node.get("class_type") if isinstance(node, dict) else None
        where = f"Node ID '#{node_id}'"
        if not isinstance(class_type, str):
            message = "Cannot execute because a node is missing the class_type property."
            raise Rejected(error_reply("invalid_prompt", message, where))
        if class_type not in NODES:
            raise Rejected(
                error_reply(
                    "invalid_prompt", f"Cannot execute because node {class_type} does not exist.", where
                )
            )
        if not isinstance(node.get("inputs", {}), dict):
            raise Rejected(
                error_reply(
                    "invalid_prompt", "Cannot execute because a node's inputs are not an object.", where
                )
            )
    return graph


def _node_errors(wf: Workflow, node_id: str, bad_class: str | None) -> list[dict[str, Any]]:
    errors = [
        _input_error(
            "bad_linked_input",
            "Bad linked input, must be a length-2 list of [node_id, slot_index]",
            name,
            value,
        )
        for name, value in wf.inputs(node_id).items()
        if is_link(value) and not _good_link(wf, value)
    ]
    if wf.cls(node_id) == bad_class:
        errors.append(_not_in_list(wf, node_id))
    if wf.cls(node_id) == "LoadImage":
        errors.extend(_image_file_errors(wf, node_id))
    return errors


def _good_link(wf: Workflow, value: list[Any]) -> bool:
    if len(value) != 2 or isinstance(value[1], bool) or not isinstance(value[1], int):
        return False
    return isinstance(value[0], str | int) and str(value[0]) in wf.graph


def _input_error(error_type: str, message: str, name: str, value: Any, details: str = "") -> dict[str, Any]:
    extra = {"input_name": name, "received_value": value}
    return {
        "type": error_type,
        "message": message,
        "details": details or f"{name}: {value!r}",
        "extra_info": extra,
    }


def _not_in_list(wf: Workflow, node_id: str) -> dict[str, Any]:
    """The scripted validation failure: the node's first literal string input is "not in the list"."""
    literals = [(name, value) for name, value in wf.inputs(node_id).items() if isinstance(value, str)]
    name, value = literals[0] if literals else ("class_type", wf.cls(node_id))
    details = f"{name}: '{value}' not in {MODEL_FILES}"
    return _input_error("value_not_in_list", "Value not in list", name, value, details)


def _image_file_errors(wf: Workflow, node_id: str) -> list[dict[str, Any]]:
    """LoadImage's own check: the named file must exist (upload it first)."""
    name = wf.string(node_id, "image", "")
    try:
        exists = wf.image_path(node_id).is_file()
    except ValueError:
        exists = False
    if exists:
        return []
    details = f"image - Invalid image file: {name}"
    return [
        _input_error("custom_validation_failed", "Custom validation failed for node", "image", name, details)
    ]


# rendering ------------------------------------------------------------------------------------------------


def image_job(wf: Workflow, output: str) -> tuple[str, dict[str, Any], list[Path]]:
    """What a SaveImage node's image is: (LocalBackend kind, params, inputs).

    A LoadImage feeding a VAEEncode above the sampler makes it img2img (KSampler denoise as strength); no
    sampler at all but a LoadImage makes it a resize (an upscale graph); anything else is t2i.
    """
    width, height = wf.size(output) or DEFAULT_IMAGE_SIZE
    params: dict[str, Any] = {
        "width": width,
        "height": height,
        "prompt": wf.prompt(output),
        "seed": wf.seed(output),
    }
    sampler = wf.find(output, *SAMPLERS)
    if sampler is None:
        source = wf.find(output, "LoadImage")
        return ("upscale", params, [wf.image_path(source)]) if source else ("t2i", params, [])
    source = wf.find(wf.find(output, "VAEEncode"), "LoadImage")
    if source is None:
        return "t2i", params, []
    params["strength"] = wf.number(sampler, "denoise", 1.0)
    return "img2img", params, [wf.image_path(source)]


def video_job(wf: Workflow, output: str) -> tuple[dict[str, Any], list[Path], float]:
    """A video output's (params, [first, last] frames, frame rate), from its WanFirstLastFrameToVideo."""
    flf = wf.find(output, "WanFirstLastFrameToVideo")
    if flf is None:
        raise RenderError(f"{wf.cls(output)} {output}: no WanFirstLastFrameToVideo node feeds it")
    start = wf.find(wf.source(flf, "start_image"), "LoadImage")
    if start is None:
        raise RenderError(f"WanFirstLastFrameToVideo {flf}: start_image must come from a LoadImage")
    end = wf.find(wf.source(flf, "end_image"), "LoadImage") or start
    fps = frame_rate(wf, output)
    params = {
        "width": wf.integer(flf, "width", WAN_DEFAULTS["width"]),
        "height": wf.integer(flf, "height", WAN_DEFAULTS["height"]),
        "num_frames": wf.integer(flf, "length", WAN_DEFAULTS["length"]),
        "fps": max(1, round(fps)),
    }
    return params, [wf.image_path(start), wf.image_path(end)], fps


def frame_rate(wf: Workflow, output: str) -> float:
    """VHS_VideoCombine's frame_rate, or the fps of the CreateVideo feeding a SaveVideo (default 16)."""
    if wf.cls(output) == "VHS_VideoCombine":
        return wf.number(output, "frame_rate", DEFAULT_FRAME_RATE)
    return wf.number(wf.find(output, "CreateVideo"), "fps", DEFAULT_FRAME_RATE)


def next_counter(folder: Path, stem: str) -> int:
    """ComfyUI's file counter: one past the highest `<stem>_NNNNN` already in the folder."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})_?\.")
    counters = (int(match[1]) for path in folder.iterdir() if (match := pattern.match(path.name)))
    return max(counters, default=0) + 1


class Renderer:
    """Renders output nodes with the embedded engine into root/output and describes them as §3 outputs."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self.engine = LocalBackend()

    def render(self, wf: Workflow, output: str) -> dict[str, Any]:
        if wf.cls(output) in IMAGE_OUTPUTS:
            kind, params, inputs = image_job(wf, output)
            path, record = self._target(wf, output, "_.png")
            self._run(kind, params, inputs, path)
            return {"images": [record]}
        params, inputs, fps = video_job(wf, output)
        if wf.cls(output) == "VHS_VideoCombine":
            path, record = self._target(wf, output, ".mp4")
            self._run("video", params, inputs, path)
            extra = {"format": "video/h264-mp4", "frame_rate": fps, "fullpath": str(path)}
            return {"gifs": [{**record, **extra}]}
        path, record = self._target(wf, output, "_.mp4")
        self._run("video", params, inputs, path)
        return {"images": [record], "animated": [True]}

    def _target(self, wf: Workflow, output: str, suffix: str) -> tuple[Path, dict[str, Any]]:
        """The next free `<prefix>_NNNNN<suffix>` under output/ (the prefix may name a subfolder)."""
        prefix = wf.string(output, "filename_prefix", "ComfyUI").replace("\\", "/")
        subfolder, _, stem = prefix.rpartition("/")
        try:
            folder = self.folders.folder("output", subfolder)
        except ValueError as exc:
            raise RenderError(f"filename_prefix {prefix!r}: {exc}") from exc
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{stem or 'ComfyUI'}_{next_counter(folder, stem or 'ComfyUI'):05}{suffix}"
        return folder / name, {"filename": name, "subfolder": subfolder, "type": "output"}

    def _run(self, kind: str, params: dict[str, Any], inputs: list[Path], out: Path) -> None:
        job = StepJob(
            step_id=f"comfyui-{out.stem}",
            kind=kind,
            engine="comfyui-emulator",
            endpoint=None,
            params=params,
            inputs=inputs,
            outputs=[out],
        )
        self.engine.run(job)


# runs -----------------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One accepted prompt."""

    number: int
    prompt_id: str
    graph: Graph
    extra_data: dict[str, Any]
    outputs: list[str]
    interrupted: threading.Event = field(default_factory=threading.Event, repr=False)

    def item(self) -> list[Any]:
        """The queue item and history `prompt`: [number, id, prompt, extra_data, outputs_to_execute]."""
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs]


class Interrupted(Exception):
    def __init__(self, node_id: str, node_type: str) -> None:
        super().__init__(node_id)
        self.node_id, self.node_type = node_id, node_type


class NodeFailed(Exception):
    def __init__(self, node_id: str, node_type: str, message: str, exception_type: str) -> None:
        super().__init__(message)
        self.node_id, self.node_type = node_id, node_type
        self.message, self.exception_type = message, exception_type


def message(name: str, run: Run, **data: Any) -> list[Any]:
    """One history status message: [name, {prompt_id, timestamp (ms), ...}]."""
    return [name, {"prompt_id": run.prompt_id, "timestamp": int(time.time() * 1000), **data}]


def history_entry(run: Run, outputs: dict[str, Any], messages: list[list[Any]], ok: bool) -> dict[str, Any]:
    meta = {
        node: {"node_id": node, "display_node": node, "parent_node": None, "real_node_id": node}
        for node in outputs
    }
    status = {"status_str": "success" if ok else "error", "completed": ok, "messages": messages}
    return {"prompt": run.item(), "outputs": outputs, "status": status, "meta": meta}


# the emulator ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Call(http_base.Call):
    """A request whose JSON body must be an object, as every ComfyUI route that reads one expects."""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object (an empty body is {}); anything else is a 400."""
        try:
            doc = json.loads(self.body or b"{}")
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise Rejected(Reply(400, b"the body must be a JSON object"))
        return doc


Handler = Callable[[Call], Reply]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    handler: Handler


class _RequestHandler(EmulatorRequestHandler):
    """`ComfyUIEmulator`'s handler (one request per connection is all a tunnelled client needs)."""

    server_version = "comfyui-emulator/1"
    log = LOG
    label = "comfyui emulator"

    def error_reply(self, exc: Exception) -> Reply:
        return Reply(500, f"emulator error: {exc}".encode())

    def do_GET(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        parts = urlsplit(self.path)
        if parts.path.removeprefix("/api") != "/ws" or not comfy_ws.is_upgrade(headers):
            self._serve("GET")
            return
        emulator = self.server.emulator
        assert isinstance(emulator, ComfyUIEmulator)
        if origin_mismatch(headers):
            self.send_error(403)
            return
        client_id = parse_qs(parts.query).get("clientId", [uuid.uuid4().hex])[-1]
        self.close_connection = True
        comfy_ws.serve(
            self.connection,
            self.path,
            headers,
            emulator.sockets,
            client_id,
            emulator.status_event(client_id),
            emulator.is_stopping,
        )


class ComfyUIEmulator(LoopbackEmulator):
    """ComfyUI's HTTP API on a loopback port, for tests and offline runs.

    >>> with ComfyUIEmulator(root=tmp / "comfy", faults=ComfyFaults(run_seconds=0.01)) as comfy:
    ...     httpx.post(f"{comfy.url}/prompt", json={"prompt": graph, "prompt_id": pid})
    """

    handler_class = _RequestHandler
    name = "ComfyUI emulator"
    thread_name = "comfyui-http"
    join_timeout_s = 10.0

    def __init__(
        self, *, root: Path, port: int = 0, faults: ComfyFaults | None = None, listen: str = "127.0.0.1"
    ) -> None:
        super().__init__(port=port)
        self.root = root
        self.listen = listen
        self.folders = Folders(root)
        self.renderer = Renderer(self.folders)
        self._faults = faults or ComfyFaults()
        self._cond = threading.Condition()
        self._pending: list[Run] = []
        self._running: Run | None = None
        self._history: dict[str, dict[str, Any]] = {}
        self._executed: list[str] = []
        self._number = 0
        self._warm = False
        self._stopping = False
        self.sockets = EventSockets()
        self.routes = self._routes()

    # lifecycle: `start()`, `stop()`, `url` and the context manager come from LoopbackEmulator, listening on
    # `listen` (the URL names 127.0.0.1 for "" or 0.0.0.0); the prompts run on a worker thread

    def _bound(self, server: EmulatorServer) -> None:
        self.port = server.server_address[1]
        with self._cond:
            self._stopping = False

    def _workers(self) -> list[threading.Thread]:
        return [threading.Thread(target=self._work, name="comfyui-worker", daemon=True)]

    def _before_shutdown(self) -> None:
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running.interrupted.set()
            self._cond.notify_all()

    def restart(self) -> None:
        """Like restarting ComfyUI: the running prompt stops without a history entry, the queue and history
        are forgotten and models must load again; files on disk stay and the port keeps serving."""
        with self._cond:
            if self._running is not None:
                self._running.interrupted.set()
            self._running = None
            self._pending.clear()
            self._history.clear()
            self._number = 0
            self._warm = False
            self._cond.notify_all()

    # inspection and control

    def status_event(self, client_id: str) -> dict[str, Any]:
        """What a websocket gets on connect: the queue length and its session id."""
        with self._cond:
            remaining = len(self._pending) + (1 if self._running is not None else 0)
        return {
            "type": "status",
            "data": {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": client_id},
        }

    def is_stopping(self) -> bool:
        with self._cond:
            return self._stopping

    @property
    def faults(self) -> ComfyFaults:
        with self._cond:
            return self._faults

    def set_faults(self, faults: ComfyFaults) -> None:
        with self._cond:
            self._faults = faults

    def executed(self) -> list[str]:
        """Prompt ids whose execution started, in order, across restarts (a resubmit after a restart runs
        again and appears twice; an idempotent repost never does)."""
        with self._cond:
            return list(self._executed)

    # the worker

    def _work(self) -> None:
        while (run := self._next_run()) is not None:
            try:
                entry = self._execute(run)
            except Exception as exc:  # a bug here must not kill the queue
                LOG.exception("comfyui emulator: %s failed", run.prompt_id)
                error = message(
                    "execution_error", run, exception_message=str(exc), exception_type=type(exc).__name__
                )
                entry = history_entry(run, {}, [message("execution_start", run), error], ok=False)
            if self._finish(run, entry):
                self._emit(run, "executing", node=None)  # ComfyUI's "done": after the history entry

    def _next_run(self) -> Run | None:
        with self._cond:
            while not self._pending and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            run = self._pending.pop(0)
            self._running = run
            self._executed.append(run.prompt_id)
            return run

    def _finish(self, run: Run, entry: dict[str, Any]) -> bool:
        with self._cond:
            kept = self._running is run  # else a restart forgot it
            if kept:
                self._history[run.prompt_id] = entry
                while len(self._history) > MAX_HISTORY:
                    del self._history[next(iter(self._history))]
                self._running = None
            self._cond.notify_all()
            return kept

    def _emit(self, run: Run, event_type: str, **data: Any) -> None:
        """A run event to the websocket of the client that queued the run (if it listens)."""
        self.sockets.send(run.extra_data.get("client_id"), event_type, {**data, "prompt_id": run.prompt_id})

    def _note(self, messages: list[list[Any]], run: Run, name: str, **data: Any) -> None:
        """A status message kept for the history entry and pushed to the run's websocket."""
        entry = message(name, run, **data)
        messages.append(entry)
        self.sockets.send(run.extra_data.get("client_id"), name, entry[1])

    def _execute(self, run: Run) -> dict[str, Any]:
        wf = Workflow(run.graph, self.folders)
        faults = self.faults
        messages: list[list[Any]] = []
        self._note(messages, run, "execution_start")
        self._note(messages, run, "execution_cached", nodes=[])
        outputs: dict[str, Any] = {}
        done: list[str] = []
        try:
            self._load_models(wf, run, faults)
            for output in run.outputs:
                outputs[output] = self._execute_output(wf, run, output, faults)
                self._emit(run, "executed", node=output, display_node=output, output=outputs[output])
                done.extend(node for node in wf.upstream(output) if node not in done)
        except Interrupted as exc:
            info = {"node_id": exc.node_id, "node_type": exc.node_type, "executed": done}
            self._note(messages, run, "execution_interrupted", **info)
            return history_entry(run, outputs, messages, ok=False)
        except NodeFailed as exc:
            self._note(messages, run, "execution_error", **_error_details(exc, done))
            return history_entry(run, outputs, messages, ok=False)
        self._note(messages, run, "execution_success")
        return history_entry(run, outputs, messages, ok=True)

    def _load_models(self, wf: Workflow, run: Run, faults: ComfyFaults) -> None:
        with self._cond:
            cold, self._warm = not self._warm, True
        if cold and faults.first_run_extra_s > 0:
            loader = wf.find(run.outputs[0], *LOADERS) or run.outputs[0]
            self._pause(wf, run, loader, faults.first_run_extra_s)

    def _execute_output(self, wf: Workflow, run: Run, output: str, faults: ComfyFaults) -> dict[str, Any]:
        self._pause(wf, run, wf.find(output, *SAMPLERS) or output, faults.run_seconds)
        keyword = faults.node_error_keyword
        failing = next((node for node, text in wf.texts(output) if keyword and keyword in text), None)
        if failing is not None:
            node = wf.find(output, *SAMPLERS) or failing
            reason = f"Emulated node failure: the prompt contains {keyword!r}"
            raise NodeFailed(node, wf.cls(node), reason, "RuntimeError")
        try:
            return self.renderer.render(wf, output)
        except Exception as exc:  # every render failure is the node's execution_error
            raise NodeFailed(output, wf.cls(output), str(exc), type(exc).__name__) from exc

    def _pause(self, wf: Workflow, run: Run, node: str, seconds: float) -> None:
        """Spend `seconds` "in" `node`, in sampler steps that each send a `progress` event; an interrupt
        (or restart, or stop) ends it at once."""
        self._emit(run, "executing", node=node, display_node=node)
        total = max(1, min(wf.integer(node, "steps", 1), MAX_PROGRESS_STEPS))
        for value in range(1, total + 1):
            if run.interrupted.wait(seconds / total):
                raise Interrupted(node, wf.cls(node))
            self._emit(run, "progress", value=value, max=total, node=node)

    # routes

    def _routes(self) -> list[Route]:
        table: list[tuple[str, str, Handler]] = [
            ("POST", r"/prompt", self._post_prompt),
            ("GET", r"/prompt", self._get_prompt),
            ("GET", r"/history", self._get_history),
            ("GET", r"/history/(?P<prompt_id>[^/]+)", self._get_history_entry),
            ("POST", r"/history", self._post_history),
            ("GET", r"/queue", self._get_queue),
            ("POST", r"/queue", self._post_queue),
            ("POST", r"/interrupt", self._interrupt),
            ("POST", r"/free", self._free),
            ("GET", r"/system_stats", self._system_stats),
            ("GET", r"/object_info", self._object_info),
            ("GET", r"/object_info/(?P<node_class>[^/]+)", self._object_info),
            ("GET", r"/view", self._view),
            ("POST", r"/upload/image", self._upload),
            ("GET", r"/_faults", self._get_faults),
            ("POST", r"/_faults", self._post_faults),
            ("POST", r"/_restart", self._post_restart),
            ("GET", r"/_executed", lambda call: json_reply({"executed": self.executed()})),
        ]
        return [Route(method, re.compile(pattern), handler) for method, pattern, handler in table]

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Answer one request (`headers` with lower-cased names); routes also answer under `/api`."""
        if origin_mismatch(headers):
            return Reply(403)
        parts = urlsplit(target)
        path = parts.path
        if path.startswith("/api/"):
            path = path[len("/api") :]
        query = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        call = Call(method, path, query, headers, body)
        allowed = False
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            allowed = True
            if route.method == method:
                try:
                    return route.handler(dataclasses.replace(call, params=match.groupdict()))
                except Rejected as exc:
                    return exc.reply
        return Reply(405, b"405: Method Not Allowed") if allowed else Reply(404, b"404: Not Found")

    # prompts

    def _post_prompt(self, call: Call) -> Reply:
        body = call.json()
        if "prompt" not in body:
            return error_reply("no_prompt", "No prompt provided", "No prompt provided")
        prompt_id = str(body.get("prompt_id") or uuid.uuid4())
        known = self._known(prompt_id)
        if known is not None:
            return json_reply({"prompt_id": prompt_id, "number": known, "node_errors": {}})
        outputs, node_errors = validate(body["prompt"], self.folders, self.faults.validation_error_class)
        extra_data = body.get("extra_data")
        extra = dict(extra_data) if isinstance(extra_data, dict) else {}
        if "client_id" in body:
            extra["client_id"] = body["client_id"]
        with self._cond:
            number = self._known(prompt_id)
            if number is None:
                number, self._number = self._number, self._number + 1
                self._pending.append(
                    Run(number, prompt_id, json.loads(json.dumps(body["prompt"])), extra, outputs)
                )
                self._cond.notify_all()
        return json_reply({"prompt_id": prompt_id, "number": number, "node_errors": node_errors})

    def _known(self, prompt_id: str) -> int | None:
        """The number of a prompt that is running, queued or in history, else None."""
        with self._cond:
            runs = [*self._pending, *([self._running] if self._running else [])]
            number = next((run.number for run in runs if run.prompt_id == prompt_id), None)
            entry = self._history.get(prompt_id)
            return int(entry["prompt"][0]) if number is None and entry is not None else number

    def _get_prompt(self, call: Call) -> Reply:
        with self._cond:
            remaining = len(self._pending) + (self._running is not None)
        return json_reply({"exec_info": {"queue_remaining": remaining}})

    def _get_history(self, call: Call) -> Reply:
        limit = call.query.get("max_items", "")
        with self._cond:
            items = list(self._history.items())
        if limit.isdigit():
            items = items[-int(limit) :] if int(limit) else []
        return json_reply(dict(items))

    def _get_history_entry(self, call: Call) -> Reply:
        prompt_id = unquote(call.params["prompt_id"])
        with self._cond:
            entry = self._history.get(prompt_id)
        return json_reply({prompt_id: entry} if entry is not None else {})

    def _post_history(self, call: Call) -> Reply:
        body = call.json()
        with self._cond:
            if body.get("clear"):
                self._history.clear()
            for prompt_id in body.get("delete") or []:
                self._history.pop(str(prompt_id), None)
        return Reply(200)

    def _get_queue(self, call: Call) -> Reply:
        with self._cond:
            running = [self._running.item()] if self._running is not None else []
            pending = [run.item() for run in self._pending]
        return json_reply({"queue_running": running, "queue_pending": pending})

    def _post_queue(self, call: Call) -> Reply:
        body = call.json()
        with self._cond:
            if body.get("clear"):
                self._pending.clear()
            doomed = {str(prompt_id) for prompt_id in body.get("delete") or []}
            self._pending = [run for run in self._pending if run.prompt_id not in doomed]
        return Reply(200)

    def _interrupt(self, call: Call) -> Reply:
        """Stop the running prompt; with {"prompt_id"}, only if that is the one running."""
        wanted = call.json().get("prompt_id")
        with self._cond:
            run = self._running
            if run is not None and (wanted is None or str(wanted) == run.prompt_id):
                run.interrupted.set()
        return Reply(200)

    def _free(self, call: Call) -> Reply:
        body = call.json()
        if body.get("unload_models") or body.get("free_memory"):
            with self._cond:
                self._warm = False
        return Reply(200)

    # information

    def _system_stats(self, call: Call) -> Reply:
        with self._cond:
            vram_free = VRAM_TOTAL - (VRAM_MODELS if self._warm else GIB)
        device = {
            "name": "cuda:0 NVIDIA A100-SXM4-80GB : cudaMallocAsync",
            "type": "cuda",
            "index": 0,
            "vram_total": VRAM_TOTAL,
            "vram_free": vram_free,
            "torch_vram_total": VRAM_TOTAL - 2 * GIB,
            "torch_vram_free": vram_free - GIB,
        }
        system = {
            "os": "posix",
            "ram_total": RAM_TOTAL,
            "ram_free": RAM_TOTAL // 2,
            "comfyui_version": COMFYUI_VERSION,
            "python_version": sys.version,
            "pytorch_version": "2.7.1+cu128",
            "embedded_python": False,
            "argv": ["main.py", "--listen", self.listen, "--port", str(self.port)],
        }
        return json_reply({"system": system, "devices": [device]})

    def _object_info(self, call: Call) -> Reply:
        files = self.folders.listing("input")
        wanted = call.params.get("node_class")
        if wanted is None:
            return json_reply({name: node_info(name, spec, files) for name, spec in NODES.items()})
        name = unquote(wanted)
        spec = NODES.get(name)
        return json_reply({name: node_info(name, spec, files)} if spec is not None else {})

    # files

    def _view(self, call: Call) -> Reply:
        filename = call.query.get("filename")
        if filename is None:
            return Reply(404, b"404: Not Found")
        if not filename or filename.startswith("/") or ".." in filename:
            return Reply(400, b"400: Bad Request")
        kind = call.query.get("type") or "output"
        if kind not in FOLDER_TYPES:
            return Reply(400, b"400: Bad Request")
        try:
            folder = self.folders.folder(kind, call.query.get("subfolder", ""))
        except ValueError:
            return Reply(403, b"403: Forbidden")
        path = folder / filename
        if not path.is_file():
            return Reply(404, b"404: Not Found")
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return Reply(200, path.read_bytes(), content_type, {"Content-Disposition": f'filename="{path.name}"'})

    def _upload(self, call: Call) -> Reply:
        fields = parse_multipart(call.headers.get("content-type", ""), call.body)
        image = fields.get("image")
        name = Path((image.filename or "").replace("\\", "/")).name if image is not None else ""
        if image is None or not name or name == "..":
            return Reply(400, b"400: no image file")
        kind = fields["type"].text() if "type" in fields else "input"
        subfolder = fields["subfolder"].text() if "subfolder" in fields else ""
        overwrite = "overwrite" in fields and fields["overwrite"].text().lower() in ("true", "1")
        try:
            folder = self.folders.folder(kind or "input", subfolder)
        except ValueError:
            return Reply(400, b"400: bad type or subfolder")
        folder.mkdir(parents=True, exist_ok=True)
        name = free_name(folder, name, image.data, overwrite)
        (folder / name).write_bytes(image.data)
        return json_reply({"name": name, "subfolder": subfolder, "type": kind or "input"})

    # control

    def _get_faults(self, call: Call) -> Reply:
        return json_reply(dataclasses.asdict(self.faults))

    def _post_faults(self, call: Call) -> Reply:
        try:
            faults = dataclasses.replace(self.faults, **call.json())
        except (TypeError, ValueError) as exc:
            return Reply(400, f"bad faults: {exc}".encode())
        self.set_faults(faults)
        return json_reply(dataclasses.asdict(faults))

    def _post_restart(self, call: Call) -> Reply:
        self.restart()
        return Reply(200)


def _error_details(exc: NodeFailed, executed: list[str]) -> dict[str, Any]:
    return {
        "node_id": exc.node_id,
        "node_type": exc.node_type,
        "executed": executed,
        "exception_message": exc.message,
        "exception_type": exc.exception_type,
        "traceback": [f"{exc.exception_type}: {exc.message}\n"],
        "current_inputs": {},
        "current_outputs": {},
    }


def origin_mismatch(headers: Mapping[str, str]) -> bool:
    """ComfyUI's origin-only check: both Host and Origin present and naming different host:port."""
    host, origin = headers.get("host"), headers.get("origin")
    if not host or not origin:
        return False
    parsed = urlsplit(origin)
    default = 443 if parsed.scheme == "https" else 80
    try:
        origin_port = parsed.port or default
        host_port = urlsplit(f"//{host}").port or default
    except ValueError:
        return True
    return (parsed.hostname or "", origin_port) != (urlsplit(f"//{host}").hostname or "", host_port)


def free_name(folder: Path, name: str, data: bytes, overwrite: bool) -> str:
    """ComfyUI's upload naming: keep `name`, reuse an identical file, else `stem (1).ext`, `stem (2).ext`."""
    if overwrite:
        return name
    stem, suffix = Path(name).stem, Path(name).suffix
    candidate, index = name, 1
    while (folder / candidate).exists() and (folder / candidate).read_bytes() != data:
        candidate, index = f"{stem} ({index}){suffix}", index + 1
    return candidate


# multipart ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Part:
    data: bytes
    filename: str | None = None

    def text(self) -> str:
        return self.data.decode("utf-8", "replace")


_PARAM = re.compile(r'(\w+)="([^"]*)"')


def parse_multipart(content_type: str, body: bytes) -> dict[str, Part]:
    """The fields of a multipart/form-data body by name, bytes kept exact; a 400 if it is not one."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/form-data") or boundary is None:
        raise Rejected(Reply(400, b"400: expected multipart/form-data"))
    fields: dict[str, Part] = {}
    for chunk in body.split(b"--" + boundary[1].encode())[1:]:
        if chunk.startswith(b"--"):
            break
        head, found, data = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        disposition = next(
            (
                line
                for line in head.decode("utf-8", "replace").split("\r\n")
                if line.lower().startswith("content-disposition")
            ),
            "",
        )
        params = dict(_PARAM.findall(disposition))
        if found and "name" in params:
            fields[params["name"]] = Part(data.removesuffix(b"\r\n"), params.get("filename"))
    return fields


# the command line -----------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m emulators.comfyui_server --root DIR --port P [--listen 127.0.0.1]`, until
    SIGINT/SIGTERM. Prints `comfyui emulator on http://127.0.0.1:P` once it is listening."""
    parser = argparse.ArgumentParser(description="ComfyUI HTTP API emulator")
    parser.add_argument("--root", type=Path, required=True, help="holds input/, output/ and temp/")
    parser.add_argument("--port", type=int, default=8188, help="0 picks a free port")
    parser.add_argument("--listen", default="127.0.0.1")
    parser.add_argument("--run-seconds", type=float, default=ComfyFaults.run_seconds)
    parser.add_argument("--first-run-extra-s", type=float, default=ComfyFaults.first_run_extra_s)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    faults = ComfyFaults(run_seconds=args.run_seconds, first_run_extra_s=args.first_run_extra_s)
    with ComfyUIEmulator(root=args.root, port=args.port, faults=faults, listen=args.listen) as emulator:
        print(f"comfyui emulator on {emulator.url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
