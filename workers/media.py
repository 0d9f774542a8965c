"""ffmpeg helpers for the embedded engine: encode Pillow frames to H.264, join clips, probe, grab a frame.

imageio-ffmpeg ships a static ffmpeg and no ffprobe, so probing runs ffmpeg itself and reads its report.
Every call takes an argument list (never a shell), has a timeout and keeps stderr, because stderr is the
only useful reason ffmpeg gives when it fails. Every output is written beside its final path under a
temporary name and moved into place, so a crash never leaves a half-written file where a finished one is
expected.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import imageio_ffmpeg  # type: ignore[import-untyped]
from PIL import Image

from workers.base import PermanentError, TransientError

FFMPEG_TIMEOUT_S = 600.0
"""Ceiling for one encode or concat; a 720x1280 81-frame clip takes a few seconds on two cores."""
PROBE_TIMEOUT_S = 60.0
STDERR_TAIL_LINES = 12

X264_THREADS = 4
"""Fixed, not auto: x264's bitstream depends on its thread count, so a fixed count keeps every machine
producing the same bytes for the same frames."""
RGB_TO_YUV = "scale=out_color_matrix=bt709:out_range=tv:flags=bicubic+accurate_rnd+bitexact,format=yuv420p"
"""Explicit BT.709 (and tagged so below) because players assume BT.709 for HD; `bitexact` keeps swscale
off CPU-specific rounding paths."""
X264_ARGS: tuple[str, ...] = (
    "-c:v",
    "libx264",
    "-preset",
    "medium",
    "-crf",
    "18",
    "-threads",
    str(X264_THREADS),
    "-flags:v",
    "+bitexact",
    "-pix_fmt",
    "yuv420p",
    "-colorspace",
    "bt709",
    "-color_primaries",
    "bt709",
    "-color_trc",
    "bt709",
    "-color_range",
    "tv",
)
"""One encoder setting for every clip the farm makes, so clips can be joined by stream copy."""
MP4_ARGS: tuple[str, ...] = ("-movflags", "+faststart", "-map_metadata", "-1", "-fflags", "+bitexact")
"""Index up front for streaming; no encoder-version or timestamp metadata, so re-runs match byte for byte."""


@dataclass(frozen=True)
class VideoInfo:
    """What a clip is, as ffmpeg reports it for its first video stream."""

    codec: str
    width: int
    height: int
    fps: float
    frames: int
    duration_s: float


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg (or IMAGEIO_FFMPEG_EXE): no system install needed."""
    exe: str = imageio_ffmpeg.get_ffmpeg_exe()
    return exe


