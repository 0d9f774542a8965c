"""Read a JSON input file defensively: size cap, UTF-8 check and parse errors with their position."""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Any

from farm.problems import InputError, Problem

MAX_INPUT_BYTES = 4 * 1024 * 1024
"""Storyboards and registries are a few kB; anything past this is a mistake, not an episode."""
MAX_NUMBER_DIGITS = 100
"""No field takes a number anywhere near this long; past it Python refuses to convert (4300 digits) anyway."""

_WIDE_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)
"""UTF-32 first: its little-endian mark starts with UTF-16's."""


class _NumberTooLong(ValueError):
    """Raised from inside json's parser; carries the digits so the problem can say where they are."""

    def __init__(self, digits: str) -> None:
        super().__init__(digits)
        self.digits = digits


def read_json(path: Path, *, max_bytes: int = MAX_INPUT_BYTES) -> Any:
    """Return the parsed document, or raise InputError saying where the file is broken."""
    name = str(path)
    raw = _read_bounded(path, name, max_bytes)
    text = _decode(raw, name)
    if not text.strip():
        what = "holds only whitespace" if text else "is empty"
        message = f"invalid JSON at line 1, column 1: the file {what}; expected a JSON object"
        raise InputError([Problem(name, "", message)])
    try:
        return json.loads(text, parse_int=_parse_int)
    except json.JSONDecodeError as exc:
        message = f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        raise InputError([Problem(name, "", message)]) from None
    except _NumberTooLong as exc:
        encoded = text.encode()
        line, column = _line_col(encoded, encoded.find(exc.digits.encode()))
        message = (
            f"invalid JSON at line {line}, column {column}: a number of {len(exc.digits):,} digits "
            f"(the limit is {MAX_NUMBER_DIGITS})"
        )
        raise InputError([Problem(name, "", message)]) from None
    except RecursionError:
        raise InputError([Problem(name, "", "invalid JSON: nested too deeply")]) from None


def _read_bounded(path: Path, name: str, max_bytes: int) -> bytes:
    """The file's bytes, refused by its size before reading, and never more than `max_bytes` + 1 read:
    a device or a pipe (`/dev/zero`, `<(yes)`) has no size to check first."""
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
    try:
        with path.open("rb") as stream:
            raw = stream.read(max_bytes + 1)
    except OSError as exc:
        raise InputError([Problem(name, "", f"cannot read: {exc.strerror}")]) from None
    if len(raw) > max_bytes:
        raise InputError([Problem(name, "", f"more than {max_bytes:,} bytes; the limit is {max_bytes:,}")])
    return raw


def _decode(raw: bytes, name: str) -> str:
    """UTF-8 text (a UTF-8 byte order mark is dropped); UTF-16/32 and stray NUL bytes are named as such."""
    for bom, encoding in _WIDE_BOMS:
        if raw.startswith(bom):
            message = f"the file is {encoding} (byte order mark {bom.hex(' ').upper()}); save it as UTF-8"
            raise InputError([Problem(name, "", message)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _line_col(raw, exc.start)
        message = f"not valid UTF-8 at byte {exc.start} (line {line}, column {column})"
        raise InputError([Problem(name, "", message)]) from None
    nul = raw.find(b"\0")
    if nul >= 0:
        line, column = _line_col(raw, nul)
        message = (
            f"NUL byte at byte {nul} (line {line}, column {column}): JSON text has none "
            "(is the file UTF-16? save it as UTF-8)"
        )
        raise InputError([Problem(name, "", message)])
    return text[1:] if text.startswith("\ufeff") else text


def _parse_int(digits: str) -> int:
    """json's int parser, refusing absurd lengths before Python's own int() does (with a ValueError)."""
    if len(digits.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _NumberTooLong(digits)
    return int(digits)


def _line_col(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and byte column of a byte offset."""
    before = raw[:offset]
    line = before.count(b"\n") + 1
    column = offset - (before.rfind(b"\n") + 1) + 1
    return line, column
