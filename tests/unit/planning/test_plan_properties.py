"""Property tests: any valid storyboard gives an acyclic, stable plan whose ids change only where edited."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.episode.approaches import APPROACHES, REQUIRED_PROMPTS, frames_of
from farm.episode.validate import check_episode
from farm.planning.plan import Plan, build_plan

REGISTRY: dict[str, Any] = {
    "schema_version": 1,
    "characters": {
        "ANA": {
            "trigger": "ANACHAR",
            "t2i": {
                "z_image_turbo": {"path": "loras/ana_z.safetensors", "scale_solo": 1.3},
                "flux2": {"path": "loras/ana_f.safetensors", "scale_solo": 1.0},
            },
            "video": {
                "wan22": {
                    "high_noise_path": "loras/ana_hi.safetensors",
                    "low_noise_path": "loras/ana_lo.safetensors",
                }
            },
            "scale_dual": 0.5,
        },
        "BO": {
            "trigger": "BOCHAR",
            "t2i": {"flux2": {"path": "loras/bo_f.safetensors", "scale_solo": 1.0}},
            "scale_dual": 0.5,
        },
    },
}
WORDS = ["harbour", "lantern", "storm", "keeper", "rope", "gull", "window", "rain", "stairs", "brass", "fog"]

prose = st.lists(st.sampled_from(WORDS), min_size=3, max_size=90).map(
    lambda ws: " ".join(ws).capitalize() + "."
)


@st.composite
def storyboards(draw: st.DrawFn) -> dict[str, Any]:
    fmlf = draw(st.booleans())
    shots: list[dict[str, Any]] = []
    for number in range(1, draw(st.integers(1, 7)) + 1):
        approach = draw(st.sampled_from(APPROACHES))
        shot: dict[str, Any] = {
            "shot": number,
            "scene": 1,
            "generation_approach": approach,
            "characters_in_shot": draw(st.sampled_from([[], ["ANA"], ["BO"], ["ANA", "BO"]])),
            "duration_s": draw(st.sampled_from([2, 4, 5])),
        }
        for name in REQUIRED_PROMPTS[approach]:
            shot[name] = draw(prose)
        if approach == "standard_flf" and draw(st.booleans()):
            shot["hero_frame"] = draw(prose)
        if draw(st.booleans()):
            shot["seed"] = draw(st.integers(0, 2**32 - 1))
        if shots and approach != "triptych_split_flf" and draw(st.booleans()):
            source = draw(st.sampled_from(shots))
            frames = frames_of(source["generation_approach"], has_hero="hero_frame" in source, fmlf=fmlf)
            shot["continuity_from"] = {
                "shot": source["shot"],
                "frame": draw(st.sampled_from(frames)),
                "strength": draw(st.sampled_from([0.2, 0.3, 0.55, 1.0])),
            }
        shots.append(shot)
    order = draw(st.permutations(shots))
    return {
        "schema_version": 3,
        "project": "PRP",
        "project_name": "property",
        "episode": 7,
        "title": "t",
        "aspect_ratio": "9:16",
        "defaults": {"engine": "z_image_turbo", "img2img_strength": 0.4, "fmlf": fmlf},
        "shots": list(order),
    }


def plan_of(doc: dict[str, Any]) -> Plan:
    return build_plan(check_episode(doc, REGISTRY, Path("prop.json"), Path("lora_registry.json")))


def dependents(plan: Plan, roots: set[str]) -> set[str]:
    """Every step reachable from `roots` by following input edges forward."""
    reached = set(roots)
    for step in plan.steps:
        if reached.intersection(step.inputs):
            reached.add(step.id)
    return reached


FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(storyboards())
def test_plan_is_acyclic_and_inputs_come_first(doc: dict[str, Any]) -> None:
    plan = plan_of(doc)
    seen: set[str] = set()
    for step in plan.steps:
        assert set(step.inputs) <= seen, f"{step.kind} {step.role} of shot {step.shot} uses a later step"
        assert step.id not in seen, "ids are unique"
        seen.add(step.id)
    episode = plan.steps[-1]
    assert episode.shot is None and episode.role == "episode"
    assert list(episode.inputs) == [s.clip for s in plan.shots]


@FAST
@given(storyboards())
def test_ids_are_stable_across_builds(doc: dict[str, Any]) -> None:
    first = [s.id for s in plan_of(doc).steps]
    second = [s.id for s in plan_of(copy.deepcopy(doc)).steps]
    assert first == second


@FAST
@given(storyboards(), st.data())
def test_editing_one_prompt_changes_only_that_shot_its_dependents_and_the_episode(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    before = plan_of(doc)
    edited = copy.deepcopy(doc)
    shot = data.draw(st.sampled_from(edited["shots"]))
    used = [
        k
        for k in ("first_frame", "last_frame", "hero_frame", "triptych_prompt", "motion_prompt")
        if k in shot
    ]
    field = data.draw(st.sampled_from(used))
    shot[field] = "Edited " + shot[field]
    after = plan_of(edited)

    old_ids = {s.id for s in before.steps}
    changed = {s.id for s in after.steps if s.id not in old_ids}
    in_shot = {s.id for s in after.steps if s.shot == shot["shot"]}
    allowed = dependents(after, in_shot & changed) | {after.steps[-1].id}
    assert changed, "an edited prompt must change at least one step"
    assert after.steps[-1].id in changed, "the episode concat depends on every clip"
    assert changed <= allowed, [
        (s.shot, s.kind.value, s.role) for s in after.steps if s.id in changed - allowed
    ]
    shot_steps_before = {s.id for s in before.steps if s.shot == shot["shot"]}
    may_change = dependents(before, shot_steps_before)
    new_ids = {s.id for s in after.steps}
    kept = [s for s in before.steps if s.id not in may_change]
    assert all(s.id in new_ids for s in kept), "steps that do not depend on the edited shot keep their ids"
