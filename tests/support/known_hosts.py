"""Host key stores for tests: pins held in memory, or in a small text file. The farm's own store is the pod
ledger in Redis (`workers.gpu.pod_ledger.LedgerKnownHosts`)."""

from __future__ import annotations

import os
import threading
import uuid
from pathlib import Path

from workers.gpu.ssh import normalize_key


class MemoryKnownHosts:
    """In-process pins, for tests. `first_use`: take an unknown key from any pod (a test's own server)."""

    def __init__(self, pins: dict[str, str] | None = None, *, first_use: bool = True) -> None:
        self._pins = {pod: normalize_key(key) for pod, key in (pins or {}).items()}
        self._lock = threading.Lock()
        self.first_use = first_use

    def expects_new_key(self, pod_id: str) -> bool:
        return self.first_use

    def get(self, pod_id: str) -> str | None:
        with self._lock:
            return self._pins.get(pod_id)

    def pin(self, pod_id: str, key: str) -> None:
        with self._lock:
            self._pins[pod_id] = normalize_key(key)

    def forget(self, pod_id: str) -> None:
        with self._lock:
            self._pins.pop(pod_id, None)


class FileKnownHosts:
    """Pins in a small text file, one `<pod id> <type> <base64>` line per pod, rewritten atomically.
    An unknown key is taken only with `first_use` (the file's owner vouches for the pods it names)."""

    def __init__(self, path: Path, *, first_use: bool = False) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.first_use = first_use

    def expects_new_key(self, pod_id: str) -> bool:
        return self.first_use

    def get(self, pod_id: str) -> str | None:
        with self._lock:
            return self._read().get(pod_id)

    def pin(self, pod_id: str, key: str) -> None:
        if not pod_id or any(ch.isspace() for ch in pod_id):
            raise ValueError(f"pod id {pod_id!r} cannot be stored in {self.path.name}")
        with self._lock:
            pins = self._read()
            pins[pod_id] = normalize_key(key)
            self._write(pins)

    def forget(self, pod_id: str) -> None:
        with self._lock:
            pins = self._read()
            if pins.pop(pod_id, None) is not None:
                self._write(pins)

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text("utf-8")
        except FileNotFoundError:
            return {}
        pins: dict[str, str] = {}
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 3 and not fields[0].startswith("#"):
                pins[fields[0]] = f"{fields[1]} {fields[2]}"
        return pins

    def _write(self, pins: dict[str, str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_text("".join(f"{pod} {key}\n" for pod, key in sorted(pins.items())), "utf-8")
        os.replace(tmp, self.path)
