"""LoRA registry: which character has which identity LoRA on which engine, at what scale."""

from __future__ import annotations

import re
from typing import Annotated, Any, TypeVar
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from farm.episode.engine_cards import CARDS, IMAGE_ENGINES, VIDEO_ENGINE
from farm.episode.problems import Problem
from farm.episode.schema_problems import describe, problems_from
from farm.episode.storyboard import SAFE_TOKEN

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
_PATH_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
"""A segment of a relative LoRA path or Hugging Face repo id: no `..`, `.`, `~`, empty or hidden segment."""
_URL_SCHEMES = ("https", "http")


def lora_path_problem(path: str) -> str | None:
    """Why `path` is not a LoRA fal can fetch, or None. fal takes a URL or a Hugging Face repo id
    (`owner/name`); an absolute path, a `..` segment or another scheme (`file://`) points into the
    machine that reads it, never at a published LoRA."""
    if any(ch.isspace() or not ch.isprintable() for ch in path) or "\\" in path:
        return f"{path!r} has whitespace, control characters or backslashes; use a URL or a repo id"
    if "://" in path:
        try:
            url = urlsplit(path)
            host = url.hostname
        except ValueError:  # e.g. an unclosed IPv6 bracket
            host = None
        if host is None or url.scheme not in _URL_SCHEMES:
            return f"{path!r} is not an https:// URL with a host"
        if {".", ".."} & set(unquote(url.path).split("/")):
            return f"{path!r} has a '.' or '..' segment; give the LoRA's own URL"
        return None
    if not all(_PATH_SEGMENT.fullmatch(segment) for segment in path.split("/")):
        return (
            f"{path!r} is not a LoRA fal can fetch: use an https:// URL or a repo id like 'studio/lora' "
            "(no absolute path, no '..', '.' or '~' segment)"
        )
    return None


class _Header(Registry):
    """The registry with its characters unparsed: they are parsed one by one."""

    characters: dict[str, Any]


_CHARACTER = TypeAdapter(Character)
_IMAGE_LORA = TypeAdapter(ImageLora)
_VIDEO_PAIR = TypeAdapter(VideoLoraPair)
_Part = TypeVar("_Part")


def _salvage(entry: Any) -> Character:
    """The LoRAs of a broken character that do parse, so the guards still run on them (a scale above
    Flux 2's limit is reported beside a misspelt trigger, not after it is fixed)."""
    raw = entry if isinstance(entry, dict) else {}
    t2i, video = _parsable(raw.get("t2i"), _IMAGE_LORA), _parsable(raw.get("video"), _VIDEO_PAIR)
    return Character.model_construct(trigger="", t2i=t2i, video=video)


def _parsable(raw: Any, adapter: TypeAdapter[_Part]) -> dict[str, _Part]:
    """The entries of a JSON object that parse as `adapter`'s type (the others are reported already)."""
    found: dict[str, _Part] = {}
    for key, value in raw.items() if isinstance(raw, dict) else ():
        try:
            found[key] = adapter.validate_python(value)
        except ValidationError:
            continue  # reported with the character's other problems
    return found


def parse_registry(doc: Any, file: str) -> tuple[Registry | None, list[Problem]]:
    """Return the registry (None if it does not parse) and every problem found in it. Each character is
    parsed on its own, so one broken field hides neither the others nor the LoRA guards."""
    if not isinstance(doc, dict):
        return None, [Problem(file, "", f"expected a JSON object at the top level, got {describe(doc)}")]
    broken: list[Problem] = []  # fields that do not parse: with any, there is no registry to cast from
    rules: list[Problem] = []
    try:
        _Header.model_validate(doc)
    except ValidationError as exc:
        broken += problems_from(exc, file)
    raw = doc.get("characters")
    characters: dict[str, Character] = {}
    for name, entry in raw.items() if isinstance(raw, dict) else ():
        try:
            characters[name] = _CHARACTER.validate_python(entry)
        except ValidationError as exc:
            broken += problems_from(exc, file, prefix=("characters", name))
            rules += _check_character(name, _salvage(entry), file)
        else:
            rules += _check_character(name, characters[name], file)
    rules += _shared_triggers(characters, file)
    if broken:
        return None, broken + rules
    return Registry.model_validate(doc), rules


def _shared_triggers(characters: dict[str, Character], file: str) -> list[Problem]:
    problems = []
    triggers: dict[str, str] = {}
    for name, character in characters.items():
        if character.trigger in triggers:
            problems.append(
                Problem(
                    file,
                    f"characters.{name}.trigger",
                    f"{character.trigger!r} is also the trigger of {triggers[character.trigger]}",
                )
            )
        triggers.setdefault(character.trigger, name)
    return problems


def _check_character(name: str, character: Character, file: str) -> list[Problem]:
    where = f"characters.{name}"
    problems = []
    if not _NAME.fullmatch(name) or len(name) > 24:
        problems.append(
            Problem(
                file,
                where,
                "character names appear in asset names: use a short token of letters, digits, '_' and '-' "
                "(not starting with '-')",
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
    return problems + _lora_paths(character, where, file)


def _lora_paths(character: Character, where: str, file: str) -> list[Problem]:
    """Every LoRA file the character names, each checked by `lora_path_problem`."""
    paths = [(f"{where}.t2i.{engine}.path", lora.path) for engine, lora in character.t2i.items()]
    for engine, pair in character.video.items():
        paths.append((f"{where}.video.{engine}.high_noise_path", pair.high_noise_path))
        paths.append((f"{where}.video.{engine}.low_noise_path", pair.low_noise_path))
    found = [(field, lora_path_problem(path)) for field, path in paths]
    return [Problem(file, field, why) for field, why in found if why is not None]
