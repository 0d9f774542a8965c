"""`make bench`: run the benchmarks in one go and write docs/benchmarks.md (machine, date, figures)."""

from __future__ import annotations

import datetime
import os
import platform
import time
from pathlib import Path

from tests.benchmarks import fal_caps, hop_overhead, makespan, season
from tests.benchmarks.cloud_capacity import CapacityResult, measure
from tests.benchmarks.farm_runs import CLOUD_CONCURRENCY, POLL_INTERVAL_S, POST_CONCURRENCY, UNCAPPED

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def machine() -> str:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory_gb:.0f} GiB, Python {python}"


def _s(seconds: float) -> str:
    return f"{seconds:.2f} s"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def _meets(ratio: float, target: float) -> str:
    return "yes" if 0 < ratio <= target else "no"


def capacity_section(capacity: CapacityResult) -> str:
    return f"""## One cloud worker process: requests in flight and memory

{capacity.requests} independent text-to-image steps, all ready at once, run by one cloud worker (Celery
threads pool, concurrency {capacity.concurrency}) against the fal emulator with every request held open
about 8 s. Sampled at the emulator: requests accepted and not yet collected.

| figure | value |
|---|---|
| peak requests in flight | {capacity.peak_in_flight} |
| target | 100 |
| ratio to target | {capacity.peak_in_flight / 100:.2f}x |
| worker resident memory, idle | {capacity.idle_rss_mb:.0f} MiB |
| worker resident memory at peak | {capacity.peak_rss_mb:.0f} MiB |
| extra memory per request in flight | {capacity.rss_per_request_kb:.0f} KiB |

Threads were chosen over gevent or asyncio because fal-client's sync client, boto3 and the step executor
are blocking code; a waiting thread costs a stack and a socket, which the per-request figure above shows.
"""


SETUP = f"""The scheduling runs below share one set-up. The episode is generated in code
(`tests/benchmarks/episodes.py`): 31 shots, 25 standard first-last-frame, 5 triptychs and 1 held insert,
with continuity links from each triptych into the next shot and one four-shot chain. Each run gets a
fresh farm (its own FARM_HOME and redis-server, so nothing is reused: every step renders), one cloud
worker (threads, concurrency {CLOUD_CONCURRENCY}), one post worker (prefork, concurrency {POST_CONCURRENCY})
and a fresh fal emulator whose latencies are the engine cards' typical ones times the scale given, polled
every {POLL_INTERVAL_S:g} s. The emulator copies stored stand-in images and clips of the requested size
instead of drawing and encoding them here: real fal renders on its own GPUs, and encoding 35 clips on this
machine's cores would swamp what is being measured. Every bound is computed from the same run's measured
step durations (`finished_at - started_at`), so it moves with the machine. A step's duration includes up to
one poll interval after fal finished; since the bound is made of the same durations, that rounding is not
counted against the scheduler. Scaled latencies make the polling about twenty times denser relative to the
work than in production (0.5 s polls against latencies of seconds to minutes), so the cloud worker's own CPU
weighs more here than it would on a real farm: its last column shows how busy that process was.
"""


def makespan_section(result: makespan.MakespanResult) -> str:
    return f"""## Scheduling: one episode with no cap

The episode at latency scale {result.latency_scale:g}, with fal's in-flight cap at {UNCAPPED} (never reached).
Makespan runs from the run's creation to its last step's finish. The lower bound is the longest path
through the plan's DAG weighted by measured durations: no number of workers finishes sooner. The ratio is
what hand-overs and queueing cost; the gap is a step's start minus its last input's finish. The last row
is the cloud worker process's CPU time over the makespan: one Python process runs its Python code on one
core at a time, so near 1 the released steps are waiting for that process rather than for fal.

| figure | value |
|---|---|
| run | {result.status}: {result.finished} of {result.steps} steps finished, {result.cached} cached, \
{result.retries} retried |
| makespan | {_s(result.makespan_s)} |
| critical-path bound (measured durations) | {_s(result.critical_path_s)} |
| makespan / bound | {_x(result.ratio_to_bound)} |
| target | at most {_x(makespan.TARGET)} ({_meets(result.ratio_to_bound, makespan.TARGET)}) |
| sequential (sum of durations) | {_s(result.sequential_s)} |
| sequential / makespan | {_x(result.speedup)} |
| gap from last input to start, median / max | {_s(result.median_gap_s)} / {_s(result.max_gap_s)} |
| cloud worker CPU, cores busy on average | {result.cloud_worker_cores:.2f} of {os.cpu_count()} |
"""


