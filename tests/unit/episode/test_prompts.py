"""Prompt compiler: VFX stripping, trigger words first, engine word windows."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from farm.episode.engine_cards import CARDS
from farm.episode.prompts import (
    VFX_PATTERNS,
    compile_image_prompt,
    compile_motion_prompt,
    has_vfx,
    lead_with_triggers,
    limit_words,
    strip_vfx,
)
from farm.episode.validate import load_episode
from farm.planning.plan import build_plan

Z_LIMIT = CARDS["z_image_turbo"].word_limit
FLUX_LIMIT = CARDS["flux2"].word_limit

SHOT9_FIRST = (
    "Macro shot of JNXCHAR's gloved fingertips tracing frost along a porthole rim, a dim shape drifting past "
    "in the warped reflection, the amber cabin lamps glinting off each ice crystal, her breath leaving "
    "a pale bloom on the glass that fades, the ridge of an old scar catching the light along her "
    "knuckles, and far beyond the pane the silver flicker of a shoal turning in the black water."
)
"""One long sentence of about seventy words: past Z-Image's window, inside Flux 2's."""

# One example phrase per VFX pattern, in the order of farm.episode.prompts._VFX_TERMS.
VFX_EXAMPLES = [
    "targeting brackets",
    "a reticle",
    "crosshairs",
    "holograms",
    "a HUD",
    "a heads-up display",
    "a data stream",
    "streams of numbers",
    "falling code",
    "scanlines",
    "glitching",
    "digital rain",
    "a wireframe",
    "UI overlays",
    "augmented-reality",
    "lock-on markers",
    "radar sweeps",
    "laser grids",
    "a force field",
    "particle effects",
    "telemetry",
    "readouts",
    "gridlines",
    "circuitry patterns",
    "light trails",
    "motion graphics",
    "floating icons",
    "a futuristic interface",
    "pixelated edges",
    "chromatic aberration",
]


def words(n: int, word: str = "calm") -> str:
    return " ".join([word] * n)


def sentence(lead: str, n: int) -> str:
    """A sentence of exactly n words starting with `lead`, ending with a full stop."""
    return f"{lead} {words(n - 1)}."


def count(text: str) -> int:
    return len(text.split())


# VFX stripping ------------------------------------------------------------------------------------------


def test_there_are_at_least_twenty_vfx_patterns() -> None:
    assert len(VFX_PATTERNS) >= 20


def test_examples_cover_at_least_twenty_distinct_patterns() -> None:
    covered = {i for i, p in enumerate(VFX_PATTERNS) for e in VFX_EXAMPLES if p.search(e)}
    assert len(set(VFX_EXAMPLES)) == len(VFX_EXAMPLES)
    assert len(covered) >= 20
    assert len(covered) >= min(len(VFX_PATTERNS), len(VFX_EXAMPLES))


@pytest.mark.parametrize("phrase", VFX_EXAMPLES)
def test_vfx_phrase_is_stripped_from_image_prompt(phrase: str) -> None:
    assert has_vfx(phrase)
    prose = f"JNXCHAR waits by the hatch, {phrase} flickering around her, rain streaking the glass."
    compiled = compile_image_prompt(prose, ["JNXCHAR"], Z_LIMIT)
    assert compiled.text == "JNXCHAR waits by the hatch, rain streaking the glass."
    assert phrase.lower() not in compiled.text.lower()
    assert not has_vfx(compiled.text)
    assert any("stripped VFX language" in n and phrase in n for n in compiled.notes)


@pytest.mark.parametrize("phrase", VFX_EXAMPLES)
def test_vfx_phrase_matches_case_insensitively(phrase: str) -> None:
    assert has_vfx(phrase.upper())
    assert has_vfx(phrase.title())


def test_sentence_made_only_of_vfx_is_dropped_and_next_one_capitalised() -> None:
    text, removed = strip_vfx("A holographic HUD glows. She waits, surrounded by telemetry, then turns.")
    assert text == "She waits, then turns."
    assert removed == ["A holographic HUD glows", "surrounded by telemetry"]


def test_first_clause_removed_capitalises_the_rest() -> None:
    text, _ = strip_vfx("surrounded by crosshairs, she waits.")
    assert text == "She waits."


def test_sample_shot_7_first_frame_is_stripped(sample_path: Path) -> None:
    plan = build_plan(load_episode(sample_path))
    step = next(s for s in plan.steps if s.shot == 7 and s.role == "first")
    prompt = step.params["prompt"]
    assert "fingers hovering over the ballast switches" in prompt
    assert prompt.startswith("JNXCHAR")
    for banned in ("reticle", "HUD", "data stream"):
        assert banned.lower() not in prompt.lower()
    assert not has_vfx(prompt)
    assert prompt == "JNXCHAR at the control console, fingers hovering over the ballast switches."
    assert any(n.startswith("stripped VFX language") and "holographic HUD" in n for n in step.notes)


def test_sample_shot_7_video_keeps_its_vfx(sample_path: Path) -> None:
    plan = build_plan(load_episode(sample_path))
    video = next(s for s in plan.steps if s.shot == 7 and s.kind == "video")
    assert "Targeting reticles swirl across the HUD" in video.params["prompt"]


def test_motion_prompt_keeps_vfx() -> None:
    prose = "Targeting reticles swirl across the HUD,  data streams   scroll; glitching scanlines pulse."
    compiled = compile_motion_prompt(prose)
    assert compiled.text == (
        "Targeting reticles swirl across the HUD, data streams scroll; glitching scanlines pulse."
    )
    assert has_vfx(compiled.text)
    assert compiled.notes == ()


@pytest.mark.parametrize(
    "prose",
    [
        "High angle on a salt-crusted pier at low tide, gulls wheeling over moored skiffs, one lamp burning "
        "in the harbour office. Slate palette, soft drizzle.",
        "JNXCHAR drags the hatch closed, shoulder to the steel, breath ragged.",
        "Insert of a rusted mooring bollard stencilled with the number 12.",
        "A 5,000-metre descent! Who would dare? Nobody.",
    ],
)
def test_clean_prose_is_unchanged(prose: str) -> None:
    compiled = compile_image_prompt(prose, [], None)
    assert compiled.text == prose
    assert compiled.notes == ()
    assert strip_vfx(prose) == (prose, [])


def test_clean_prose_keeps_its_semicolons() -> None:
    prose = (
        "Three-panel cinematic triptych, left to right: KIANCHAR crouched over a hatch; "
        "KIANCHAR wrenching a valve; KIANCHAR falling back."
    )
    assert compile_image_prompt(prose, ["KIANCHAR"], FLUX_LIMIT).text == "KIANCHAR: " + prose


def test_clean_sentence_starting_lowercase_is_kept_as_written() -> None:
    prose = "close-up of a cracked gauge. iPhone-sized viewport glowing."
    assert strip_vfx(prose) == (prose, [])


def test_stripping_keeps_the_remaining_separators() -> None:
    text, removed = strip_vfx("Engine room; pipes dripping, surrounded by a HUD; steam rising.")
    assert text == "Engine room; pipes dripping; steam rising."
    assert removed == ["surrounded by a HUD"]


def test_sample_triptych_strip_keeps_its_panel_separators(sample_path: Path) -> None:
    plan = build_plan(load_episode(sample_path))
    strip = next(s for s in plan.steps if s.shot == 4 and s.role == "strip")
    assert strip.params["prompt"].count(";") == 2
    assert "with a torch in his teeth; KIANCHAR wrenching a seized valve" in strip.params["prompt"]


@pytest.mark.parametrize(
    "prose",
    [
        "A heavy thud echoes through the hull.",
        "Old churches of rust line the trench.",
        "The hull shudders as the Hudson-class sub passes.",
        "She stays reticent, eyes on the glitter of plankton.",
        "Highlight trails of sunlight on the gridiron deck.",
        "He shoves the hatch forcefully, holly wreath on the locker.",
        "Metadata streams nowhere; the spreadsheet pixel counts are pinned up.",
    ],
)
def test_words_containing_vfx_terms_as_substrings_are_kept(prose: str) -> None:
    assert not has_vfx(prose)
    text, removed = strip_vfx(prose)
    assert removed == []
    assert text == prose


# Trigger words ------------------------------------------------------------------------------------------


def test_prompt_already_led_by_trigger_is_unchanged() -> None:
    prose = "JNXCHAR splashes along the flooded gangway toward the stairs."
    assert lead_with_triggers(prose, ["JNXCHAR"]) == prose
    assert compile_image_prompt(prose, ["JNXCHAR"], Z_LIMIT).text == prose


def test_possessive_trigger_first_counts_as_leading() -> None:
    prose = "JNXCHAR's eye reflected in the glass."
    assert lead_with_triggers(prose, ["JNXCHAR"]) == prose


def test_trigger_mid_sentence_gets_prepended() -> None:
    prose = "Close-up of JNXCHAR tapping a fogged depth meter."
    assert lead_with_triggers(prose, ["JNXCHAR"]) == "JNXCHAR: " + prose


def test_missing_trigger_gets_prepended() -> None:
    prose = "A fogged depth meter, the dial shivering."
    assert compile_image_prompt(prose, ["JNXCHAR"], Z_LIMIT).text == "JNXCHAR: " + prose


def test_two_triggers_both_present_with_one_first_is_unchanged() -> None:
    prose = "KIANCHAR straightens and grips JNXCHAR's shoulder."
    assert lead_with_triggers(prose, ["JNXCHAR", "KIANCHAR"]) == prose


def test_two_triggers_mid_sentence_are_prepended_in_order() -> None:
    prose = "Across the workbench, JNXCHAR and KIANCHAR face each other."
    assert lead_with_triggers(prose, ["JNXCHAR", "KIANCHAR"]) == "JNXCHAR, KIANCHAR: " + prose


def test_two_triggers_with_one_missing_are_both_prepended() -> None:
    prose = "JNXCHAR alone at the workbench."
    assert lead_with_triggers(prose, ["JNXCHAR", "KIANCHAR"]) == "JNXCHAR, KIANCHAR: " + prose


def test_no_triggers_leaves_text_alone() -> None:
    assert lead_with_triggers("Marine snow drifts.", []) == "Marine snow drifts."


# Word windows -------------------------------------------------------------------------------------------


def test_engine_windows() -> None:
    assert Z_LIMIT == 60
    assert FLUX_LIMIT == 170


def test_z_image_cuts_multi_sentence_prompt_at_sentence_boundary() -> None:
    sentences = [sentence(lead, 15) for lead in ("JNXCHAR", "Water", "Steam", "Light", "Rust")]
    prose = " ".join(sentences)
    assert count(prose) == 75
    compiled = compile_image_prompt(prose, ["JNXCHAR"], Z_LIMIT)
    assert compiled.text == " ".join(sentences[:4])
    assert count(compiled.text) <= 60
    assert compiled.notes == ("cut from 75 to 60 words (engine window 60)",)


def test_cut_keeps_whole_sentences_only() -> None:
    sentences = [sentence("JNXCHAR", 25), sentence("Water", 25), sentence("Steam", 25)]
    text = limit_words(" ".join(sentences), 60)
    assert text == " ".join(sentences[:2])


def test_single_overlong_sentence_is_cut_at_clause_boundary() -> None:
    compiled = compile_image_prompt(SHOT9_FIRST, ["JNXCHAR"], Z_LIMIT)
    text = compiled.text
    assert count(text) <= 60
    assert text.endswith(".")
    assert not text.endswith(",.")
    body = text[:-1]
    full = "JNXCHAR: " + SHOT9_FIRST
    assert full.startswith(body)
    assert full[len(body)] == ","  # the cut fell on a clause boundary
    assert text.endswith("the ridge of an old scar catching the light along her knuckles.")
    assert len(compiled.notes) == 1
    assert re.fullmatch(r"cut from 70 to \d+ words \(engine window 60\)", compiled.notes[0])


def test_trigger_survives_truncation_when_it_only_appears_late() -> None:
    prose = f"{sentence('Water', 70)} JNXCHAR turns."
    compiled = compile_image_prompt(prose, ["JNXCHAR"], Z_LIMIT)
    assert compiled.text.startswith("JNXCHAR: ")
    assert count(compiled.text) <= 60


def test_trigger_survives_truncation_in_sample_shot_9(sample_path: Path) -> None:
    plan = build_plan(load_episode(sample_path))
    step = next(s for s in plan.steps if s.shot == 9 and s.role == "first")
    assert step.params["prompt"].startswith("JNXCHAR: Extreme close-up")
    assert count(step.params["prompt"]) <= 60
    assert any(n.startswith("cut from 70 to") for n in step.notes)


def test_every_trigger_survives_truncation() -> None:
    prose = f"{sentence('JNXCHAR', 40)} {sentence('KIANCHAR', 40)}"
    compiled = compile_image_prompt(prose, ["JNXCHAR", "KIANCHAR"], Z_LIMIT)
    assert count(compiled.text) <= 60
    assert "JNXCHAR" in compiled.text
    assert "KIANCHAR" in compiled.text


def test_flux2_window_is_170_words() -> None:
    fits = " ".join(sentence("JNXCHAR" if i == 0 else "Water", 20) for i in range(8))
    assert count(fits) == 160
    compiled = compile_image_prompt(fits, ["JNXCHAR"], FLUX_LIMIT)
    assert compiled.text == fits
    assert compiled.notes == ()
    sentences = [sentence("JNXCHAR" if i == 0 else "Water", 20) for i in range(10)]
    compiled = compile_image_prompt(" ".join(sentences), ["JNXCHAR"], FLUX_LIMIT)
    assert compiled.text == " ".join(sentences[:8])
    assert compiled.notes == ("cut from 200 to 160 words (engine window 170)",)


def test_shot_9_prompt_fits_flux2_uncut() -> None:
    compiled = compile_image_prompt(SHOT9_FIRST, ["JNXCHAR"], FLUX_LIMIT)
    assert compiled.text == "JNXCHAR: " + SHOT9_FIRST
    assert compiled.notes == ()


def test_no_word_limit_means_no_cut() -> None:
    prose = sentence("JNXCHAR", 300)
    assert compile_image_prompt(prose, ["JNXCHAR"], None).text == prose


def test_notes_explain_both_stripping_and_cutting() -> None:
    prose = f"JNXCHAR at the console, surrounded by a holographic HUD, {words(70)}."
    compiled = compile_image_prompt(prose, ["JNXCHAR"], Z_LIMIT)
    assert len(compiled.notes) == 2
    stripped, cut = compiled.notes
    assert stripped == "stripped VFX language: 'surrounded by a holographic HUD'"
    assert cut.startswith("cut from ") and cut.endswith("(engine window 60)")
    assert "HUD" not in compiled.text
