"""Retakes against a real redis-server: exactly the changed steps run again, earlier takes are kept."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from farm.cli.app import app
from farm.episode.problems import InputError
from farm.episode.validate import check_episode, load_episode
from farm.planning.plan import Plan, Step, StepKind, build_plan
from farm.runs.retake import Changes, RetakeError, marked_for_retake, plan_retake, retake, run_source
from farm.runs.review import approve, gated_steps, mark
from farm.runs.state import RunStore
from tests.conftest import Doc
from tests.integration.test_run_state import drain

CHILD_OF = {3: 2, 9: 8}
"""The sample's continuity links: shot -> the shot it continues from."""


class RecordingSender:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, run_id: str, step: Step, queue: str) -> None:
        self.sent.append(step.id)

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        raise AssertionError("a retake revokes nothing")


def rendered_run(runs: RunStore, run_id: str, sample_path: Path, *, review: bool = False) -> Plan:
    """The sample submitted and rendered to the end (every step done), as a farm would leave it."""
    episode = load_episode(sample_path)
    plan = build_plan(episode)
    meta = {"backend": "local", "review": "1" if review else "0", "project": "LEV"}
    gated = gated_steps(plan) if review else ()
    drain(runs, run_id, runs.create(run_id, plan, meta, gated, run_source(episode)))
    return plan


def finish(runs: RunStore, run_id: str, sent: list[str]) -> list[str]:
    """Complete what a retake sent, and what that releases, as workers would."""
    return drain(runs, run_id, sent)


def plan_of(doc: Doc, sample_path: Path, registry_doc: Doc) -> Plan:
    return build_plan(check_episode(doc, registry_doc, sample_path, sample_path.with_name("x.json")))


