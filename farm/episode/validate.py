"""Load a storyboard and its LoRA registry, check every rule, and report all problems at once."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.episode.approaches import CONTINUITY_TARGETS, REQUIRED_PROMPTS, PromptField, frames_of
from farm.episode.casting import Casting, cast_shot
from farm.episode.engine_cards import IMAGE_ENGINES
from farm.episode.json_input import load_json
from farm.episode.lora_registry import Registry, parse_registry
from farm.episode.problems import InputError, Problem
from farm.episode.prompts import image_prompt_is_empty
from farm.episode.storyboard import ParsedStoryboard, Shot, Storyboard, parse_storyboard

REGISTRY_FILE_NAME = "lora_registry.json"
IMAGE_PROMPTS: tuple[PromptField, ...] = ("first_frame", "last_frame", "hero_frame", "triptych_prompt")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""Control characters a prompt never needs (newline, tab and carriage return are prose)."""
_NOT_ONE_LINE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
"""What a title cannot hold: it is one line in tables, file metadata and page headings."""


@dataclass(frozen=True)
class Episode:
    """A storyboard that passed every check, with its registry and each shot's casting."""

    storyboard: Storyboard
    registry: Registry
    storyboard_file: Path
    registry_file: Path
    castings: dict[int, Casting]
    warnings: list[Problem]
    documents: tuple[Any, Any] = (None, None)
    """The storyboard and registry as parsed JSON: a run keeps them so that a retake can plan it again."""


def default_registry(storyboard_path: Path) -> Path:
    """Without --registry, the registry is the lora_registry.json next to the storyboard."""
    return storyboard_path.with_name(REGISTRY_FILE_NAME)


def load_episode(storyboard_path: Path, registry_path: Path | None = None) -> Episode:
    """Return the checked episode, or raise InputError listing every problem in both files."""
    registry_path = registry_path or default_registry(storyboard_path)
    problems: list[Problem] = []
    registry_doc: Any = None
    try:
        registry_file = load_json(registry_path)
        registry_doc = registry_file.document
        problems += registry_file.problems
    except InputError as exc:
        problems += exc.problems
    try:
        storyboard_file = load_json(storyboard_path)
    except InputError as exc:
        raise InputError(exc.problems + problems) from None
    problems = storyboard_file.problems + problems
    return check_episode(storyboard_file.document, registry_doc, storyboard_path, registry_path, problems)


def check_episode(
    storyboard_doc: Any,
    registry_doc: Any,
    storyboard_path: Path,
    registry_path: Path,
    problems: list[Problem] | None = None,
) -> Episode:
    """Check already-parsed documents (None for a registry that could not be read)."""
    sb_file, reg_file = str(storyboard_path), str(registry_path)
    problems = list(problems or [])
    registry: Registry | None = None
    if registry_doc is not None:
        registry, reg_problems = parse_registry(registry_doc, reg_file)
        problems += reg_problems
    parsed = parse_storyboard(storyboard_doc, sb_file)
    problems += parsed.problems
    problems += list(_storyboard_rules(parsed, sb_file))
    castings: dict[int, Casting] = {}
    if registry is not None:
        problems += list(_character_rules(parsed, registry, sb_file))
        castings, cast_problems = _cast_all(parsed, registry, sb_file)
        problems += cast_problems
    if problems or registry is None:
        raise InputError(problems)
    warnings = parsed.warnings + list(_unused_prompt_warnings(parsed, sb_file))
    return Episode(
        parsed.storyboard(),
        registry,
        storyboard_path,
        registry_path,
        castings,
        warnings,
        (storyboard_doc, registry_doc),
    )


