"""What each generation approach needs from a shot and which frames it produces."""

from __future__ import annotations

from typing import Literal

Approach = Literal["standard_flf", "triptych_split_flf", "held_frame_push", "held_frame_static"]
Frame = Literal["first", "hero", "mid", "last"]
PromptField = Literal["first_frame", "last_frame", "hero_frame", "triptych_prompt", "motion_prompt"]

APPROACHES: tuple[Approach, ...] = (
    "standard_flf",
    "triptych_split_flf",
    "held_frame_push",
    "held_frame_static",
)

REQUIRED_PROMPTS: dict[Approach, tuple[PromptField, ...]] = {
    "standard_flf": ("first_frame", "last_frame", "motion_prompt"),
    "triptych_split_flf": ("triptych_prompt", "motion_prompt"),
    "held_frame_push": ("first_frame",),
    "held_frame_static": ("first_frame",),
}

CONTINUITY_TARGETS: frozenset[Approach] = frozenset({"standard_flf", "held_frame_push", "held_frame_static"})
"""Approaches whose first generated image can be an img2img of another shot's frame.
A triptych strip is one 1536x912 image, which no single 9:16 frame can seed."""


def frames_of(approach: Approach, *, has_hero: bool, fmlf: bool) -> tuple[Frame, ...]:
    """The keyframes a shot of this approach ends up with (what `continuity_from.frame` may name)."""
    if approach == "triptych_split_flf":
        return ("first", "hero", "last")
    if approach == "standard_flf":
        frames: list[Frame] = ["first"]
        if has_hero:
            frames.append("hero")
        if fmlf:
            frames.append("mid")
        frames.append("last")
        return tuple(frames)
    return ("first",)
