"""The farm's Lua scripts (`farm/runs/lua/*.lua`, each documenting its KEYS, ARGV and reply), and running
them inside pipelines in one round trip.

redis-py asks the server `SCRIPT EXISTS` before every pipeline that carries a `Script`: one more round trip
on each dependency hop. Here a script goes by its SHA; when the server has forgotten it (Redis restarted,
SCRIPT FLUSH), the scripts are loaded and the whole pipeline runs again. That is only right when running
its other commands twice changes nothing (writes of the same values, reads), which callers promise.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

Build = Callable[[Any], None]
"""Queues commands on the pipeline it is given."""


def load(client: redis.Redis, *names: str) -> Script:
    """Register the scripts `lua/<name>.lua` joined in order, as one: a shared function (`finish`) goes
    first, then the script that calls it."""
    return client.register_script("".join(_lua(name) for name in names))


@cache
def _lua(name: str) -> str:
    """A script file's text, read once per process: schedulers are built on many calls (budget reads, CLI)."""
    return (importlib.resources.files("farm.runs") / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def call(pipe: Any, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> None:
    """Queue `script` by SHA (not `script(client=pipe)`, which costs the SCRIPT EXISTS round trip)."""
    pipe.evalsha(script.sha, len(keys), *keys, *args)


def run(client: redis.Redis, build: Build, scripts: Sequence[Script]) -> list[Any]:
    """Execute what `build` queues; replies in order. Errors other than a missing script are raised."""
    replies = _execute(client, build)
    if any(isinstance(r, NoScriptError) for r in replies):
        for script in scripts:
            script.sha = client.script_load(script.script)
        replies = _execute(client, build)
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _execute(client: redis.Redis, build: Build) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    build(pipe)
    return list(pipe.execute(raise_on_error=False))
