"""manifest.json: every step of a run, reproducible from this file alone (prompt, seed, parameters)."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from farm.planning.plan import Step
from farm.planning.plan_json import money, step_document
from farm.planning.routing import backend_for
from farm.runs import keys
from farm.runs.blocked import blocked_by
from farm.runs.keys import StepStatus
from farm.runs.state import RunStore
from farm.storage.artifacts import manifest_key, output_keys
from farm.storage.stores import ArtifactStore

MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class _RunData:
    """Everything Redis knows about a run, read once."""

    meta: dict[str, str]
    states: dict[str, str]
    info: dict[str, dict[str, Any]]
    deliveries: dict[str, int]
    counters: dict[str, dict[str, int]]
    backends: dict[str, str]
    blocked: dict[str, tuple[str, ...]]


def build_manifest(runs: RunStore, store: ArtifactStore, run_id: str) -> dict[str, Any]:
    meta = runs.meta(run_id)
    steps = runs.steps(run_id)
    info = runs.info(run_id)
    states = runs.states(run_id)
    data = _RunData(
        meta,
        states,
        info,
        runs.deliveries(run_id),
        runs.counters(run_id),
        runs.backend_overrides(run_id),
        blocked_by(steps, states),
    )
    replaced = runs.history(run_id)
    rows = [_step_row(s, data, store) for s in steps.values()]
    rows += [{**_step_row(s, data, store), "current": False} for s in replaced]
    estimated = sum((s.cost_usd for s in steps.values()), Decimal(0))
    actual = sum(
        (Decimal(str(info.get(s.id, {}).get("actual_cost_usd", "0"))) for s in [*steps.values(), *replaced]),
        Decimal(0),
    )
    return {
        "format": MANIFEST_FORMAT,
        "run": run_id,
        "status": meta.get("status"),
        "project": meta.get("project"),
        "project_name": meta.get("project_name"),
        "episode": int(meta.get("episode", "0")),
        "title": meta.get("title"),
        "storyboard": meta.get("storyboard"),
        "backend": meta.get("backend"),
        "created_at": _float(meta.get("created_at")),
        "finished_at": _float(meta.get("finished_at")),
        "cut": int(meta.get("cut", "1")),
        "takes": {str(shot): take for shot, take in sorted(runs.takes(run_id).items())},
        "cost_usd": {"estimated": money(estimated), "actual": money(actual)},
        "steps": rows,
    }


def write_manifest(runs: RunStore, store: ArtifactStore, run_id: str) -> Path:
    """Write manifest.json beside the deliverables (atomically) and keep a copy in the artifact store."""
    doc = build_manifest(runs, store, run_id)
    meta = runs.meta(run_id)
    folder = Path(meta["output_dir"])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "manifest.json"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2, ensure_ascii=False)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # a full disk leaves no half manifest beside the deliverables
        raise
    store.put_file(manifest_key(meta["namespace"], run_id), target)
    runs.r.hset(keys.run(run_id), "manifest", str(target))
    return target


def _step_row(step: Step, data: _RunData, store: ArtifactStore) -> dict[str, Any]:
    info = data.info.get(step.id, {})
    counters = data.counters.get(step.id, {})
    started, finished = info.get("started_at"), info.get("finished_at")
    stored = output_keys(data.meta["namespace"], step)
    return {
        **step_document(step),
        "current": True,
        "backend": data.backends.get(step.id) or backend_for(step.kind, data.meta.get("backend", "local")),
        "queue": info.get("queue"),
        "prompt": step.params.get("prompt"),
        "outputs": [
            {"asset_name": name, "path": path, "store": store.locate(key)}
            for name, path, key in zip(step.outputs, _paths(info, step), stored, strict=True)
        ],
        "state": StepStatus.BLOCKED if step.id in data.blocked else data.states.get(step.id, ""),
        "blocked_by": list(data.blocked.get(step.id, ())),
        "cached": bool(info.get("cached", False)),
        "deliveries": data.deliveries.get(step.id, 0),
        "retries": counters.get("retries", 0),
        "cap_waits": counters.get("cap_waits", 0),
        "last_retry_reason": info.get("last_retry_reason"),
        "fallback": info.get("fallback"),
        "provider": info.get("metadata", {}),
        "worker": info.get("worker"),
        "timings": {
            "queued_at": info.get("queued_at"),
            "started_at": started,
            "finished_at": finished,
            "seconds": round(finished - started, 3) if started and finished else None,
        },
        "cost_usd": {
            "estimated": money(step.cost_usd),
            "actual": money(Decimal(info["actual_cost_usd"])) if "actual_cost_usd" in info else None,
        },
        "error": info.get("error"),
    }


def _paths(info: dict[str, Any], step: Step) -> list[str | None]:
    paths: list[str | None] = list(info.get("outputs", []))
    return paths + [None] * (len(step.outputs) - len(paths))


def _float(value: str | None) -> float | None:
    return float(value) if value else None
