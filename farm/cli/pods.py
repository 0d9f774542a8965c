"""`farm pods ...`: the GPU pool for ops. Expected failures print a clear line and exit non-zero."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import redis
import typer
from rich.console import Console
from rich.table import Table

from farm.config.settings import load_settings
from farm.ops.redis_server import is_up
from farm.planning.figures import duration

pods_app = typer.Typer(no_args_is_help=True, help="Ops for the GPU pool's RunPod pods.")
console = Console(highlight=False, width=None if sys.stdout.isatty() else 140)
PodArg = Annotated[str, typer.Argument(help="Pod id (see `farm pods list`).", show_default=False)]


@contextmanager
def _pool() -> Iterator[tuple[Any, Any, Any]]:
    """The pool from settings; errors become one clear line and exit 1."""
    from tasks.app import broker_url
    from workers.backends import BackendServices, build_gpu_pool
    from workers.base import BackendError

    settings = load_settings()
    url = broker_url(settings)
    if not is_up(url):
        _fail("no farm Redis answers: start one with `farm up` (or set FARM_REDIS_URL)")
    try:
        yield build_gpu_pool(BackendServices(settings, redis.Redis.from_url(url)))
    except (BackendError, ValueError) as exc:
        _fail(str(exc))


class PodReaper:
    """Run by `farm up` while a GPU pool is configured: stop idle and orphaned pods every minute."""

    def __init__(self, settings: Any, broker: str, every_s: float = 60.0) -> None:
        self.settings, self.broker, self.every_s = settings, broker, every_s
        self.next_at = time.monotonic() + every_s

    def maybe_reap(self) -> None:
        if time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.every_s
        from workers.backends import BackendServices, build_gpu_pool
        from workers.base import BackendError

        try:
            pool, _, _ = build_gpu_pool(BackendServices(self.settings, redis.Redis.from_url(self.broker)))
            report = pool.reap()
        except (BackendError, ValueError, redis.RedisError) as exc:
            console.print(f"[yellow]pod reaper[/]: {exc}")
            return
        for pod_id in report.stopped_idle + report.stopped_orphans:
            console.print(f"pod reaper: stopped {pod_id}")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(1)


def _shell(pool: Any, registry: Any, comfy: Any, pod_id: str) -> Any:
    from workers.gpu.pod_ledger import LedgerKnownHosts
    from workers.gpu.ssh import PodShell

    endpoint = pool.pods.get(pod_id).ssh
    if endpoint is None:
        _fail(f"pod {pod_id} exposes no SSH endpoint (is it running?)")
    return PodShell(pod_id, endpoint, comfy.key_path, LedgerKnownHosts(registry))


@pods_app.command("list")
def list_pods() -> None:
    """Every pod: state, GPU, $/h, uptime, busy and idle time, lease holders, current SSH endpoint."""
    with _pool() as (pool, registry, _):
        live = {p.id: p for p in pool.pods.list(pool.limits.name_prefix)}
        table = Table(box=None)
        for column in ("id", "state", "runpod", "gpu", "$/h", "uptime", "busy", "idle", "lease", "ssh"):
            table.add_column(column)
        records = registry.pods()
        for record in records:
            info = live.get(record.id)
            table.add_row(
                record.id,
                record.state,
                info.status if info else "gone",
                record.gpu,
                f"{record.cost_per_hr:.2f}",
                duration(info.uptime_s) if info else "-",
                duration(record.busy_s),
                duration(record.idle_s) if record.idle_s else "-",
                record.lease_holder or "-",
                str(info.ssh) if info and info.ssh else "-",
            )
        console.print(table)
        idle = [r for r in records if r.state == "running" and r.idle_s]
        idle_usd = sum(r.idle_s * r.cost_per_hr / 3600 for r in idle)
        console.print(
            f"{len(live)} pod(s) at RunPod, ${registry.hourly_cost():.2f}/h for the running ones; "
            f"{len(idle)} running idle, ${idle_usd:.2f} spent idle since their last job"
        )


def _act(verb: str, action: Callable[[Any, str], None], pod_id: str) -> None:
    with _pool() as (pool, _, _):
        action(pool, pod_id)
        print(f"{pod_id}: {verb}")


@pods_app.command()
def up() -> None:
    """Start one more pod now (within the pod and $/hour caps)."""
    with _pool() as (pool, _, _):
        print(f"{pool.start_new()}: running")


@pods_app.command()
def stop(pod_id: PodArg) -> None:
    """Stop a pod (its network volume stays; the container disk does not)."""
    _act("stopped", lambda pool, pid: pool.stop(pid), pod_id)


@pods_app.command()
def resume(pod_id: PodArg) -> None:
    """Resume a stopped pod; its SSH port changes, so it is read again."""

    def do(pool: Any, pid: str) -> None:
        pool.resume(pid)
        pool.pods.wait_for_ssh(pid, pool.limits.ssh_wait_s, pool.limits.ssh_poll_s)
        pool.registry.set(pid, state="running", started_at=time.time())

    _act("running", do, pod_id)


@pods_app.command()
def terminate(pod_id: PodArg) -> None:
    """Terminate a pod for good."""
    _act("terminated", lambda pool, pid: pool.terminate(pid), pod_id)


@pods_app.command()
def reap() -> None:
    """Stop idle pods and orphans now; forget pods RunPod no longer has."""
    with _pool() as (pool, _, _):
        report = pool.reap()
        print(f"stopped idle: {', '.join(report.stopped_idle) or 'none'}")
        print(f"stopped orphans: {', '.join(report.stopped_orphans) or 'none'}")
        print(f"forgotten: {', '.join(report.forgotten) or 'none'}")


@pods_app.command()
def ssh(pod_id: PodArg) -> None:
    """Open an interactive ssh session to a pod (direct TCP, the farm's key), or print the command."""
    with _pool() as (pool, _, comfy):
        endpoint = pool.pods.get(pod_id).ssh
        if endpoint is None:
            _fail(f"pod {pod_id} exposes no SSH endpoint (is it running?)")
        argv = [
            "ssh",
            "-i",
            str(comfy.key_path),
            "-p",
            str(endpoint.port),
            f"{endpoint.user}@{endpoint.host}",
        ]
        if sys.stdin.isatty() and shutil.which("ssh"):
            os.execvp("ssh", argv)  # interactive: hand the terminal over
        print(" ".join(argv))


@pods_app.command("exec")
def exec_command(
    pod_id: PodArg, command: Annotated[list[str], typer.Argument(help="Command and arguments.")]
) -> None:
    """Run one command on a pod (arguments are quoted; no shell interpolation)."""
    with _pool() as (pool, registry, comfy), _shell(pool, registry, comfy, pod_id) as shell:
        result = shell.run(command, check=False)
        sys.stdout.write(result.stdout)
        sys.stderr.write(result.stderr)
        raise typer.Exit(result.exit_code)


@pods_app.command()
def logs(pod_id: PodArg, lines: Annotated[int, typer.Option(help="How many lines.")] = 50) -> None:
    """The tail of ComfyUI's log on a pod."""
    with _pool() as (pool, registry, comfy), _shell(pool, registry, comfy, pod_id) as shell:
        result = shell.run(["tail", "-n", str(lines), f"{comfy.comfy_dir}/comfyui.log"], check=False)
        sys.stdout.write(result.stdout or result.stderr)


@pods_app.command()
def health(pod_id: PodArg) -> None:
    """Is ComfyUI alive on the pod (its recorded PID) and answering through the tunnel?"""
    from workers.comfyui.on_pod import ComfyOnPod

    with _pool() as (pool, registry, comfy), _shell(pool, registry, comfy, pod_id) as shell:
        record = registry.get(pod_id)
        pid = record.comfy_pid if record else None
        on_pod = ComfyOnPod(registry, comfy, tick=lambda: None)
        alive = pid is not None and on_pod.alive(shell, pid)
        answering = on_pod.healthy(shell)
        print(
            f"{pod_id}: comfyui pid {pid or '-'} {'alive' if alive else 'not running'}; "
            f"http {'ok' if answering else 'not answering'}"
        )
        if not (alive and answering):
            raise typer.Exit(1)