@contextmanager
def atomic_output(out: Path) -> Iterator[Path]:
    """Yield a temporary path beside `out`; on success move it onto `out`, on failure delete it.

    The temporary name keeps the suffix so ffmpeg and Pillow pick the right format, and carries a random
    token so two runs of the same step cannot write into each other's file.
    """
    tmp = out.with_name(f"{out.stem}.{secrets.token_hex(4)}.partial{out.suffix}")
    try:
        yield tmp
        if not tmp.is_file():
            raise PermanentError(f"{out.name}: nothing was written")
        _fsync(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def run_ffmpeg(args: Sequence[str], *, timeout_s: float = FFMPEG_TIMEOUT_S) -> str:
    """Run ffmpeg with `args` and return its stderr, which is where it reports streams and progress."""
    return _run(args, timeout_s).stderr.decode("utf-8", "replace")


def _run(args: Sequence[str], timeout_s: float) -> subprocess.CompletedProcess[bytes]:
    """Run ffmpeg, keeping stdout and stderr; a failure raises with the tail of stderr as the reason."""
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", *args]
    try:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise TransientError(f"ffmpeg timed out after {timeout_s:g} s: {_tail(exc.stderr)}") from exc
    except OSError as exc:
        raise PermanentError(f"cannot run ffmpeg: {exc}") from exc
    if proc.returncode != 0:
        raise PermanentError(f"ffmpeg failed (exit {proc.returncode}): {_tail(proc.stderr)}")
    return proc


def encode_frames(
    frames: Iterable[Image.Image],
    out: Path,
    fps: int,
    size: tuple[int, int],
    *,
    timeout_s: float = FFMPEG_TIMEOUT_S,
) -> VideoInfo:
    """Encode RGB frames to an H.264 MP4 at `out` and return what was written.

    Frames go to ffmpeg's stdin as raw RGB, so Pillow stays the only renderer and nothing touches disk
    but the clip. The clip is probed before it is moved into place: a clip missing frames is a failure,
    never an output.
    """
    width, height = size
    if width % 2 or height % 2:
        raise PermanentError(f"{out.name}: H.264 4:2:0 needs an even size, got {width}x{height}")
    raw_in = ["-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{width}x{height}", "-r", str(fps), "-i", "-"]
    cmd = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", *raw_in, *_encode_args(), *MP4_ARGS, "-f", "mp4"]
    with atomic_output(out) as tmp:
        count = _pipe_frames([*cmd, str(tmp)], frames, size, timeout_s)
        if count == 0:
            raise PermanentError(f"{out.name}: no frames to encode")
        info = probe(tmp)
        if info.frames != count:
            raise PermanentError(f"{out.name}: encoded {info.frames} of {count} frames")
    return info


def probe(path: Path, *, timeout_s: float = PROBE_TIMEOUT_S) -> VideoInfo:
    """Codec, size, rate, frame count and duration of the first video stream, read by stream-copying it
    to nowhere (no decode, so it is fast) and parsing ffmpeg's report."""
    report = run_ffmpeg(
        ["-i", str(path), "-map", "0:v:0", "-c", "copy", "-f", "null", "-"], timeout_s=timeout_s
    )
    return _parse_probe(report, path)


def concat(clips: Sequence[Path], out: Path, *, timeout_s: float = FFMPEG_TIMEOUT_S) -> tuple[VideoInfo, str]:
    """Join clips in order; return the result's info and the method used ("copy" or "reencode").

    Clips the farm encoded share one encoder setting, so a stream copy joins them losslessly in a moment.
    When they differ (another encoder, size or rate), or the copy fails or loses frames, everything is
    re-encoded to the first clip's size and rate with the farm's settings. Either way the result is H.264.
    """
    if not clips:
        raise PermanentError("concat needs at least one clip")
    infos = [probe(clip) for clip in clips]
    expected = sum(info.frames for info in infos)
    with tempfile.TemporaryDirectory(prefix="concat-") as work, atomic_output(out) as tmp:
        listing = Path(work) / "clips.txt"
        listing.write_text("".join(f"file '{_quote(clip)}'\n" for clip in clips), "utf-8")
        if _compatible(clips, infos) and _try_copy(listing, tmp, expected, timeout_s):
            return probe(tmp), "copy"
        _reencode(listing, tmp, infos[0], timeout_s)
        return probe(tmp), "reencode"


def extract_frame(video: Path, index: int, out: Path, *, timeout_s: float = PROBE_TIMEOUT_S) -> Path:
    """Decode frame `index` (0-based) of `video` to a PNG at `out`: thumbnails, checks and tests."""
    with atomic_output(out) as tmp:
        run_ffmpeg(
            [
                "-i",
                str(video),
                "-vf",
                rf"select=eq(n\,{index})",
                "-fps_mode",
                "passthrough",
                "-frames:v",
                "1",
                "-update",
                "1",
                "-y",
                str(tmp),
            ],
            timeout_s=timeout_s,
        )
        if not tmp.is_file():
            raise PermanentError(f"{video.name} has no frame {index}")
    return out


# helpers ------------------------------------------------------------------------------------------------


def _pipe_frames(
    cmd: list[str], frames: Iterable[Image.Image], size: tuple[int, int], timeout_s: float
) -> int:
    """Feed frames to an ffmpeg process; kill it on timeout or on any error while making frames."""
    with tempfile.TemporaryFile() as errors:
        proc = _spawn(cmd, errors)
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            proc.kill()

        watchdog = threading.Timer(timeout_s, stop)
        watchdog.daemon = True
        watchdog.start()
        try:
            count = _write_frames(proc, frames, size)
            returncode = proc.wait()
        finally:
            watchdog.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        _check_exit(returncode, errors, timed_out=timed_out.is_set(), timeout_s=timeout_s)
    return count


def _spawn(cmd: list[str], errors: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ffmpeg reading stdin; stderr goes to a file so a chatty ffmpeg can never block on a pipe."""
    try:
        return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
    except OSError as exc:
        raise PermanentError(f"cannot run ffmpeg: {exc}") from exc


def _write_frames(proc: subprocess.Popen[bytes], frames: Iterable[Image.Image], size: tuple[int, int]) -> int:
    """Write every frame to ffmpeg's stdin; stop early if ffmpeg exits (its stderr says why)."""
    assert proc.stdin is not None
    count = 0
    try:
        for frame in frames:
            if frame.size != size:
                raise ValueError(f"frame {count} is {frame.size}, expected {size}")
            proc.stdin.write(frame.convert("RGB").tobytes())
            count += 1
    except BrokenPipeError:
        pass  # ffmpeg exited early; its exit status and stderr tell why
    finally:
        with suppress(BrokenPipeError):
            proc.stdin.close()
    return count


def _check_exit(returncode: int, errors: IO[bytes], *, timed_out: bool, timeout_s: float) -> None:
    """Translate an ffmpeg exit status into the engine's error tree."""
    if returncode == 0:
        return
    errors.seek(0)
    tail = _tail(errors.read())
    if timed_out:
        raise TransientError(f"ffmpeg was stopped after {timeout_s:g} s: {tail}")
    raise PermanentError(f"ffmpeg failed (exit {returncode}): {tail}")


def _try_copy(listing: Path, tmp: Path, expected: int, timeout_s: float) -> bool:
    """Stream-copy join; True only if it worked and kept every frame."""
    args = ["-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v:0", "-c", "copy"]
    try:
        run_ffmpeg([*args, *MP4_ARGS, "-y", "-f", "mp4", str(tmp)], timeout_s=timeout_s)
        return probe(tmp).frames == expected
    except PermanentError:
        return False


def _reencode(listing: Path, tmp: Path, first: VideoInfo, timeout_s: float) -> None:
    """Re-encode the join, scaled (cover-crop) and timed to the first clip, with the farm's settings.

    The rate is set on the output (`-r`, constant frame rate), not with the fps filter: the filter graph
    is rebuilt when the input size changes mid-list, and the fps filter would lose the frame it holds.
    """
    w, h = first.width, first.height
    fit = f"scale={w}:{h}:force_original_aspect_ratio=increase,crop={w}:{h},setsar=1"
    args = ["-f", "concat", "-safe", "0", "-i", str(listing), "-map", "0:v:0", *_encode_args(fit)]
    rate = ["-r", f"{first.fps:g}", "-fps_mode", "cfr"]
    run_ffmpeg([*args, *rate, *MP4_ARGS, "-y", "-f", "mp4", str(tmp)], timeout_s=timeout_s)


def _encode_args(prefilter: str = "") -> list[str]:
    """The farm's one encoder setting, after an optional filter chain that runs before the YUV conversion."""
    chain = f"{prefilter},{RGB_TO_YUV}" if prefilter else RGB_TO_YUV
    return ["-vf", chain, *X264_ARGS]


def _compatible(clips: Sequence[Path], infos: Sequence[VideoInfo]) -> bool:
    """Stream copy is only safe for H.264 clips of one size and rate that share their SPS and PPS.

    The joined file keeps only the first clip's parameter sets in its header; clips from another encoder
    (a provider's video, say) would play in ffmpeg but break stricter players, so those are re-encoded.
    """
    first = infos[0]
    same = all(
        (i.codec, i.width, i.height, i.fps) == ("h264", first.width, first.height, first.fps) for i in infos
    )
    return same and len({_parameter_sets(clip) for clip in clips}) == 1


def _parameter_sets(clip: Path) -> bytes:
    """The SPS and PPS NAL units of an H.264 clip, read from its first packet in Annex B form."""
    args = ["-i", str(clip), "-map", "0:v:0", "-c", "copy", "-bsf:v", "h264_mp4toannexb"]
    raw = _run([*args, "-frames:v", "1", "-f", "h264", "-"], PROBE_TIMEOUT_S).stdout
    units = (unit.rstrip(b"\x00") for unit in raw.split(b"\x00\x00\x01") if unit)
    return b"|".join(unit for unit in units if unit and unit[0] & 0x1F in (7, 8))


_STREAM = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+)[^\n]*")
_SIZE = re.compile(r", (\d+)x(\d+)[,\s\[]")
_RATE = re.compile(r", (\d+(?:\.\d+)?)(k?) (?:fps|tbr)")
_FRAMES = re.compile(r"frame=\s*(\d+)")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _parse_probe(report: str, path: Path) -> VideoInfo:
    """Pull the stream facts out of ffmpeg's stderr report."""
    stream = _STREAM.search(report)
    size = _SIZE.search(stream.group(0)) if stream else None
    rate = _RATE.search(stream.group(0)) if stream else None
    frames = _FRAMES.findall(report)
    if stream is None or size is None or rate is None or not frames:
        raise PermanentError(f"{path.name}: ffmpeg reports no usable video stream: {_tail(report)}")
    fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    count = int(frames[-1])
    duration = _DURATION.search(report)
    if duration:
        hours, minutes, seconds = duration.groups()
        duration_s = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    else:
        duration_s = count / fps
    return VideoInfo(stream.group(1), int(size.group(1)), int(size.group(2)), fps, count, duration_s)


def _quote(path: Path) -> str:
    """A path quoted for the concat demuxer's list file (single quotes, `'` written as `'\\''`)."""
    return str(path.resolve()).replace("'", "'\\''")


def _tail(stderr: bytes | str | None) -> str:
    """The last lines of ffmpeg's stderr: the reason is at the end, after the banner and stream list."""
    if stderr is None:
        return "(no output)"
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return " | ".join(lines[-STDERR_TAIL_LINES:]) or "(no output)"


def _fsync(path: Path) -> None:
    """Flush the file to disk before it is renamed into place, so a power cut cannot leave it empty."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
