"""One typed settings object, read from FARM_* environment variables. Secrets are SecretStr."""

from __future__ import annotations

import glob
import os
from decimal import Decimal
from pathlib import Path
from typing import Literal, Self

from pydantic import AliasChoices, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "episode-farm"


class Settings(BaseSettings):
    """Where the farm keeps its state, how it reaches Redis and storage, and how its pools are sized."""

    model_config = SettingsConfigDict(
        env_prefix="FARM_", extra="ignore", env_ignore_empty=True, hide_input_in_errors=True
    )
    """An empty variable (`FAL_KEY=` in an env file) counts as unset, not as an empty secret. Errors name
    the setting but never quote the input: a whole-settings check would otherwise print every key given."""

    home: Path = Field(default_factory=_default_home)
    """Redis data and AOF, the local artifact store, Flower credentials and pid files live here."""
    redis_url: SecretStr | None = None
    """An existing Redis to use as broker and state store; without it the farm runs its own."""
    redis_port: int = 6390
    """Port of the farm's own redis-server on 127.0.0.1."""
    output: Path = Path("renders")
    """Deliverables go to <output>/<project_name>/ep_<NNN>/."""

    engine: Literal["auto", "local", "fal", "comfyui"] = "auto"
    """Backend for image and video steps: auto = fal when a FAL_KEY is configured, else the embedded one."""
    fal_key: SecretStr | None = Field(default=None, validation_alias=AliasChoices("FARM_FAL_KEY", "FAL_KEY"))
    fal_url: str | None = None
    """Point the fal client at another server (the loopback emulator); the real hosts when unset."""
    fal_max_in_flight: int = 10
    """The account's concurrent request cap, held across every cloud worker and machine."""
    fal_poll_interval_s: float = 0.5
    fal_max_retries: int = 8
    """Transient failures (5xx, 429, timeouts) retried per step, with exponential backoff and jitter."""
    fal_request_timeout_s: float = 1800.0
    """A request still not done after this long is given up (and cancelled at fal)."""

    store: Literal["local", "s3"] = "local"
    store_root: Path | None = None
    """Root of the local artifact store [default: <home>/artifacts]."""
    s3_bucket: str | None = None
    s3_prefix: str = "episode-farm"
    s3_endpoint_url: str | None = None
    s3_region: str | None = None

    runpod_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("FARM_RUNPOD_API_KEY", "RUNPOD_API_KEY")
    )
    runpod_url: str | None = None
    """Point the runpod SDK at another server (the loopback emulator)."""
    gpu_type: str = "NVIDIA A100 80GB PCIe"
    gpu_fallback_types: str = ""
    """Comma-separated RunPod GPU type ids to try, in order, when the main type has no capacity."""
    gpu_image: str = "runpod/comfyui:latest"
    gpu_network_volume: str | None = None
    gpu_mount_path: str = "/workspace"
    gpu_max_pods: int = 2
    gpu_jobs_per_pod: int = Field(default=1, ge=1, le=8)
    """Steps one pod runs at a time (ComfyUI queues them; more overlaps transfers with renders)."""
    gpu_max_usd_per_hr: float = 5.0
    gpu_expected_usd_per_hr: float = 1.19
    """A pod's $/hour before it exists (an A100 80GB on demand), for the cap; RunPod's price once it runs."""
    gpu_idle_timeout_s: float = 600.0
    gpu_pod_prefix: str = "farm-gpu"
    gpu_ssh_key: Path | None = None
    """Private key for the pods; its .pub goes in as PUBLIC_KEY [default: <home>/ssh/id_ed25519]."""
    comfy_dir: str = "/workspace/ComfyUI"
    comfy_command: str = "python main.py --listen 127.0.0.1 --port 8188"
    comfy_custom_nodes: str = ""
    """Comma-separated custom node repositories (`URL` or `URL#branch`) every pod must have installed."""
    comfy_warm_up: bool = True
    """After each ComfyUI start, one small run of the step's workflow loads its models."""

    flower_port: int = 5555
    flower_user: str = "farm"
    flower_password: SecretStr | None = None
    """Without one, a password is generated once, kept in <home>/flower.json and printed by `farm up`."""

    post_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 2)
    cloud_concurrency: int = 128
    """Threads in one cloud worker: each waits on a fal request (see docs/benchmarks.md)."""
    gpu_concurrency: int = 2
    max_deliveries: int = 3
    """A step whose worker dies this many times fails instead of being requeued forever."""
    signing_key: Path | None = None
    """RSA private key (PEM) this process signs its Celery messages with. Set with the next two, every farm
    process signs what it sends and accepts only messages signed by a certificate in the store."""
    signing_cert: Path | None = None
    """The X.509 certificate (PEM) of `signing_key`; it must be in the store too, or the farm could not
    read its own messages."""
    signing_cert_store: Path | None = None
    """A directory (or a glob) of the certificates whose signatures this process accepts."""

    @model_validator(mode="after")
    def _signing_all_or_none(self) -> Self:
        """Half a signing setup would leave the farm's processes unable to read each other's messages."""
        given = {
            "FARM_SIGNING_KEY": self.signing_key,
            "FARM_SIGNING_CERT": self.signing_cert,
            "FARM_SIGNING_CERT_STORE": self.signing_cert_store,
        }
        missing = [name for name, path in given.items() if path is None]
        if missing and len(missing) < len(given):
            raise ValueError(
                "FARM_SIGNING_KEY, FARM_SIGNING_CERT and FARM_SIGNING_CERT_STORE go together: set all three "
                f"or none (missing: {', '.join(missing)})"
            )
        for name, path in given.items():
            if path is not None and not (path.exists() or (name.endswith("STORE") and glob.glob(str(path)))):
                raise ValueError(f"{name}: no such file or directory: {path}")
        return self

    default_budget_usd: Decimal | None = Field(default=None, ge=0)
    """Most a run may spend when `farm submit` gives no `--budget`; unset: no limit (`farm.runs.budget`)."""
    reconcile_every_s: float = Field(default=30.0, gt=0)
    """How often one worker looks for steps whose Celery message is lost (`tasks.reconcile`); a step found
    missing is sent again by the next pass that still finds it missing."""
    time_limit_scale: float = 1.0
    """Scales every step's time limits and the broker's visibility timeout together (tests shrink them)."""

    schedule_order: Literal["critical_path", "fifo"] = "critical_path"
    """How ready steps are admitted under caps: longest remaining path first, or in release order."""
    schedule_priority_head_start_s: float = 300.0
    """Each run priority level above 5 counts as this many seconds more remaining path (below: fewer)."""
    schedule_aging: float = Field(default=0.25, ge=0.0)
    """Seconds of rank a waiting step gains per second, so a lower-priority run is never starved."""

    autoscale_workers: str = "post=1:4,cloud=1:2,gpu=0:2"
    """Per queue, `min:max` worker processes the autoscaler keeps (each runs `<queue>_concurrency` steps)."""
    autoscale_up_cooldown_s: float = 5.0
    autoscale_down_cooldown_s: float = 120.0
    """How long the backlog must want fewer workers before any leave."""
    autoscale_interval_s: float = 2.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None
    """Serve Prometheus metrics at http://<metrics_host>:<metrics_port>/metrics from `farm up` too."""
    metrics_user: str = "prometheus"
    metrics_password: SecretStr | None = None
    """HTTP basic auth of /metrics: a scrape-only credential, apart from Flower's (Flower can revoke tasks and
    stop workers, a Prometheus config should not). Without one, a password is generated once, kept in
    <home>/metrics.json and printed by the command that generated it."""
    redis_password: SecretStr | None = None
    """The farm's own redis-server requires it (`requirepass`), and every client sends it; with
    FARM_REDIS_URL it replaces the URL's password. Without one, the own server's is generated once and
    kept in <home>/redis.json."""
    redis_tls_ca: Path | None = None
    """CA bundle that signed FARM_REDIS_URL's server certificate; any FARM_REDIS_TLS_* turns the URL into
    rediss:// with the certificate verified. The farm's own loopback redis-server is never TLS."""
    redis_tls_cert: Path | None = None
    redis_tls_key: Path | None = None
    """Client certificate and key, for a Redis that requires them (`tls-auth-clients yes`)."""

    def artifacts_root(self) -> Path:
        return self.store_root or self.home / "artifacts"

    def ssh_key_path(self) -> Path:
        return self.gpu_ssh_key or self.home / "ssh" / "id_ed25519"

    def concurrency(self, queue: str) -> int:
        """Steps one worker of `queue` runs at once (`FARM_<QUEUE>_CONCURRENCY`)."""
        return {"post": self.post_concurrency, "cloud": self.cloud_concurrency, "gpu": self.gpu_concurrency}[
            queue
        ]

    def backend(self) -> str:
        """The backend image and video steps run on."""
        if self.engine == "auto":
            return "fal" if self.fal_key is not None else "local"
        return self.engine


def load_settings() -> Settings:
    return Settings()
