"""The embedded engine renders every step kind for real: exact sizes, deterministic pixels, real H.264."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageStat

from workers import media
from workers.base import Backend, PermanentError, StepJob, TransientError
from workers.local import LocalBackend, cover

ENGINE = LocalBackend()
FPS = 16
SMALL = {"width": 96, "height": 160}
PROMPT = "A lighthouse keeper climbs the spiral stairs at dusk, lantern swinging in the wind."


def run(kind: str, params: dict[str, Any], inputs: list[Path], outputs: list[Path]) -> dict[str, Any]:
    job = StepJob(f"test-{kind}", kind, "test", None, params, inputs, outputs)
    result = ENGINE.run(job)
    assert result.cost_usd == 0
    return result.metadata


def t2i(out: Path, prompt: str = PROMPT, seed: int = 7, size: dict[str, int] = SMALL) -> Path:
    run("t2i", {"prompt": prompt, "seed": seed, **size}, [], [out])
    return out


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel value, 0..255."""
    stat = ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB")))
    return sum(stat.mean) / 3


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def rgb(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def frame(video: Path, index: int, tmp_path: Path) -> Image.Image:
    return rgb(media.extract_frame(video, index, tmp_path / f"{video.stem}-{index}.png"))


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial" in p.name)


def test_is_an_engine() -> None:
    engine: Backend = LocalBackend()
    assert engine.name == "local"


# images ------------------------------------------------------------------------------------------------


def test_t2i_exact_size_and_deterministic(tmp_path: Path) -> None:
    size = {"width": 1536, "height": 912}
    a, b = t2i(tmp_path / "a.png", size=size), t2i(tmp_path / "b.png", size=size)
    assert size_of(a) == (1536, 912)
    assert a.read_bytes() == b.read_bytes()
    odd = t2i(tmp_path / "odd.png", size={"width": 97, "height": 61})
    assert size_of(odd) == (97, 61)
    assert leftovers(tmp_path) == []


def test_t2i_depends_on_prompt_and_seed(tmp_path: Path) -> None:
    base = rgb(t2i(tmp_path / "base.png"))
    other_prompt = rgb(t2i(tmp_path / "prompt.png", prompt="A whale surfaces beside the rocks."))
    other_seed = rgb(t2i(tmp_path / "seed.png", seed=8))
    assert mean_diff(base, other_prompt) > 5
    assert mean_diff(base, other_seed) > 5


def test_img2img_changes_more_with_strength(tmp_path: Path) -> None:
    source = t2i(tmp_path / "source.png", size={"width": 128, "height": 224})
    reference = cover(rgb(source), (96, 160))
    diffs = []
    for strength in (0.2, 0.5, 0.9):
        out = tmp_path / f"s{strength}.png"
        params = {"prompt": "The keeper looks out to sea.", "seed": 3, "strength": strength, **SMALL}
        meta = run("img2img", params, [source], [out])
        assert meta["strength"] == strength
        image = rgb(out)
        assert image.size == (96, 160)
        diffs.append(mean_diff(image, reference))
    assert diffs[0] < diffs[1] < diffs[2]


def test_img2img_refuses_zero_strength(tmp_path: Path) -> None:
    source = t2i(tmp_path / "source.png")
    params = {"prompt": "x", "seed": 1, "strength": 0, **SMALL}
    with pytest.raises(PermanentError, match="strength"):
        run("img2img", params, [source], [tmp_path / "out.png"])


def test_upscale_cover_crops_to_the_planned_size(tmp_path: Path) -> None:
    panel = t2i(tmp_path / "panel.png", size={"width": 512, "height": 912})
    out = tmp_path / "up.png"
    meta = run("upscale", {"width": 768, "height": 1344, "seed": 1, "panel": "hero"}, [panel], [out])
    assert size_of(out) == (768, 1344)
    assert meta["source_size"] == [512, 912]


@pytest.mark.parametrize("width", [300, 301, 302])
def test_split_tiles_the_strip_exactly(tmp_path: Path, width: int) -> None:
    strip_path = t2i(tmp_path / "strip.png", size={"width": width, "height": 90})
    outs = [tmp_path / f"{name}.png" for name in ("first", "hero", "last")]
    run("split", {"panels": ["first", "hero", "last"]}, [strip_path], outs)
    panels = [rgb(p) for p in outs]
    assert sum(p.width for p in panels) == width
    assert max(p.width for p in panels) - min(p.width for p in panels) <= 1
    rebuilt = Image.new("RGB", (width, 90))
    x = 0
    for panel in panels:
        assert panel.height == 90
        rebuilt.paste(panel, (x, 0))
        x += panel.width
    assert ImageChops.difference(rebuilt, rgb(strip_path)).getbbox() is None


# video ------------------------------------------------------------------------------------------------


def flf(tmp_path: Path, size: dict[str, int], frames: int, name: str = "clip") -> tuple[Path, Path, Path]:
    first = t2i(tmp_path / f"{name}-first.png", prompt="First frame, the stairs.", seed=1, size=size)
    last = t2i(tmp_path / f"{name}-last.png", prompt="Last frame, the lantern room.", seed=2, size=size)
    clip = tmp_path / f"{name}.mp4"
    params = {"num_frames": frames, "fps": FPS, "prompt": "He climbs.", "seed": 5, **size}
    run("video", params, [first, last], [clip])
    return first, last, clip


def test_video_at_production_size(tmp_path: Path) -> None:
    """One real 720x1280, 49-frame segment: stands in for WAN's first-last-frame output."""
    size = {"width": 720, "height": 1280}
    first_png = t2i(
        tmp_path / "first.png", prompt="First frame, the stairs.", seed=1, size={"width": 768, "height": 1344}
    )
    last_png = t2i(
        tmp_path / "last.png",
        prompt="Last frame, the lantern room.",
        seed=2,
        size={"width": 768, "height": 1344},
    )
    clip = tmp_path / "seg.mp4"
    meta = run("video", {"num_frames": 49, "fps": FPS, **size}, [first_png, last_png], [clip])
    info = media.probe(clip)
    assert (info.codec, info.width, info.height, info.fps, info.frames) == ("h264", 720, 1280, 16.0, 49)
    assert info.duration_s == pytest.approx(49 / 16, abs=0.01)
    assert meta["frames"] == 49
    first, last = cover(rgb(first_png), (720, 1280)), cover(rgb(last_png), (720, 1280))
    start, end = frame(clip, 0, tmp_path), frame(clip, 48, tmp_path)
    assert mean_diff(start, first) < 3
    assert mean_diff(end, last) < 3
    assert mean_diff(start, last) > 10
    assert leftovers(tmp_path) == []


def test_video_is_deterministic(tmp_path: Path) -> None:
    *_, a = flf(tmp_path, SMALL, 9, "a")
    *_, b = flf(tmp_path, SMALL, 9, "b")
    assert a.read_bytes() == b.read_bytes()


def test_ken_burns_pushes_in_and_hold_stays_still(tmp_path: Path) -> None:
    image = t2i(tmp_path / "still.png")
    base = {"fps": FPS, **SMALL}
    push, still = tmp_path / "push.mp4", tmp_path / "hold.mp4"
    run("ken_burns", {**base, "duration_s": 1.0, "zoom_from": 1.0, "zoom_to": 1.15}, [image], [push])
    run("hold", {**base, "duration_s": 0.5}, [image], [still])
    push_info, still_info = media.probe(push), media.probe(still)
    assert push_info.frames == 16
    assert push_info.duration_s == pytest.approx(1.0, abs=0.01)
    assert still_info.frames == 8
    assert still_info.duration_s == pytest.approx(0.5, abs=0.01)
    source = rgb(image)
    assert mean_diff(frame(push, 0, tmp_path), source) < 4
    assert mean_diff(frame(push, 15, tmp_path), source) > mean_diff(frame(push, 0, tmp_path), source) + 1
    assert mean_diff(frame(still, 7, tmp_path), source) < 4


def test_concat_copies_and_keeps_every_frame(tmp_path: Path) -> None:
    *_, seg1 = flf(tmp_path, SMALL, 17, "seg1")
    *_, seg2 = flf(tmp_path, SMALL, 9, "seg2")
    out = tmp_path / "clip.mp4"
    meta = run("concat", {}, [seg1, seg2], [out])
    info = media.probe(out)
    assert meta["method"] == "copy"
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 96, 160, 26)
    total = media.probe(seg1).duration_s + media.probe(seg2).duration_s
    assert info.duration_s == pytest.approx(total, abs=1 / FPS)


