"""Keeping the settings' secrets out of what the farm stores and shows.

A provider's error can quote what it was sent (a proxy's or a debug error page echoing the request's
headers, an Authorization header among them). Such a message becomes a step's failure reason in Redis,
the manifest, `farm status`, the worker's log and, through the exception and its traceback in Celery's
task-failed event, Flower. So an exception leaving an engine has every secret of the settings replaced,
in its own message and in every exception it chains to, before anything reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr

REDACTED = "[redacted]"
MIN_SECRET_CHARS = 6
"""Shorter values are not replaced: a 3-letter "secret" would blank ordinary words, and guards nothing."""


def secret_values(settings: BaseModel) -> tuple[str, ...]:
    """Every secret the settings hold (each SecretStr, and the password inside a secret URL), longest first
    so that a secret containing another is replaced whole."""
    found: set[str] = set()
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if not isinstance(value, SecretStr):
            continue
        text = value.get_secret_value()
        found.add(text)
        if "://" in text:
            try:
                password = urlsplit(text).password
            except ValueError:
                password = None
            if password:
                found.add(password)
    return tuple(sorted((s for s in found if len(s) >= MIN_SECRET_CHARS), key=len, reverse=True))


def redact(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return text


def _redacted(value: object, secrets: Sequence[str]) -> object:
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list | tuple):
        return type(value)(_redacted(v, secrets) for v in value)
    if isinstance(value, dict):
        return {k: _redacted(v, secrets) for k, v in value.items()}
    return value


def scrub_exception(exc: BaseException, secrets: Sequence[str]) -> None:
    """Redact, in place, the arguments and text attributes of `exc` and of every exception it chains to
    (`__cause__`, `__context__`): what its message, a traceback and a log line are made of."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        current.args = tuple(_redacted(a, secrets) for a in current.args)
        for name, value in list(vars(current).items()):
            cleaned = _redacted(value, secrets)
            if cleaned is not value and cleaned != value:
                # A frozen dataclass or a read-only property refuses; its text is in the args then.
                with suppress(AttributeError):
                    setattr(current, name, cleaned)
        pending += [current.__cause__, current.__context__]


@contextmanager
def scrubbed(secrets: Sequence[str]) -> Iterator[None]:
    """Any exception leaving the block has `secrets` redacted first (see `scrub_exception`)."""
    try:
        yield
    except BaseException as exc:
        if secrets:
            scrub_exception(exc, secrets)
        raise
