"""Small JPEG thumbnails for the dailies page: keyframes shrunk with Pillow, a clip's first frame pulled
with the farm's ffmpeg. A full-size keyframe is megabytes and a clip tens of them; a page of forty shots
must open at once, locally or over an SSH tunnel.

A thumbnail newer than its source is reused, so re-rendering the page on every request stays cheap.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from PIL import Image

from workers.base import BackendError
from workers.media import extract_frame

THUMB_EDGE = 320
"""Longest side in pixels: twice the size the page shows them at, so they stay sharp on HiDPI screens."""
JPEG_QUALITY = 82
CLIP_SUFFIXES = (".mp4", ".mov", ".webm")


def thumbnail(source: Path, folder: Path) -> str | None:
    """The file name (in `folder`) of `source`'s thumbnail, made if missing or stale; None when the source
    is not there or cannot be read (the page then says so instead of failing)."""
    if not source.is_file():
        return None
    is_clip = source.suffix.lower() in CLIP_SUFFIXES
    name = f"{source.stem}.poster.jpg" if is_clip else f"{source.stem}.jpg"
    target = folder / name
    if target.is_file() and target.stat().st_mtime >= source.stat().st_mtime:
        return name
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if is_clip:
            _poster(source, target)
        else:
            _shrink(source, target)
    except (OSError, BackendError):  # Pillow's UnidentifiedImageError is an OSError
        return None
    return name


def _poster(clip: Path, target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="dailies-") as work:
        _shrink(extract_frame(clip, 0, Path(work) / "frame.png"), target)


def _shrink(image: Path, target: Path) -> None:
    """Write the thumbnail beside `target` and move it into place: a reader never sees half a JPEG."""
    partial = target.with_name(f"{target.stem}.{secrets.token_hex(4)}.partial.jpg")
    try:
        with Image.open(image) as frame:
            small = frame.convert("RGB")
            small.thumbnail((THUMB_EDGE, THUMB_EDGE))
            small.save(partial, "JPEG", quality=JPEG_QUALITY)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
