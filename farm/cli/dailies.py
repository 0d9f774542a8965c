"""`farm dailies RUN [--serve]`: the run's contact sheet, written beside its deliverables or served live."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from farm.cli.runtime import FAILED, INPUT_ERROR, RunArg, connect, require_run
from farm.config.settings import load_settings
from farm.dailies.page import write_page
from farm.dailies.server import DailiesServer, NotLoopback
from farm.dailies.sheet import gather

DEFAULT_HOST = "127.0.0.1"


def dailies(
    run_id: RunArg,
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the page live: its keys approve, retake and flag shots.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for --serve; 0 picks a free one.")] = 0,
    host: Annotated[str, typer.Option(help="Loopback address for --serve.")] = DEFAULT_HOST,
) -> None:
    """One card per shot: keyframes, clip, prompts, seeds, engines, cost, review state and earlier takes."""
    runs, sender = connect(load_settings())
    require_run(runs, run_id)
    if not serve:
        print(write_page(gather(runs, run_id)))
        return
    try:
        server = DailiesServer(runs, sender, run_id, host, port)
    except NotLoopback as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(INPUT_ERROR) from None
    except OSError as exc:
        print(f"cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        raise typer.Exit(FAILED) from None
    print(f"dailies of {run_id}: {server.login_url}  (Ctrl-C stops)", flush=True)
    server.serve_until_interrupted()
    print("stopped")


def register(app: typer.Typer) -> None:
    app.command()(dailies)
