"""Where step outputs live in the artifact store: addressed by step id, never by name.

Outputs of the embedded engine and of real providers live in different namespaces, so a placeholder
frame drawn locally can never stand in for a paid render of the same step.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from farm.config.settings import Settings
from farm.planning.plan import PANELS, Step
from farm.storage.stores import ArtifactStore, open_store


def namespace_for(backend: str) -> str:
    return "embedded" if backend == "local" else "render"


def output_key(namespace: str, step_id: str, index: int, asset_name: str) -> str:
    suffix = PurePosixPath(asset_name).suffix
    return f"{namespace}/{step_id[:2]}/{step_id}/{index}{suffix}"


def output_keys(namespace: str, step: Step) -> list[str]:
    return [output_key(namespace, step.id, i, name) for i, name in enumerate(step.outputs)]


def input_index(consumer: Step, producer: Step) -> int:
    """Which of the producer's outputs the consumer reads: a split's panel, else the only output."""
    panel = consumer.params.get("panel")
    if len(producer.outputs) > 1 and isinstance(panel, str):
        return PANELS.index(panel)
    return 0


def manifest_key(namespace: str, run_id: str) -> str:
    return f"{namespace}/runs/{run_id}/manifest.json"


def store_from_settings(settings: Settings) -> ArtifactStore:
    if settings.store == "s3":
        return open_store(
            "s3",
            bucket=settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return open_store("local", root=settings.artifacts_root())
