"""Storyboard schema v3: the models, parsed field by field so every problem is reported at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from farm.episode.approaches import Approach, Frame
from farm.episode.problems import Problem, field_path
from farm.episode.schema_problems import problems_from

MAX_PROMPT_CHARS = 4000
"""The longest engine window is ~170 words; a prompt past a few thousand characters is a paste accident."""
MAX_SHOTS = 500
SAFE_TOKEN = r"^[A-Za-z0-9_][A-Za-z0-9_-]*$"
"""Names that end up in file names: no separators, dots or spaces, and no leading '-' (read as an option
by whatever command line a deliverable is later handed to)."""

ShortToken = Annotated[str, StringConstraints(pattern=SAFE_TOKEN, min_length=1, max_length=16)]
NameToken = Annotated[str, StringConstraints(pattern=SAFE_TOKEN, min_length=1, max_length=64)]
Prompt = Annotated[str, StringConstraints(max_length=MAX_PROMPT_CHARS)]
Strength = Annotated[float, Field(gt=0, le=1)]

_STRICT = ConfigDict(strict=True, frozen=True, extra="allow")


class Defaults(BaseModel):
    model_config = _STRICT

    engine: str = "z_image_turbo"
    img2img_strength: Strength = 0.40
    fmlf: bool = False


class Continuity(BaseModel):
    """Seed this shot's first image from a frame of another shot (a punch-in or a match cut)."""

    model_config = _STRICT

    shot: int
    frame: Frame
    strength: Strength


class Shot(BaseModel):
    model_config = _STRICT

    shot: Annotated[int, Field(ge=1, le=999)]
    scene: int | None = None
    generation_approach: Approach
    characters_in_shot: list[str] = Field(default_factory=list, max_length=8)
    first_frame: Prompt | None = None
    last_frame: Prompt | None = None
    hero_frame: Prompt | None = None
    triptych_prompt: Prompt | None = None
    motion_prompt: Prompt | None = None
    engine: str | None = None
    seed: Annotated[int, Field(ge=0, lt=2**32)] | None = None
    asset_name: Annotated[str, StringConstraints(pattern=SAFE_TOKEN, min_length=1, max_length=80)] | None = (
        None
    )
    duration_s: Annotated[float, Field(gt=0, le=600)] | None = None
    img2img_strength: Strength | None = None
    """This shot's frame-to-frame strength (first -> last, first -> mid); else the storyboard default."""
    continuity_from: Continuity | None = None

    def prompt(self, name: str) -> str | None:
        """A prose field, with blank counted as absent."""
        value = getattr(self, name)
        return value if isinstance(value, str) and value.strip() else None


class Storyboard(BaseModel):
    model_config = _STRICT

    schema_version: Annotated[int, Field(ge=3, le=3)]
    project: ShortToken
    project_name: NameToken
    episode: Annotated[int, Field(ge=1, le=999)]
    title: Annotated[str, StringConstraints(max_length=200)] = ""
    aspect_ratio: Annotated[str, StringConstraints(pattern=r"^9:16$")] = "9:16"
    defaults: Defaults = Field(default_factory=Defaults)
    shots: list[Shot]


class _Header(Storyboard):
    """The storyboard without its shots, so a broken shot cannot hide a broken header."""

    shots: list[Any] = Field(min_length=1, max_length=MAX_SHOTS)


_SHOT = TypeAdapter(Shot)
_DEFAULTS = TypeAdapter(Defaults)


@dataclass(frozen=True)
class ParsedStoryboard:
    """What parsed, kept even when something did not, so cross-shot rules can report alongside."""

    header: Storyboard | None
    defaults: Defaults | None
    """Parsed on their own, so a bad `project` does not hide `fmlf` or an unknown default engine."""
    shots: list[tuple[int, Shot]]
    """(index in the file's `shots` array, shot) for every shot that parsed."""
    shot_numbers: set[int]
    """Every shot number in the file, including those of shots that failed to parse."""
    problems: list[Problem]
    warnings: list[Problem]

    @property
    def effective_defaults(self) -> Defaults:
        return self.defaults or Defaults()

    def storyboard(self) -> Storyboard:
        """The complete storyboard; only meaningful when there are no problems."""
        assert self.header is not None and not self.problems
        fields = {name: getattr(self.header, name) for name in Storyboard.model_fields if name != "shots"}
        return Storyboard.model_construct(**fields, shots=[shot for _, shot in self.shots])


def parse_storyboard(doc: Any, file: str) -> ParsedStoryboard:
    """Parse the header and each shot on its own, collecting every structural problem."""
    header, problems = _parse_header(doc, file)
    shots: list[tuple[int, Shot]] = []
    raw_shots = doc.get("shots") if isinstance(doc, dict) else None
    raw_shots = raw_shots[:MAX_SHOTS] if isinstance(raw_shots, list) else []
    for index, raw in enumerate(raw_shots):
        try:
            shots.append((index, _SHOT.validate_python(raw)))
        except ValidationError as exc:
            problems += problems_from(exc, file, prefix=("shots", index))
    numbers = {raw["shot"] for raw in raw_shots if isinstance(raw, dict) and isinstance(raw.get("shot"), int)}
    defaults = header.defaults if header is not None else _defaults_alone(doc)
    return ParsedStoryboard(header, defaults, shots, numbers, problems, _unknown_fields(header, shots, file))


def _defaults_alone(doc: Any) -> Defaults | None:
    """The defaults block when the header as a whole failed (its problems are reported already)."""
    raw = doc.get("defaults", {}) if isinstance(doc, dict) else None
    try:
        return _DEFAULTS.validate_python(raw)
    except ValidationError:
        return None


def _parse_header(doc: Any, file: str) -> tuple[_Header | None, list[Problem]]:
    if not isinstance(doc, dict):
        return None, [Problem(file, "", f"expected a JSON object at the top level, got {type(doc).__name__}")]
    try:
        return _Header.model_validate(doc), []
    except ValidationError as exc:
        return None, problems_from(exc, file)


def _unknown_fields(header: _Header | None, shots: list[tuple[int, Shot]], file: str) -> list[Problem]:
    """Fields the schema does not know are ignored, but said out loud: a typo must not pass silently."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    if header is not None:
        found += [((), key) for key in header.model_extra or {}]
        found += [(("defaults",), key) for key in header.defaults.model_extra or {}]
    for index, shot in shots:
        found += [(("shots", index), key) for key in shot.model_extra or {}]
    return [Problem(file, field_path((*loc, key)), "unknown field, ignored") for loc, key in found]
