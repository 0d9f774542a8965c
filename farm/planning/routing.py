"""One routing table: (step kind, backend) -> queue. Each queue is drained by its own worker pool."""

from __future__ import annotations

from farm.planning.plan import StepKind

QUEUES = ("cloud", "gpu", "post")
"""cloud: fal.ai calls (I/O bound, many in flight); gpu: ComfyUI on rented pods; post: local CPU work."""

BACKEND_QUEUES = {"local": "post", "fal": "cloud", "comfyui": "gpu"}
"""Where a backend's image and video steps run. The embedded engine is CPU work, like post-processing."""

POST_KINDS = frozenset({StepKind.SPLIT, StepKind.KEN_BURNS, StepKind.HOLD, StepKind.CONCAT})
"""Always local, whatever the backend: cutting and joining never needs a provider."""

ROUTES: dict[tuple[StepKind, str], str] = {
    (kind, backend): "post" if kind in POST_KINDS else queue
    for kind in StepKind
    for backend, queue in BACKEND_QUEUES.items()
}


def queue_for(kind: StepKind, backend: str) -> str:
    return ROUTES[(kind, backend)]


def step_queue(kind: StepKind, run_backend: str, override: str | None = None) -> str:
    """The queue a step runs on: its own backend if it was rerouted (`override`), else the run's."""
    return queue_for(kind, override or backend_for(kind, run_backend))


def backend_for(kind: StepKind, run_backend: str) -> str:
    """Post steps run on the embedded engine; everything else on the run's backend."""
    return "local" if kind in POST_KINDS else run_backend
