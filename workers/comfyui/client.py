"""ComfyUI's HTTP API, spoken through an SSH tunnel's local URL: upload, submit, history, view."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx

from workers.base import PermanentError, TransientError, scratch_room


class ComfyClient:
    def __init__(self, base_url: str, timeout_s: float = 60.0) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=timeout_s)  # no Origin header: ComfyUI's check

    def close(self) -> None:
        self.http.close()

    def healthy(self) -> bool:
        try:
            return self.http.get("/system_stats").status_code == 200
        except httpx.HTTPError:
            return False

    def upload(self, path: Path) -> str:
        with path.open("rb") as handle:
            response = self._call(
                "POST", "/upload/image", files={"image": (path.name, handle)}, data={"overwrite": "true"}
            )
        body = response.json()
        return f"{body['subfolder']}/{body['name']}" if body.get("subfolder") else str(body["name"])

    def submit(self, graph: dict[str, Any], prompt_id: str, client_id: str = "farm") -> None:
        """Queue a graph under our prompt id; `client_id` names the websocket that gets its events."""
        response = self._call(
            "POST",
            "/prompt",
            json={"prompt": graph, "client_id": client_id, "prompt_id": prompt_id},
            ok=(200, 400),
        )
        if response.status_code == 400:
            raise PermanentError("ComfyUI refused the workflow: " + readable_validation(response.json()))

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        entry = self._call("GET", f"/history/{prompt_id}").json().get(prompt_id)
        return entry if isinstance(entry, dict) else None

    def queued(self, prompt_id: str) -> bool:
        queue = self._call("GET", "/queue").json()
        items = [*queue.get("queue_running", []), *queue.get("queue_pending", [])]
        return any(len(item) > 1 and item[1] == prompt_id for item in items)

    def download(self, ref: dict[str, Any], dest: Path) -> None:
        params = {
            "filename": ref["filename"],
            "subfolder": ref.get("subfolder", ""),
            "type": ref.get("type", "output"),
        }
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            with scratch_room(dest.parent), self.http.stream("GET", "/view", params=params) as response:
                if response.status_code != 200:
                    raise PermanentError(
                        f"ComfyUI could not serve {ref['filename']} (HTTP {response.status_code})"
                    )
                with tmp.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
            os.replace(tmp, dest)
        except httpx.HTTPError as exc:
            raise TransientError(f"downloading {ref['filename']} from the pod failed: {exc}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _call(self, method: str, url: str, ok: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise TransientError(f"ComfyUI on the pod did not answer {method} {url}: {exc}") from exc
        if response.status_code not in ok:
            raise TransientError(f"ComfyUI answered {method} {url} with HTTP {response.status_code}")
        return response


def readable_validation(body: dict[str, Any]) -> str:
    """ComfyUI's 400 body as one line: the error, then each node's problems."""
    error = body.get("error") or {}
    parts = [str(error.get("message") or error.get("type") or "invalid workflow")]
    for node_id, node in (body.get("node_errors") or {}).items():
        for problem in node.get("errors", []):
            where = f"node {node_id} ({node.get('class_type')})"
            parts.append(f"{where}: {problem.get('message')} {problem.get('details', '')}")
    return "; ".join(p.strip() for p in parts)


def execution_error(entry: dict[str, Any]) -> str | None:
    """The reason a finished run failed, from its history entry; None when it succeeded."""
    status = entry.get("status") or {}
    if status.get("status_str") != "error" and status.get("completed", True):
        return None
    for kind, data in reversed(status.get("messages") or []):
        if kind == "execution_error":
            return (
                f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                f"{data.get('exception_type', '')}: {data.get('exception_message', '')}".strip()
            )
        if kind == "execution_interrupted":
            return "the run was interrupted on the pod"
    return "ComfyUI reported the run as failed"


def output_files(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """Every file a run wrote, images and videos ('gifs' is VideoHelperSuite's key for videos)."""
    files: list[dict[str, Any]] = []
    for node in (entry.get("outputs") or {}).values():
        for key in ("images", "gifs", "videos"):
            files += [
                f for f in node.get(key, []) if isinstance(f, dict) and f.get("type", "output") == "output"
            ]
    return files
