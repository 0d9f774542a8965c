"""`make bench`: run the benchmarks in one go and write docs/benchmarks.md (machine, date, figures)."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

from tests.benchmarks.cloud_capacity import measure

DOC = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def machine() -> str:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    python = platform.python_version()
    return f"{platform.machine()}, {os.cpu_count()} cores, {memory_gb:.0f} GiB, Python {python}"


def main() -> None:
    capacity = measure(requests=150, concurrency=160)
    today = datetime.date.today().isoformat()
    text = f"""# Benchmarks

Written by `make bench` on {today} ({machine()}). Benchmarks report; they never fail CI. A smoke variant
of each runs in the test suite so the code cannot rot. Figures come from one run on a shared machine:
compare ratios, not absolute seconds.

## One cloud worker process: requests in flight and memory

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
    DOC.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
