"""Run budgets against a real redis-server: the Lua admission, the ledger, pause and resume.

No workers: a recording sender stands in for Celery, and steps are begun and completed through the same
RunStore transitions a worker uses, so what is tested is exactly the admission and bookkeeping.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import redis

from farm.episode.validate import load_episode
from farm.planning.plan import Plan, Step, build_plan
from farm.planning.routing import step_queue
from farm.runs import budget, dispatch, keys
from farm.runs.budget import Pricing, read_ledger, step_estimate_usd
from farm.runs.scheduler import Scheduler
from farm.runs.state import RunStore
from tasks.reconcile import reconcile


class Recorder:
    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, run_id: str, step: Step, queue: str) -> None:
        self.sent.append(step.id)

    def revoke(self, run_id: str, step_ids: list[str]) -> None:
        self.revoked = step_ids


@pytest.fixture
def plan(sample_path: Path) -> Plan:
    return build_plan(load_episode(sample_path))


def submit(
    client: redis.Redis, plan: Plan, budget_usd: Decimal | None, backend: str = "fal"
) -> tuple[str, Recorder]:
    recorder = Recorder()
    run_id = dispatch.submit(
        RunStore(client),
        recorder,
        plan,
        backend=backend,
        namespace="ns",
        output=Path("out"),
        storyboard="sb.json",
        budget_usd=budget_usd,
        pricing=Pricing.for_pods(1.19, 1),
    )
    return run_id, recorder


def paid_roots(plan: Plan) -> list[Step]:
    return [s for s in plan.steps if not s.inputs and s.cost_usd > 0]


def cost_of(plan: Plan, step_ids: list[str]) -> Decimal:
    by_id = {s.id: s for s in plan.steps}
    return sum((by_id[s].cost_usd for s in step_ids), Decimal(0))


def run_step(client: redis.Redis, sender: Recorder, run_id: str, step_id: str, cost: Decimal) -> list[str]:
    """What a worker does with a step: begin, complete with what the provider charged, release."""
    runs = RunStore(client)
    assert runs.begin(run_id, step_id) >= 1
    done = runs.complete(run_id, step_id, cost_uusd=budget.to_micros(cost))
    before = len(sender.sent)
    dispatch.step_ended(
        runs, sender, run_id, step_id, done.released, scheduler=Scheduler(client), reads=done.reads
    )
    return sender.sent[before:]


def test_a_budget_admits_paid_steps_only_while_they_fit_and_pauses_the_run(
    client: redis.Redis, plan: Plan
) -> None:
    roots = paid_roots(plan)
    assert len(roots) >= 3, "the sample starts with several paid keyframes"
    limit = cost_of(plan, [s.id for s in roots[:2]]) + roots[0].cost_usd / 2  # two fit, a third does not
    run_id, sender = submit(client, plan, limit)

    sent_paid = [s for s in sender.sent if s in {r.id for r in roots}]
    ledger = read_ledger(RunStore(client), run_id)
    assert cost_of(plan, sent_paid) <= limit, "what is admitted fits the budget"
    assert ledger.in_flight_usd == cost_of(plan, sent_paid), "admitted paid steps are reserved at estimate"
    assert ledger.held == len(roots) - len(sent_paid) > 0
    assert ledger.paused and ledger.needed_usd is not None and ledger.needed_usd > limit
    assert "paused" in ledger.describe(run_id) and f"farm budget {run_id} USD" in ledger.describe(run_id)
    held = Scheduler(client).held_of(run_id)
    assert sorted(s for steps in held.values() for s in steps) == sorted(
        r.id for r in roots if r.id not in sent_paid
    )


def at_one_price(plan: Plan, price: Decimal) -> Plan:
    """The plan with every paid step at one price, so how many fit a budget is plain arithmetic."""
    steps = tuple(s.model_copy(update={"cost_usd": price}) if s.cost_usd > 0 else s for s in plan.steps)
    return plan.model_copy(update={"steps": steps})


def test_a_step_ending_at_its_estimate_keeps_the_run_paused_and_a_cheaper_one_frees_room(
    client: redis.Redis, plan: Plan
) -> None:
    price = Decimal("0.01")
    plan = at_one_price(plan, price)
    run_id, sender = submit(client, plan, price * 2)  # two at a time
    first, second = sender.sent[:2]
    assert len(sender.sent) == 2 and {first, second} <= {r.id for r in paid_roots(plan)}
    held_before = read_ledger(RunStore(client), run_id).held

    run_step(client, sender, run_id, first, price)  # spent + in flight is still the whole budget
    ledger = read_ledger(RunStore(client), run_id)
    assert ledger.spent_usd == price and ledger.in_flight_usd == price
    assert ledger.held == held_before, "nothing fits: spent $p + in flight $p + next $p > $2p"

    newly = run_step(client, sender, run_id, second, Decimal(0))  # it cost nothing (say, a refund)
    ledger = read_ledger(RunStore(client), run_id)
    paid = {s.id for s in plan.steps if s.cost_usd > 0}
    assert len([s for s in newly if s in paid]) == 1, "the freed estimate let one held paid step in"
    assert ledger.paused, "the rest still waits"
    assert ledger.spent_usd + ledger.in_flight_usd == price * 2


def test_raising_the_budget_resumes_a_paused_run_in_rank_order(client: redis.Redis, plan: Plan) -> None:
    plan = at_one_price(plan, Decimal("0.01"))
    roots = paid_roots(plan)
    run_id, sender = submit(client, plan, Decimal(0))
    assert not [s for s in sender.sent if s in {r.id for r in roots}], "a zero budget admits no paid step"
    assert read_ledger(RunStore(client), run_id).held == len(roots)

    admitted = dispatch.set_budget(RunStore(client), sender, run_id, Decimal("0.01"))
    assert len(admitted) == 1, "exactly one more fits"
    remaining = RunStore(client).remaining(run_id, [r.id for r in roots])
    assert remaining[admitted[0].step_id] == max(remaining.values()), "the longest path ahead goes first"

    dispatch.set_budget(RunStore(client), sender, run_id, None)  # no limit any more
    ledger = read_ledger(RunStore(client), run_id)
    assert ledger.held == 0 and not ledger.paused and ledger.budget_usd is None
    assert set(r.id for r in roots) <= set(sender.sent), "every keyframe is sent once the limit is gone"
    assert len(sender.sent) == len(set(sender.sent)), "and none twice"
    assert not client.hget(keys.run(run_id), budget.HELD_AT_FIELD), "the run is no longer marked paused"


def test_a_step_that_costs_nothing_is_never_held(client: redis.Redis, plan: Plan) -> None:
    run_id, sender = submit(client, plan, Decimal(0), backend="local")
    assert sorted(sender.sent) == sorted(s.id for s in plan.steps if not s.inputs), (
        "the embedded engine is free"
    )
    ledger = read_ledger(RunStore(client), run_id)
    assert ledger.held == 0 and ledger.in_flight_usd == 0


def test_a_whole_run_never_commits_more_than_its_budget(client: redis.Redis, plan: Plan) -> None:
    """Every step is run as soon as it is sent, at its estimate; at every moment spent + in flight stays
    within the budget, and the run stops exactly where the next paid step would not fit."""
    total = sum((s.cost_usd for s in plan.steps), Decimal(0))
    limit = (total / 2).quantize(Decimal("0.01"))
    run_id, sender = submit(client, plan, limit)
    steps = {s.id: s for s in plan.steps}
    runs = RunStore(client)
    done: list[str] = []
    while pending := [s for s in sender.sent if s not in done]:
        for step_id in pending:
            run_step(client, sender, run_id, step_id, steps[step_id].cost_usd)
            done.append(step_id)
            ledger = read_ledger(runs, run_id)
            assert ledger.spent_usd + ledger.in_flight_usd <= limit
    ledger = read_ledger(runs, run_id)
    assert ledger.paused and ledger.in_flight_usd == 0
    assert ledger.spent_usd == cost_of(plan, done) <= limit
    assert ledger.needed_usd is not None and ledger.needed_usd > limit, "the next paid step did not fit"
    assert runs.meta(run_id)["status"] == "running", "paused, not failed: it waits for more budget"

    dispatch.set_budget(runs, sender, run_id, total)
    while pending := [s for s in sender.sent if s not in done]:
        for step_id in pending:
            run_step(client, sender, run_id, step_id, steps[step_id].cost_usd)
            done.append(step_id)
    assert runs.meta(run_id)["status"] == "succeeded"
    assert read_ledger(runs, run_id).spent_usd == total, "spent equals the estimate when prices hold"


def test_held_steps_are_not_lost_messages_and_a_cancel_forgets_them(client: redis.Redis, plan: Plan) -> None:
    run_id, sender = submit(client, plan, Decimal(0))
    runs, sched = RunStore(client), Scheduler(client)
    before = list(sender.sent)
    for now in (1000.0, 2000.0):
        reconcile(runs, sender, sched, grace_s=30.0, now=now)
    held = read_ledger(runs, run_id).held
    assert held > 0 and not [
        s for s in sender.sent[len(before) :] if s in {r.id for r in paid_roots(plan)}
    ], "the reconciler does not send a step that waits for budget"
    dispatch.cancel(runs, sender, run_id)
    assert read_ledger(runs, run_id).held == 0
    assert runs.meta(run_id)["status"] == "cancelled"


def test_a_gpu_step_is_estimated_at_its_share_of_pod_time(plan: Plan) -> None:
    paid = next(s for s in plan.steps if s.cost_usd > 0)
    pricing = Pricing.for_pods(1.19, 2)
    assert step_queue(paid.kind, "comfyui") == "gpu"
    expected = Decimal(str(paid.latency_s)) * Decimal("1.19") / 2 / 3600
    assert step_estimate_usd(paid, "gpu", pricing) == expected
    assert step_estimate_usd(paid, "cloud", pricing) == paid.cost_usd
    assert step_estimate_usd(paid, "post", pricing) == 0


@pytest.mark.parametrize(
    ("text", "expected"), [("12.50", Decimal("12.50")), ("$3", Decimal(3)), ("none", None), ("0", Decimal(0))]
)
def test_budgets_parse_as_typed(text: str, expected: Decimal | None) -> None:
    assert budget.parse_budget(text) == expected


@pytest.mark.parametrize("text", ["-1", "lots", "nan", "inf"])
def test_a_bad_budget_is_refused_with_the_reason(text: str) -> None:
    with pytest.raises(ValueError, match="budget"):
        budget.parse_budget(text)