def _storyboard_rules(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    yield from _engine_names(parsed, file)
    yield from _unique(parsed, file, "shot", "shot number")
    yield from _unique(parsed, file, "asset_name", "asset name")
    yield from _required_prompts(parsed, file)
    yield from _plain_text(parsed, file)
    yield from _continuity(parsed, file)


def _engine_names(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    known = ", ".join(IMAGE_ENGINES)
    if parsed.defaults is not None and parsed.defaults.engine not in IMAGE_ENGINES:
        yield Problem(
            file,
            "defaults.engine",
            f"unknown engine {parsed.defaults.engine!r}; known image engines: {known}",
        )
    for i, shot in parsed.shots:
        if shot.engine is not None and shot.engine not in IMAGE_ENGINES:
            yield Problem(
                file, f"shots[{i}].engine", f"unknown engine {shot.engine!r}; known image engines: {known}"
            )


def _unique(parsed: ParsedStoryboard, file: str, attr: str, what: str) -> Iterator[Problem]:
    seen: dict[object, int] = {}
    for i, shot in parsed.shots:
        value = getattr(shot, attr)
        if value is None:
            continue
        if value in seen:
            yield Problem(
                file, f"shots[{i}].{attr}", f"duplicate {what} {value!r}: also used by shots[{seen[value]}]"
            )
        else:
            seen[value] = i


def _required_prompts(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    for i, shot in parsed.shots:
        for name in REQUIRED_PROMPTS[shot.generation_approach]:
            if shot.prompt(name) is None:
                yield Problem(
                    file,
                    f"shots[{i}].{name}",
                    f"missing or blank; required by {shot.generation_approach} (shot {shot.shot})",
                )
        for name in IMAGE_PROMPTS:
            text = shot.prompt(name)
            if text is not None and image_prompt_is_empty(text):
                yield Problem(
                    file,
                    f"shots[{i}].{name}",
                    "nothing is left after stripping VFX language; describe the frame itself "
                    "(effects belong in motion_prompt)",
                )


def _plain_text(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    """The title and prompts reach terminals, HTML pages, manifests and engines: an escape sequence or a
    NUL in them is an accident (or an attack), never part of an episode."""
    title = parsed.header.title if parsed.header is not None else ""
    if _NOT_ONE_LINE.search(title):
        yield Problem(file, "title", f"{title[:60]!r}: one line of text, no control characters")
    for i, shot in parsed.shots:
        for name in (*IMAGE_PROMPTS, "motion_prompt"):
            text = getattr(shot, name)
            if isinstance(text, str) and (found := _CONTROL.search(text)) is not None:
                yield Problem(
                    file,
                    f"shots[{i}].{name}",
                    f"control character {found.group()!r} at character {found.start()}: "
                    "prompts are plain text (newlines and tabs are fine)",
                )


def _continuity(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    by_number = {shot.shot: shot for _, shot in parsed.shots}
    for i, shot in parsed.shots:
        link = shot.continuity_from
        if link is None:
            continue
        where = f"shots[{i}].continuity_from"
        if shot.generation_approach not in CONTINUITY_TARGETS:
            yield Problem(
                file,
                where,
                f"not supported for {shot.generation_approach}: a triptych strip is one "
                "wide image that no single frame can seed",
            )
        if link.shot == shot.shot:
            yield Problem(file, f"{where}.shot", "a shot cannot continue from itself")
            continue
        if link.shot not in parsed.shot_numbers:
            yield Problem(file, f"{where}.shot", f"there is no shot {link.shot} in this storyboard")
            continue
        source = by_number.get(link.shot)
        if source is None:
            continue  # that shot has problems of its own; its frames cannot be known yet
        has_hero = source.prompt("hero_frame") is not None
        frames = frames_of(source.generation_approach, has_hero=has_hero, fmlf=parsed.effective_defaults.fmlf)
        if link.frame not in frames:
            yield Problem(
                file,
                f"{where}.frame",
                f"shot {source.shot} ({source.generation_approach}) has no {link.frame!r} frame; "
                f"it has: {', '.join(frames)}",
            )
    yield from _continuity_cycles(parsed, file)


def _continuity_cycles(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    """Each shot continues from at most one other, so following the links either ends or loops."""
    index = {shot.shot: i for i, shot in parsed.shots}
    source_of = {s.shot: s.continuity_from.shot for _, s in parsed.shots if s.continuity_from is not None}
    reported: set[int] = set()
    for start in index:
        chain = [start]
        while (nxt := source_of.get(chain[-1])) is not None and nxt in index and nxt != chain[-1]:
            if nxt in chain:
                cycle = chain[chain.index(nxt) :]
                if not reported.intersection(cycle):
                    reported.update(cycle)
                    path = " -> ".join(str(s) for s in [*cycle, nxt])
                    yield Problem(
                        file,
                        f"shots[{index[cycle[0]]}].continuity_from",
                        f"continuity cycle between shots {path}: each waits for the other",
                    )
                break
            chain.append(nxt)


def _character_rules(parsed: ParsedStoryboard, registry: Registry, file: str) -> Iterator[Problem]:
    known = ", ".join(registry.characters) or "no characters"
    for i, shot in parsed.shots:
        seen: set[str] = set()
        for j, name in enumerate(shot.characters_in_shot):
            where = f"shots[{i}].characters_in_shot[{j}]"
            if name not in registry.characters:
                yield Problem(file, where, f"unknown character {name!r}; the registry has: {known}")
            elif name in seen:
                yield Problem(file, where, f"{name} is listed twice")
            seen.add(name)


def _cast_all(
    parsed: ParsedStoryboard, registry: Registry, file: str
) -> tuple[dict[int, Casting], list[Problem]]:
    """Cast every shot whose characters and engine are known (the others already have a problem)."""
    default = parsed.effective_defaults.engine
    castings: dict[int, Casting] = {}
    found: list[Problem] = []
    for i, shot in parsed.shots:
        if not _castable(shot, default, registry):
            continue
        result = cast_shot(shot, default, registry, (file, f"shots[{i}]"))
        if isinstance(result, Problem):
            found.append(result)
        else:
            castings[shot.shot] = result
    return castings, found


def _castable(shot: Shot, default: str, registry: Registry) -> bool:
    engine_known = (shot.engine or default) in IMAGE_ENGINES
    chars = shot.characters_in_shot
    return engine_known and len(set(chars)) == len(chars) and all(c in registry.characters for c in chars)


def _unused_prompt_warnings(parsed: ParsedStoryboard, file: str) -> Iterator[Problem]:
    optional: dict[str, set[PromptField]] = {"standard_flf": {"hero_frame"}}
    for i, shot in parsed.shots:
        used = set(REQUIRED_PROMPTS[shot.generation_approach]) | optional.get(shot.generation_approach, set())
        for name in (*IMAGE_PROMPTS, "motion_prompt"):
            if name not in used and shot.prompt(name) is not None:
                yield Problem(file, f"shots[{i}].{name}", f"not used by {shot.generation_approach}, ignored")
