"""How times and money read to people, one way everywhere: the CLI, the dailies page, a budget's messages."""

from __future__ import annotations

from decimal import Decimal


def duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def usd(value: Decimal) -> str:
    return f"${value:,.3f}"
