"""Fetch a finished request's files and check them before the step counts as done."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from workers.base import ContentPolicyError, PermanentError, StepJob, TransientError, scratch_room
from workers.media import probe

MAX_DOWNLOAD_BYTES = 1 << 30
SIZE_TOLERANCE = 0.03


def save_outputs(job: StepJob, result: dict[str, Any]) -> dict[str, Any]:
    """Download, check type, size and dimensions, write to the job's output path; return notes."""
    if job.kind == "video":
        url = _file(result, "video")["url"]
        _download(url, job.outputs[0])
        return check_video(job)
    if any(result.get("has_nsfw_concepts") or []):
        raise ContentPolicyError("fal's safety checker flagged the image (has_nsfw_concepts)")
    image = _file(result, "image") if job.kind == "upscale" else _first_image(result)
    _download(image["url"], job.outputs[0])
    return check_image(job)


def _first_image(result: dict[str, Any]) -> dict[str, Any]:
    images = result.get("images") or []
    if not images:
        raise PermanentError("fal returned no image")
    first: dict[str, Any] = images[0]
    return first


def _file(result: dict[str, Any], key: str) -> dict[str, Any]:
    value = result.get(key)
    if not isinstance(value, dict) or "url" not in value:
        raise PermanentError(f"fal's result has no {key} file")
    return value


_downloads: httpx.Client | None = None
_downloads_lock = threading.Lock()


def _download_client() -> httpx.Client:
    """One client for every download of this process: building one costs tens of milliseconds of CPU
    (its TLS context), which a busy cloud worker paid per output."""
    global _downloads
    with _downloads_lock:
        if _downloads is None:
            _downloads = httpx.Client(timeout=120, follow_redirects=True)
        return _downloads


def _download(url: str, dest: Path) -> None:
    """Stream to a temporary file beside `dest`, then rename: a half download is never an output."""
    tmp = dest.with_name(f".{dest.name}.part")
    try:
        with scratch_room(dest.parent), _download_client().stream("GET", url) as response:
            if response.status_code >= 500:
                raise TransientError(f"downloading the output failed with HTTP {response.status_code}")
            if response.status_code != 200:
                raise PermanentError(f"downloading the output failed with HTTP {response.status_code}")
            _write_capped(response, tmp)
        os.replace(tmp, dest)
    except httpx.HTTPError as exc:
        raise TransientError(f"downloading the output failed: {exc}") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _write_capped(response: httpx.Response, tmp: Path) -> None:
    written = 0
    with tmp.open("wb") as handle:
        for chunk in response.iter_bytes():
            written += len(chunk)
            if written > MAX_DOWNLOAD_BYTES:
                raise PermanentError("the output is larger than 1 GiB")
            handle.write(chunk)
    if written == 0:
        raise PermanentError("the output file is empty")


def check_image(job: StepJob) -> dict[str, Any]:
    path = job.outputs[0]
    want = (int(job.params["width"]), int(job.params["height"]))
    try:
        with Image.open(path) as img:
            img.load()
            got, mode = img.size, img.mode
            fmt = img.format
    except OSError as exc:
        raise PermanentError(f"the output is not a readable image: {exc}") from exc
    if got == want:
        return {"format": fmt, "size": list(got)}
    if job.kind != "upscale" or not _close(got, want):
        raise PermanentError(f"the output is {got[0]}x{got[1]}, expected {want[0]}x{want[1]}")
    with Image.open(path) as img:
        img.convert("RGB" if mode != "RGBA" else mode).resize(want, Image.Resampling.LANCZOS).save(
            path, "PNG"
        )
    return {"format": fmt, "size": list(want), "conformed_from": list(got)}


def _close(got: tuple[int, int], want: tuple[int, int]) -> bool:
    """Same aspect ratio (within 3%) and at least 90% of the wanted size: safe to resample exactly."""
    aspect = (got[0] / got[1]) / (want[0] / want[1])
    return abs(aspect - 1) <= SIZE_TOLERANCE and got[0] >= 0.9 * want[0] and got[1] >= 0.9 * want[1]


def check_video(job: StepJob) -> dict[str, Any]:
    info = probe(job.outputs[0])
    want = (int(job.params["width"]), int(job.params["height"]))
    if (info.width, info.height) != want:
        raise PermanentError(f"the clip is {info.width}x{info.height}, expected {want[0]}x{want[1]}")
    if info.frames <= 0:
        raise PermanentError("the clip has no frames")
    return {"codec": info.codec, "frames": info.frames, "fps": info.fps, "duration_s": info.duration_s}
