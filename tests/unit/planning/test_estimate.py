"""Cost, paid calls, critical path and sequential time, and the CLI views of them."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from farm.cli.app import app
from farm.episode.engine_cards import CARDS
from farm.episode.validate import load_episode
from farm.planning.estimate import estimate, makespan_at_limits
from farm.planning.plan import Plan, StepKind, build_plan
from farm.planning.plan_json import plan_document
from tests.conftest import SAMPLE_TOTALS

Doc = dict[str, Any]
runner = CliRunner()
WIDE = {"COLUMNS": "250"}
STEP_KEYS = {"id", "kind", "shot", "role", "engine", "inputs", "asset_name", "cost_usd", "latency_s"}


@pytest.fixture
def sample_plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def flat(text: str) -> str:
    return " ".join(text.split())


def longest_path_s(plan: Plan) -> float:
    """Brute force: the longest chain ending at each step, by recursion over its inputs."""
    by_id = {s.id: s for s in plan.steps}

    @cache
    def ending_at(step_id: str) -> float:
        step = by_id[step_id]
        return step.latency_s + max((ending_at(i) for i in step.inputs), default=0.0)

    return max(ending_at(i) for i in by_id)


def all_chains_max(plan: Plan) -> float:
    """Brute force without memo: enumerate every source-to-step chain and take the longest."""
    by_id = {s.id: s for s in plan.steps}
    best = 0.0

    def walk(step_id: str, total: float) -> None:
        nonlocal best
        step = by_id[step_id]
        total += step.latency_s
        best = max(best, total)
        for child in children[step_id]:
            walk(child, total)

    children: dict[str, list[str]] = {i: [] for i in by_id}
    for step in plan.steps:
        for i in step.inputs:
            children[i].append(step.id)
    for step in plan.steps:
        if not step.inputs:
            walk(step.id, 0.0)
    return best


# cost ---------------------------------------------------------------------------------------------------


def test_cost_is_sum_of_step_costs(sample_plan: Plan) -> None:
    est = estimate(sample_plan)
    assert est.cost_usd == sum((s.cost_usd for s in sample_plan.steps), Decimal(0))
    assert est.cost_usd == Decimal("1.557")


def test_step_costs_are_card_prices(sample_plan: Plan) -> None:
    for step in sample_plan.steps:
        assert step.cost_usd == CARDS[step.engine].op(step.operation).price_usd
        assert step.latency_s == CARDS[step.engine].op(step.operation).latency_s


def test_sample_cost_by_card(sample_plan: Plan) -> None:
    by_op = Counter((s.engine, s.operation) for s in sample_plan.steps)
    assert by_op[("z_image_turbo", "t2i")] == 5
    assert by_op[("flux2", "t2i")] == 3
    assert by_op[("z_image_turbo", "img2img")] == 7
    assert by_op[("flux2", "img2img")] == 2
    assert by_op[("seedvr2", "upscale")] == 19
    assert by_op[("wan22", "video")] + by_op[("wan22", "video_segment")] == 9

    def price(engine: str, op: str) -> Decimal:
        return CARDS[engine].op(op).price_usd

    expected = (
        5 * price("z_image_turbo", "t2i")
        + 3 * price("flux2", "t2i")
        + 7 * price("z_image_turbo", "img2img")
        + 2 * price("flux2", "img2img")
        + 19 * price("seedvr2", "upscale")
        + 9 * price("wan22", "video")
    )
    assert price("wan22", "video") == price("wan22", "video_segment")
    assert expected == Decimal("1.557") == estimate(sample_plan).cost_usd


def test_cost_by_shot_and_kind_add_up(sample_plan: Plan) -> None:
    est = estimate(sample_plan)
    assert sum(est.cost_by_shot.values(), Decimal(0)) == est.cost_usd
    assert sum(est.cost_by_kind.values(), Decimal(0)) == est.cost_usd
    assert est.cost_by_shot[None] == 0
    assert est.cost_by_shot[7] == Decimal("0.005") + Decimal("0.009") + 2 * Decimal("0.001") + Decimal("0.15")
    assert est.steps_by_kind == SAMPLE_TOTALS


def test_paid_calls_per_endpoint(sample_plan: Plan) -> None:
    est = estimate(sample_plan)
    z_t2i = CARDS["z_image_turbo"].op("t2i").endpoint
    z_i2i = CARDS["z_image_turbo"].op("img2img").endpoint
    flux = CARDS["flux2"].op("t2i").endpoint
    assert flux == CARDS["flux2"].op("img2img").endpoint
    seedvr = CARDS["seedvr2"].op("upscale").endpoint
    wan = CARDS["wan22"].op("video").endpoint
    assert {c.endpoint: c.calls for c in est.paid_calls} == {z_t2i: 5, z_i2i: 7, flux: 5, seedvr: 19, wan: 9}
    assert {c.endpoint: c.cost_usd for c in est.paid_calls} == {
        z_t2i: Decimal("0.025"),
        z_i2i: Decimal("0.063"),
        flux: Decimal("0.10"),
        seedvr: Decimal("0.019"),
        wan: Decimal("1.35"),
    }
    assert [c.endpoint for c in est.paid_calls] == sorted(c.endpoint for c in est.paid_calls)
    post = [s for s in sample_plan.steps if s.engine == "post"]
    assert len(post) == 8
    assert all(s.endpoint is None for s in post)
    assert sum(c.calls for c in est.paid_calls) == len(sample_plan.steps) - len(post)


# time ---------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sample", "fmlf"])
def any_plan(
    request: pytest.FixtureRequest, write_episode: Callable[..., Path], edit: Callable[[], Doc]
) -> Plan:
    doc = edit()
    if request.param == "fmlf":
        doc["defaults"]["fmlf"] = True
    return build_plan(load_episode(write_episode(doc)))


def test_critical_path_is_a_real_chain(any_plan: Plan) -> None:
    est = estimate(any_plan)
    chain = [any_plan.step(i) for i in est.critical_path]
    assert chain
    assert chain[0].inputs == ()
    assert chain[-1].kind == StepKind.CONCAT and chain[-1].shot is None
    for before, after in pairwise(chain):
        assert before.id in after.inputs
    assert sum(s.latency_s for s in chain) == pytest.approx(est.critical_path_s)


def test_critical_path_is_the_longest_chain(any_plan: Plan) -> None:
    est = estimate(any_plan)
    assert est.critical_path_s == pytest.approx(longest_path_s(any_plan))
    assert est.critical_path_s == pytest.approx(all_chains_max(any_plan))


def test_sample_critical_path_value(sample_plan: Plan) -> None:
    est = estimate(sample_plan)
    assert est.critical_path_s == pytest.approx(172.0)
    kinds = [sample_plan.step(i).kind.value for i in est.critical_path]
    assert kinds == ["t2i", "split", "upscale", "img2img", "img2img", "upscale", "video", "concat"]


def test_sequential_is_sum_of_latencies(any_plan: Plan) -> None:
    est = estimate(any_plan)
    assert est.sequential_s == pytest.approx(sum(s.latency_s for s in any_plan.steps))
    assert est.sequential_s >= est.critical_path_s


def test_sample_sequential_value(sample_plan: Plan) -> None:
    assert estimate(sample_plan).sequential_s == pytest.approx(1087.0)


# plan --json --------------------------------------------------------------------------------------------


def test_plan_json_contract(sample_path: Path, sample_plan: Plan) -> None:
    doc = json.loads(invoke("plan", str(sample_path), "--json"))
    assert {"steps", "totals", "cost_usd", "critical_path_s", "sequential_s"} <= set(doc)
    assert len(doc["steps"]) == 53
    for step in doc["steps"]:
        assert set(step) >= STEP_KEYS
        assert isinstance(step["inputs"], list)
    no_shot = [s for s in doc["steps"] if s["shot"] is None]
    assert len(no_shot) == 1
    assert no_shot[0]["kind"] == "concat" and no_shot[0]["role"] == "episode"
    assert doc["steps"][-1] == no_shot[0]
    assert doc["totals"] == SAMPLE_TOTALS
    assert doc["cost_usd"] == pytest.approx(1.557)
    assert doc["critical_path_s"] == pytest.approx(172.0)
    assert doc["sequential_s"] == pytest.approx(1087.0)
    assert [s["id"] for s in doc["steps"]] == [s.id for s in sample_plan.steps]
    assert doc == json.loads(json.dumps(plan_document(sample_plan)))


def test_estimate_json_agrees_with_plan_json(sample_path: Path) -> None:
    plan_doc = json.loads(invoke("plan", str(sample_path), "--json"))
    est_doc = json.loads(invoke("estimate", str(sample_path), "--json"))
    keys = ("cost_usd", "critical_path_s", "sequential_s", "totals", "paid_calls", "cost_by_kind", "shots")
    for key in keys:
        assert est_doc[key] == plan_doc[key], key


def test_estimate_text_agrees_with_plan_json(sample_path: Path) -> None:
    plan_doc = json.loads(invoke("plan", str(sample_path), "--json"))
    text = flat(invoke("estimate", str(sample_path)))
    assert f"Total: {plan_doc['cost_usd']:.4f} USD" in text
    assert "Total: 1.5570 USD" in text
    assert f"({plan_doc['critical_path_s']:g} s)" in text
    assert f"({plan_doc['sequential_s']:g} s)" in text
    assert "Critical path 2m52s (172 s)" in text
    assert "Sequential (one step after another): 18m07s (1087 s)" in text
    for call in plan_doc["paid_calls"]:
        assert call["endpoint"] in text


def test_plan_text_mentions_critical_path(sample_path: Path) -> None:
    text = flat(invoke("plan", str(sample_path)))
    assert "Critical path" in text
    assert "53 steps" in text


def test_plan_shot_7_shows_compiled_prompt(sample_path: Path) -> None:
    text = flat(invoke("plan", str(sample_path), "--shot", "7"))
    assert "prompt: JNXCHAR at the control console, fingers hovering over the ballast switches." in text
    assert "stripped VFX language" in text
    assert "Shot 7" in text
    assert "Shot 6" not in text


def test_plan_unknown_shot_is_an_input_error(sample_path: Path) -> None:
    result = runner.invoke(app, ["plan", str(sample_path), "--shot", "99"])
    assert result.exit_code == 2


def test_time_at_limits_spans_critical_path_to_sequential(sample_plan: Plan) -> None:
    est = estimate(sample_plan)
    one_lane = lambda _step: "lane"  # noqa: E731
    assert makespan_at_limits(sample_plan, one_lane, {"lane": None}) == pytest.approx(est.critical_path_s)
    assert makespan_at_limits(sample_plan, one_lane, {"lane": 1}) == pytest.approx(est.sequential_s)
    times = [makespan_at_limits(sample_plan, one_lane, {"lane": n}) for n in (1, 2, 4, 8, 16)]
    assert times == sorted(times, reverse=True), "more room never makes the episode slower here"
    work_bound = est.sequential_s / 4
    assert max(est.critical_path_s, work_bound) <= times[2]


def test_estimate_reports_the_time_at_the_configured_limits(
    sample_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_ENGINE", "fal")
    monkeypatch.setenv("FAL_KEY", "estimate-key")
    monkeypatch.setenv("FARM_FAL_MAX_IN_FLIGHT", "3")
    monkeypatch.setenv("FARM_POST_CONCURRENCY", "2")
    result = CliRunner().invoke(app, ["estimate", str(sample_path), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["limits"] == {"cloud": 3, "post": 2} and doc["backend"] == "fal"
    assert doc["critical_path_s"] < doc["at_limits_s"] < doc["sequential_s"]
    assert "estimate-key" not in result.output
