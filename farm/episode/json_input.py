"""Read a JSON input file defensively: size cap, UTF-8 check, parse errors with their position, and keys
given twice in one object (JSON keeps the last silently, so half of what the author wrote would vanish)."""

from __future__ import annotations

import codecs
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm.episode.problems import InputError, Problem, field_path

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


@dataclass(frozen=True)
class JsonFile:
    """A parsed input file and the keys it gives twice: the file is whole, but not what its author meant,
    so those are problems to report beside the schema's own."""

    document: Any
    problems: list[Problem]


def read_json(path: Path, *, max_bytes: int = MAX_INPUT_BYTES) -> Any:
    """Return the parsed document, or raise InputError saying where the file is broken."""
    loaded = load_json(path, max_bytes=max_bytes)
    if loaded.problems:
        raise InputError(loaded.problems)
    return loaded.document


def load_json(path: Path, *, max_bytes: int = MAX_INPUT_BYTES) -> JsonFile:
    """Parse the file; raise InputError if it cannot be read or parsed, list keys given twice otherwise."""
    name = str(path)
    raw = _read_bounded(path, name, max_bytes)
    text = _decode(raw, name)
    if not text.strip():
        what = "holds only whitespace" if text else "is empty"
        message = f"invalid JSON at line 1, column 1: the file {what}; expected a JSON object"
        raise InputError([Problem(name, "", message)])
    repeats = _RepeatedKeys()
    try:
        document = json.loads(text, parse_int=_parse_int, object_pairs_hook=repeats.object)
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
    return JsonFile(document, repeats.problems(document, name))


class _RepeatedKeys:
    """json's object hook: builds each object as json would and remembers which keys it saw twice."""

    def __init__(self) -> None:
        self._by_object: dict[int, dict[str, int]] = {}

    def object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        built = dict(pairs)
        if len(built) < len(pairs):
            counts = Counter(key for key, _ in pairs)
            self._by_object[id(built)] = {k: n for k, n in counts.items() if n > 1}
        return built

    def problems(self, document: Any, name: str) -> list[Problem]:
        """One problem per repeated key, at its field path (objects are found by walking the document,
        without recursion: a parsed document may be nested deeper than Python's stack)."""
        if not self._by_object:
            return []
        found: list[Problem] = []
        stack: list[tuple[Any, tuple[str | int, ...]]] = [(document, ())]
        while stack:
            node, where = stack.pop()
            if isinstance(node, dict):
                for key, times in self._by_object.get(id(node), {}).items():
                    message = f"given {times} times in one object; only the last would count, so give it once"
                    found.append(Problem(name, field_path((*where, key)), message))
                stack.extend((value, (*where, key)) for key, value in node.items())
            elif isinstance(node, list):
                stack.extend((value, (*where, i)) for i, value in enumerate(node))
        return sorted(found)


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
