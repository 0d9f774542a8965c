"""Engine parameter cards, loaded from engine_cards.toml and checked once at import."""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from decimal import Decimal
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Family = Literal["image", "upscale", "video", "post"]
Size = tuple[int, int]


class Operation(BaseModel):
    """One kind of call an engine makes: where it goes, what it costs, how long it usually takes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint: str | None = None
    steps: int | None = None
    guidance: float | None = None
    frames: int | None = None
    price_usd: Decimal
    latency_s: float = Field(gt=0)


class EngineCard(BaseModel):
    """Everything the planner needs to know about one engine."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    title: str
    family: Family
    provider: Literal["fal", "local"]
    revision: str
    operations: dict[str, Operation]
    sizes: dict[str, Size]
    word_limit: int | None = None
    lora_scale_solo: float | None = None
    lora_scale_dual: float | None = None
    max_solo_scale: float | None = None
    max_dual_total: float | None = None
    fps: int | None = None
    resolution: str | None = None
    aspect_ratio: str | None = None

    def op(self, name: str) -> Operation:
        return self.operations[name]


def _load() -> dict[str, EngineCard]:
    text = resources.files("farm.episode").joinpath("engine_cards.toml").read_text("utf-8")
    return {name: EngineCard(name=name, **body) for name, body in tomllib.loads(text).items()}


CARDS: Mapping[str, EngineCard] = _load()
IMAGE_ENGINES: tuple[str, ...] = tuple(n for n, c in CARDS.items() if c.family == "image")
UPSCALE_ENGINE = "seedvr2"
VIDEO_ENGINE = "wan22"
POST_ENGINE = "post"
DEFAULT_IMAGE_ENGINE = "z_image_turbo"
MULTI_CHARACTER_ENGINE = "flux2"
"""Two characters need dual LoRA, which the studio renders on Flux 2."""
TRIPTYCH_ENGINE = "flux2"
"""Triptych strips (1536x912) are a Flux 2 format."""
