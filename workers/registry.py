"""The backends, by name: a plain dict, as the routing table and settings refer to them."""

from __future__ import annotations

from collections.abc import Callable

from farm.settings import Settings
from workers.base import Engine
from workers.local import LocalEngine

ENGINES: dict[str, Callable[[Settings], Engine]] = {
    "local": lambda settings: LocalEngine(),
}


def make_engine(name: str, settings: Settings) -> Engine:
    try:
        return ENGINES[name](settings)
    except KeyError:
        raise ValueError(f"unknown engine backend {name!r}; known: {', '.join(ENGINES)}") from None
