"""Turn pydantic's errors into Problems a studio can act on."""

from __future__ import annotations

from pydantic import ValidationError

from farm.problems import Problem, field_path


def problems_from(exc: ValidationError, file: str, prefix: tuple[str | int, ...] = ()) -> list[Problem]:
    """One Problem per pydantic error, located by the JSON path of the field."""
    problems = []
    for error in exc.errors(include_url=False):
        loc = (*prefix, *error["loc"])
        problems.append(
            Problem(file, field_path(loc), _message(error["type"], error["msg"], error.get("input")))
        )
    return problems


def _message(kind: str, msg: str, value: object) -> str:
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        rule = "use letters, digits, '_' and '-' only (no spaces or slashes)"
        return f"{_short(value)} is not a safe name: {rule}"
    if kind in {"literal_error", "greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"{_short(value)} is not allowed: {msg[0].lower()}{msg[1:]}"
    if kind in {"string_too_long", "too_long"}:
        return f"too long: {msg[0].lower()}{msg[1:]}"
    return msg


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
