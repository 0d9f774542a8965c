"""The one small interface every engine backend implements, and the error tree they translate into.

A backend turns one plan step into output files. It never touches Redis, Celery or the artifact store:
the task layer hands it local input files and local output paths, and stores what it wrote.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from farm.storage.stores import DISK_FULL


class BackendError(Exception):
    """Base of every failure a backend reports; the message is shown to the studio as the reason."""


class TransientError(BackendError):
    """Worth retrying later (connection reset, 5xx, 429, timeout). `retry_after_s` when the provider says."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class CapacityWait(TransientError):
    """Nothing failed: a provider cap, a full pod pool or a GPU type out of stock. The step waits
    `retry_after_s` without using up one of its retries."""


@contextlib.contextmanager
def scratch_room(folder: Path) -> Iterator[None]:
    """Around a download into the worker's scratch folder: a full disk there is a TransientError, since
    the paid output stays at the provider (fal's request, the pod's ComfyUI history) for a later attempt
    to fetch once there is room, instead of failing a step that was already paid for."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_FULL:
            raise
        raise TransientError(f"no room to download the output into {folder}: {exc.strerror}") from exc


class PermanentError(BackendError):
    """Retrying cannot help (bad input, validation error): the step fails with this reason."""


class ContentPolicyError(BackendError):
    """The provider refused the content; the step is re-routed to the GPU pool."""


@dataclass(frozen=True)
class StepJob:
    """Everything a backend needs to run one step, already on local disk."""

    step_id: str
    kind: str
    """One of t2i, img2img, upscale, split, video, ken_burns, hold, concat."""
    engine: str
    """The plan's engine card (z_image_turbo, flux2, seedvr2, wan22, post)."""
    endpoint: str | None
    params: dict[str, Any]
    inputs: list[Path]
    """One file per plan input, in plan order (a split panel already picked for its upscale)."""
    outputs: list[Path]
    """Where to write, one path per planned output; the directory exists."""
    operation: str = ""
    """The card's operation (t2i, img2img, upscale, video, video_segment, ...): what it costs."""
    report: Callable[[dict[str, Any]], None] | None = field(default=None, compare=False, repr=False)
    """Where a backend that can see inside a render sends live progress ({"node", "value", "max"})."""


@dataclass(frozen=True)
class StepResult:
    cost_usd: Decimal = Decimal(0)
    """What the provider charged; the embedded engine costs nothing."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Anything worth keeping in the manifest (request ids, seeds echoed back, durations)."""


class Backend(Protocol):
    """A backend. `name` is what the routing table and the manifest call it."""

    name: str

    def run(self, job: StepJob) -> StepResult: ...