def test_concat_reencodes_clips_that_do_not_match(tmp_path: Path) -> None:
    *_, small = flf(tmp_path, SMALL, 8, "small")
    *_, wide = flf(tmp_path, {"width": 160, "height": 96}, 8, "wide")
    out = tmp_path / "mixed.mp4"
    meta = run("concat", {}, [small, wide], [out])
    info = media.probe(out)
    assert meta["method"] == "reencode"
    assert (info.codec, info.width, info.height, info.frames) == ("h264", 96, 160, 16)


def test_concat_reencodes_clips_from_another_encoder(tmp_path: Path) -> None:
    """Same codec, size and rate but other encoder settings (as a provider's clip would be): no copy."""
    *_, ours = flf(tmp_path, SMALL, 8, "ours")
    theirs = tmp_path / "theirs.mp4"
    source = ["-f", "lavfi", "-i", f"testsrc2=size=96x160:rate={FPS}", "-frames:v", "8"]
    encode = ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(theirs)]
    media.run_ffmpeg([*source, *encode])
    out = tmp_path / "mixed.mp4"
    meta = run("concat", {}, [ours, theirs], [out])
    assert meta["method"] == "reencode"
    assert (meta["codec"], meta["frames"], meta["duration_s"]) == ("h264", 16, 1.0)