def test_a_retake_reruns_the_changed_steps_its_continuity_child_and_the_episode(
    client: redis.Redis, sample_path: Path, edit: Callable[[], Doc], registry_doc: Doc
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    before = rendered_run(runs, "rt1", sample_path)
    edited = edit()
    edited["shots"][1]["last_frame"] = "JNXCHAR leans on the shut bulkhead door, breathing hard."
    expected = {s.id for s in plan_of(edited, sample_path, registry_doc).steps} - {s.id for s in before.steps}

    planned = retake(runs, sender, "rt1", {2: Changes({"last": edited["shots"][1]["last_frame"]})})

    assert {s.id for s in planned.rerun} == expected
    assert {s.shot for s in planned.rerun} == {2, 3, None}, "shot 3 starts from shot 2's last frame"
    assert planned.takes == {2: 2, 3: 2} and planned.cut == 2
    assert planned.reused == len(before.steps) - len(expected)
    assert runs.meta("rt1")["status"] == "running"
    ran = finish(runs, "rt1", sender.sent)
    assert set(ran) == expected, "exactly the new steps ran, each once"
    assert runs.meta("rt1")["status"] == "succeeded"

    steps = runs.steps("rt1")
    for step in steps.values():
        if step.id in expected and step.shot is not None:
            assert step.take == 2 and "_T02_" in step.asset_name, step.asset_name
    episode = next(s for s in steps.values() if s.shot is None)
    assert episode.asset_name == "LEV_EP001_episode_C02.mp4"
    replaced = runs.history("rt1")
    assert {s.id for s in replaced} == {s.id for s in before.steps} - set(steps)
    assert all(s.take == 1 and "_T02_" not in s.asset_name for s in replaced), (
        "earlier takes keep their names"
    )
    assert runs.takes("rt1") == {2: 2, 3: 2}


def test_changing_only_the_motion_keeps_every_keyframe(
    client: redis.Redis, sample_path: Path, edit: Callable[[], Doc], registry_doc: Doc
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    rendered_run(runs, "rt2", sample_path)
    planned = retake(runs, sender, "rt2", {2: Changes({"motion": "The keeper turns slowly toward the sea."})})
    assert {s.kind for s in planned.rerun} == {StepKind.VIDEO, StepKind.CONCAT}
    assert planned.takes == {2: 2}, "shot 3 starts from shot 2's frames, which did not change"
    finish(runs, "rt2", sender.sent)
    assert runs.meta("rt2")["status"] == "succeeded"


def test_a_retake_without_changes_draws_a_new_seed_and_a_second_one_another(
    client: redis.Redis, sample_path: Path
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    rendered_run(runs, "rt3", sample_path)
    first = retake(runs, sender, "rt3", {5: Changes()})
    finish(runs, "rt3", sender.sent)
    second = retake(runs, sender, "rt3", {5: Changes()})
    assert first.seeds.keys() == second.seeds.keys() == {5} and first.seeds[5] != second.seeds[5]
    assert second.takes == {5: 3} and second.cut == 3
    assert all(s.params.get("seed") in (second.seeds[5], None) for s in second.rerun if s.shot == 5)


def test_shots_marked_for_retake_are_retaken_together_in_one_cut(
    client: redis.Redis, sample_path: Path
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    rendered_run(runs, "rt10", sample_path)
    mark(runs, "rt10", [5, 7], "retake")
    mark(runs, "rt10", [6], "needs_review")
    assert marked_for_retake(runs, "rt10") == [5, 7]
    planned = retake(runs, sender, "rt10", {n: Changes() for n in marked_for_retake(runs, "rt10")})
    assert planned.takes == {5: 2, 7: 2} and planned.cut == 2 and planned.seeds.keys() == {5, 7}
    assert [s.shot for s in planned.rerun].count(None) == 1, "one episode concat for both"
    assert marked_for_retake(runs, "rt10") == [] and runs.reviews("rt10") == {6: "needs_review"}
    finish(runs, "rt10", sender.sent)
    assert runs.meta("rt10")["status"] == "succeeded"


def test_strength_changes_the_shots_frame_to_frame_img2img(client: redis.Redis, sample_path: Path) -> None:
    runs = RunStore(client)
    rendered_run(runs, "rt9", sample_path)
    planned = plan_retake(runs, "rt9", {3: Changes(strength=0.55)})
    changed = [s for s in planned.rerun if s.kind is StepKind.IMG2IMG]
    assert [(s.shot, s.role, s.params["strength"]) for s in changed] == [(3, "last", 0.55)]
    with pytest.raises(RetakeError, match="--strength"):
        plan_retake(runs, "rt9", {2: Changes(strength=0.55)})  # a hero shot's frames use the fixed 0.40


def test_a_retake_to_the_current_settings_or_of_an_unknown_shot_changes_nothing(
    client: redis.Redis, sample_path: Path, sample_doc: Doc
) -> None:
    runs = RunStore(client)
    rendered_run(runs, "rt4", sample_path)
    with pytest.raises(RetakeError, match="nothing changes"):
        plan_retake(runs, "rt4", {2: Changes({"first": sample_doc["shots"][1]["first_frame"]})})
    with pytest.raises(ValueError, match="no shot 42"):
        plan_retake(runs, "rt4", {42: Changes(seed=1)})
    assert runs.takes("rt4") == {} and runs.history("rt4") == []


def test_a_retake_that_breaks_the_storyboard_lists_its_problems_and_changes_nothing(
    client: redis.Redis, sample_path: Path
) -> None:
    runs = RunStore(client)
    rendered_run(runs, "rt5", sample_path)
    states = runs.states("rt5")
    with pytest.raises(InputError) as caught:
        plan_retake(runs, "rt5", {2: Changes({"first": "x" * 5000})})
    assert any("shots[1].first_frame" in str(p) for p in caught.value.problems)
    assert runs.states("rt5") == states and runs.meta("rt5")["status"] == "succeeded"


def test_a_retake_in_a_review_run_holds_the_new_video_until_approved_again(
    client: redis.Redis, sample_path: Path
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    rendered_run(runs, "rt6", sample_path, review=True)
    finish(runs, "rt6", approve(runs, sender, "rt6", [1, 2, 4, 5, 6, 7, 8, 9, 10]).steps)
    assert runs.meta("rt6")["status"] == "review", "shot 3 still waits"
    sender.sent.clear()
    retake(runs, sender, "rt6", {2: Changes(seed=11)})
    finish(runs, "rt6", sender.sent)
    states, steps = runs.states("rt6"), runs.steps("rt6")
    held = {s.shot for s in steps.values() if states[s.id] == "held"}
    assert held == {2, 3}, "the new takes' videos wait; the approved shots' stay done"
    assert runs.meta("rt6")["status"] == "review"
    assert runs.reviews("rt6").get(2) is None, "take T02 is reviewed afresh"
    released = approve(runs, sender, "rt6", [2, 3])
    finish(runs, "rt6", released.steps)
    assert runs.meta("rt6")["status"] == "succeeded"


def test_a_retake_supersedes_steps_of_the_old_take_not_yet_run(
    client: redis.Redis, sample_path: Path
) -> None:
    runs, sender = RunStore(client), RecordingSender()
    episode = load_episode(sample_path)
    plan = build_plan(episode)
    roots = runs.create("rt7", plan, {"backend": "local"}, (), run_source(episode))
    old_shot2 = [s.id for s in plan.steps if s.shot == 2 and s.id in roots]
    retake(runs, sender, "rt7", {2: Changes(seed=7)})
    assert all(runs.states("rt7")[i] == "superseded" for i in old_shot2)
    assert all(runs.begin("rt7", i) == -1 for i in old_shot2), "a queued step of the old take never starts"
    finish(runs, "rt7", [r for r in roots if runs.states("rt7")[r] == "queued"] + sender.sent)
    assert runs.meta("rt7")["status"] == "succeeded"
    assert runs.meta("rt7")["done"] == str(len(runs.steps("rt7")))


def test_a_cancelled_run_cannot_be_retaken(client: redis.Redis, sample_path: Path) -> None:
    runs = RunStore(client)
    episode = load_episode(sample_path)
    runs.create("rt8", build_plan(episode), {"backend": "local"}, (), run_source(episode))
    runs.cancel("rt8")
    with pytest.raises(RetakeError, match="cancelled"):
        plan_retake(runs, "rt8", {2: Changes(seed=3)})


def test_the_retake_command_dry_runs_marked_shots_and_refuses_mixed_arguments(
    client: redis.Redis, redis_url: str, sample_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = RunStore(client)
    rendered_run(runs, "rt11", sample_path)
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    cli = CliRunner()
    assert "no shot is marked" in cli.invoke(app, ["retake", "rt11", "--marked"]).output
    mark(runs, "rt11", [2], "retake")
    dry = cli.invoke(app, ["retake", "rt11", "--marked", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "shot 2 take T02: would re-render" in dry.output
    assert "shot 3 take T02 (continues from a retaken shot)" in dry.output
    assert "episode cut C02" in dry.output and "new seed" in dry.output
    assert runs.takes("rt11") == {} and marked_for_retake(runs, "rt11") == [2], "a dry run changes nothing"
    assert cli.invoke(app, ["retake", "rt11", "2", "--marked"]).exit_code == 2
    assert cli.invoke(app, ["retake", "rt11", "--marked", "--seed", "4"]).exit_code == 2
    bad = cli.invoke(app, ["retake", "rt11", "2", "--motion", "x " * 3000])
    assert bad.exit_code == 2 and "shots[1].motion_prompt" in bad.output
