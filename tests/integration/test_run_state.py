"""The atomic state transitions of a run, against a real redis-server."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import redis

from farm.episode.validate import load_episode
from farm.planning.plan import Plan, build_plan
from farm.runs import keys, manifest
from farm.runs.dispatch import step_ended
from farm.runs.review import gated_steps
from farm.runs.scheduler import Scheduler
from farm.runs.state import RunStore
from farm.storage.stores import LocalStore


def sample_plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


def drain(runs: RunStore, run_id: str, roots: list[str]) -> list[str]:
    """Complete steps in release order, as workers would; return the completion order."""
    order: list[str] = []
    ready = list(roots)
    while ready:
        step = ready.pop(0)
        assert runs.begin(run_id, step) == 1
        completion = runs.complete(run_id, step)
        order.append(step)
        ready += completion.released
    return order


def test_release_follows_dependencies_and_settles(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    roots = runs.create("r1", plan, {"project": "LEV"})
    assert sorted(roots) == sorted(s.id for s in plan.steps if not s.inputs)
    order = drain(runs, "r1", roots)
    position = {step: i for i, step in enumerate(order)}
    assert len(order) == len(plan.steps), "every step is released exactly once"
    for step in plan.steps:
        assert all(position[i] < position[step.id] for i in step.inputs)
    meta = runs.meta("r1")
    assert meta["status"] == "succeeded"
    assert meta["active"] == "0" and meta["done"] == str(len(plan.steps))


def test_a_step_completed_twice_releases_nothing_twice(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    root = runs.create("r2", plan, {})[0]
    runs.begin("r2", root)
    first = runs.complete("r2", root)
    again = runs.complete("r2", root)
    assert first.released and not first.duplicate
    assert again.duplicate and again.released == []
    assert runs.meta("r2")["done"] == "1"


def test_begin_counts_deliveries_and_skips_settled_steps(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    root = runs.create("r3", plan, {})[0]
    assert [runs.begin("r3", root) for _ in range(3)] == [1, 2, 3], "a redelivered step counts again"
    runs.complete("r3", root)
    assert runs.begin("r3", root) == -1
    waiting = next(step for step, state in runs.states("r3").items() if state == "waiting")
    assert runs.begin("r3", waiting) == -1, "a step whose inputs are missing never starts"


def test_failure_blocks_dependents_and_settles_as_failed(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    roots = runs.create("r4", plan, {})
    runs.begin("r4", roots[0])
    runs.fail("r4", roots[0], "engine exploded")
    assert roots[0] not in drain(runs, "r4", roots[1:])
    assert runs.meta("r4")["status"] == "failed"
    states = runs.states("r4")
    assert states[roots[0]] == "failed"
    assert "waiting" in states.values(), "the failed step's dependents never run"
    assert runs.info("r4")[roots[0]]["error"] == "engine exploded"


def test_cancel_revokes_queued_and_settles_when_running_steps_end(
    client: redis.Redis, sample_path: Path
) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    roots = runs.create("r5", plan, {})
    runs.begin("r5", roots[0])
    revoked, outcome = runs.cancel("r5")
    assert sorted(revoked) == sorted(roots[1:]) and outcome == ""
    assert runs.meta("r5")["status"] == "cancelling"
    completion = runs.complete("r5", roots[0])
    assert completion.released == [], "nothing is released once cancelled"
    assert completion.outcome == "cancelled"
    assert runs.begin("r5", roots[1]) == -1, "a revoked task that still arrives does nothing"


def test_cancel_with_nothing_queued_settles_when_the_running_steps_end(
    client: redis.Redis, sample_path: Path
) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    roots = runs.create("r6", plan, {})
    for root in roots:
        runs.begin("r6", root)
    assert runs.cancel("r6") == ([], "")
    for root in roots:
        runs.complete("r6", root)
    assert runs.meta("r6")["status"] == "cancelled"


class _Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str]] = []

    def send(self, run_id: str, step: object, queue: str) -> None:
        self.sent.append((run_id, getattr(step, "id", ""), queue))

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        raise AssertionError("not expected")


def test_released_steps_whose_message_was_lost_are_sent_again(client: redis.Redis, sample_path: Path) -> None:
    from farm.runs.dispatch import resend_unsent

    plan = sample_plan(sample_path)
    runs = RunStore(client)
    client.hset(keys.run("r7"), "backend", "local")
    roots = runs.create("r7", plan, {"backend": "local"})
    assert runs.outbox("r7") == sorted(roots), "roots wait in the outbox until their message is sent"
    for root in roots:
        runs.sent("r7", root)
    runs.begin("r7", roots[0])
    released = runs.complete("r7", roots[0]).released  # the worker dies here, before sending
    assert runs.outbox("r7") == sorted(released)
    recorder = _Recorder()
    assert resend_unsent(runs, recorder) == len(released)
    assert sorted(step for _, step, _ in recorder.sent) == sorted(released)
    assert runs.outbox("r7") == []


def test_gated_steps_are_held_until_approved_and_the_run_waits_in_review(
    client: redis.Redis, sample_path: Path
) -> None:
    plan = sample_plan(sample_path)
    gated = set(gated_steps(plan))
    runs = RunStore(client)
    order = drain(runs, "r9", runs.create("r9", plan, {"review": "1"}, gated))
    assert gated and not gated & set(order), "no gated step was released"
    assert {runs.states("r9")[s] for s in gated} <= {"held", "waiting"}
    assert runs.meta("r9")["status"] == "review" and "finished_at" not in runs.meta("r9")
    shot = next(s.shot for s in plan.steps if s.id in gated)
    mine = [s.id for s in plan.steps if s.id in gated and s.shot == shot]
    approved = runs.approve("r9", mine)
    assert approved.released and set(approved.released) <= set(mine)
    assert runs.meta("r9")["status"] == "running"
    drain(runs, "r9", approved.released)
    assert runs.meta("r9")["status"] == "review", "the other shots still wait"
    rest = runs.approve("r9", sorted(runs.gated("r9")))
    drain(runs, "r9", rest.released)
    assert runs.meta("r9")["status"] == "succeeded"
    assert runs.meta("r9")["done"] == str(len(plan.steps))


def test_cancelling_a_run_in_review_cancels_its_held_steps(client: redis.Redis, sample_path: Path) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    drain(runs, "r10", runs.create("r10", plan, {"review": "1"}, gated_steps(plan)))
    revoked, outcome = runs.cancel("r10")
    assert revoked == [] and outcome == "cancelled"
    assert "held" not in runs.states("r10").values()


@pytest.mark.chaos
def test_a_hop_survives_redis_forgetting_its_scripts(client: redis.Redis, sample_path: Path) -> None:
    """Claim, complete and settle send their scripts by SHA inside pipelines; after a Redis restart (here
    SCRIPT FLUSH) the scripts are loaded again and each transition still happens exactly once."""
    plan = sample_plan(sample_path)
    runs, sched = RunStore(client), Scheduler(client)
    root = runs.create("r8", plan, {"backend": "local", "priority": "5"})[0]
    client.script_flush()
    claim = runs.claim("r8", root)
    assert claim.started == 1 and claim.reads.steps[root].id == root
    assert claim.reads.meta["backend"] == "local"
    client.script_flush()
    completion = runs.complete("r8", root, info={"finished_at": 1.5})
    assert completion.released and not completion.duplicate
    assert completion.reads is not None and set(completion.reads.steps) == set(completion.released)
    assert runs.meta("r8")["done"] == "1" and runs.info("r8")[root]["finished_at"] == 1.5
    client.script_flush()
    sender = _Recorder()
    admitted = step_ended(
        runs, sender, "r8", root, completion.released, scheduler=sched, reads=completion.reads
    )
    sent = [step for _, step, _ in sender.sent]
    assert sorted(a.step_id for a in admitted) == sorted(completion.released) == sorted(sent)
    assert not set(sent) & set(runs.outbox("r8")), "sent, so out of the outbox"
    assert runs.deliveries("r8")[root] == 1


def test_a_manifest_the_disk_cannot_hold_leaves_no_temp_file_beside_the_deliverables(
    client: redis.Redis, sample_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plan = sample_plan(sample_path)
    runs = RunStore(client)
    out = tmp_path / "deliverables"
    drain(runs, "r-manifest", runs.create("r-manifest", plan, {"output_dir": str(out), "namespace": "LEV"}))

    def disk_full(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(json, "dump", disk_full)
    with pytest.raises(OSError, match="No space left"):
        manifest.write_manifest(runs, LocalStore(tmp_path / "store"), "r-manifest")
    assert list(out.iterdir()) == [], "neither a manifest nor its temp file"
    monkeypatch.undo()
    written = manifest.write_manifest(runs, LocalStore(tmp_path / "store"), "r-manifest")
    assert [p.name for p in out.iterdir()] == ["manifest.json"] and written == out / "manifest.json"