# failures -----------------------------------------------------------------------------------------------


def test_corrupt_clip_fails_permanently_and_writes_nothing(tmp_path: Path) -> None:
    *_, good = flf(tmp_path, SMALL, 8, "good")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypisom" + b"garbage" * 100)
    out = tmp_path / "joined.mp4"
    with pytest.raises(PermanentError, match="ffmpeg failed"):
        run("concat", {}, [good, bad], [out])
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_corrupt_image_fails_permanently_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "clip.mp4"
    with pytest.raises(PermanentError, match=r"bad\.png"):
        run("hold", {"duration_s": 0.5, "fps": FPS, **SMALL}, [bad], [out])
    assert not out.exists()


def test_encoder_failure_leaves_no_partial_file(tmp_path: Path) -> None:
    def frames() -> Iterator[Image.Image]:
        yield Image.new("RGB", (96, 160))
        raise RuntimeError("renderer crashed")

    out = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="renderer crashed"):
        media.encode_frames(frames(), out, FPS, (96, 160))
    assert list(tmp_path.iterdir()) == []


def test_encoder_timeout_is_transient_and_leaves_nothing(tmp_path: Path) -> None:
    def slow() -> Iterator[Image.Image]:
        for _ in range(3):
            time.sleep(0.3)
            yield Image.new("RGB", (96, 160))

    with pytest.raises(TransientError, match="stopped after"):
        media.encode_frames(slow(), tmp_path / "clip.mp4", FPS, (96, 160), timeout_s=0.4)
    assert list(tmp_path.iterdir()) == []


def test_odd_video_size_is_refused(tmp_path: Path) -> None:
    image = t2i(tmp_path / "still.png")
    with pytest.raises(PermanentError, match="even size"):
        run(
            "hold", {"duration_s": 0.5, "fps": FPS, "width": 95, "height": 160}, [image], [tmp_path / "x.mp4"]
        )


def test_unknown_kind_and_bad_params_fail_permanently(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="cannot run"):
        run("lipsync", {}, [], [tmp_path / "x.mp4"])
    with pytest.raises(PermanentError, match=r"params\.width"):
        run("t2i", {"prompt": "x", "seed": 1, "width": "wide", "height": 10}, [], [tmp_path / "x.png"])
    with pytest.raises(PermanentError, match="2 input"):
        run("video", {"num_frames": 9, "fps": FPS, **SMALL}, [tmp_path / "only.png"], [tmp_path / "x.mp4"])