def caps_section(result: fal_caps.CapsResult) -> str:
    rows = "\n".join(
        f"| {r.order} | {r.cap} | {_s(r.makespan_s)} | {_s(r.critical_path_s)} | {_s(r.fal_work_s / r.cap)} "
        f"| {_s(r.bound_s)} | {_x(r.ratio_to_bound)} | "
        + (
            f"{_x(fal_caps.TARGET)} ({_meets(r.ratio_to_bound, fal_caps.TARGET)})"
            if r.order == "critical_path"
            else "-"
        )
        + f" | {r.cap_waits} | {r.cloud_worker_cores:.2f} | {r.status}, {r.finished}/{r.steps} |"
        for r in result.runs
    )
    return f"""## Scheduling under fal in-flight caps

The same episode at latency scale {result.latency_scale:g}, once per cap (FARM_FAL_MAX_IN_FLIGHT) and
admission order (FARM_SCHEDULE_ORDER: `critical_path`, longest remaining path first, or `fifo`, release
order). The bound is the larger of the critical path and the fal work (summed durations of the steps on
the cloud queue) divided by the cap. Cap waits count attempts that found the cap full and were sent again
later; cloud worker cores is the worker process's CPU time over the makespan.

| order | cap | makespan | critical path | fal work / cap | bound | makespan / bound | target | cap waits \
| cloud worker cores | run |
|---|---|---|---|---|---|---|---|---|---|---|
{rows}
"""


def hop_section(result: hop_overhead.HopResult) -> str:
    return f"""## Per-step overhead: a dependency hop on the farm and in bare Celery

On the farm, a chain of held shots, each opening on the previous shot's first frame, runs on the embedded
engine, so image, upscale, image, ... is one dependency chain in the post pool ({result.pool}, concurrency
{result.concurrency}). The holds and the final concat are taken out of the plan, so nothing runs beside
the chain (their encodes would take the CPU from it on this box; bare Celery's chain has nothing beside it
either). A hop is the consumer's start minus its producer's finish: mark done, release, admit, send, pick
up, claim. Bare Celery: a worker with the same pool, concurrency and flags on the same Redis runs a canvas
chain of no-op tasks; its gap is one task's end to the next one's start. After a warm-up of each, farm and
bare chains alternate {result.rounds} times ({result.farm_hops} farm hops, {result.bare_tasks} bare gaps),
so a change in the machine's load falls on both; the ratio is of the medians.

| figure | value |
|---|---|
| farm, per hop: median / mean | {_ms(result.farm_hop_median_s)} / {_ms(result.farm_hop_s)} |
| bare Celery, gap: median / mean | {_ms(result.bare_gap_median_s)} / {_ms(result.bare_gap_s)} |
| bare Celery, per task (chain's total time / its length) | {_ms(result.bare_per_task_s)} |
| farm / bare, medians (means) | {_x(result.ratio)} ({_x(result.ratio_of_means)}) |
| target | under {_x(hop_overhead.TARGET)} ({_meets(result.ratio, hop_overhead.TARGET)}) |
| farm runs | {result.farm_status} |
"""


def season_section(result: season.SeasonResult) -> str:
    return f"""## Planning and enqueueing a season

{result.episodes} generated storyboards of {result.shots_per_episode} shots (episode numbers vary seeds
and prompts), each validated, planned and submitted with `dispatch.submit` and the Celery sender to a real
redis-server with no workers, in a child process. Memory is the child's peak resident set (VmHWM,
interpreter and imports included; ru_maxrss would add this process's size, inherited over the fork), next
to its resident set once the imports were done.

| figure | value |
|---|---|
| steps planned | {result.steps} |
| wall time, all episodes | {_s(result.wall_s)} |
| per episode | {result.per_episode_ms:.0f} ms |
| of which validate / plan / submit | {_s(result.validate_s)} / {_s(result.plan_s)} / {_s(result.submit_s)} |
| peak resident memory (VmHWM) | {result.peak_rss_mb:.0f} MiB |
| resident memory after imports | {result.baseline_rss_mb:.0f} MiB |
| Redis memory in use afterwards | {result.redis_used_mb:.1f} MiB |
| Celery messages waiting (root steps) | {result.messages_queued} |
"""


def main() -> None:
    started = time.monotonic()
    capacity = measure(requests=150, concurrency=160)
    print(capacity)
    uncapped = makespan.measure()
    print(uncapped)
    capped = fal_caps.measure()
    print(capped)
    hops = hop_overhead.measure()
    print(hops)
    planning = season.measure()
    print(planning)
    minutes = (time.monotonic() - started) / 60
    today = datetime.date.today().isoformat()
    text = f"""# Benchmarks

Written by `make bench` on {today} ({machine()}) in {minutes:.1f} minutes. Benchmarks report; they never
fail CI. A smoke variant of each runs in the test suite so the code cannot rot. Figures come from one run
on a shared machine: compare ratios, not absolute seconds.

{capacity_section(capacity)}
{SETUP}
{makespan_section(uncapped)}
{caps_section(capped)}
{hop_section(hops)}
{season_section(planning)}"""
    DOC.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
