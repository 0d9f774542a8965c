"""Secrets out of error text: which values are secrets, and exceptions scrubbed through their chain."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from farm.config.redaction import REDACTED, redact, scrub_exception, scrubbed, secret_values
from farm.config.settings import Settings
from workers.base import PermanentError

FAL = "fal-key-for-redaction-tests"
REDIS_PASSWORD = "redis-pw-for-redaction"


def settings() -> Settings:
    return Settings(
        fal_key=SecretStr(FAL),
        redis_url=SecretStr(f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/0"),
        flower_password=SecretStr("short"),
    )


def test_every_secret_field_and_a_url_password_are_secrets_longest_first() -> None:
    found = secret_values(settings())
    assert FAL in found and REDIS_PASSWORD in found
    assert f"redis://:{REDIS_PASSWORD}@127.0.0.1:6390/0" in found
    assert "short" not in found, "too short to redact without blanking ordinary words"
    assert list(found) == sorted(found, key=len, reverse=True)
    assert redact(f"Authorization: Key {FAL}", found) == f"Authorization: Key {REDACTED}"


class _HTTPError(Exception):
    """Like fal-client's error: its text in an attribute, besides the args."""

    def __init__(self, message: object) -> None:
        super().__init__(message)
        self.message = message


def test_an_exception_and_everything_it_chains_to_are_scrubbed() -> None:
    secrets = secret_values(settings())
    with pytest.raises(PermanentError) as caught, scrubbed(secrets):
        try:
            try:
                raise _HTTPError([{"msg": f"headers: {{'authorization': 'Key {FAL}'}}"}])
            except _HTTPError as low:
                raise PermanentError(f"fal rejected the request: {low.message}") from low
        except PermanentError:
            raise PermanentError(f"while cleaning up: Key {FAL}")  # noqa: B904 (the implicit context)
    chain = [caught.value, caught.value.__context__, caught.value.__context__.__cause__]  # type: ignore[union-attr]
    for exc in chain:
        assert exc is not None and FAL not in str(exc) and REDACTED in str(exc)
    http = chain[2]
    assert isinstance(http, _HTTPError) and FAL not in str(http.message)


def test_nothing_to_redact_leaves_the_exception_alone() -> None:
    error = ValueError("plain")
    scrub_exception(error, secret_values(settings()))
    assert error.args == ("plain",)


def test_a_settings_error_names_the_setting_but_never_quotes_the_input(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAL_KEY", FAL)
    monkeypatch.setenv("FARM_SIGNING_KEY", str(tmp_path))
    with pytest.raises(ValidationError) as caught:
        Settings()
    assert "FARM_SIGNING_CERT" in str(caught.value) and FAL[:6] not in str(caught.value)
