"""Input validation: every rule of `farm.episode.validate.load_episode`, and `farm validate` on the command
line.

Shots are addressed by their zero-based index in the `shots` array: in the sample, `shots[3]` is shot 4
(the triptych), `shots[4]` is shot 5 (JINX + KIAN on flux2).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from farm.cli.app import app
from farm.episode.json_input import MAX_INPUT_BYTES
from farm.episode.problems import InputError, Problem
from farm.episode.storyboard import MAX_PROMPT_CHARS
from farm.episode.validate import REGISTRY_FILE_NAME, load_episode
from farm.planning.plan import build_plan
from tests.conftest import EXAMPLE, Doc

Edit = Callable[[], Doc]
WriteEpisode = Callable[..., Path]

runner = CliRunner()

LINK = {"shot": 2, "frame": "last", "strength": 0.3}
"""A valid continuity link (shot 2 is standard_flf with a hero frame: first, hero, last)."""


def problems_of(storyboard: Path, registry: Path | None = None) -> list[Problem]:
    """The problems load_episode reports; fails the test if it accepts the input."""
    with pytest.raises(InputError) as exc:
        load_episode(storyboard, registry)
    return exc.value.problems


def at(problems: list[Problem], field: str) -> list[Problem]:
    return [p for p in problems if p.field == field]


def only(problems: list[Problem], field: str) -> Problem:
    """The single problem reported, which must be on `field`."""
    assert [p.field for p in problems] == [field], "\n".join(map(str, problems))
    return problems[0]


# --- 1. generation approach ---------------------------------------------------------------------------


def test_unknown_generation_approach(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][5]["generation_approach"] = "split_screen"
    problem = only(problems_of(write_episode(doc)), "shots[5].generation_approach")
    assert "'split_screen'" in problem.message
    assert "standard_flf" in problem.message and "triptych_split_flf" in problem.message


# --- 2. shot numbers ----------------------------------------------------------------------------------


def test_duplicate_shot_number(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][9]["shot"] = 6
    problem = only(problems_of(write_episode(doc)), "shots[9].shot")
    assert "duplicate shot number 6" in problem.message
    assert "shots[5]" in problem.message


# --- 3. prompts each approach needs ---------------------------------------------------------------------

REQUIRED = [
    (1, "standard_flf", "first_frame"),
    (1, "standard_flf", "last_frame"),
    (1, "standard_flf", "motion_prompt"),
    (3, "triptych_split_flf", "triptych_prompt"),
    (3, "triptych_split_flf", "motion_prompt"),
    (0, "held_frame_push", "first_frame"),
    (5, "held_frame_static", "first_frame"),
]
ABSENT: dict[str, Any] = {"empty": "", "whitespace": "  \n\t ", "null": None}


@pytest.mark.parametrize("how", ["removed", *ABSENT])
@pytest.mark.parametrize(("index", "approach", "field"), REQUIRED)
def test_required_prompt_missing(
    edit: Edit, write_episode: WriteEpisode, index: int, approach: str, field: str, how: str
) -> None:
    doc = edit()
    shot = doc["shots"][index]
    assert shot["generation_approach"] == approach
    if how == "removed":
        del shot[field]
    else:
        shot[field] = ABSENT[how]
    problem = only(problems_of(write_episode(doc)), f"shots[{index}].{field}")
    assert f"required by {approach}" in problem.message
    assert f"shot {shot['shot']}" in problem.message


# --- 4. continuity ------------------------------------------------------------------------------------


def test_continuity_from_missing_shot(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][2]["continuity_from"]["shot"] = 42
    problem = only(problems_of(write_episode(doc)), "shots[2].continuity_from.shot")
    assert "there is no shot 42" in problem.message


def test_continuity_from_itself(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][2]["continuity_from"]["shot"] = 3
    problem = only(problems_of(write_episode(doc)), "shots[2].continuity_from.shot")
    assert "cannot continue from itself" in problem.message


def test_continuity_hero_frame_of_shot_without_hero(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    assert "hero_frame" not in doc["shots"][2]
    doc["shots"][8]["continuity_from"] = {"shot": 3, "frame": "hero", "strength": 0.3}
    problem = only(problems_of(write_episode(doc)), "shots[8].continuity_from.frame")
    assert "shot 3 (standard_flf) has no 'hero' frame" in problem.message
    assert "it has: first, last" in problem.message


def test_continuity_mid_frame_without_fmlf(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    assert doc["defaults"]["fmlf"] is False
    doc["shots"][2]["continuity_from"]["frame"] = "mid"
    problem = only(problems_of(write_episode(doc)), "shots[2].continuity_from.frame")
    assert "has no 'mid' frame" in problem.message
    assert "it has: first, hero, last" in problem.message


def test_continuity_mid_frame_with_fmlf_is_accepted(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["defaults"]["fmlf"] = True
    doc["shots"][2]["continuity_from"]["frame"] = "mid"
    load_episode(write_episode(doc))


def test_continuity_frame_a_held_shot_does_not_have(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][9]["continuity_from"] = {"shot": 6, "frame": "last", "strength": 0.3}
    problem = only(problems_of(write_episode(doc)), "shots[9].continuity_from.frame")
    assert "shot 6 (held_frame_static) has no 'last' frame; it has: first" in problem.message


def test_continuity_two_shot_cycle_reported_once(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][1]["continuity_from"] = {"shot": 3, "frame": "last", "strength": 0.3}  # 3 already -> 2
    problem = only(problems_of(write_episode(doc)), "shots[1].continuity_from")
    assert "continuity cycle between shots 2 -> 3 -> 2" in problem.message


def test_continuity_three_shot_cycle_reported_once(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][1]["continuity_from"] = {"shot": 9, "frame": "last", "strength": 0.3}  # 2 -> 9
    doc["shots"][8]["continuity_from"] = {"shot": 3, "frame": "last", "strength": 0.3}  # 9 -> 3 (-> 2)
    problems = problems_of(write_episode(doc))
    cycles = [p for p in problems if "cycle" in p.message]
    assert len(cycles) == 1, "\n".join(map(str, problems))
    problem = only(problems, "shots[1].continuity_from")
    assert "2 -> 9 -> 3 -> 2" in problem.message


def test_continuity_on_a_triptych_shot(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][3]["continuity_from"] = dict(LINK)
    problem = only(problems_of(write_episode(doc)), "shots[3].continuity_from")
    assert "not supported for triptych_split_flf" in problem.message


def test_continuity_to_a_shot_with_a_bad_field_is_not_called_missing(
    edit: Edit, write_episode: WriteEpisode
) -> None:
    doc = edit()
    doc["shots"][1]["duration_s"] = 0  # shot 2 exists; shot 3 continues from it
    only(problems_of(write_episode(doc)), "shots[1].duration_s")


def test_header_problem_does_not_invent_continuity_problem(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["defaults"]["fmlf"] = True
    doc["shots"][2]["continuity_from"]["frame"] = "mid"
    doc["project"] = "LEV/1"
    only(problems_of(write_episode(doc)), "project")


# --- 5. strengths ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("strength", "words"), [(0, "greater than 0"), (-0.2, "greater than 0"), (1.5, "less than or equal to 1")]
)
def test_continuity_strength_outside_0_1(
    edit: Edit, write_episode: WriteEpisode, strength: float, words: str
) -> None:
    doc = edit()
    doc["shots"][2]["continuity_from"]["strength"] = strength
    problem = only(problems_of(write_episode(doc)), "shots[2].continuity_from.strength")
    assert f"{strength} is not allowed" in problem.message
    assert words in problem.message


def test_default_img2img_strength_zero(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["defaults"]["img2img_strength"] = 0
    problem = only(problems_of(write_episode(doc)), "defaults.img2img_strength")
    assert "greater than 0" in problem.message


@pytest.mark.parametrize("one", [1.0, 1])
def test_strength_exactly_one_is_accepted(edit: Edit, write_episode: WriteEpisode, one: float) -> None:
    doc = edit()
    doc["defaults"]["img2img_strength"] = one
    doc["shots"][2]["continuity_from"]["strength"] = one
    doc["shots"][8]["continuity_from"]["strength"] = one
    episode = load_episode(write_episode(doc))
    assert episode.storyboard.defaults.img2img_strength == 1.0


# --- 6. duration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("duration", [0, -3])
def test_non_positive_duration(edit: Edit, write_episode: WriteEpisode, duration: float) -> None:
    doc = edit()
    doc["shots"][9]["duration_s"] = duration
    problem = only(problems_of(write_episode(doc)), "shots[9].duration_s")
    assert f"{duration} is not allowed" in problem.message
    assert "greater than 0" in problem.message


# --- 7. characters and engines ---------------------------------------------------------------------------


def test_unknown_character(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][5]["characters_in_shot"] = ["NOBODY"]
    problem = only(problems_of(write_episode(doc)), "shots[5].characters_in_shot[0]")
    assert "unknown character 'NOBODY'" in problem.message
    assert "JINX, KIAN" in problem.message


def test_character_listed_twice(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][2]["characters_in_shot"] = ["JINX", "JINX"]
    problem = only(problems_of(write_episode(doc)), "shots[2].characters_in_shot[1]")
    assert "JINX is listed twice" in problem.message


def test_unknown_engine_on_a_shot(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][1]["engine"] = "sdxl"
    problem = only(problems_of(write_episode(doc)), "shots[1].engine")
    assert "unknown engine 'sdxl'" in problem.message
    assert "z_image_turbo" in problem.message and "flux2" in problem.message


def test_unknown_default_engine(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["defaults"]["engine"] = "sdxl"
    problem = only(problems_of(write_episode(doc)), "defaults.engine")
    assert "unknown engine 'sdxl'" in problem.message


def test_unknown_default_engine_reported_alongside_header_problem(
    edit: Edit, write_episode: WriteEpisode
) -> None:
    doc = edit()
    doc["defaults"]["engine"] = "sdxl"
    doc["project"] = "LEV/1"
    fields = {p.field for p in problems_of(write_episode(doc))}
    assert fields == {"project", "defaults.engine"}


# --- 8. casting: a LoRA for every character on an engine that can render the shot ------------------------


def test_character_without_lora_for_the_shots_engine(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][3]["engine"] = "z_image_turbo"  # KIAN only has a flux2 LoRA
    problem = only(problems_of(write_episode(doc)), "shots[3].engine")
    assert "KIAN has no LoRA for z_image_turbo" in problem.message
    assert "KIAN: flux2" in problem.message


def test_character_without_any_image_lora(write_episode: WriteEpisode, registry_doc: Doc) -> None:
    registry = copy.deepcopy(registry_doc)
    registry["characters"]["KIAN"]["t2i"] = {}
    problems = problems_of(write_episode(registry=registry))
    assert {p.field for p in problems} == {"shots[3].characters_in_shot", "shots[4].engine"}
    triptych = at(problems, "shots[3].characters_in_shot")[0]
    assert "no image engine has a LoRA for every character" in triptych.message
    assert "KIAN: none" in triptych.message
    assert "KIAN has no LoRA for flux2" in at(problems, "shots[4].engine")[0].message


# --- 9. LoRA scale guards -----------------------------------------------------------------------------


def test_flux2_solo_scale_above_limit_refused(write_episode: WriteEpisode, registry_doc: Doc) -> None:
    registry = copy.deepcopy(registry_doc)
    registry["characters"]["JINX"]["t2i"]["flux2"]["scale_solo"] = 1.3
    path = write_episode(registry=registry)
    problem = only(problems_of(path), "characters.JINX.t2i.flux2.scale_solo")
    assert problem.file == str(path.with_name(REGISTRY_FILE_NAME))
    assert "1.3 is above flux2's solo LoRA limit 1.1" in problem.message


def test_flux2_solo_scale_at_limit_accepted(write_episode: WriteEpisode, registry_doc: Doc) -> None:
    registry = copy.deepcopy(registry_doc)
    registry["characters"]["JINX"]["t2i"]["flux2"]["scale_solo"] = 1.1
    episode = load_episode(write_episode(registry=registry))
    casting = episode.castings[8]  # JINX alone on flux2 (the triptych of shot 8)
    assert casting.engine == "flux2"
    assert [lora["scale"] for lora in casting.image_loras] == [1.1]


def test_dual_lora_total_above_one_refused(write_episode: WriteEpisode, registry_doc: Doc) -> None:
    registry = copy.deepcopy(registry_doc)
    registry["characters"]["JINX"]["scale_dual"] = 0.6
    registry["characters"]["KIAN"]["scale_dual"] = 0.6
    problem = only(problems_of(write_episode(registry=registry)), "shots[4].characters_in_shot")
    assert "multi-LoRA total scale 1.2 is above flux2's limit 1" in problem.message
    assert "JINX 0.6" in problem.message and "KIAN 0.6" in problem.message


# --- 10. unsafe names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("project", ["../x", "LEV/1", "a b", "LEV\n"])
def test_unsafe_project_code(edit: Edit, write_episode: WriteEpisode, project: str) -> None:
    doc = edit()
    doc["project"] = project
    problem = only(problems_of(write_episode(doc)), "project")
    assert repr(project) in problem.message
    assert "not a safe name" in problem.message


def test_over_long_project_code(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["project"] = "L" * 17
    problem = only(problems_of(write_episode(doc)), "project")
    assert "too long" in problem.message and "16 characters" in problem.message


def test_asset_name_with_slash(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][0]["asset_name"] = "shots/opening"
    problem = only(problems_of(write_episode(doc)), "shots[0].asset_name")
    assert "'shots/opening' is not a safe name" in problem.message


def test_project_name_with_slash(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["project_name"] = "leviathan/../etc"
    problem = only(problems_of(write_episode(doc)), "project_name")
    assert "not a safe name" in problem.message


@pytest.mark.parametrize(
    "name",
    [
        "DR WEST",
        "DR_WEST\n",
    ],
)
def test_unsafe_registry_character_name(write_episode: WriteEpisode, registry_doc: Doc, name: str) -> None:
    registry = copy.deepcopy(registry_doc)
    registry["characters"][name] = {"trigger": "WESTCHAR", "t2i": {}}
    path = write_episode(registry=registry)
    problem = only(problems_of(path), f"characters.{name}")
    assert problem.file == str(path.with_name(REGISTRY_FILE_NAME))
    assert "character names appear in asset names" in problem.message


# --- 11. absurd sizes -----------------------------------------------------------------------------------


def test_prompt_over_the_length_limit(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][0]["first_frame"] = "A wide shot of the habitat. " * 150
    assert len(doc["shots"][0]["first_frame"]) > MAX_PROMPT_CHARS == 4000
    problem = only(problems_of(write_episode(doc)), "shots[0].first_frame")
    assert "too long" in problem.message and "4000 characters" in problem.message


def _padded(doc: Doc, size: int) -> bytes:
    raw = json.dumps(doc).encode()
    return raw + b" " * (size - len(raw))


def test_file_over_the_byte_limit(sample_doc: Doc, write_episode: WriteEpisode) -> None:
    path = write_episode()
    path.write_bytes(_padded(sample_doc, MAX_INPUT_BYTES + 1))
    problem = only(problems_of(path), "")
    assert problem.file == str(path)
    assert f"{MAX_INPUT_BYTES + 1:,} bytes" in problem.message
    assert f"limit is {MAX_INPUT_BYTES:,}" in problem.message


def test_file_exactly_at_the_byte_limit_is_read(sample_doc: Doc, write_episode: WriteEpisode) -> None:
    path = write_episode()
    path.write_bytes(_padded(sample_doc, MAX_INPUT_BYTES))
    load_episode(path)


# --- 12. broken files -------------------------------------------------------------------------------------


def test_invalid_json_names_line_and_column(write_episode: WriteEpisode) -> None:
    path = write_episode()
    path.write_text('{\n  "schema_version": 3,\n  "project": ,\n}\n')
    problem = only(problems_of(path), "")
    assert problem.file == str(path)
    assert "invalid JSON" in problem.message
    assert "line 3, column 14" in problem.message


def test_non_utf8_bytes_name_the_offset(write_episode: WriteEpisode) -> None:
    path = write_episode()
    path.write_bytes(b'{\n  "title": "Pr\xe9ssure"\n}\n')
    problem = only(problems_of(path), "")
    assert "not valid UTF-8" in problem.message
    assert "byte 16" in problem.message
    assert "line 2, column 15" in problem.message


def test_missing_storyboard_file(write_episode: WriteEpisode) -> None:
    path = write_episode().with_name("nope.json")
    problem = only(problems_of(path), "")
    assert problem.file == str(path)
    assert problem.message == "file not found"


def test_top_level_array(write_episode: WriteEpisode) -> None:
    path = write_episode()
    path.write_text("[]")
    problem = only(problems_of(path), "")
    assert "expected a JSON object at the top level, got list" in problem.message


def test_schema_version_2(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["schema_version"] = 2
    problem = only(problems_of(write_episode(doc)), "schema_version")
    assert "2 is not allowed" in problem.message


def test_broken_storyboard_and_broken_registry_both_reported(write_episode: WriteEpisode) -> None:
    path = write_episode()
    path.write_text("{")
    registry = path.with_name(REGISTRY_FILE_NAME)
    registry.write_text("[1, 2")
    problems = problems_of(path)
    assert {p.file for p in problems} == {str(path), str(registry)}
    assert all("invalid JSON" in p.message for p in problems)


# --- 13. image prompts made only of VFX language --------------------------------------------------------


@pytest.mark.parametrize(("index", "field"), [(0, "first_frame"), (1, "hero_frame"), (3, "triptych_prompt")])
def test_vfx_only_image_prompt(edit: Edit, write_episode: WriteEpisode, index: int, field: str) -> None:
    doc = edit()
    doc["shots"][index][field] = "A holographic HUD, data streams."
    problem = only(problems_of(write_episode(doc)), f"shots[{index}].{field}")
    assert "nothing is left after stripping VFX language" in problem.message


def test_vfx_only_motion_prompt_is_fine(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][1]["motion_prompt"] = "A holographic HUD, data streams."
    load_episode(write_episode(doc))


# --- 14. every problem at once -------------------------------------------------------------------------


def _many_problems(
    edit: Edit, write_episode: WriteEpisode, registry_doc: Doc
) -> tuple[Path, set[tuple[str, str]]]:
    doc = edit()
    doc["project"] = "LEV/1"
    doc["shots"][0]["engine"] = "sdxl"
    doc["shots"][1]["last_frame"] = " "
    doc["shots"][2]["continuity_from"]["shot"] = 42
    doc["shots"][3]["triptych_prompt"] = "A holographic HUD, data streams."
    doc["shots"][5]["characters_in_shot"] = ["NOBODY"]
    doc["shots"][9]["duration_s"] = 0
    registry = copy.deepcopy(registry_doc)
    registry["characters"]["JINX"]["t2i"]["flux2"]["scale_solo"] = 1.3
    path = write_episode(doc, registry)
    sb, reg = str(path), str(path.with_name(REGISTRY_FILE_NAME))
    expected = {
        (sb, "project"),
        (sb, "shots[0].engine"),
        (sb, "shots[1].last_frame"),
        (sb, "shots[2].continuity_from.shot"),
        (sb, "shots[3].triptych_prompt"),
        (sb, "shots[5].characters_in_shot[0]"),
        (sb, "shots[9].duration_s"),
        (reg, "characters.JINX.t2i.flux2.scale_solo"),
    }
    return path, expected


def test_all_problems_in_one_error(edit: Edit, write_episode: WriteEpisode, registry_doc: Doc) -> None:
    path, expected = _many_problems(edit, write_episode, registry_doc)
    problems = problems_of(path)
    assert len(problems) == len(expected), "\n".join(map(str, problems))
    assert {(p.file, p.field) for p in problems} == expected


def test_cli_lists_all_problems_and_nothing_else(
    edit: Edit, write_episode: WriteEpisode, registry_doc: Doc
) -> None:
    path, expected = _many_problems(edit, write_episode, registry_doc)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    lines = result.stdout.splitlines()
    assert lines == [str(p) for p in problems_of(path)]
    assert len(lines) == len(expected)
    for file, field in expected:
        assert any(line.startswith(f"{file}: {field}: ") for line in lines), (file, field)
    assert result.stderr == ""


# --- 15. --registry ----------------------------------------------------------------------------------


def test_explicit_registry_is_used(write_episode: WriteEpisode, registry_doc: Doc, tmp_path: Path) -> None:
    path = write_episode()
    path.with_name(REGISTRY_FILE_NAME).write_text("not json")  # would fail if it were read
    elsewhere = tmp_path / "registries" / "studio.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(registry_doc))
    episode = load_episode(path, elsewhere)
    assert episode.registry_file == elsewhere
    result = runner.invoke(app, ["validate", str(path), "--registry", str(elsewhere)])
    assert result.exit_code == 0, result.output
    assert str(elsewhere) in " ".join(result.stdout.split())


def test_explicit_registry_problems_name_that_file(
    write_episode: WriteEpisode, registry_doc: Doc, tmp_path: Path
) -> None:
    registry = copy.deepcopy(registry_doc)
    registry["characters"]["JINX"]["t2i"]["flux2"]["scale_solo"] = 1.3
    elsewhere = tmp_path / "studio.json"
    elsewhere.write_text(json.dumps(registry))
    problem = only(problems_of(write_episode(), elsewhere), "characters.JINX.t2i.flux2.scale_solo")
    assert problem.file == str(elsewhere)


def test_missing_default_registry(write_episode: WriteEpisode) -> None:
    path = write_episode()
    registry = path.with_name(REGISTRY_FILE_NAME)
    registry.unlink()
    problem = only(problems_of(path), "")
    assert problem.file == str(registry)
    assert problem.message == "file not found"
    assert str(problem) == f"{registry}: file not found"
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout.splitlines() == [f"{registry}: file not found"]


# --- 16. good input -------------------------------------------------------------------------------------


def test_sample_is_valid(sample_path: Path) -> None:
    episode = load_episode(sample_path)
    assert len(episode.storyboard.shots) == 10
    assert episode.warnings == []
    assert episode.registry_file == sample_path.with_name(REGISTRY_FILE_NAME)


def test_project_example_is_valid() -> None:
    episode = load_episode(EXAMPLE)
    assert episode.warnings == []


def test_unknown_shot_field_is_a_warning_not_an_error(edit: Edit, write_episode: WriteEpisode) -> None:
    doc = edit()
    doc["shots"][0]["camera_move"] = "dolly"
    episode = load_episode(write_episode(doc))
    warning = only(episode.warnings, "shots[0].camera_move")
    assert "unknown field" in warning.message


# --- 17. `farm validate` on a good file ---------------------------------------------------------------


def test_cli_validate_good_file(sample_path: Path) -> None:
    steps = len(build_plan(load_episode(sample_path)).steps)
    result = runner.invoke(app, ["validate", str(sample_path)])
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "10 shots" in out
    assert f"{steps} steps" in out
