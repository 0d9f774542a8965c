"""Storyboard -> render plan: steps per approach, continuity, engine choice, seeds, names and ids."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from farm.episode.engine_cards import CARDS
from farm.episode.prompts import compile_image_prompt
from farm.episode.validate import load_episode
from farm.planning.plan import (
    DEFAULT_HELD_S,
    HERO_TO_FRAME_STRENGTH,
    Plan,
    Step,
    StepKind,
    build_plan,
    build_previz_plan,
)
from tests.conftest import SAMPLE_TOTALS

Doc = dict[str, Any]
WriteEpisode = Callable[..., Path]
Edit = Callable[[], Doc]

JINX_Z = {"path": "https://example.invalid/loras/jinx_zimage_v1.safetensors", "scale": 1.3}
LORAS = "https://example.invalid/loras"
JINX_WAN = [
    {"path": f"{LORAS}/jinx_wan22_high.safetensors", "scale": 1.0, "transformer": "high"},
    {"path": f"{LORAS}/jinx_wan22_low.safetensors", "scale": 1.0, "transformer": "low"},
]
DUAL_FLUX = [
    {"path": "https://example.invalid/loras/jinx_flux2_v1.safetensors", "scale": 0.5},
    {"path": "https://example.invalid/loras/kian_flux2_v1.safetensors", "scale": 0.5},
]
IMAGE_KINDS = {StepKind.T2I, StepKind.IMG2IMG}
GENERATED_KINDS = {StepKind.T2I, StepKind.IMG2IMG, StepKind.UPSCALE, StepKind.VIDEO}


# helpers ------------------------------------------------------------------------------------------------


def keep(doc: Doc, *numbers: int) -> Doc:
    """Only the given shots, in the given order; continuity links to dropped shots are removed."""
    by_number = {s["shot"]: s for s in doc["shots"]}
    doc["shots"] = [by_number[n] for n in numbers]
    for shot in doc["shots"]:
        link = shot.get("continuity_from")
        if link is not None and link["shot"] not in numbers:
            del shot["continuity_from"]
    return doc


def shot_doc(doc: Doc, number: int) -> Doc:
    found: Doc = next(s for s in doc["shots"] if s["shot"] == number)
    return found


def plan_for(write_episode: WriteEpisode, doc: Doc) -> Plan:
    return build_plan(load_episode(write_episode(doc)))


def steps_of(
    plan: Plan, shot: int | None, kind: StepKind | None = None, role: str | None = None
) -> list[Step]:
    return [
        s
        for s in plan.steps
        if s.shot == shot and (kind is None or s.kind == kind) and (role is None or s.role == role)
    ]


def one(plan: Plan, shot: int | None, kind: StepKind, role: str | None = None) -> Step:
    found = steps_of(plan, shot, kind, role)
    assert len(found) == 1, found
    return found[0]


def engine_of(plan: Plan, shot: int) -> str:
    return next(s.engine for s in plan.shots if s.shot == shot)


@pytest.fixture
def sample_plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


# the sample ---------------------------------------------------------------------------------------------


def test_sample_plan_step_counts(sample_plan: Plan) -> None:
    assert len(sample_plan.steps) == 53
    assert Counter(s.kind.value for s in sample_plan.steps) == SAMPLE_TOTALS


def test_sample_steps_are_in_dependency_order(sample_plan: Plan) -> None:
    seen: set[str] = set()
    for step in sample_plan.steps:
        assert set(step.inputs) <= seen, step
        seen.add(step.id)


def test_sample_shot_summaries_follow_storyboard(sample_plan: Plan) -> None:
    assert [s.shot for s in sample_plan.shots] == list(range(1, 11))
    assert [s.approach for s in sample_plan.shots] == [
        "held_frame_push",
        "standard_flf",
        "standard_flf",
        "triptych_split_flf",
        "standard_flf",
        "held_frame_static",
        "standard_flf",
        "triptych_split_flf",
        "standard_flf",
        "held_frame_push",
    ]
    ids = {s.id for s in sample_plan.steps}
    assert all(s.clip in ids for s in sample_plan.shots)


def test_episode_concat_is_last_with_clips_in_shot_order(sample_plan: Plan) -> None:
    last = sample_plan.steps[-1]
    assert last.kind == StepKind.CONCAT
    assert last.shot is None
    assert last.role == "episode"
    assert last.asset_name == "LEV_EP001_episode.mp4"
    assert list(last.inputs) == [s.clip for s in sorted(sample_plan.shots, key=lambda s: s.shot)]
    kinds = [sample_plan.step(i).kind for i in last.inputs]
    assert kinds == [
        StepKind.KEN_BURNS,
        StepKind.VIDEO,
        StepKind.VIDEO,
        StepKind.CONCAT,
        StepKind.VIDEO,
        StepKind.HOLD,
        StepKind.VIDEO,
        StepKind.CONCAT,
        StepKind.VIDEO,
        StepKind.KEN_BURNS,
    ]
    assert [sample_plan.step(i).shot for i in last.inputs] == list(range(1, 11))


# standard_flf -------------------------------------------------------------------------------------------


def test_standard_flf_with_hero(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 2)
    doc["defaults"]["img2img_strength"] = 0.55  # the hero -> first/last strength does not follow it
    plan = plan_for(write_episode, doc)
    hero = one(plan, 2, StepKind.T2I, "hero")
    first = one(plan, 2, StepKind.IMG2IMG, "first")
    last = one(plan, 2, StepKind.IMG2IMG, "last")
    assert hero.inputs == ()
    assert "strength" not in hero.params
    for frame in (first, last):
        assert frame.inputs == (hero.id,)
        assert frame.params["strength"] == HERO_TO_FRAME_STRENGTH == 0.40
    up_first = one(plan, 2, StepKind.UPSCALE, "first")
    up_last = one(plan, 2, StepKind.UPSCALE, "last")
    assert up_first.inputs == (first.id,)
    assert up_last.inputs == (last.id,)
    video = one(plan, 2, StepKind.VIDEO)
    assert video.inputs == (up_first.id, up_last.id)
    assert video.operation == "video"
    assert video.params["num_frames"] == 81
    assert len(plan.steps) == 7  # 3 images, 2 upscales, 1 video, the episode concat
    assert plan.steps[-1].inputs == (video.id,)
    assert plan.shots[0].clip == video.id
    assert plan.shots[0].clip_s == pytest.approx(81 / 16)


def test_standard_flf_without_hero(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 3)
    doc["defaults"]["img2img_strength"] = 0.55
    plan = plan_for(write_episode, doc)
    first = one(plan, 3, StepKind.T2I, "first")
    last = one(plan, 3, StepKind.IMG2IMG, "last")
    assert first.inputs == ()
    assert last.inputs == (first.id,)
    assert last.params["strength"] == 0.55
    assert not steps_of(plan, 3, role="hero")
    up_first = one(plan, 3, StepKind.UPSCALE, "first")
    up_last = one(plan, 3, StepKind.UPSCALE, "last")
    assert one(plan, 3, StepKind.VIDEO).inputs == (up_first.id, up_last.id)
    assert len(plan.steps) == 6


def test_a_shots_own_strength_replaces_the_default_for_its_frames(
    write_episode: WriteEpisode, edit: Edit
) -> None:
    doc = keep(edit(), 3)
    shot_doc(doc, 3)["img2img_strength"] = 0.25
    plan = plan_for(write_episode, doc)
    assert one(plan, 3, StepKind.IMG2IMG, "last").params["strength"] == 0.25


def test_fmlf_without_hero_uses_motion_prompt_for_mid(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 3)
    doc["defaults"]["fmlf"] = True
    plan = plan_for(write_episode, doc)
    first = one(plan, 3, StepKind.T2I, "first")
    mid = one(plan, 3, StepKind.IMG2IMG, "mid")
    assert mid.inputs == (first.id,)
    assert mid.params["strength"] == 0.40
    motion = shot_doc(doc, 3)["motion_prompt"]
    assert mid.params["prompt"] == compile_image_prompt(motion, ["JNXCHAR"], 60).text
    _check_two_segments(plan, 3)


def test_fmlf_with_hero_uses_hero_prompt_for_mid(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 2)
    doc["defaults"]["fmlf"] = True
    plan = plan_for(write_episode, doc)
    hero = one(plan, 2, StepKind.T2I, "hero")
    first = one(plan, 2, StepKind.IMG2IMG, "first")
    mid = one(plan, 2, StepKind.IMG2IMG, "mid")
    assert mid.inputs == (first.id,)
    assert mid.params["prompt"] == hero.params["prompt"]
    assert mid.params["strength"] == 0.40
    _check_two_segments(plan, 2)


def _check_two_segments(plan: Plan, shot: int) -> None:
    up = {role: one(plan, shot, StepKind.UPSCALE, role) for role in ("first", "mid", "last")}
    assert up["mid"].inputs == (one(plan, shot, StepKind.IMG2IMG, "mid").id,)
    seg1 = one(plan, shot, StepKind.VIDEO, "seg1")
    seg2 = one(plan, shot, StepKind.VIDEO, "seg2")
    assert seg1.inputs == (up["first"].id, up["mid"].id)
    assert seg2.inputs == (up["mid"].id, up["last"].id)
    for seg in (seg1, seg2):
        assert seg.operation == "video_segment"
        assert seg.params["num_frames"] == 49
    clip = one(plan, shot, StepKind.CONCAT, "clip")
    assert clip.inputs == (seg1.id, seg2.id)
    assert not steps_of(plan, shot, StepKind.VIDEO, "clip")
    summary = next(s for s in plan.shots if s.shot == shot)
    assert summary.clip == clip.id
    assert summary.clip_s == pytest.approx(2 * 49 / 16)


# triptych -----------------------------------------------------------------------------------------------


def test_triptych(write_episode: WriteEpisode, edit: Edit) -> None:
    plan = plan_for(write_episode, keep(edit(), 4))
    strip = one(plan, 4, StepKind.T2I, "strip")
    assert strip.engine == "flux2"
    assert (strip.params["width"], strip.params["height"]) == (1536, 912)
    assert strip.inputs == ()
    assert strip.asset_name == "LEV_EP001_S04_T01_KIAN_strip.png"
    split = one(plan, 4, StepKind.SPLIT)
    assert split.inputs == (strip.id,)
    assert split.outputs == tuple(f"LEV_EP001_S04_T01_KIAN_{p}_panel.png" for p in ("first", "hero", "last"))
    assert split.params["panels"] == ["first", "hero", "last"]
    assert split.params["panel_width"] * 3 == split.params["strip_width"] == 1536
    up = {role: one(plan, 4, StepKind.UPSCALE, role) for role in ("first", "hero", "last")}
    assert len(steps_of(plan, 4, StepKind.UPSCALE)) == 3
    for role, step in up.items():
        assert step.inputs == (split.id,)
        assert step.params["panel"] == role
    seg1 = one(plan, 4, StepKind.VIDEO, "seg1")
    seg2 = one(plan, 4, StepKind.VIDEO, "seg2")
    assert seg1.inputs == (up["first"].id, up["hero"].id)
    assert seg2.inputs == (up["hero"].id, up["last"].id)
    assert seg1.params["num_frames"] == seg2.params["num_frames"] == 49
    assert one(plan, 4, StepKind.CONCAT, "clip").inputs == (seg1.id, seg2.id)
    assert len(plan.steps) == 9


# held frames --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("approach", "kind"), [("held_frame_push", StepKind.KEN_BURNS), ("held_frame_static", StepKind.HOLD)]
)
def test_held_frame(write_episode: WriteEpisode, edit: Edit, approach: str, kind: StepKind) -> None:
    doc = keep(edit(), 1)
    shot_doc(doc, 1)["generation_approach"] = approach
    plan = plan_for(write_episode, doc)
    t2i = one(plan, 1, StepKind.T2I, "first")
    up = one(plan, 1, StepKind.UPSCALE, "first")
    clip = one(plan, 1, kind, "clip")
    assert up.inputs == (t2i.id,)
    assert clip.inputs == (up.id,)
    assert clip.params["duration_s"] == 4.0
    assert clip.engine == "post"
    assert clip.cost_usd == 0
    assert ("zoom_from" in clip.params) == (kind is StepKind.KEN_BURNS)
    assert plan.shots[0].clip_s == 4.0
    assert [s.kind for s in plan.steps] == [StepKind.T2I, StepKind.UPSCALE, kind, StepKind.CONCAT]


def test_held_frame_without_duration_uses_default(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 6)
    del shot_doc(doc, 6)["duration_s"]
    plan = plan_for(write_episode, doc)
    assert one(plan, 6, StepKind.HOLD).params["duration_s"] == DEFAULT_HELD_S
    assert plan.shots[0].clip_s == DEFAULT_HELD_S
    assert any("default" in n for n in plan.shots[0].notes)


# continuity ---------------------------------------------------------------------------------------------


def test_sample_shot_3_continues_from_shot_2_last(sample_plan: Plan) -> None:
    source = one(sample_plan, 2, StepKind.UPSCALE, "last")
    first = one(sample_plan, 3, StepKind.IMG2IMG, "first")
    assert first.inputs == (source.id,)
    assert first.params["strength"] == 0.30
    assert not steps_of(sample_plan, 3, StepKind.T2I)


def test_sample_shot_9_continues_from_shot_8_last_panel(sample_plan: Plan) -> None:
    source = one(sample_plan, 8, StepKind.UPSCALE, "last")
    assert source.params["panel"] == "last"
    first = one(sample_plan, 9, StepKind.IMG2IMG, "first")
    assert first.inputs == (source.id,)
    assert first.params["strength"] == 0.30
    assert not steps_of(sample_plan, 9, StepKind.T2I)


def test_continuity_into_hero_shot_seeds_the_hero(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 2, 3)
    shot_doc(doc, 3)["hero_frame"] = "JNXCHAR braced at the gauge panel, red strobe light."
    shot_doc(doc, 3)["continuity_from"] = {"shot": 2, "frame": "first", "strength": 0.25}
    plan = plan_for(write_episode, doc)
    hero = one(plan, 3, StepKind.IMG2IMG, "hero")
    assert hero.inputs == (one(plan, 2, StepKind.UPSCALE, "first").id,)
    assert hero.params["strength"] == 0.25
    assert one(plan, 3, StepKind.IMG2IMG, "first").inputs == (hero.id,)


def test_continuity_from_held_shot(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 1, 6)
    shot_doc(doc, 6)["continuity_from"] = {"shot": 1, "frame": "first", "strength": 0.5}
    plan = plan_for(write_episode, doc)
    first = one(plan, 6, StepKind.IMG2IMG, "first")
    assert first.inputs == (one(plan, 1, StepKind.UPSCALE, "first").id,)
    assert first.params["strength"] == 0.5


def test_continuity_source_listed_later_is_planned_first(write_episode: WriteEpisode, edit: Edit) -> None:
    plan = plan_for(write_episode, keep(edit(), 3, 2))
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.inputs) <= seen
        seen.add(step.id)
    assert one(plan, 3, StepKind.IMG2IMG, "first").inputs == (one(plan, 2, StepKind.UPSCALE, "last").id,)
    assert [s.shot for s in plan.shots] == [2, 3], "shots are reported and concatenated in shot order"
    assert plan.steps[-1].kind == StepKind.CONCAT
    assert plan.steps[-1].inputs == tuple(s.clip for s in plan.shots)


# engine choice ------------------------------------------------------------------------------------------


def test_two_characters_go_to_flux2_with_dual_scales(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 5)
    del shot_doc(doc, 5)["engine"]
    plan = plan_for(write_episode, doc)
    assert engine_of(plan, 5) == "flux2"
    images = [s for s in steps_of(plan, 5) if s.kind in IMAGE_KINDS]
    assert len(images) == 3
    for step in images:
        assert step.engine == "flux2"
        assert step.params["loras"] == DUAL_FLUX
    assert any("two characters" in n for n in plan.shots[0].notes)


def test_sample_shot_5_dual_loras(sample_plan: Plan) -> None:
    for step in steps_of(sample_plan, 5):
        if step.kind in IMAGE_KINDS:
            assert step.params["loras"] == DUAL_FLUX
    assert one(sample_plan, 5, StepKind.VIDEO).params["loras"] == JINX_WAN


def test_triptych_goes_to_flux2(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 8)
    del shot_doc(doc, 8)["engine"]  # JINX has a Z-Image LoRA, so only the triptych rule sends it to Flux 2
    plan = plan_for(write_episode, doc)
    assert engine_of(plan, 8) == "flux2"
    assert one(plan, 8, StepKind.T2I, "strip").engine == "flux2"
    assert any("triptych" in n for n in plan.shots[0].notes)


def test_default_engine_otherwise(sample_plan: Plan) -> None:
    engines = {s.shot: s.engine for s in sample_plan.shots}
    assert engines == {
        1: "z_image_turbo",
        2: "z_image_turbo",
        3: "z_image_turbo",
        4: "flux2",
        5: "flux2",
        6: "z_image_turbo",
        7: "z_image_turbo",
        8: "flux2",
        9: "z_image_turbo",
        10: "z_image_turbo",
    }


def test_episode_default_engine_is_used(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 7)
    doc["defaults"]["engine"] = "flux2"
    plan = plan_for(write_episode, doc)
    assert engine_of(plan, 7) == "flux2"
    assert {s.engine for s in steps_of(plan, 7) if s.kind in IMAGE_KINDS} == {"flux2"}


@pytest.mark.parametrize(("shot", "engine"), [(7, "flux2"), (8, "z_image_turbo")])
def test_explicit_engine_wins(write_episode: WriteEpisode, edit: Edit, shot: int, engine: str) -> None:
    doc = keep(edit(), shot)
    shot_doc(doc, shot)["engine"] = engine
    plan = plan_for(write_episode, doc)
    assert engine_of(plan, shot) == engine
    images = [s for s in steps_of(plan, shot) if s.kind in IMAGE_KINDS]
    assert images
    assert {s.engine for s in images} == {engine}
    assert "engine set on the shot" in plan.shots[0].notes


def test_fallback_to_engine_with_every_lora(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 7)
    shot = shot_doc(doc, 7)
    shot["characters_in_shot"] = ["KIAN"]
    shot["first_frame"] = "KIANCHAR hunched over the pump controls, thumb on the red toggle."
    shot["last_frame"] = "KIANCHAR flips the red toggle and steps back."
    plan = plan_for(write_episode, doc)
    assert engine_of(plan, 7) == "flux2"
    for step in steps_of(plan, 7):
        if step.kind in IMAGE_KINDS:
            assert step.engine == "flux2"
            assert step.params["loras"] == [
                {"path": "https://example.invalid/loras/kian_flux2_v1.safetensors", "scale": 1.0}
            ]
    assert one(plan, 7, StepKind.VIDEO).params["loras"] == []
    notes = " ".join(plan.shots[0].notes)
    assert "lacks a LoRA" in notes
    assert "KIAN has no wan22 video LoRA" in notes


# engine parameters --------------------------------------------------------------------------------------


def test_image_engine_parameters(sample_plan: Plan) -> None:
    images = [s for s in sample_plan.steps if s.kind in IMAGE_KINDS]
    assert {s.engine for s in images} == {"z_image_turbo", "flux2"}
    for step in images:
        if step.engine == "z_image_turbo":
            assert "guidance" not in step.params
            assert step.params["steps"] == 8
        else:
            assert step.params["guidance"] == 2.5
            assert step.params["steps"] == 28
        assert step.endpoint == CARDS[step.engine].op(step.operation).endpoint
        assert step.operation == step.kind.value
        assert ("strength" in step.params) == (step.kind == StepKind.IMG2IMG)


def test_production_sizes(sample_plan: Plan) -> None:
    for step in sample_plan.steps:
        if step.kind in IMAGE_KINDS and step.role != "strip":
            assert (step.params["width"], step.params["height"]) == (768, 1344)
        if step.kind == StepKind.VIDEO:
            assert (step.params["width"], step.params["height"]) == (720, 1280)


def test_video_parameters(sample_plan: Plan) -> None:
    videos = [s for s in sample_plan.steps if s.kind == StepKind.VIDEO]
    assert len(videos) == 9
    for step in videos:
        assert step.engine == "wan22"
        assert step.params["steps"] == 40
        assert step.params["fps"] == 16
        assert step.params["num_frames"] == (81 if step.operation == "video" else 49)
        assert step.params["aspect_ratio"] == "9:16"
    assert one(sample_plan, 7, StepKind.VIDEO).params["loras"] == JINX_WAN
    assert one(sample_plan, 7, StepKind.VIDEO).params["num_frames"] == 81
    assert one(sample_plan, 4, StepKind.VIDEO, "seg1").params["loras"] == []  # KIAN has no WAN pair


def test_jinx_image_lora_on_z_image(sample_plan: Plan) -> None:
    for step in steps_of(sample_plan, 7):
        if step.kind in IMAGE_KINDS:
            assert step.params["loras"] == [JINX_Z]
    assert one(sample_plan, 1, StepKind.T2I).params["loras"] == []


# seeds --------------------------------------------------------------------------------------------------


def test_seeds_are_deterministic(sample_path: Path) -> None:
    a = build_plan(load_episode(sample_path))
    b = build_plan(load_episode(sample_path))
    assert [s.params.get("seed") for s in a.steps] == [s.params.get("seed") for s in b.steps]
    assert [s.id for s in a.steps] == [s.id for s in b.steps]


def test_derived_seeds_differ_per_shot_and_role(sample_plan: Plan) -> None:
    seeds = [s.params["seed"] for s in sample_plan.steps if s.kind in GENERATED_KINDS]
    assert len(seeds) == 8 + 9 + 19 + 9
    assert len(set(seeds)) == len(seeds)
    assert all(isinstance(x, int) and 0 <= x < 2**32 for x in seeds)


def test_shot_seed_is_used_by_every_generated_step(
    write_episode: WriteEpisode, edit: Edit, sample_plan: Plan
) -> None:
    doc = edit()
    shot_doc(doc, 2)["seed"] = 1234
    plan = plan_for(write_episode, doc)
    shot2 = [s for s in steps_of(plan, 2) if s.kind in GENERATED_KINDS]
    assert len(shot2) == 6
    assert {s.params["seed"] for s in shot2} == {1234}
    before = {(s.shot, s.kind, s.role): s.params.get("seed") for s in sample_plan.steps if s.shot != 2}
    after = {(s.shot, s.kind, s.role): s.params.get("seed") for s in plan.steps if s.shot != 2}
    assert before == after


# asset names --------------------------------------------------------------------------------------------


ASSET = re.compile(r"LEV_EP001_S(\d{2})_T01_(ENV|JINX|KIAN)_[a-z0-9_]+\.(png|mp4)")


def test_asset_names_follow_the_convention(sample_plan: Plan) -> None:
    for step in sample_plan.steps:
        if step.shot is None:
            continue
        match = ASSET.fullmatch(step.asset_name)
        assert match, step.asset_name
        assert int(match.group(1)) == step.shot
        assert step.asset_name == step.outputs[0]
    names = [s.asset_name for s in sample_plan.steps]
    assert len(set(names)) == len(names)


def test_asset_name_examples(sample_plan: Plan) -> None:
    assert one(sample_plan, 1, StepKind.T2I).asset_name == "LEV_EP001_S01_T01_ENV_first_gen.png"
    assert one(sample_plan, 1, StepKind.UPSCALE).asset_name == "LEV_EP001_S01_T01_ENV_first.png"
    assert one(sample_plan, 1, StepKind.KEN_BURNS).asset_name == "LEV_EP001_S01_T01_ENV_clip.mp4"
    assert one(sample_plan, 2, StepKind.T2I, "hero").asset_name == "LEV_EP001_S02_T01_JINX_hero.png"
    assert one(sample_plan, 5, StepKind.VIDEO).asset_name == "LEV_EP001_S05_T01_JINX_clip.mp4"
    assert one(sample_plan, 4, StepKind.T2I).asset_name == "LEV_EP001_S04_T01_KIAN_strip.png"
    assert one(sample_plan, 8, StepKind.VIDEO, "seg2").asset_name == "LEV_EP001_S08_T01_JINX_seg2.mp4"


def test_shot_asset_name_replaces_the_stem(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 7)
    shot_doc(doc, 7)["asset_name"] = "ballast_slam"
    plan = plan_for(write_episode, doc)
    names = {(s.kind, s.role): s.asset_name for s in steps_of(plan, 7)}
    assert names == {
        (StepKind.T2I, "first"): "ballast_slam_first_gen.png",
        (StepKind.IMG2IMG, "last"): "ballast_slam_last_gen.png",
        (StepKind.UPSCALE, "first"): "ballast_slam_first.png",
        (StepKind.UPSCALE, "last"): "ballast_slam_last.png",
        (StepKind.VIDEO, "clip"): "ballast_slam_clip.mp4",
    }


def test_takes_and_cuts_name_outputs_without_changing_any_step(
    write_episode: WriteEpisode, edit: Edit
) -> None:
    doc = keep(edit(), 3, 7)
    shot_doc(doc, 7)["asset_name"] = "ballast_slam"
    episode = load_episode(write_episode(doc))
    first, retaken = build_plan(episode), build_plan(episode, {3: 2, 7: 3}, cut=4)
    assert [s.id for s in first.steps] == [s.id for s in retaken.steps]
    names = {s.id: s.asset_name for s in retaken.steps}
    assert names[one(first, 3, StepKind.VIDEO).id] == "LEV_EP001_S03_T02_JINX_clip.mp4"
    assert names[one(first, 7, StepKind.VIDEO).id] == "ballast_slam_T03_clip.mp4"
    assert names[one(first, None, StepKind.CONCAT).id] == "LEV_EP001_episode_C04.mp4"
    assert {s.take for s in retaken.steps if s.shot == 3} == {2}
    assert [s.take for s in retaken.shots] == [2, 3]


# step ids -----------------------------------------------------------------------------------------------


def test_step_ids_are_16_hex_and_unique(sample_plan: Plan) -> None:
    ids = [s.id for s in sample_plan.steps]
    assert all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_identical_content_is_planned_once(write_episode: WriteEpisode, edit: Edit) -> None:
    doc = keep(edit(), 6)
    shot = shot_doc(doc, 6)
    shot["seed"] = 7
    doc["shots"].append({**shot, "shot": 11})
    plan = plan_for(write_episode, doc)
    assert [s.kind for s in plan.steps] == [StepKind.T2I, StepKind.UPSCALE, StepKind.HOLD, StepKind.CONCAT]
    clip6, clip11 = (s.clip for s in plan.shots)
    assert clip6 == clip11
    assert plan.steps[-1].inputs == (clip6, clip6)


def test_editing_one_shot_keeps_other_step_ids(
    write_episode: WriteEpisode, edit: Edit, sample_plan: Plan
) -> None:
    doc = edit()
    shot_doc(doc, 2)["last_frame"] = "JNXCHAR leans on the closed bulkhead door, eyes shut."
    plan = plan_for(write_episode, doc)
    before = {(s.shot, s.kind, s.role): s.id for s in sample_plan.steps}
    after = {(s.shot, s.kind, s.role): s.id for s in plan.steps}
    changed = {key for key in before if before[key] != after[key]}
    # shot 2's last frame and everything downstream of it, including shot 3 (continuity) and the episode
    assert changed == {
        (2, StepKind.IMG2IMG, "last"),
        (2, StepKind.UPSCALE, "last"),
        (2, StepKind.VIDEO, "clip"),
        (3, StepKind.IMG2IMG, "first"),
        (3, StepKind.IMG2IMG, "last"),
        (3, StepKind.UPSCALE, "first"),
        (3, StepKind.UPSCALE, "last"),
        (3, StepKind.VIDEO, "clip"),
        (None, StepKind.CONCAT, "episode"),
    }


def test_previz_plans_one_small_z_image_frame_per_shot_from_its_best_prompt(sample_path: Path) -> None:
    episode = load_episode(sample_path)
    previz = build_previz_plan(episode)
    assert [s.shot for s in previz.steps] == [s.shot for s in episode.storyboard.shots]
    assert all(s.kind is StepKind.T2I and not s.inputs for s in previz.steps)
    assert all(
        (s.params["width"], s.params["height"], s.params["steps"]) == (512, 896, 8) for s in previz.steps
    )
    assert {s.engine for s in previz.steps} == {"z_image_turbo"}
    for step, shot in zip(previz.steps, episode.storyboard.shots, strict=True):
        prose = shot.prompt("hero_frame") or shot.prompt("first_frame") or shot.prompt("triptych_prompt")
        assert prose is not None
        triggers, limit = episode.castings[shot.shot].triggers, CARDS["z_image_turbo"].word_limit
        assert step.params["prompt"] == compile_image_prompt(prose, triggers, limit).text
        assert step.asset_name.endswith("_previz.png")
    production = {s.id for s in build_plan(episode).steps}
    assert not production & {s.id for s in previz.steps}, "previz frames never stand in for production ones"
