"""Storyboard -> render plan: a DAG of small, typed, content-addressed steps. Pure: no I/O, no Celery.

Every step id is a hash of everything that determines its output (kind, engine card revision and
endpoint, compiled parameters, seed, LoRAs, strength and the ids of its inputs), so an unchanged step
keeps its id across runs and edits, and its output can be reused instead of paid for again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

from farm.episode.approaches import Approach
from farm.episode.casting import Casting
from farm.episode.engine_cards import CARDS, POST_ENGINE, UPSCALE_ENGINE, VIDEO_ENGINE
from farm.episode.prompts import compile_image_prompt, compile_motion_prompt
from farm.episode.storyboard import Shot, Storyboard
from farm.episode.validate import Episode
from farm.planning.naming import FIRST_TAKE, asset, episode_asset, shot_stem

HERO_TO_FRAME_STRENGTH = 0.40
"""First and last frames stay close to the hero (the studio's fixed hero->first/last strength)."""
DEFAULT_HELD_S = 3.0
KEN_BURNS_ZOOM = (1.0, 1.15)
PANELS = ("first", "hero", "last")
ID_LENGTH = 16


class StepKind(StrEnum):
    T2I = "t2i"
    IMG2IMG = "img2img"
    UPSCALE = "upscale"
    SPLIT = "split"
    VIDEO = "video"
    KEN_BURNS = "ken_burns"
    HOLD = "hold"
    CONCAT = "concat"


class Step(BaseModel):
    """One unit of work: what to run, on which engine, from which inputs, producing which files."""

    model_config = ConfigDict(frozen=True)

    id: str
    kind: StepKind
    shot: int | None
    role: str
    engine: str
    operation: str
    endpoint: str | None
    inputs: tuple[str, ...]
    asset_name: str
    outputs: tuple[str, ...]
    params: dict[str, Any]
    cost_usd: Decimal
    latency_s: float
    notes: tuple[str, ...] = ()
    take: int = FIRST_TAKE
    """The take of its shot that first planned it (a retake keeps the steps it did not change)."""


class ShotSummary(BaseModel):
    model_config = ConfigDict(frozen=True)

    shot: int
    scene: int | None
    approach: Approach
    engine: str
    characters: tuple[str, ...]
    stem: str
    """Asset name prefix shared by the shot's outputs."""
    clip: str
    clip_s: float
    notes: tuple[str, ...]
    take: int = FIRST_TAKE


class Plan(BaseModel):
    model_config = ConfigDict(frozen=True)

    project: str
    project_name: str
    episode: int
    title: str
    shots: tuple[ShotSummary, ...]
    steps: tuple[Step, ...]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def consumers(self) -> dict[str, list[Step]]:
        """Step id -> the steps that take its outputs as inputs (steps nothing consumes are absent)."""
        found: dict[str, list[Step]] = {}
        for step in self.steps:
            for producer in step.inputs:
                found.setdefault(producer, []).append(step)
        return found


def build_plan(episode: Episode, takes: Mapping[int, int] | None = None, cut: int = 1) -> Plan:
    """The whole render plan for a validated episode, steps in dependency order. `takes` (shot -> take)
    and `cut` only name the outputs; they never change a step's id."""
    builder = _Builder(episode.storyboard, episode.castings, takes or {})
    for shot in _shot_order(episode.storyboard):
        builder.add_shot(shot)
    builder.add_episode(cut)
    board = episode.storyboard
    ordered = tuple(builder.summaries[n] for n in sorted(builder.summaries))
    return Plan(
        project=board.project,
        project_name=board.project_name,
        episode=board.episode,
        title=board.title,
        shots=ordered,
        steps=tuple(builder.steps.values()),
    )


PREVIZ_ENGINE = "z_image_turbo"


def build_previz_plan(episode: Episode) -> Plan:
    """One frame per shot (its hero prompt, else its first frame, else its strip's) at the previz size with
    Z-Image Turbo:
    a look at the whole episode for a fraction of a cent a shot, before anything expensive is rendered."""
    board = episode.storyboard
    builder = _Builder(board, episode.castings)
    for shot in board.shots:
        builder.add_previz(shot)
    return Plan(
        project=board.project,
        project_name=board.project_name,
        episode=board.episode,
        title=board.title,
        shots=tuple(builder.summaries[n] for n in sorted(builder.summaries)),
        steps=tuple(builder.steps.values()),
    )


def step_id(
    kind: StepKind, engine: str, operation: str, params: dict[str, Any], inputs: tuple[str, ...]
) -> str:
    """Content address of a step. Prices and latencies are left out: they never change the output."""
    card = CARDS[engine]
    doc = {
        "kind": kind.value,
        "engine": engine,
        "revision": card.revision,
        "endpoint": card.op(operation).endpoint,
        "params": params,
        "inputs": list(inputs),
    }
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:ID_LENGTH]


