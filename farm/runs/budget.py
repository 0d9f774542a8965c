"""A run's budget: what each step is expected to cost where it runs, and the run's ledger of money.

The scheduler admits a paid step only if the run's spent money, the estimates of its paid steps in flight and
the step's own estimate stay within the run's budget (`farm submit --budget`, `FARM_DEFAULT_BUDGET_USD`).
A step that does not fit waits in its queue's budget-held set (`farm.runs.keys.held`) with its rank,
and the run is paused; raising the budget (`farm budget RUN USD`) puts it back and admits it. A step that
costs nothing is never held: it cannot spend money.

Amounts in Redis are integers of micro-dollars, so the Lua admission adds them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from farm.config.redis_text import as_text, as_texts
from farm.planning.figures import usd
from farm.planning.plan import Step
from farm.runs import keys
from farm.runs.keys import StepStatus
from farm.runs.scheduler import Scheduler
from farm.runs.state import RunStore

MICROS = Decimal(1_000_000)
BUDGET_FIELD = "budget_uusd"
SPENT_FIELD = "spent_uusd"
NEED_FIELD = "budget_need_uusd"
"""What the last step held for want of budget needed the run to be allowed (spent + in flight + its own)."""
HELD_AT_FIELD = "budget_held_at"
GPU_RATE_FIELD = "gpu_usd_per_job_hr"
IN_FLIGHT = (StepStatus.QUEUED, StepStatus.RUNNING)
"""States whose reservation still counts against the budget (the admission script agrees)."""


def to_micros(usd: Decimal | float | str) -> int:
    """Whole micro-dollars, rounded up: an estimate never comes out cheaper than the price."""
    return int((Decimal(str(usd)) * MICROS).to_integral_value(rounding=ROUND_CEILING))


def from_micros(value: int | float | str | bytes) -> Decimal:
    return Decimal(int(float(as_text(value)))) / MICROS


def parse_budget(text: str) -> Decimal | None:
    """A budget as typed on the command line: dollars (`12.50`), or `none` for no limit."""
    if text.strip().lower() in ("none", "unlimited"):
        return None
    try:
        usd = Decimal(text.strip().lstrip("$"))
    except ArithmeticError as exc:
        raise ValueError(f"a budget is an amount in USD (e.g. 12.50) or 'none', not {text!r}") from exc
    if not usd.is_finite() or usd < 0:
        raise ValueError(f"a budget is zero or more USD, not {text!r}")
    return usd


@dataclass(frozen=True)
class Pricing:
    """What the estimate of a step depends on besides the step: the price of GPU time."""

    gpu_usd_per_job_hr: Decimal = Decimal(0)
    """A pod's $/hour divided by the jobs it runs at once: what one GPU step pays per hour of running."""

    def meta(self) -> dict[str, str]:
        return {GPU_RATE_FIELD: str(self.gpu_usd_per_job_hr)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, str]) -> Pricing:
        return cls(Decimal(meta.get(GPU_RATE_FIELD) or 0))

    @classmethod
    def for_pods(cls, usd_per_hr: float, jobs_per_pod: int) -> Pricing:
        return cls(Decimal(str(usd_per_hr)) / max(1, jobs_per_pod))


def step_estimate_usd(step: Step, queue: str, pricing: Pricing) -> Decimal:
    """What the step is expected to cost on `queue`: fal's price on the cloud queue, its typical latency of
    pod time on the GPU queue (the pod bills by the second), nothing on the farm's own CPUs."""
    if queue == "cloud":
        return step.cost_usd
    if queue == "gpu" and step.cost_usd > 0:
        return Decimal(str(step.latency_s)) * pricing.gpu_usd_per_job_hr / 3600
    return Decimal(0)


@dataclass(frozen=True)
class RunLedger:
    """A run's money as the scheduler sees it."""

    budget_usd: Decimal | None
    spent_usd: Decimal
    in_flight_usd: Decimal
    """Estimates of the paid steps admitted and not yet ended."""
    held: int
    """Steps waiting for more budget."""
    needed_usd: Decimal | None
    """What the run's budget must be for the last held step to be admitted."""

    @property
    def paused(self) -> bool:
        return self.held > 0

    @property
    def left_usd(self) -> Decimal | None:
        if self.budget_usd is None:
            return None
        return self.budget_usd - self.spent_usd - self.in_flight_usd

    def describe(self, run_id: str) -> str:
        """One line for `farm status`: the budget, and when paused why and how to go on."""
        spent = f"spent {usd(self.spent_usd)}, in flight {usd(self.in_flight_usd)}"
        if self.budget_usd is None:
            return f"Budget: none ({spent})"
        line = f"Budget: {usd(self.budget_usd)} ({spent})"
        if self.paused:
            need = f" needs at least {usd(self.needed_usd)}" if self.needed_usd is not None else ""
            line += (
                f"; paused: {self.held} step(s) wait for more budget, the next{need}. "
                f"Raise it with `farm budget {run_id} USD`"
            )
        return line


def read_ledger(runs: RunStore, run_id: str, states: Mapping[str, str] | None = None) -> RunLedger:
    """The run's budget, spent money, estimates in flight and held steps, as admission counts them.
    `states`: the run's step states when the caller has just read them."""
    pipe = runs.r.pipeline(transaction=False)
    pipe.hmget(keys.run(run_id), [BUDGET_FIELD, SPENT_FIELD, NEED_FIELD])
    pipe.hgetall(keys.reserved(run_id))
    (limit, spent, need), reserved = pipe.execute()
    live = runs.states(run_id) if states is None else states
    in_flight = sum(
        (from_micros(v) for k, v in as_texts(reserved).items() if live.get(k) in IN_FLIGHT),
        Decimal(0),
    )
    held = sum(len(steps) for steps in Scheduler(runs.r).held_of(run_id).values())
    return RunLedger(
        budget_usd=from_micros(limit) if limit is not None else None,
        spent_usd=from_micros(spent) if spent is not None else Decimal(0),
        in_flight_usd=in_flight,
        held=held,
        needed_usd=from_micros(need) if need is not None and held else None,
    )
