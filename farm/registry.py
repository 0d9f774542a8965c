"""LoRA registry: which character has which identity LoRA on which engine, at what scale."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from farm.engines import CARDS, IMAGE_ENGINES, VIDEO_ENGINE
from farm.problems import Problem
from farm.storyboard import SAFE_TOKEN
from farm.validation_errors import problems_from

LoraPath = Annotated[str, StringConstraints(min_length=1, max_length=1000)]
Scale = Annotated[float, Field(gt=0, le=4)]

_STRICT = ConfigDict(strict=True, frozen=True, extra="ignore")


class ImageLora(BaseModel):
    model_config = _STRICT

    path: LoraPath
    scale_solo: Scale


class VideoLoraPair(BaseModel):
    """WAN 2.2 needs both adapters: one for the high-noise and one for the low-noise transformer."""

    model_config = _STRICT

    high_noise_path: LoraPath
    low_noise_path: LoraPath
    scale: Scale = 1.0


class Character(BaseModel):
    model_config = _STRICT

    trigger: Annotated[str, StringConstraints(pattern=SAFE_TOKEN, min_length=1, max_length=40)]
    description: str = ""
    t2i: dict[str, ImageLora] = Field(default_factory=dict)
    video: dict[str, VideoLoraPair] = Field(default_factory=dict)
    scale_dual: Scale = 0.5

    def has_image_lora(self, engine: str) -> bool:
        return engine in self.t2i


class Registry(BaseModel):
    model_config = _STRICT

    schema_version: Annotated[int, Field(ge=1, le=1)]
    characters: dict[str, Character]


_NAME = re.compile(SAFE_TOKEN)


def parse_registry(doc: Any, file: str) -> tuple[Registry | None, list[Problem]]:
    """Return the registry (None if it does not parse) and every problem found in it."""
    try:
        registry = Registry.model_validate(doc)
    except ValidationError as exc:
        return None, problems_from(exc, file)
    problems = []
    for name, character in registry.characters.items():
        problems += _check_character(name, character, file)
    triggers: dict[str, str] = {}
    for name, character in registry.characters.items():
        if character.trigger in triggers:
            problems.append(
                Problem(
                    file,
                    f"characters.{name}.trigger",
                    f"{character.trigger!r} is also the trigger of {triggers[character.trigger]}",
                )
            )
        triggers.setdefault(character.trigger, name)
    return registry, problems


def _check_character(name: str, character: Character, file: str) -> list[Problem]:
    where = f"characters.{name}"
    problems = []
    if not _NAME.fullmatch(name) or len(name) > 24:
        problems.append(
            Problem(
                file,
                where,
                "character names appear in asset names: use a short token of letters, digits, '_' and '-'",
            )
        )
    for engine, lora in character.t2i.items():
        if engine not in IMAGE_ENGINES:
            problems.append(
                Problem(
                    file, f"{where}.t2i.{engine}", f"unknown image engine; known: {', '.join(IMAGE_ENGINES)}"
                )
            )
            continue
        limit = CARDS[engine].max_solo_scale
        if limit is not None and lora.scale_solo > limit:
            problems.append(
                Problem(
                    file,
                    f"{where}.t2i.{engine}.scale_solo",
                    f"{lora.scale_solo:g} is above {engine}'s solo LoRA limit {limit:g} "
                    "(refused: it blows the image out)",
                )
            )
    for engine in character.video:
        if engine != VIDEO_ENGINE:
            problems.append(
                Problem(file, f"{where}.video.{engine}", f"unknown video engine; known: {VIDEO_ENGINE}")
            )
    return problems
