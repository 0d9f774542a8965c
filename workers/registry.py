"""The backends, by name: a plain dict, as the routing table and settings refer to them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import redis

from farm.settings import Settings
from workers.base import Engine
from workers.local import LocalEngine


@dataclass(frozen=True)
class EngineServices:
    """What a backend may use besides its own SDK: the settings and the farm's Redis."""

    settings: Settings
    redis: redis.Redis


def _fal(services: EngineServices) -> Engine:
    from farm.provider_cap import ProviderCap
    from farm.request_book import RequestBook
    from workers.fal import FalEngine  # imported only where fal is used

    cap = ProviderCap(services.redis, "fal", services.settings.fal_max_in_flight)
    return FalEngine(services.settings, RequestBook(services.redis, "fal"), cap)


ENGINES: dict[str, Callable[[EngineServices], Engine]] = {
    "local": lambda services: LocalEngine(),
    "fal": _fal,
}


def make_engine(name: str, services: EngineServices) -> Engine:
    try:
        factory = ENGINES[name]
    except KeyError:
        raise ValueError(f"no {name!r} engine in this farm yet; known: {', '.join(ENGINES)}") from None
    return factory(services)
