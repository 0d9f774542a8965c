"""Turn pydantic's errors into Problems a studio can act on."""

from __future__ import annotations

import math

from pydantic import ValidationError

from farm.episode.problems import Problem, field_path

_EXPECTED = {
    "int_type": "an integer",
    "float_type": "a number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
}
"""pydantic's type errors, said in JSON's words (its own name the Python class: `instance of Shot`)."""


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
    if isinstance(value, float) and not math.isfinite(value):
        return f"{_json_number(value)} is not allowed: use a finite number"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "string_pattern_mismatch":
        rule = "use letters, digits, '_' and '-' only, not starting with '-' (no spaces or slashes)"
        return f"{_short(value)} is not a safe name: {rule}"
    if kind in {"literal_error", "greater_than", "greater_than_equal", "less_than", "less_than_equal"}:
        return f"{_short(value)} is not allowed: {msg[0].lower()}{msg[1:]}"
    if kind in {"string_too_long", "too_long"}:
        return f"too long: {msg[0].lower()}{msg[1:]}"
    if kind in {"string_too_short", "too_short"}:
        return f"too short: {msg[0].lower()}{msg[1:]}".replace(" after validation", "")
    return msg


def describe(value: object) -> str:
    """A JSON value by its JSON type, with the value itself when it is short (`string '2'`, `null`)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return f"number {_json_number(value) if isinstance(value, float) else _short(value)}"
    if isinstance(value, str):
        return f"string {_short(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _json_number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
