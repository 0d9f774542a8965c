"""Request bodies for fal.ai endpoints, built from a step's compiled parameters (the engine cards' values).

Shapes follow fal's endpoint schemas: sizes as width/height objects, LoRAs as {path, scale}, seeds always
sent; Z-Image has no guidance_scale field, so none is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from workers.base import PermanentError, StepJob

Upload = Callable[[Path], str]


def build_payload(job: StepJob, upload: Upload) -> dict[str, Any]:
    builders: dict[str, Callable[[StepJob, Upload], dict[str, Any]]] = {
        "t2i": _text_to_image,
        "img2img": _image_to_image,
        "upscale": _upscale,
        "video": _first_last_video,
    }
    if job.kind not in builders:
        raise PermanentError(f"fal has no endpoint for {job.kind} steps")
    return builders[job.kind](job, upload)


def _text_to_image(job: StepJob, upload: Upload) -> dict[str, Any]:
    p = job.params
    payload: dict[str, Any] = {
        "prompt": p["prompt"],
        "image_size": {"width": p["width"], "height": p["height"]},
        "num_inference_steps": p["steps"],
        "seed": p["seed"],
        "num_images": 1,
        "loras": [{"path": lora["path"], "scale": lora["scale"]} for lora in p.get("loras", [])],
        "enable_safety_checker": True,
        "output_format": "png",
    }
    if p.get("guidance") is not None:
        payload["guidance_scale"] = p["guidance"]
    return payload


def _image_to_image(job: StepJob, upload: Upload) -> dict[str, Any]:
    return {
        **_text_to_image(job, upload),
        "image_url": upload(job.inputs[0]),
        "strength": job.params["strength"],
    }


def _upscale(job: StepJob, upload: Upload) -> dict[str, Any]:
    with Image.open(job.inputs[0]) as source:
        width = source.width
    factor = max(1.0, round(job.params["width"] / width, 4))
    return {
        "image_url": upload(job.inputs[0]),
        "upscale_mode": "factor",
        "upscale_factor": factor,
        "output_format": "png",
        "seed": job.params["seed"],
    }


def _first_last_video(job: StepJob, upload: Upload) -> dict[str, Any]:
    p = job.params
    return {
        "prompt": p["prompt"],
        "image_url": upload(job.inputs[0]),
        "end_image_url": upload(job.inputs[1]),
        "num_frames": p["num_frames"],
        "frames_per_second": p["fps"],
        "resolution": p["resolution"],
        "aspect_ratio": p["aspect_ratio"],
        "num_inference_steps": p["steps"],
        "seed": p["seed"],
        "loras": [
            {"path": x["path"], "scale": x["scale"], "transformer": x["transformer"]} for x in p["loras"]
        ],
        "interpolator_model": "none",  # interpolation would change the frame count and fps the plan expects
        "enable_safety_checker": True,
    }
