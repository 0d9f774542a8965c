"""Credentials the farm makes for itself when none are configured: generated once, kept (mode 0600) under
the farm's home, so `farm up` is protected out of the box and every later command finds the same ones."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import SecretStr

PASSWORD_BYTES = 18
"""24 URL-safe characters: safe inside a Redis URL and a redis.conf line without quoting."""


def kept_credentials(path: Path, user: str, configured: SecretStr | None) -> tuple[str, str, bool]:
    """(user, password, generated): the configured password, else the one kept at `path`, else a new one
    written there. Two processes racing to create it end up with the same file: it is linked into place
    complete, never written where a reader could see half of it."""
    if configured is not None:
        return user, configured.get_secret_value(), False
    saved = _read(path)
    if saved is not None:
        return saved[0], saved[1], False
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    draft = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump({"user": user, "password": password}, handle)
        os.link(draft, path)
    except FileExistsError:
        saved = _read(path)
        assert saved is not None
        return saved[0], saved[1], False
    finally:
        draft.unlink(missing_ok=True)
    return user, password, True


def _read(path: Path) -> tuple[str, str] | None:
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    return str(saved["user"]), str(saved["password"])
