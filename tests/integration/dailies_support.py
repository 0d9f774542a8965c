"""What the dailies tests share: a run submitted for review in a real Redis, steps finished as a worker would
(real PNGs and real H.264 clips at their output names), a recording sender, a server on a thread and a client
signed in to it."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageOps

from farm.dailies.server import DailiesServer
from farm.episode.validate import load_episode
from farm.planning.plan import Plan, Step, StepKind, build_plan
from farm.runs import dispatch
from farm.runs.retake import run_source
from farm.runs.review import GATED_KINDS, gated_steps
from farm.runs.state import RunStore
from farm.storage.artifacts import namespace_for
from workers.media import concat, encode_frames

CLIP_SHRINK = 8
"""Test clips are this many times smaller than planned: real H.264, a fraction of the encode time."""


class RecordingSender:
    """The queue as the review actions see it: what was sent, and nothing is ever revoked."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.revoked: list[str] = []

    def send(self, run_id: str, step: Step, queue: str) -> None:
        self.sent.append(step.id)

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        self.revoked += step_ids


def submit(runs: RunStore, sender: RecordingSender, storyboard: Path, out: Path, *, review: bool) -> Plan:
    """Submit the storyboard as `farm submit [--review]` does; return the plan (the run id is `run_of`)."""
    episode = load_episode(storyboard)
    plan = build_plan(episode)
    dispatch.submit(
        runs,
        sender,
        plan,
        backend="local",
        namespace=namespace_for("local"),
        output=out,
        storyboard=str(storyboard),
        gated=gated_steps(plan) if review else (),
        source=run_source(episode),
    )
    return plan


def run_of(runs: RunStore) -> str:
    (run_id,) = runs.runs()
    return run_id


def finish(runs: RunStore, run_id: str, steps: Iterable[Step]) -> None:
    """Finish steps (in order, each already queued) as a worker would: its files on disk, then done."""
    output_dir = Path(runs.meta(run_id)["output_dir"])
    output_dir.mkdir(parents=True, exist_ok=True)
    for step in steps:
        assert runs.begin(run_id, step.id) == 1, f"{step.kind} {step.role} of shot {step.shot} is not queued"
        write_outputs(runs, run_id, step, output_dir)
        assert not runs.complete(run_id, step.id).duplicate


def finish_keyframes(runs: RunStore, run_id: str) -> None:
    """Everything before the review gate: a review run then waits with every shot's video held."""
    finish(runs, run_id, [s for s in runs.steps(run_id).values() if before_gate(s)])


def submit_for_review(runs: RunStore, sender: RecordingSender, storyboard: Path, out: Path) -> str:
    """A storyboard submitted with --review and its keyframes rendered: every shot's video is held."""
    submit(runs, sender, storyboard, out, review=True)
    run_id = run_of(runs)
    finish_keyframes(runs, run_id)
    return run_id


def drain(runs: RunStore, run_id: str) -> None:
    """Finish every queued step, and what each releases, until nothing is queued."""
    while queued := [s for i, s in runs.steps(run_id).items() if runs.states(run_id)[i] == "queued"]:
        finish(runs, run_id, queued[:1])


def before_gate(step: Step) -> bool:
    return step.kind not in GATED_KINDS and step.kind is not StepKind.CONCAT


def frame_size(step: Step) -> tuple[int, int]:
    """The planned size of a step's images (a split's panels)."""
    if step.kind is StepKind.SPLIT:
        return step.params["panel_width"], step.params["panel_height"]
    return step.params["width"], step.params["height"]


def clip_size(step: Step) -> tuple[int, int]:
    """A test clip's size: the planned one shrunk, kept even for H.264."""
    width, height = frame_size(step)
    return width // CLIP_SHRINK // 2 * 2, height // CLIP_SHRINK // 2 * 2


def write_outputs(runs: RunStore, run_id: str, step: Step, output_dir: Path) -> None:
    for name in step.outputs:
        target = output_dir / name
        tint = "#" + hashlib.sha256(name.encode()).hexdigest()[:6]
        if step.kind is StepKind.CONCAT:
            concat([output_dir / runs.step(run_id, i).outputs[0] for i in step.inputs], target)
        elif target.suffix == ".mp4":
            size = clip_size(step)
            fps = int(step.params["fps"])
            encode_frames((_picture(size, tint, n) for n in range(fps)), target, fps, size)
        else:
            _picture(frame_size(step), tint, 0).save(target, compress_level=1)


def _picture(size: tuple[int, int], tint: str, turn: int) -> Image.Image:
    """A tinted gradient, so frames, thumbnails and screenshots are not flat colour."""
    ramp = Image.linear_gradient("L").rotate(turn * 7)
    return ImageOps.colorize(ramp, black="#101014", white=tint).resize(size, Image.Resampling.NEAREST)


@contextmanager
def serving(server: DailiesServer) -> Iterator[DailiesServer]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextmanager
def signed_in(server: DailiesServer, **options: Any) -> Iterator[httpx.Client]:
    """A client that opened the link `farm dailies --serve` prints: it holds the session cookie."""
    with httpx.Client(base_url=f"http://{server.authority}", **options) as web:
        opened = web.get(server.login_url)
        assert opened.status_code == 303 and server.cookie_name in web.cookies, opened.text
        yield web