def derive_seed(project: str, episode: int, shot: int, role: str) -> int:
    """A stable default seed per frame, so a re-plan renders the same pixels."""
    digest = hashlib.sha256(f"{project}/{episode}/{shot}/{role}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _shot_order(board: Storyboard) -> list[Shot]:
    """Storyboard order, except that a continuity source is planned before the shot that uses it."""
    by_number = {s.shot: s for s in board.shots}
    order: list[Shot] = []
    placed: set[int] = set()
    for shot in board.shots:
        pending = [shot]
        while shot.continuity_from and shot.continuity_from.shot not in placed:
            shot = by_number[shot.continuity_from.shot]
            pending.append(shot)
        for item in reversed(pending):
            if item.shot not in placed:
                placed.add(item.shot)
                order.append(item)
    return order


@dataclass(frozen=True)
class _Ctx:
    board: Storyboard
    shot: Shot
    casting: Casting
    stem: str

    def seed(self, role: str) -> int:
        if self.shot.seed is not None:
            return self.shot.seed
        return derive_seed(self.board.project, self.board.episode, self.shot.shot, role)


class _Builder:
    def __init__(
        self, board: Storyboard, castings: dict[int, Casting], takes: Mapping[int, int] | None = None
    ) -> None:
        self.board = board
        self.castings = castings
        self.takes = takes or {}
        self.steps: dict[str, Step] = {}
        self.frames: dict[tuple[int, str], str] = {}
        self.summaries: dict[int, ShotSummary] = {}

    def add_shot(self, shot: Shot) -> None:
        take = self.takes.get(shot.shot, FIRST_TAKE)
        ctx = _Ctx(self.board, shot, self.castings[shot.shot], shot_stem(self.board, shot, take))
        build = {
            "standard_flf": self._standard_flf,
            "triptych_split_flf": self._triptych,
            "held_frame_push": self._held,
            "held_frame_static": self._held,
        }[shot.generation_approach]
        clip, clip_s, notes = build(ctx)
        self.summaries[shot.shot] = ShotSummary(
            shot=shot.shot,
            scene=shot.scene,
            approach=shot.generation_approach,
            engine=ctx.casting.engine,
            characters=tuple(shot.characters_in_shot),
            stem=ctx.stem,
            clip=clip,
            clip_s=clip_s,
            notes=tuple(ctx.casting.notes + notes),
            take=take,
        )

    def add_previz(self, shot: Shot) -> None:
        casting = self.castings[shot.shot]
        notes = list(casting.notes)
        if casting.engine != PREVIZ_ENGINE:  # its LoRAs are for another model: the triggers stay
            notes.append(f"previz: {PREVIZ_ENGINE} without the {casting.engine} LoRAs of this shot")
            casting = replace(casting, engine=PREVIZ_ENGINE, image_loras=[], notes=notes)
        ctx = _Ctx(self.board, shot, casting, shot_stem(self.board, shot))
        fields = ("hero_frame", "first_frame", "triptych_prompt", "motion_prompt")
        prose = next(text for name in fields if (text := shot.prompt(name)) is not None)
        frame = self._image(ctx, "previz", prose, None, None, size="previz")
        self.summaries[shot.shot] = ShotSummary(
            shot=shot.shot,
            scene=shot.scene,
            approach=shot.generation_approach,
            engine=PREVIZ_ENGINE,
            characters=tuple(shot.characters_in_shot),
            stem=ctx.stem,
            clip=frame,
            clip_s=0.0,
            notes=tuple(notes),
        )

    def add_episode(self, cut: int = 1) -> None:
        clips = tuple(self.summaries[n].clip for n in sorted(self.summaries))
        self._post(StepKind.CONCAT, None, "episode", clips, {}, (episode_asset(self.board, cut),))

    # approaches -----------------------------------------------------------------------------------

    def _standard_flf(self, ctx: _Ctx) -> tuple[str, float, list[str]]:
        shot = ctx.shot
        strength = shot.img2img_strength or self.board.defaults.img2img_strength
        source, source_strength = self._continuity(shot)
        hero_prose = shot.prompt("hero_frame")
        if hero_prose is not None:
            hero = self._image(ctx, "hero", hero_prose, source, source_strength)
            first = self._image(ctx, "first", _text(shot.first_frame), hero, HERO_TO_FRAME_STRENGTH)
            last = self._image(ctx, "last", _text(shot.last_frame), hero, HERO_TO_FRAME_STRENGTH)
            self.frames[(shot.shot, "hero")] = hero
        else:
            first = self._image(ctx, "first", _text(shot.first_frame), source, source_strength)
            last = self._image(ctx, "last", _text(shot.last_frame), first, strength)
        up_first, up_last = self._upscale(ctx, "first", first), self._upscale(ctx, "last", last)
        self.frames[(shot.shot, "first")], self.frames[(shot.shot, "last")] = up_first, up_last
        if not self.board.defaults.fmlf:
            clip, clip_s = self._video(ctx, "clip", up_first, up_last, segment=False)
            return clip, clip_s, self._duration_note(shot, clip_s)
        mid = self._image(ctx, "mid", hero_prose or _text(shot.motion_prompt), first, strength)
        up_mid = self._upscale(ctx, "mid", mid)
        self.frames[(shot.shot, "mid")] = up_mid
        return self._two_segments(ctx, up_first, up_mid, up_last)

    def _triptych(self, ctx: _Ctx) -> tuple[str, float, list[str]]:
        strip = self._image(ctx, "strip", _text(ctx.shot.triptych_prompt), None, None, size="triptych")
        width, height = CARDS[ctx.casting.engine].sizes["triptych"]
        split_params = {
            "panels": list(PANELS),
            "strip_width": width,
            "strip_height": height,
            "panel_width": width // len(PANELS),
            "panel_height": height,
        }
        panels = tuple(asset(ctx.stem, f"{p}_panel", "png") for p in PANELS)
        split = self._post(StepKind.SPLIT, ctx.shot.shot, "split", (strip,), split_params, panels)
        up = {p: self._upscale(ctx, p, split, panel=p) for p in PANELS}
        for p in PANELS:
            self.frames[(ctx.shot.shot, p)] = up[p]
        return self._two_segments(ctx, up["first"], up["hero"], up["last"])

    def _held(self, ctx: _Ctx) -> tuple[str, float, list[str]]:
        shot = ctx.shot
        source, source_strength = self._continuity(shot)
        first = self._image(ctx, "first", _text(shot.first_frame), source, source_strength)
        up_first = self._upscale(ctx, "first", first)
        self.frames[(shot.shot, "first")] = up_first
        notes = [] if shot.duration_s else [f"no duration_s: held for the default {DEFAULT_HELD_S:g} s"]
        duration = shot.duration_s or DEFAULT_HELD_S
        width, height = CARDS[POST_ENGINE].sizes["production"]
        params: dict[str, Any] = {
            "duration_s": duration,
            "fps": CARDS[POST_ENGINE].fps,
            "width": width,
            "height": height,
        }
        kind = StepKind.KEN_BURNS if shot.generation_approach == "held_frame_push" else StepKind.HOLD
        if kind is StepKind.KEN_BURNS:
            params["zoom_from"], params["zoom_to"] = KEN_BURNS_ZOOM
        clip = self._post(kind, shot.shot, "clip", (up_first,), params, (asset(ctx.stem, "clip", "mp4"),))
        return clip, duration, notes

    # building blocks ------------------------------------------------------------------------------

    def _continuity(self, shot: Shot) -> tuple[str | None, float | None]:
        link = shot.continuity_from
        if link is None:
            return None, None
        return self.frames[(link.shot, link.frame)], link.strength

    def _image(
        self,
        ctx: _Ctx,
        role: str,
        prose: str,
        source: str | None,
        strength: float | None,
        size: str = "production",
    ) -> str:
        card = CARDS[ctx.casting.engine]
        compiled = compile_image_prompt(prose, ctx.casting.triggers, card.word_limit)
        operation = "t2i" if source is None else "img2img"
        op = card.op(operation)
        width, height = card.sizes[size]
        params: dict[str, Any] = {
            "prompt": compiled.text,
            "width": width,
            "height": height,
            "steps": op.steps,
            "seed": ctx.seed(role),
            "loras": ctx.casting.image_loras,
        }
        if op.guidance is not None:
            params["guidance"] = op.guidance
        if source is not None:
            params["strength"] = strength
        kind = StepKind.T2I if source is None else StepKind.IMG2IMG
        name = asset(ctx.stem, role if size != "production" or role == "hero" else f"{role}_gen", "png")
        return self._add(
            kind,
            ctx.shot.shot,
            role,
            ctx.casting.engine,
            operation,
            params,
            (source,) if source else (),
            (name,),
            compiled.notes,
        )

    def _upscale(self, ctx: _Ctx, role: str, source: str, panel: str | None = None) -> str:
        width, height = CARDS[UPSCALE_ENGINE].sizes["production"]
        params: dict[str, Any] = {"width": width, "height": height, "seed": ctx.seed(f"{role}_up")}
        if panel is not None:
            params["panel"] = panel
        return self._add(
            StepKind.UPSCALE,
            ctx.shot.shot,
            role,
            UPSCALE_ENGINE,
            "upscale",
            params,
            (source,),
            (asset(ctx.stem, role, "png"),),
        )

    def _video(self, ctx: _Ctx, role: str, first: str, last: str, *, segment: bool) -> tuple[str, float]:
        card = CARDS[VIDEO_ENGINE]
        operation = "video_segment" if segment else "video"
        op = card.op(operation)
        assert op.frames is not None and card.fps is not None
        width, height = card.sizes["production"]
        params: dict[str, Any] = {
            "prompt": compile_motion_prompt(_text(ctx.shot.motion_prompt)).text,
            "num_frames": op.frames,
            "fps": card.fps,
            "resolution": card.resolution,
            "aspect_ratio": card.aspect_ratio,
            "width": width,
            "height": height,
            "steps": op.steps,
            "seed": ctx.seed(role),
            "loras": ctx.casting.video_loras,
        }
        step = self._add(
            StepKind.VIDEO,
            ctx.shot.shot,
            role,
            VIDEO_ENGINE,
            operation,
            params,
            (first, last),
            (asset(ctx.stem, role, "mp4"),),
        )
        return step, op.frames / card.fps

    def _two_segments(self, ctx: _Ctx, first: str, middle: str, last: str) -> tuple[str, float, list[str]]:
        seg1, len1 = self._video(ctx, "seg1", first, middle, segment=True)
        seg2, len2 = self._video(ctx, "seg2", middle, last, segment=True)
        clip = self._post(
            StepKind.CONCAT, ctx.shot.shot, "clip", (seg1, seg2), {}, (asset(ctx.stem, "clip", "mp4"),)
        )
        return clip, len1 + len2, self._duration_note(ctx.shot, len1 + len2)

    def _post(
        self,
        kind: StepKind,
        shot: int | None,
        role: str,
        inputs: tuple[str, ...],
        params: dict[str, Any],
        outputs: tuple[str, ...],
    ) -> str:
        return self._add(kind, shot, role, POST_ENGINE, kind.value, params, inputs, outputs)

    def _add(
        self,
        kind: StepKind,
        shot: int | None,
        role: str,
        engine: str,
        operation: str,
        params: dict[str, Any],
        inputs: tuple[str, ...],
        outputs: tuple[str, ...],
        notes: tuple[str, ...] = (),
    ) -> str:
        """Add a step; an identical step (same content) is planned once and shared."""
        sid = step_id(kind, engine, operation, params, inputs)
        if sid not in self.steps:
            op = CARDS[engine].op(operation)
            self.steps[sid] = Step(
                id=sid,
                kind=kind,
                shot=shot,
                role=role,
                engine=engine,
                operation=operation,
                endpoint=op.endpoint,
                inputs=inputs,
                asset_name=outputs[0],
                outputs=outputs,
                params=params,
                cost_usd=op.price_usd,
                latency_s=op.latency_s,
                notes=notes,
                take=self.takes.get(shot, FIRST_TAKE) if shot is not None else FIRST_TAKE,
            )
        return sid

    @staticmethod
    def _duration_note(shot: Shot, clip_s: float) -> list[str]:
        if shot.duration_s is None or abs(shot.duration_s - clip_s) < 0.5:
            return []
        return [
            f"clip runs {clip_s:.2f} s (engine frame count); duration_s {shot.duration_s:g} is not applied"
        ]


def _text(value: str | None) -> str:
    """Validation guarantees required prompts exist; this narrows the type."""
    assert value is not None
    return value
