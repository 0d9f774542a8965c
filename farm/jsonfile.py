"""Read a JSON input file defensively: size cap, UTF-8 check and parse errors with their position."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from farm.problems import InputError, Problem

MAX_INPUT_BYTES = 4 * 1024 * 1024
"""Storyboards and registries are a few kB; anything past this is a mistake, not an episode."""


def read_json(path: Path, *, max_bytes: int = MAX_INPUT_BYTES) -> Any:
    """Return the parsed document, or raise InputError saying where the file is broken."""
    name = str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise InputError([Problem(name, "", "file not found")]) from None
    except OSError as exc:
        raise InputError([Problem(name, "", f"cannot read: {exc.strerror}")]) from None
    if path.is_dir():
        raise InputError([Problem(name, "", "is a directory, expected a JSON file")])
    if size > max_bytes:
        raise InputError([Problem(name, "", f"file is {size:,} bytes; the limit is {max_bytes:,}")])
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_col(raw, exc.start)
        message = f"not valid UTF-8 at byte {exc.start} (line {line}, column {column})"
        raise InputError([Problem(name, "", message)]) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise InputError([Problem(name, "", message)]) from None
    except RecursionError:
        raise InputError([Problem(name, "", "invalid JSON: nested too deeply")]) from None


def _line_col(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and byte column of a byte offset."""
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = offset - (before.rfind(b"\n") + 1) + 1
    return line, column
