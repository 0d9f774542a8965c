"""Casting: which image engine renders a shot, and which LoRAs (at which scales) go with it.

The studio's guards live here: a Flux 2 solo scale above 1.1 and a dual total above 1.0 are refused
before anything is paid for (the registry check covers the solo case, this one the pairings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from farm.episode.engine_cards import (
    CARDS,
    IMAGE_ENGINES,
    MULTI_CHARACTER_ENGINE,
    TRIPTYCH_ENGINE,
    VIDEO_ENGINE,
)
from farm.episode.lora_registry import Character, Registry
from farm.episode.problems import Problem
from farm.episode.storyboard import Shot


@dataclass(frozen=True)
class Casting:
    engine: str
    triggers: list[str]
    image_loras: list[dict[str, Any]]
    video_loras: list[dict[str, Any]]
    notes: list[str]


def cast_shot(
    shot: Shot, default_engine: str, registry: Registry, where: tuple[str, str]
) -> Casting | Problem:
    """Pick the engine and LoRA stack for a shot, or say why none works.

    `where` is (file, field path of the shot) for the problem, if any.
    """
    file, path = where
    names = shot.characters_in_shot
    chars = [registry.characters[n] for n in names]
    engine, notes = _choose_engine(shot, default_engine, chars)
    if engine is None:
        if shot.engine is not None:
            return Problem(file, f"{path}.engine", _lacking(names, chars, shot.engine))
        return Problem(
            file,
            f"{path}.characters_in_shot",
            "no image engine has a LoRA for every character (" + _inventory(names, chars) + ")",
        )
    card = CARDS[engine]
    if len(chars) >= 2 and card.max_dual_total is not None:
        total = sum(c.scale_dual for c in chars)
        if total > card.max_dual_total + 1e-9:
            scales = ", ".join(f"{n} {c.scale_dual}" for n, c in zip(names, chars, strict=True))
            return Problem(
                file,
                f"{path}.characters_in_shot",
                f"multi-LoRA total scale {total:g} is above {engine}'s limit {card.max_dual_total:g} "
                f"(refused: it corrupts the image; scale_dual: {scales})",
            )
    image_loras = _image_loras(engine, chars)
    video_loras, video_notes = _video_loras(names, chars)
    return Casting(engine, [c.trigger for c in chars], image_loras, video_loras, notes + video_notes)


def _choose_engine(shot: Shot, default_engine: str, chars: list[Character]) -> tuple[str | None, list[str]]:
    def covers(engine: str) -> bool:
        return all(c.has_image_lora(engine) for c in chars)

    if shot.engine is not None:
        return (shot.engine, ["engine set on the shot"]) if covers(shot.engine) else (None, [])
    if len(chars) >= 2:
        preferred, why = MULTI_CHARACTER_ENGINE, "two characters need dual LoRA"
    elif shot.generation_approach == "triptych_split_flf":
        preferred, why = TRIPTYCH_ENGINE, "triptych strip"
    else:
        preferred, why = default_engine, "episode default"
    if covers(preferred):
        return preferred, [f"engine {preferred}: {why}"]
    for engine in IMAGE_ENGINES:
        if covers(engine):
            return engine, [f"engine {engine}: {preferred} ({why}) lacks a LoRA for a character in the shot"]
    return None, []


def _image_loras(engine: str, chars: list[Character]) -> list[dict[str, Any]]:
    if len(chars) == 1:
        lora = chars[0].t2i[engine]
        return [{"path": lora.path, "scale": lora.scale_solo}]
    return [{"path": c.t2i[engine].path, "scale": c.scale_dual} for c in chars]


def _video_loras(names: list[str], chars: list[Character]) -> tuple[list[dict[str, Any]], list[str]]:
    """Both WAN adapters per character that has them; the others go without (and the plan says so)."""
    loras: list[dict[str, Any]] = []
    notes: list[str] = []
    with_video = [c for c in chars if VIDEO_ENGINE in c.video]
    for name, char in zip(names, chars, strict=True):
        pair = char.video.get(VIDEO_ENGINE)
        if pair is None:
            notes.append(f"{name} has no {VIDEO_ENGINE} video LoRA: its clips render without identity lock")
            continue
        scale = pair.scale if len(with_video) == 1 else char.scale_dual
        loras.append({"path": pair.high_noise_path, "scale": scale, "transformer": "high"})
        loras.append({"path": pair.low_noise_path, "scale": scale, "transformer": "low"})
    return loras, notes


def _lacking(names: list[str], chars: list[Character], engine: str) -> str:
    missing = [n for n, c in zip(names, chars, strict=True) if not c.has_image_lora(engine)]
    return (
        f"{', '.join(missing)} {'has' if len(missing) == 1 else 'have'} no LoRA for {engine} ("
        + _inventory(names, chars)
        + ")"
    )


def _inventory(names: list[str], chars: list[Character]) -> str:
    return "; ".join(f"{n}: {', '.join(c.t2i) or 'none'}" for n, c in zip(names, chars, strict=True))
