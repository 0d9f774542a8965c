"""The autoscaler's decisions: prompt up, patient down, within min and max, and why, for every queue."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from farm.cli.app import app
from farm.ops.autoscaler import parse_limits
from farm.ops.scaling_rules import Scaler, ScalingPolicy, gpu_worker_cap, wanted_workers
from tasks.backlog import Backlog

POLICY = ScalingPolicy(min_workers=1, max_workers=4, per_worker=2, up_cooldown_s=5, down_cooldown_s=60)


def backlog(waiting: int = 0, reserved: int = 0, delayed: int = 0) -> Backlog:
    return Backlog("post", waiting, reserved, delayed)


@pytest.mark.parametrize(
    ("waiting", "reserved", "wanted"),
    [(0, 0, 1), (1, 0, 1), (2, 1, 2), (3, 2, 3), (40, 0, 4), (0, 7, 4)],
)
def test_wanted_workers_cover_waiting_and_reserved_steps_within_bounds(
    waiting: int, reserved: int, wanted: int
) -> None:
    assert wanted_workers(POLICY, backlog(waiting, reserved)) == wanted


def test_steps_waiting_out_a_countdown_ask_for_no_worker() -> None:
    assert wanted_workers(POLICY, backlog(delayed=50)) == POLICY.min_workers


def test_scale_up_is_prompt_and_then_waits_for_its_cooldown() -> None:
    scaler = Scaler("post", POLICY)
    first = scaler.decide(backlog(waiting=4), actual=1, now=100.0)
    assert (first.action, first.target) == ("up", 2)
    soon = scaler.decide(backlog(waiting=8), actual=2, now=102.0)
    assert (soon.action, soon.target) == ("hold", 2) and "up-cooldown" in soon.reason
    later = scaler.decide(backlog(waiting=8), actual=2, now=105.0)
    assert (later.action, later.target) == ("up", 4)


def test_scale_down_waits_a_whole_cooldown_of_lower_demand() -> None:
    scaler = Scaler("post", POLICY)
    assert scaler.decide(backlog(), actual=4, now=0.0).action == "hold"
    assert scaler.decide(backlog(), actual=4, now=59.0).action == "hold"
    bump = scaler.decide(backlog(waiting=8), actual=4, now=59.5)
    assert bump.action == "hold" and bump.wanted == 4, "a burst resets the wait"
    assert scaler.decide(backlog(), actual=4, now=100.0).action == "hold"
    down = scaler.decide(backlog(reserved=2), actual=4, now=160.0)
    assert (down.action, down.target) == ("down", 1) and "fewer for 60 s" in down.reason


def test_a_decision_line_names_its_inputs() -> None:
    line = Scaler("post", POLICY).decide(backlog(3, 2, 1), actual=1, now=0.0).line()
    assert line.startswith("autoscale post: up 1->3")
    for part in ("waiting=3", "reserved=2", "delayed=1", "wanted=3", "backlog grew"):
        assert part in line


def test_the_gpu_queue_gets_no_more_workers_than_affordable_pods_can_serve() -> None:
    assert gpu_worker_cap(
        4, max_pods=2, max_usd_per_hr=10, pod_usd_per_hr=1.19, jobs_per_pod=1, per_worker=1
    ) == (
        2,
        "2 pod(s) fit $10/h at $1.19/h and 2 pod(s) max, 1 job(s) each",
    )
    cap, reason = gpu_worker_cap(
        4, max_pods=5, max_usd_per_hr=2.5, pod_usd_per_hr=1.19, jobs_per_pod=2, per_worker=2
    )
    assert cap == 2 and reason.startswith("2 pod(s) fit $2.5/h")
    assert gpu_worker_cap(
        2, max_pods=8, max_usd_per_hr=100, pod_usd_per_hr=1.19, jobs_per_pod=1, per_worker=1
    ) == (
        2,
        "",
    )
    capped = Scaler("gpu", ScalingPolicy(0, 1, 1, cap_reason="1 pod(s) fit $2/h")).decide(
        Backlog("gpu", 9, 0), actual=0, now=0.0
    )
    assert capped.target == 1 and "at most 1: 1 pod(s) fit $2/h" in capped.reason


def test_limits_parse_per_queue_and_reject_nonsense() -> None:
    assert parse_limits("post=1:4, cloud=0:2") == {"post": (1, 4), "cloud": (0, 2)}
    with pytest.raises(ValueError, match="queue=min:max"):
        parse_limits("post=one:4")
    with pytest.raises(ValueError, match="min <= max"):
        ScalingPolicy(3, 2, 1)


def test_the_autoscale_command_refuses_unknown_queues_and_bad_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    runner = CliRunner()
    unknown = runner.invoke(app, ["autoscale", "--queue", "render"])
    assert unknown.exit_code == 2 and "unknown queue(s) render" in unknown.output
    monkeypatch.setenv("FARM_AUTOSCALE_WORKERS", "post=4:1")
    inverted = runner.invoke(app, ["autoscale", "--queue", "post"])
    assert inverted.exit_code == 2 and "min <= max" in inverted.output
    assert runner.invoke(app, ["up", "--autoscale"]).exit_code == 2, "farm up checks the same before starting"
