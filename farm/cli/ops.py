"""Ops commands: `farm autoscale` (worker processes per queue sized by the backlog), `farm metrics` and
`farm flower`, so one image serves every role with the role picked by its command."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Annotated

import redis
import typer

from farm.cli.runtime import INPUT_ERROR, connect, console
from farm.config.settings import Settings, load_settings
from farm.ops.autoscaler import Autoscaler, Pool, policies
from farm.ops.metrics import metrics_credentials, serve_metrics
from farm.ops.supervisor import Farm, flower_command, flower_credentials, start_farm, stop_farm
from farm.ops.worker_pool import LocalWorkers
from farm.planning.routing import QUEUES
from farm.runs.scheduler import Scheduler
from tasks.reconcile import reconcile as run_reconcile


def local_autoscaler(farm: Farm, queues: tuple[str, ...]) -> tuple[Autoscaler, dict[str, LocalWorkers]]:
    """An autoscaler driving local worker processes of `queues` on a started farm, and the GPU pod pool
    (from the `gpu` backlog) when RunPod is configured."""
    workers = {q: LocalWorkers(farm, q) for q in queues}
    client = redis.Redis.from_url(farm.broker_url)
    pools: dict[str, Pool] = dict(workers)
    rules = policies(farm.settings, queues)
    sources = {}
    if "gpu" in queues and farm.settings.runpod_api_key is not None:
        from farm.ops.pod_scaling import POD_POOL, PodPoolScaling, pod_policy
        from workers.backends import BackendServices, build_gpu_pool

        gpu_pool, _, _ = build_gpu_pool(BackendServices(farm.settings, client))
        pools[POD_POOL], rules[POD_POOL], sources[POD_POOL] = (
            PodPoolScaling(gpu_pool),
            pod_policy(farm.settings),
            "gpu",
        )
    return Autoscaler(client, pools, rules, sources=sources), workers


def checked_queues(settings: Settings, queues: list[str] | None) -> tuple[str, ...]:
    chosen = tuple(queues or QUEUES)
    unknown = sorted(set(chosen) - set(QUEUES))
    problem = f"unknown queue(s) {', '.join(unknown)}; known: {', '.join(QUEUES)}" if unknown else ""
    if not problem:
        try:
            policies(settings, chosen)
        except ValueError as exc:
            problem = str(exc)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR)
    return chosen


def show_decisions_in_console() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("farm").setLevel(logging.INFO)


def autoscale(
    queue: Annotated[
        list[str] | None,
        typer.Option("--queue", "-q", help=f"Queues to scale [default: {', '.join(QUEUES)}]."),
    ] = None,
) -> None:
    """Run worker processes per queue, as many as each backlog asks for (FARM_AUTOSCALE_*); Ctrl-C stops
    them warmly. Uses the running farm's Redis (or starts one)."""
    settings = load_settings()
    queues = checked_queues(settings, queue)
    show_decisions_in_console()
    farm = start_farm(settings, queues=(), flower=False)
    scaler, pools = local_autoscaler(farm, queues)
    stop = {"now": False}
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    for name, policy in scaler.scalers.items():
        console.print(f"{name}: {policy.policy.min_workers}..{policy.policy.max_workers} workers")
    try:
        scaler.run(settings.autoscale_interval_s, lambda: stop["now"])
    finally:
        console.print("stopping: workers finish their current step first...")
        for pool in pools.values():
            pool.stop()
        stop_farm(farm)
        console.print("autoscaler stopped")


def metrics(
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: FARM_METRICS_HOST].")
    ] = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9108,
) -> None:
    """Serve the farm's Prometheus metrics at /metrics until Ctrl-C: backlog per queue, workers wanted and
    actual, step durations, retries and failures, paid calls and cost, pods and $/hour. Scrapes need basic
    auth (FARM_METRICS_USER / FARM_METRICS_PASSWORD; generated and printed once if unset)."""
    settings = load_settings()
    runs, _ = connect(settings)
    credentials = metrics_credentials(settings)
    server, thread = serve_metrics(
        runs.r, QUEUES, host or settings.metrics_host, port, credentials=credentials[:2]
    )
    url = f"http://{host or settings.metrics_host}:{server.server_port}/metrics"
    console.print(f"metrics at {url}  {metrics_login(settings, credentials)}  (Ctrl-C stops)")
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    server.server_close()
    thread.join()


def metrics_login(settings: Settings, credentials: tuple[str, str, bool]) -> str:
    """How to log in, for the console: the password itself only right after it was generated."""
    user, password, generated = credentials
    where = password if generated else f"see FARM_METRICS_PASSWORD or {settings.home}/metrics.json"
    return f"user {user}  password {where}"


def flower(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int | None, typer.Option(help="Port [default: FARM_FLOWER_PORT].")] = None,
) -> None:
    """Run Flower in the foreground with basic auth (FARM_FLOWER_USER / FARM_FLOWER_PASSWORD; generated and
    printed once if unset). The credentials reach Flower through its environment, never its command line."""
    settings = load_settings()
    user, password, generated = flower_credentials(settings)
    if generated:
        console.print(f"flower user {user} password {password} (kept in {settings.home}/flower.json)")
    command = flower_command(host, port or settings.flower_port)
    os.execve(command[0], command, {**os.environ, "FLOWER_BASIC_AUTH": f"{user}:{password}"})


def reconcile(
    grace: Annotated[
        float | None,
        typer.Option(
            "--grace-s",
            help="Send a step whose message is missing only if an earlier pass found it missing this long "
            "ago (default FARM_RECONCILE_EVERY_S; 0 sends it now).",
        ),
    ] = None,
) -> None:
    """One reconcile pass now: send what is left in outboxes and steps whose Celery message is lost, and put
    back the messages of steps a gone worker was running."""
    settings = load_settings()
    runs, sender = connect(settings)
    wait = settings.reconcile_every_s if grace is None else grace
    result = run_reconcile(runs, sender, Scheduler(runs.r), grace_s=wait, restore=sender.restore)
    console.print(
        f"sent {result.from_outbox} step(s) left in an outbox, {result.resent} whose message was lost; "
        f"{result.missing} without a message for less than {wait:g} s (sent by a later pass if still so)"
    )
    console.print(
        f"put back {result.restored} step(s) a gone worker was running; {result.orphaned} more found "
        "running on a gone worker (put back by a later pass if still so)"
    )


def register(app: typer.Typer) -> None:
    app.command()(autoscale)
    app.command()(reconcile)
    app.command()(metrics)
    app.command()(flower)
