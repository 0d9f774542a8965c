"""`farm.episode.json_input.read_json`: every way an input file can be broken becomes a Problem, not a
traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.episode.json_input import read_json
from farm.episode.problems import InputError, Problem


def problem_of(path: Path, **kwargs: int) -> Problem:
    with pytest.raises(InputError) as exc:
        read_json(path, **kwargs)
    [problem] = exc.value.problems
    assert problem.file == str(path)
    assert problem.field == ""
    return problem


def test_reads_an_object(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text('{"a": [1, 2]}')
    assert read_json(path) == {"a": [1, 2]}


def test_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b'\xef\xbb\xbf{"title": "Pr\xc3\xa9ssure"}')
    assert read_json(path) == {"title": "Préssure"}


def test_max_bytes_boundary(tmp_path: Path) -> None:
    path = tmp_path / "a.json"
    path.write_text("[1]   ")  # 6 bytes
    assert read_json(path, max_bytes=6) == [1]
    assert problem_of(path, max_bytes=5).message == "file is 6 bytes; the limit is 5"


def test_directory(tmp_path: Path) -> None:
    assert "is a directory" in problem_of(tmp_path).message


def test_missing(tmp_path: Path) -> None:
    assert problem_of(tmp_path / "missing.json").message == "file not found"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_bytes(b"")
    assert "invalid JSON at line 1, column 1" in problem_of(path).message


def test_invalid_json_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "a": 1,\n  "b": }\n')
    assert problem_of(path).message == "invalid JSON at line 3, column 8: Expecting value"


def test_invalid_utf8_position(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(b'{\n  "a": "\xff"}')
    assert problem_of(path).message == "not valid UTF-8 at byte 10 (line 2, column 9)"


def test_deeply_nested_json_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert "JSON" in problem_of(path).message


def test_keys_given_twice_are_problems_at_their_field_paths(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('{"a": 1, "b": [{"c": 1, "c": 2}, {"d": {"e": 0, "e": 0, "e": 1}}], "a": 2}')
    with pytest.raises(InputError) as exc:
        read_json(path)
    assert [(p.field, p.message.split(";")[0]) for p in exc.value.problems] == [
        ("a", "given 2 times in one object"),
        ("b[0].c", "given 2 times in one object"),
        ("b[1].d.e", "given 3 times in one object"),
    ]


def test_a_deeply_nested_document_is_walked_for_repeated_keys_without_recursion(tmp_path: Path) -> None:
    path = tmp_path / "deep.json"
    depth = 900  # parses, and deeper than what a recursive walk could take beside the test's own frames
    path.write_text("[" * depth + '{"k": 1, "k": 2}' + "]" * depth)
    with pytest.raises(InputError) as exc:
        read_json(path)
    [problem] = exc.value.problems
    assert problem.field == "[0]" * depth + ".k"
