"""Input problems: every error names the file and the field path, and all are reported together."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
"""C0/C1 controls (terminal escapes, newlines), zero-width and bidi-override characters."""


def printable(text: str) -> str:
    """`text` with every control, zero-width or bidi character written as its escape (`\\x1b`, `\\n`,
    `\\u202e`): a field name or value from an input file can neither drive the terminal nor split one
    problem over two lines nor read differently from what it is."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


@dataclass(frozen=True, order=True)
class Problem:
    """One thing wrong with one field of one input file."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return printable(f"{where}: {self.message}")


class InputError(Exception):
    """Raised with every problem found, so the user fixes them in one pass."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


def field_path(loc: Iterable[str | int]) -> str:
    """Render a location tuple as `shots[3].continuity_from.shot`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
