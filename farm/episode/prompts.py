"""Prompt compiler: what actually gets hashed, logged and sent for an image or a video step.

Image prompts lose their visual-effects language (it paints spirals and grids onto faces), lead with
the LoRA trigger words, and are cut to the engine's word window at a sentence boundary. Motion
prompts for video keep everything: there the effects are wanted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_VFX_TERMS = [
    r"targeting\s+(?:reticles?|brackets?|boxes|markers?|lock)",
    r"reticles?",
    r"crosshairs?",
    r"holo(?:graphic|grams?)\w*",
    r"HUDs?",
    r"heads?[- ]up\s+displays?",
    r"data\s+streams?",
    r"streams?\s+of\s+(?:data|code|numbers)",
    r"(?:binary|scrolling|falling|matrix)\s+code",
    r"scan\s*-?lines?",
    r"glitch\w*",
    r"digital\s+(?:overlays?|noise|distortion|artifacts?|rain)",
    r"wire-?frames?",
    r"(?:UI|AR|interface)\s+overlays?",
    r"augmented[- ]reality",
    r"lock-?on\s+(?:markers?|indicators?)",
    r"radar\s+(?:sweeps?|rings?)",
    r"(?:energy|laser|plasma)\s+(?:beams?|shields?|fields?|grids?)",
    r"force\s*-?fields?",
    r"particle\s+(?:effects?|trails?|systems?)",
    r"telemetry",
    r"read-?outs?",
    r"grid\s*-?lines?",
    r"circuit(?:ry)?\s+patterns?",
    r"light\s+trails?",
    r"motion\s+graphics",
    r"(?:floating|projected)\s+(?:screens?|displays?|interfaces?|icons?|text)",
    r"(?:sci-fi|futuristic)\s+interfaces?",
    r"pixelat\w+",
    r"chromatic\s+aberration",
]
VFX_PATTERNS: tuple[re.Pattern[str], ...] = tuple(re.compile(rf"\b{t}\b", re.IGNORECASE) for t in _VFX_TERMS)

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_CLAUSE_SEP = re.compile(r"(\s*[,;]\s+)")


@dataclass(frozen=True)
class CompiledPrompt:
    text: str
    notes: tuple[str, ...] = field(default=())


def has_vfx(text: str) -> bool:
    return any(p.search(text) for p in VFX_PATTERNS)


def strip_vfx(text: str) -> tuple[str, list[str]]:
    """Drop every comma- or semicolon-separated clause that carries VFX language.

    Clause granularity keeps the sentence readable ("X at the console, surrounded by a holographic HUD,
    fingers on the switch" becomes "X at the console, fingers on the switch"). Sentences without VFX
    language are kept exactly as written.
    """
    kept_sentences: list[str] = []
    removed: list[str] = []
    for sentence in _split_sentences(text):
        if not has_vfx(sentence):
            kept_sentences.append(sentence)
            continue
        body, end = _split_terminator(sentence)
        parts = _CLAUSE_SEP.split(body)
        clauses, separators = parts[::2], ["", *parts[1::2]]
        kept = ""
        for clause, separator in zip(clauses, separators, strict=True):
            if has_vfx(clause):
                removed.append(clause)
            elif clause:
                kept += (separator.strip() + " " if kept else "") + clause
        if kept:
            kept_sentences.append(kept[0].upper() + kept[1:] + end)
    return " ".join(kept_sentences), removed


def lead_with_triggers(text: str, triggers: list[str]) -> str:
    """LoRA trigger words first: the adapter keys on them and early tokens weigh most."""
    if not triggers:
        return text
    first = re.match(r"[A-Za-z0-9_-]+", text)
    if first and first.group() in triggers and all(t in text for t in triggers):
        return text
    return f"{', '.join(triggers)}: {text}" if text else f"{', '.join(triggers)}."


def limit_words(text: str, limit: int) -> str:
    """Keep whole sentences within `limit` words.

    When whole sentences would leave more than half the window unused, the next sentence is cut at
    its last clause boundary instead, so one long opening sentence is not thrown away whole.
    """
    if _count_words(text) <= limit:
        return text
    kept: list[str] = []
    sentences = _split_sentences(text)
    for sentence in sentences:
        if _count_words(" ".join([*kept, sentence])) > limit:
            break
        kept.append(sentence)
    used = _count_words(" ".join(kept))
    if used < limit // 2:
        kept.append(_cut_long_sentence(sentences[len(kept)], limit - used))
    return " ".join(kept)


def compile_image_prompt(prose: str, triggers: list[str], word_limit: int | None) -> CompiledPrompt:
    """Strip VFX, put triggers first, then fit the engine's word window; every trigger survives the cut."""
    notes: list[str] = []
    body, removed = strip_vfx(_normalise(prose))
    if removed:
        notes.append("stripped VFX language: " + "; ".join(repr(r) for r in removed))
    text = lead_with_triggers(body, triggers)
    if word_limit is not None:
        before = _count_words(text)
        text = limit_words(text, word_limit)
        if any(t not in text for t in triggers):
            text = f"{', '.join(triggers)}: {limit_words(body, word_limit - len(triggers))}"
        if _count_words(text) < before:
            notes.append(f"cut from {before} to {_count_words(text)} words (engine window {word_limit})")
    return CompiledPrompt(text, tuple(notes))


def compile_motion_prompt(prose: str) -> CompiledPrompt:
    """Video keeps its VFX language: on WAN it animates effects rather than poisoning faces."""
    return CompiledPrompt(_normalise(prose))


def image_prompt_is_empty(prose: str) -> bool:
    """True when nothing but VFX language is left: such a prompt cannot describe a frame."""
    return not strip_vfx(_normalise(prose))[0].strip()


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _count_words(text: str) -> int:
    return len(text.split())


def _split_sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_END.split(text.strip()) if s]


def _split_terminator(sentence: str) -> tuple[str, str]:
    stripped = sentence.rstrip()
    if stripped and stripped[-1] in ".!?":
        return stripped[:-1], stripped[-1]
    return stripped, ""


def _cut_long_sentence(sentence: str, limit: int) -> str:
    words = sentence.split()[:limit]
    cut = " ".join(words)
    clause_end = max(cut.rfind(","), cut.rfind(";"))
    if clause_end > len(cut) // 2:
        cut = cut[:clause_end]
    return cut.rstrip(",;:- ") + "."
