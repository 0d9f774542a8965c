"""The embedded engine: every step kind rendered on the CPU with Pillow and ffmpeg, at no cost.

It stands in for the paid models (so the whole farm runs end to end on a laptop, in CI and in the demo)
and does the real post-production work (split, upscale, Ken Burns, hold, concat). Stand-in images are
not art, but they are honest: exactly the planned size, visibly derived from their prompt, seed and
inputs, and byte-identical for the same step, so content-addressed reuse can be tested for real.
"""

from __future__ import annotations

import colorsys
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from workers import media
from workers.base import PermanentError, StepJob, StepResult

FLF_ZOOM = 0.06
"""Peak zoom of the stand-in first-last-frame move, reached mid-clip; 1.0 at both ends so the clip
starts on the first image and ends on the last."""
TEXT_COLOUR = (255, 255, 255)
STROKE_COLOUR = (0, 0, 0)

Handler = Callable[[StepJob], dict[str, Any]]


class LocalBackend:
    """Runs t2i, img2img, upscale, split, video, ken_burns, hold and concat steps locally."""

    name = "local"

    def run(self, job: StepJob) -> StepResult:
        """Render one step into `job.outputs`; unknown kinds and bad parameters fail permanently."""
        handler = HANDLERS.get(job.kind)
        if handler is None:
            raise PermanentError(f"the local engine cannot run {job.kind!r} steps")
        metadata = {"engine": self.name, "kind": job.kind, **handler(job)}
        return StepResult(cost_usd=Decimal(0), metadata=metadata)


# image steps --------------------------------------------------------------------------------------------


def t2i(job: StepJob) -> dict[str, Any]:
    """A gradient in colours drawn from the prompt and seed, captioned with the prompt and the seed."""
    (out,) = _outputs(job, 1)
    size = _size(job)
    prompt, seed = _str(job, "prompt"), _int(job, "seed", minimum=0)
    image = gradient(size, prompt, seed)
    caption(image, prompt, seed)
    _save_png(image, out)
    return {"width": size[0], "height": size[1], "seed": seed}


def img2img(job: StepJob) -> dict[str, Any]:
    """The source blended toward the new prompt's gradient by `strength`, captioned with the new prompt."""
    (source,) = _inputs(job, 1)
    (out,) = _outputs(job, 1)
    size = _size(job)
    prompt, seed = _str(job, "prompt"), _int(job, "seed", minimum=0)
    strength = _float(job, "strength")
    if not 0 < strength <= 1:
        raise PermanentError(f"{job.step_id}: strength must be in (0, 1], got {strength}")
    base = cover(load_image(source), size)
    image = Image.blend(base, gradient(size, prompt, seed), strength)
    caption(image, prompt, seed)
    _save_png(image, out)
    return {"width": size[0], "height": size[1], "seed": seed, "strength": strength}


def upscale(job: StepJob) -> dict[str, Any]:
    """Lanczos resize to the planned size, cover-cropping when the aspect differs (never letterboxed)."""
    (source,) = _inputs(job, 1)
    (out,) = _outputs(job, 1)
    size = _size(job)
    image = load_image(source)
    _save_png(cover(image, size), out)
    return {"width": size[0], "height": size[1], "source_size": list(image.size)}


def split(job: StepJob) -> dict[str, Any]:
    """Cut a strip into equal vertical panels, left to right, that tile it exactly."""
    (source,) = _inputs(job, 1)
    panels = job.params.get("panels")
    if not isinstance(panels, list) or not panels:
        raise PermanentError(f"{job.step_id}: params.panels must be a non-empty list")
    outputs = _outputs(job, len(panels))
    strip = load_image(source)
    boxes = panel_boxes(strip.size, len(panels))
    for box, out in zip(boxes, outputs, strict=True):
        _save_png(strip.crop(box), out)
    return {"strip_size": list(strip.size), "boxes": [list(box) for box in boxes]}


