"""Values as redis-py returns them (bytes, from a client without decode_responses) read as text."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_texts(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A hash's fields and values as text."""
    return {as_text(k): as_text(v) for k, v in raw.items()}
