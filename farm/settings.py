"""One typed settings object, read from FARM_* environment variables. Secrets are SecretStr."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "episode-farm"


class Settings(BaseSettings):
    """Where the farm keeps its state, how it reaches Redis and storage, and how its pools are sized."""

    model_config = SettingsConfigDict(env_prefix="FARM_", extra="ignore")

    home: Path = Field(default_factory=_default_home)
    """Redis data and AOF, the local artifact store, Flower credentials and pid files live here."""
    redis_url: SecretStr | None = None
    """An existing Redis to use as broker and state store; without it the farm runs its own."""
    redis_port: int = 6390
    """Port of the farm's own redis-server on 127.0.0.1."""
    output: Path = Path("renders")
    """Deliverables go to <output>/<project_name>/ep_<NNN>/."""

    engine: Literal["local"] = "local"
    """Backend for image and video steps; the embedded one needs no keys and no network."""

    store: Literal["local", "s3"] = "local"
    store_root: Path | None = None
    """Root of the local artifact store [default: <home>/artifacts]."""
    s3_bucket: str | None = None
    s3_prefix: str = "episode-farm"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    flower_port: int = 5555
    flower_user: str = "farm"
    flower_password: SecretStr | None = None
    """Without one, a password is generated once, kept in <home>/flower.json and printed by `farm up`."""

    post_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 2)
    cloud_concurrency: int = 50
    gpu_concurrency: int = 2
    max_deliveries: int = 3
    """A step whose worker dies this many times fails instead of being requeued forever."""

    def artifacts_root(self) -> Path:
        return self.store_root or self.home / "artifacts"


def load_settings() -> Settings:
    return Settings()
