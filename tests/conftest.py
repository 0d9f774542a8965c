"""Shared fixtures: the project's own example episode, the studio's sample, and a way to edit them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "lighthouse" / "storyboard_ep_001.json"
SHARED_SAMPLE = ROOT.parent / "shared" / "episodes" / "leviathan" / "storyboard_ep_001.json"

Doc = dict[str, Any]

SAMPLE_TOTALS = {
    "t2i": 8,
    "img2img": 9,
    "upscale": 19,
    "split": 2,
    "video": 9,
    "ken_burns": 2,
    "hold": 1,
    "concat": 3,
}
"""Steps per kind the issue specifies for the studio's sample episode (53 in all)."""


def load_doc(path: Path) -> Doc:
    doc: Doc = json.loads(path.read_text("utf-8"))
    return doc


@pytest.fixture(scope="session")
def sample_path() -> Path:
    if not SHARED_SAMPLE.exists():
        pytest.skip("../shared sample episode not present")
    return SHARED_SAMPLE


@pytest.fixture
def sample_doc(sample_path: Path) -> Doc:
    return load_doc(sample_path)


@pytest.fixture
def registry_doc(sample_path: Path) -> Doc:
    return load_doc(sample_path.with_name("lora_registry.json"))


@pytest.fixture
def write_episode(tmp_path: Path, sample_doc: Doc, registry_doc: Doc) -> Callable[..., Path]:
    """Write (edited copies of) the sample storyboard and registry side by side; return the storyboard."""

    def write(
        storyboard: Doc | None = None, registry: Doc | None = None, name: str = "storyboard.json"
    ) -> Path:
        folder = tmp_path / f"ep{len(list(tmp_path.iterdir()))}"
        folder.mkdir()
        (folder / "lora_registry.json").write_text(
            json.dumps(registry if registry is not None else registry_doc)
        )
        path = folder / name
        path.write_text(json.dumps(storyboard if storyboard is not None else sample_doc))
        return path

    return write


@pytest.fixture
def edit(sample_doc: Doc) -> Callable[[], Doc]:
    """A fresh deep copy of the sample storyboard to modify."""
    return lambda: copy.deepcopy(sample_doc)
