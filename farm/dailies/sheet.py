"""What the dailies page shows, read from a run in Redis: one card per shot with its take, review and
render state, keyframes, clip, prompts, seeds, engines, and the files its earlier takes left on disk.

Kept apart from the HTML so the static page and the server read a run the same way, and so the server
can check a requested file against the run's own outputs instead of joining a path from the request.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from farm.episode.engine_cards import POST_ENGINE
from farm.planning.naming import FIRST_TAKE
from farm.planning.plan import Step, StepKind
from farm.runs.progress import ShotProgress, snapshot
from farm.runs.state import SETTLED, RunStore

IMAGE_KINDS = (StepKind.T2I, StepKind.IMG2IMG)
CLIP_KINDS = (StepKind.VIDEO, StepKind.KEN_BURNS, StepKind.HOLD, StepKind.CONCAT)
FRAME_ROLES = ("first", "hero", "mid", "last")
"""A shot's keyframes in the order they play."""


@dataclass(frozen=True)
class Media:
    """One output file of the run: its name in the deliverables folder, and whether it is there."""

    name: str
    label: str
    """The part it plays: first, hero, last, clip, ..."""
    present: bool


@dataclass(frozen=True)
class EarlierTake:
    take: int
    files: tuple[Media, ...]
    """Only the files still on disk."""


@dataclass(frozen=True)
class Card:
    shot: int
    take: int
    approach: str
    review: str
    """The shot's review state; '' for a run submitted without --review."""
    state: str
    done: int
    total: int
    activity: str
    estimated_usd: Decimal
    spent_usd: Decimal
    frames: tuple[Media, ...]
    clip: Media | None
    """The shot's finished clip; None until it is rendered."""
    image_prompts: tuple[tuple[str, str], ...]
    """(role, compiled prompt) of each generated image."""
    motion_prompt: str | None
    seeds: tuple[tuple[str, int], ...]
    engines: tuple[str, ...]
    earlier: tuple[EarlierTake, ...]


@dataclass(frozen=True)
class Dailies:
    run_id: str
    title: str
    status: str
    review: bool
    done: int
    total: int
    estimated_usd: Decimal
    spent_usd: Decimal
    output_dir: Path
    cards: tuple[Card, ...]


def gather(runs: RunStore, run_id: str) -> Dailies:
    """Everything the page shows, read from the run now."""
    progress = snapshot(runs, run_id)
    meta = runs.meta(run_id)
    output_dir = Path(meta["output_dir"])
    steps = list(runs.steps(run_id).values())
    earlier = _earlier(runs.history(run_id), output_dir)
    run = _Run(runs.states(run_id), output_dir, runs.takes(run_id), earlier)
    return Dailies(
        run_id=run_id,
        title=progress.title,
        status=progress.status,
        review=meta.get("review") == "1",
        done=progress.done,
        total=progress.total,
        estimated_usd=progress.estimated_usd,
        spent_usd=progress.spent_usd,
        output_dir=output_dir,
        cards=tuple(
            _card(row, row.shot, [s for s in steps if s.shot == row.shot], run)
            for row in progress.shots
            if row.shot is not None
        ),
    )


def run_files(runs: RunStore, run_id: str) -> dict[str, Path]:
    """Every output of the run's steps (earlier takes included) that is on disk, by name: the only files
    the dailies server hands out."""
    output_dir = Path(runs.meta(run_id)["output_dir"])
    steps = [*runs.steps(run_id).values(), *runs.history(run_id)]
    names = {name for step in steps for name in step.outputs}
    return {name: output_dir / name for name in sorted(names) if (output_dir / name).is_file()}


@dataclass(frozen=True)
class _Run:
    """What every card reads from the run once."""

    states: dict[str, str]
    output_dir: Path
    takes: dict[int, int]
    earlier: dict[int, tuple[EarlierTake, ...]]


def _card(row: ShotProgress, shot: int, steps: list[Step], run: _Run) -> Card:
    done = [s for s in steps if run.states.get(s.id) in SETTLED]
    images = [s for s in steps if s.kind in IMAGE_KINDS]
    videos = [s for s in steps if s.kind is StepKind.VIDEO]
    clips = [s for s in steps if s.kind in CLIP_KINDS]
    clip = clips[-1] if clips and run.states.get(clips[-1].id) in SETTLED else None
    return Card(
        shot=shot,
        take=run.takes.get(shot, FIRST_TAKE),
        approach=row.approach,
        review=row.review,
        state=row.state,
        done=row.done,
        total=row.total,
        activity=row.activity,
        estimated_usd=row.estimated_usd,
        spent_usd=row.spent_usd,
        frames=_frames(done, run.output_dir),
        clip=_media(clip.outputs[0], "clip", run.output_dir) if clip else None,
        image_prompts=tuple((s.role, str(s.params["prompt"])) for s in images),
        motion_prompt=str(videos[0].params["prompt"]) if videos else None,
        seeds=tuple((s.role, int(s.params["seed"])) for s in [*images, *videos]),
        engines=tuple(dict.fromkeys(s.engine for s in steps if s.engine != POST_ENGINE)),
        earlier=run.earlier.get(shot, ()),
    )


def _frames(done: list[Step], output_dir: Path) -> tuple[Media, ...]:
    """Per keyframe role, its upscale once done, else the image generated for it; a triptych strip shows
    only until its panels have been upscaled."""
    upscaled = {s.role: s for s in done if s.kind is StepKind.UPSCALE}
    generated = {s.role: s for s in done if s.kind in IMAGE_KINDS}
    frames = [
        _media(step.outputs[0], role, output_dir)
        for role in FRAME_ROLES
        if (step := upscaled.get(role) or generated.get(role)) is not None
    ]
    if frames:
        return tuple(frames)
    return tuple(_media(s.outputs[0], s.role, output_dir) for s in generated.values())


def _earlier(history: list[Step], output_dir: Path) -> dict[int, tuple[EarlierTake, ...]]:
    by_shot: dict[int, dict[int, list[Media]]] = defaultdict(lambda: defaultdict(list))
    for step in history:
        if step.shot is None:
            continue
        take = by_shot[step.shot][step.take]
        take += [m for name in step.outputs if (m := _media(name, step.role, output_dir)).present]
    return {
        shot: tuple(EarlierTake(take, tuple(files)) for take, files in sorted(takes.items()))
        for shot, takes in by_shot.items()
    }


def _media(name: str, label: str, output_dir: Path) -> Media:
    return Media(name, label, (output_dir / name).is_file())
