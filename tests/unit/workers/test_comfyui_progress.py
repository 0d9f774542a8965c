"""Live progress over ComfyUI's websocket (against the emulator): reported per sampler step, optional."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from emulators.comfyui_server import ComfyFaults, ComfyUIEmulator
from tests.support.ports import free_port
from tests.unit.emulators.test_comfyui_emulator import t2i_graph, wait_entry
from workers.comfyui.progress import ProgressWatcher, StepProgress, client_id_for


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def test_every_sampler_step_of_the_watched_prompt_is_reported(tmp_path: Path) -> None:
    seen: list[StepProgress] = []
    with ComfyUIEmulator(root=tmp_path, faults=ComfyFaults(run_seconds=0.2)) as comfy:
        prompt_id = "6d0f6a57-0000-4000-8000-000000000001"
        with ProgressWatcher(comfy.url, prompt_id, seen.append) as watcher:
            body = {"prompt": t2i_graph(), "prompt_id": prompt_id, "client_id": client_id_for(prompt_id)}
            httpx.post(f"{comfy.url}/prompt", json=body).raise_for_status()
            wait_entry(comfy, prompt_id)
            watcher._thread.join(timeout=5)
            assert not watcher._thread.is_alive(), "the watcher ends with the run"
    assert [(p.value, p.max) for p in seen] == [(n, 8) for n in range(1, 9)]
    assert {p.node for p in seen} == {"3"}, "the KSampler node"


def test_no_websocket_means_no_progress_and_no_error() -> None:
    seen: list[StepProgress] = []
    with ProgressWatcher(f"http://127.0.0.1:{free_port()}", "any-prompt", seen.append):
        pass
    assert seen == []
