"""The Celery app (`celery -A tasks.app ...`). Broker: FARM_REDIS_URL, else the farm's own Redis."""

from __future__ import annotations

from celery import Celery

from farm.settings import Settings, load_settings
from tasks.config import celery_config


def broker_url(settings: Settings) -> str:
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    return f"redis://127.0.0.1:{settings.redis_port}/0"


def make_app(url: str, time_limit_scale: float = 1.0) -> Celery:
    celery = Celery("farm", include=["tasks.steps"])
    celery.conf.update(celery_config(url, time_limit_scale))
    return celery


_settings = load_settings()
app = make_app(broker_url(_settings), _settings.time_limit_scale)
