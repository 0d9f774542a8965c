"""Asset names: {PRJ}_EP{NNN}_S{NN}_T{NN}_{CHAR}_{role}.{ext}, the studio's convention."""

from __future__ import annotations

from farm.episode.storyboard import Shot, Storyboard

FIRST_TAKE = 1


def shot_stem(board: Storyboard, shot: Shot, take: int = FIRST_TAKE) -> str:
    """The shot's name without role; a shot's own `asset_name` replaces it whole (with the take from T02)."""
    if shot.asset_name:
        return shot.asset_name if take == FIRST_TAKE else f"{shot.asset_name}_T{take:02d}"
    who = shot.characters_in_shot[0] if shot.characters_in_shot else "ENV"
    return f"{board.project}_EP{board.episode:03d}_S{shot.shot:02d}_T{take:02d}_{who}"


def asset(stem: str, role: str, ext: str) -> str:
    return f"{stem}_{role}.{ext}"


def episode_asset(board: Storyboard, cut: int = 1) -> str:
    """The episode file; each later cut (after a retake) keeps its own: `_episode_C02.mp4`, …"""
    suffix = "" if cut == 1 else f"_C{cut:02d}"
    return f"{board.project}_EP{board.episode:03d}_episode{suffix}.mp4"
