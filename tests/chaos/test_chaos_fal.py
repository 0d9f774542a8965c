"""A fal request that never completes, inside a farm run: the step gives up, the request is cancelled at fal.

The fal emulator keeps any request whose prompt holds its never-complete keyword IN_PROGRESS until it is
cancelled. With FARM_FAL_REQUEST_TIMEOUT_S at 3 s the step polling it gives up, cancels the request (so fal
stops charging and the account's in-flight slot comes back) and fails with the reason; the other shot,
which does not need it, renders; the run ends `failed`, and nothing was submitted twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from emulators.fal_server import Faults
from farm.runs.progress import snapshot
from tests.chaos.support import (
    assert_nothing_lost,
    assert_whole_files,
    downstream,
    run_state,
    started_part,
    two_shot_episode,
)
from tests.conftest import Doc
from tests.integration.test_fal_farm import FAKE_FAL_SECRET, assert_one_submit_per_paid_step, running_fal_farm

REQUEST_TIMEOUT_S = 3


@pytest.mark.chaos
def test_a_fal_request_that_never_completes_is_cancelled_and_fails_only_its_branch(
    sample_doc: Doc, registry_doc: Doc, tmp_path: Path
) -> None:
    stall = Faults().never_complete_keyword
    path = two_shot_episode(tmp_path / "episode", sample_doc, registry_doc, "STL", mark=stall)
    env = {"FARM_FAL_REQUEST_TIMEOUT_S": str(REQUEST_TIMEOUT_S)}
    with running_fal_farm(tmp_path / "home", env=env) as farm:
        run_id, plan = farm.submit(path)
        assert farm.wait(run_id, timeout_s=240) == "failed", run_state(farm, run_id)
        states = farm.runs.states(run_id)
        stalled = next(s for s in plan.steps if s.shot == 7 and s.kind.value == "t2i")

        failures = snapshot(farm.runs, run_id).failures
        assert len(failures) == 1 and failures[0].shot == 7, failures
        reason = failures[0].reason
        assert f"did not finish within {REQUEST_TIMEOUT_S} s" in reason, reason
        assert states[stalled.id] == "failed"
        assert {s for s, state in states.items() if state == "waiting"} == downstream(plan, [stalled.id])
        assert all(states[s.id] == "done" for s in plan.steps if s.shot == 6), "the other shot rendered"
        manifest = json.loads(Path(farm.runs.meta(run_id)["manifest"]).read_text())
        record = next(r for r in manifest["steps"] if r["id"] == stalled.id)
        assert record["state"] == "failed" and record["error"] == reason, "the manifest says why"
        blocked = {r["id"]: r["blocked_by"] for r in manifest["steps"] if r["state"] == "blocked"}
        assert blocked == {s: [stalled.id] for s in downstream(plan, [stalled.id])}, "and what it stops"
        assert snapshot(farm.runs, run_id).counts.get("blocked") == len(blocked)

        entry = next(e for e in farm.emulator.ledger() if e["payload"]["seed"] == stalled.params["seed"])
        result = httpx.get(
            f"{farm.emulator.url}/{entry['endpoint']}/requests/{entry['request_id']}",
            headers={"Authorization": f"Key {FAKE_FAL_SECRET}"},
        )
        assert result.status_code == 400 and "cancelled" in result.text, "the request was cancelled at fal"
        assert farm.emulator.calls().get("cancel") == 1
        assert farm.emulator.outstanding() == 0, "nothing left in flight at fal"
        assert farm.redis.zscore("farm:cap:fal", stalled.id) is None, "its in-flight slot was given back"

        assert_one_submit_per_paid_step(farm.emulator, started_part(plan, states))
        unstarted = {s.params["seed"] for s in plan.steps if states[s.id] == "waiting" and s.cost_usd > 0}
        assert not [e for e in farm.emulator.ledger() if e["payload"].get("seed") in unstarted]
        assert_nothing_lost(farm, run_id, plan)
        assert_whole_files(Path(farm.runs.meta(run_id)["output_dir"]), farm.farm.settings.artifacts_root())