def panel_boxes(size: tuple[int, int], count: int) -> list[tuple[int, int, int, int]]:
    """Crop boxes for `count` panels; when the width does not divide, the spare pixels go to later panels."""
    width, height = size
    edges = [i * width // count for i in range(count + 1)]
    return [(edges[i], 0, edges[i + 1], height) for i in range(count)]


# video steps --------------------------------------------------------------------------------------------


def video(job: StepJob) -> dict[str, Any]:
    """Stand-in first-last-frame clip: a smooth cross-fade from first to last under a gentle zoom."""
    first_path, last_path = _inputs(job, 2)
    (out,) = _outputs(job, 1)
    size, fps, count = _size(job), _int(job, "fps"), _int(job, "num_frames", minimum=2)
    first, last = cover(load_image(first_path), size), cover(load_image(last_path), size)
    return _encode(flf_frames(first, last, count), out, fps, size)


def ken_burns(job: StepJob) -> dict[str, Any]:
    """A steady push from `zoom_from` to `zoom_to` on one image, for `duration_s`."""
    (source,) = _inputs(job, 1)
    (out,) = _outputs(job, 1)
    size, fps = _size(job), _int(job, "fps")
    count = _frame_count(job, fps)
    zoom_from, zoom_to = _float(job, "zoom_from"), _float(job, "zoom_to")
    if min(zoom_from, zoom_to) < 1:
        raise PermanentError(f"{job.step_id}: zooms below 1.0 would show past the image's edges")
    image = cover(load_image(source), size)
    frames = (zoomed(image, zoom_from + (zoom_to - zoom_from) * _t(i, count)) for i in range(count))
    return _encode(frames, out, fps, size)


def hold(job: StepJob) -> dict[str, Any]:
    """One image held still for `duration_s`."""
    (source,) = _inputs(job, 1)
    (out,) = _outputs(job, 1)
    size, fps = _size(job), _int(job, "fps")
    count = _frame_count(job, fps)
    image = cover(load_image(source), size)
    return _encode((image for _ in range(count)), out, fps, size)


def concat(job: StepJob) -> dict[str, Any]:
    """Join clips in plan order, by stream copy when they match (see `media.concat`)."""
    if not job.inputs:
        raise PermanentError(f"{job.step_id}: concat needs at least one clip")
    (out,) = _outputs(job, 1)
    info, method = media.concat(job.inputs, out)
    return {**_video_meta(info), "method": method, "clips": len(job.inputs)}


def flf_frames(first: Image.Image, last: Image.Image, count: int) -> Iterator[Image.Image]:
    """Frames of the cross-fade: eased so it starts and lands softly, zoom peaking mid-clip."""
    for i in range(count):
        t = _t(i, count)
        eased = t * t * (3 - 2 * t)
        mixed = Image.blend(first, last, eased)
        yield zoomed(mixed, 1 + FLF_ZOOM * 4 * t * (1 - t))


def zoomed(image: Image.Image, zoom: float) -> Image.Image:
    """The centre 1/zoom of the image scaled back to full size; a sub-pixel box keeps slow zooms smooth."""
    width, height = image.size
    crop_w, crop_h = width / zoom, height / zoom
    box = ((width - crop_w) / 2, (height - crop_h) / 2, (width + crop_w) / 2, (height + crop_h) / 2)
    return image.resize(image.size, Image.Resampling.BICUBIC, box=box)


def _encode(frames: Iterator[Image.Image], out: Path, fps: int, size: tuple[int, int]) -> dict[str, Any]:
    return _video_meta(media.encode_frames(frames, out, fps, size))


def _video_meta(info: media.VideoInfo) -> dict[str, Any]:
    return {
        "codec": info.codec,
        "width": info.width,
        "height": info.height,
        "fps": info.fps,
        "frames": info.frames,
        "duration_s": info.duration_s,
    }


def _frame_count(job: StepJob, fps: int) -> int:
    count = round(_float(job, "duration_s") * fps)
    if count < 1:
        raise PermanentError(f"{job.step_id}: duration_s is shorter than one frame")
    return count


def _t(index: int, count: int) -> float:
    """Position of frame `index` in [0, 1], exactly 0 on the first frame and 1 on the last."""
    return index / (count - 1) if count > 1 else 0.0


# drawing ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Palette:
    """Colours and layout of a stand-in image, all drawn from one hash of prompt and seed."""

    start: tuple[int, int, int]
    end: tuple[int, int, int]
    glow: tuple[int, int, int]
    tilt: float
    """0 = top-to-bottom gradient, 1 = left-to-right."""
    flip: bool
    centre: tuple[float, float]

    @classmethod
    def of(cls, prompt: str, seed: int) -> Palette:
        digest = hashlib.sha256(f"{seed}\x1f{prompt}".encode()).digest()
        return cls(
            start=_colour(digest[0], digest[1], digest[2]),
            end=_colour(digest[3], digest[4], digest[5]),
            glow=_colour(digest[6], digest[7], digest[8]),
            tilt=digest[9] / 255,
            flip=bool(digest[10] & 1),
            centre=(0.15 + 0.7 * digest[11] / 255, 0.15 + 0.7 * digest[12] / 255),
        )


def _colour(hue: int, saturation: int, value: int) -> tuple[int, int, int]:
    """A mid-tone colour: saturated enough to tell prompts apart, dark enough for white captions."""
    r, g, b = colorsys.hsv_to_rgb(hue / 255, 0.45 + 0.4 * saturation / 255, 0.35 + 0.4 * value / 255)
    return round(r * 255), round(g * 255), round(b * 255)


def gradient(size: tuple[int, int], prompt: str, seed: int) -> Image.Image:
    """A smooth two-colour gradient with a soft glow, all from the prompt and seed."""
    palette = Palette.of(prompt, seed)
    vertical = Image.linear_gradient("L")
    horizontal = vertical.transpose(Image.Transpose.ROTATE_90)
    mask = Image.blend(vertical, horizontal, palette.tilt)
    if palette.flip:
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    mask = mask.resize(size, Image.Resampling.BICUBIC)
    image = Image.composite(Image.new("RGB", size, palette.end), Image.new("RGB", size, palette.start), mask)
    return Image.composite(Image.new("RGB", size, palette.glow), image, _glow_mask(size, palette.centre))


def _glow_mask(size: tuple[int, int], centre: tuple[float, float]) -> Image.Image:
    """A soft round light at `centre` (fractions of the size), 60% opaque at its heart, fading to nothing."""
    width, height = size
    diameter = max(2, round(max(width, height) * 0.9))
    spot = (
        Image.radial_gradient("L").point(_GLOW_FALLOFF).resize((diameter, diameter), Image.Resampling.BICUBIC)
    )
    mask = Image.new("L", size, 0)
    mask.paste(spot, (round(centre[0] * width) - diameter // 2, round(centre[1] * height) - diameter // 2))
    return mask


_GLOW_FALLOFF = [round(153 * max(0.0, 1 - v / 181) ** 2) for v in range(256)]
"""Pillow's radial gradient reads 181 at the inscribed circle (255 in the corners): fade to 0 there, so the
glow never shows the square it was pasted in."""


def caption(image: Image.Image, prompt: str, seed: int) -> None:
    """Write the prompt, word-wrapped from the top, and a small seed label at the bottom."""
    width, height = image.size
    size = max(8, min(width, height) // 22)
    margin = max(4, min(width, height) // 24)
    font = _font(size)
    line_height = round(size * 1.25)
    rows = max(1, (height * 3 // 4 - margin) // line_height)
    draw = ImageDraw.Draw(image)
    stroke = max(1, size // 14)
    for row, line in enumerate(wrap(draw, prompt, font, width - 2 * margin, rows)):
        xy = (margin, margin + row * line_height)
        draw.text(xy, line, font=font, fill=TEXT_COLOUR, stroke_width=stroke, stroke_fill=STROKE_COLOUR)
    small = _font(max(8, size * 3 // 5))
    label_xy = (margin, height - margin - small.size)
    draw.text(
        label_xy, f"seed {seed}", font=small, fill=TEXT_COLOUR, stroke_width=1, stroke_fill=STROKE_COLOUR
    )


def wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int, rows: int
) -> list[str]:
    """Greedy word wrap to `width` pixels; past `rows` lines the last one ends in an ellipsis."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    if len(lines) > rows:
        lines = [*lines[: rows - 1], f"{lines[rows - 1]} ..."]
    return lines


@lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font: no font files to ship or find, and the same glyphs on every machine."""
    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        raise PermanentError("Pillow was built without FreeType; the local engine needs it for captions")
    return font


def cover(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scale to fill `size` and crop the overflow evenly (Lanczos): no bars, no stretching."""
    if image.size == size:
        return image.copy()
    return ImageOps.fit(image, size, Image.Resampling.LANCZOS)


def load_image(path: Path) -> Image.Image:
    """Open an input as RGB; a missing or unreadable file is the step's permanent failure."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise PermanentError(f"cannot read image {path.name}: {exc}") from exc


def _save_png(image: Image.Image, out: Path) -> None:
    with media.atomic_output(out) as tmp:
        image.save(tmp, format="PNG")


# parameters ---------------------------------------------------------------------------------------------


def _inputs(job: StepJob, count: int) -> list[Path]:
    if len(job.inputs) != count:
        raise PermanentError(f"{job.step_id}: {job.kind} takes {count} input(s), got {len(job.inputs)}")
    return list(job.inputs)


def _outputs(job: StepJob, count: int) -> list[Path]:
    if len(job.outputs) != count:
        raise PermanentError(f"{job.step_id}: {job.kind} writes {count} output(s), got {len(job.outputs)}")
    return list(job.outputs)


def _size(job: StepJob) -> tuple[int, int]:
    return _int(job, "width"), _int(job, "height")


def _int(job: StepJob, key: str, minimum: int = 1) -> int:
    value = job.params.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PermanentError(f"{job.step_id}: params.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _float(job: StepJob, key: str) -> float:
    value = job.params.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise PermanentError(f"{job.step_id}: params.{key} must be a number, got {value!r}")
    return float(value)


def _str(job: StepJob, key: str) -> str:
    value = job.params.get(key)
    if not isinstance(value, str):
        raise PermanentError(f"{job.step_id}: params.{key} must be a string, got {value!r}")
    return value


HANDLERS: dict[str, Handler] = {
    "t2i": t2i,
    "img2img": img2img,
    "upscale": upscale,
    "split": split,
    "video": video,
    "ken_burns": ken_burns,
    "hold": hold,
    "concat": concat,
}
"""Step kind -> renderer; the keys are the plan's `StepKind` values."""
