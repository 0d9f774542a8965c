"""The malformed-input corpus (tests/corpus/malformed/cases.toml): real files, each refused by the real
`farm validate` and `farm submit` with every problem named by file and field, and nothing enqueued.

Every case runs both commands in-process (typer's CliRunner) against one real redis-server for the whole
module; no workers are started, since a refused submit must not reach them. Files too big to commit are
made at test time. One storyboard full of shell metacharacters and path tricks is valid: it is shown to
plan and enqueue with every output inside the run's folder.
"""

from __future__ import annotations

import re
import time
import tomllib
import tracemalloc
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner, Result

from farm.cli.app import app
from farm.episode.json_input import MAX_INPUT_BYTES, read_json
from farm.episode.problems import InputError, printable
from farm.episode.validate import load_episode
from farm.planning.plan import build_plan
from farm.runs.dispatch import deliverables_dir
from farm.runs.state import RunStore

CORPUS = Path(__file__).resolve().parents[1] / "corpus"
MALFORMED = CORPUS / "malformed"
VALID_STORYBOARD = CORPUS / "valid" / "storyboard.json"
VALID_REGISTRY = CORPUS / "valid" / "lora_registry.json"
METACHARS = CORPUS / "valid" / "storyboard_metachars.json"
SENTINEL = Path("/tmp/farm-corpus-pwned")
"""What the metacharacter storyboard's `$(touch ...)` would create if anything ran it through a shell."""

INPUT_ERROR = 2
QUEUE_KEYS = ("post", "cloud", "gpu")
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")
"""Anything but a newline that could drive a terminal; no refusal may print one."""

runner = CliRunner()


@dataclass(frozen=True)
class Expected:
    """One problem a refusal must print: on which file, at which field, saying what."""

    file: Path
    field: str
    contains: tuple[str, ...]

    def prefix(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else str(self.file)
        return printable(f"{where}: ")


@dataclass(frozen=True)
class Case:
    """A manifest entry: the malformed file, its valid partner, and the problems expected."""

    name: str
    storyboard: Path
    registry: Path
    problems: tuple[Expected, ...]


def _case(entry: dict[str, Any]) -> Case:
    broken = MALFORMED / entry["file"]
    if entry["document"] == "storyboard":
        storyboard, registry, partner = broken, VALID_REGISTRY, VALID_REGISTRY
    else:
        assert entry["document"] == "registry", entry
        storyboard, registry, partner = VALID_STORYBOARD, broken, VALID_STORYBOARD
    problems = tuple(
        Expected(partner if p.get("in") == "partner" else broken, p["field"], tuple(p["contains"]))
        for p in entry["problems"]
    )
    return Case(entry["file"], storyboard, registry, problems)


MANIFEST: list[dict[str, Any]] = tomllib.loads((MALFORMED / "cases.toml").read_text("utf-8"))["case"]
CASES = [_case(entry) for entry in MANIFEST]


@pytest.fixture
def farm_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """What `farm submit` reads: the module's Redis, the embedded engine, a private home."""
    return {"FARM_REDIS_URL": redis_url, "FARM_ENGINE": "local", "FARM_HOME": str(tmp_path / "home")}


def farm(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    """The real `farm` command line, in-process: a refusal is checked by what a user would see."""
    return runner.invoke(app, [str(a) for a in args], env=env)


def assert_refused_with(lines: list[str], expected: tuple[Expected, ...]) -> None:
    """Each expected problem is exactly one printed line, and nothing else is printed."""
    unmatched = list(lines)
    for problem in expected:
        hits = [line for line in unmatched if line.startswith(problem.prefix())]
        assert len(hits) == 1, f"{problem.prefix()!r} printed {len(hits)} times in:\n" + "\n".join(lines)
        for fragment in problem.contains:
            assert fragment in hits[0], (fragment, hits[0])
        unmatched.remove(hits[0])
    assert unmatched == [], "printed but not in the manifest:\n" + "\n".join(unmatched)
    for line in lines:
        assert not CONTROL.search(line), f"a control character reached the terminal: {line!r}"


def assert_nothing_enqueued(client: redis.Redis) -> None:
    """No run state, no Celery queue, no kombu binding: the database is as empty as before the submit."""
    assert list(client.scan_iter("farm:*")) == []
    assert client.exists(*QUEUE_KEYS) == 0
    assert list(client.scan_iter("_kombu.binding.*")) == []
    assert client.dbsize() == 0, [k.decode(errors="replace") for k in client.scan_iter("*")]


def assert_refused_everywhere(
    storyboard: Path, registry: Path, expected: tuple[Expected, ...], client: redis.Redis, env: dict[str, str]
) -> None:
    """`farm validate` and `farm submit` both exit 2 with the same problems; the submit enqueues nothing."""
    checked = farm("validate", storyboard, "--registry", registry)
    assert checked.exit_code == INPUT_ERROR, checked.output
    assert checked.stderr == ""
    assert_refused_with(checked.stdout.splitlines(), expected)

    submitted = farm("submit", storyboard, "--registry", registry, "--out", env["FARM_HOME"], env=env)
    assert submitted.exit_code == INPUT_ERROR, submitted.output
    assert submitted.stdout == "", "a refused submit printed a run id"
    assert submitted.stderr.splitlines() == checked.stdout.splitlines()
    assert_nothing_enqueued(client)


# --- the manifest itself ------------------------------------------------------------------------------


def test_manifest_lists_every_file_once() -> None:
    listed = [entry["file"] for entry in MANIFEST]
    on_disk = sorted(p.name for p in MALFORMED.iterdir() if p.name != "cases.toml")
    assert sorted(listed) == on_disk
    assert len(set(listed)) == len(listed) >= 24


def test_partners_are_valid() -> None:
    """Each case breaks only its own document: the partners it is paired with pass on their own."""
    for storyboard in (VALID_STORYBOARD, METACHARS):
        result = farm("validate", storyboard, "--registry", VALID_REGISTRY)
        assert result.exit_code == 0, result.output


# --- every case -------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_malformed_file_is_refused_and_nothing_enqueued(
    case: Case, client: redis.Redis, farm_env: dict[str, str]
) -> None:
    assert_refused_everywhere(case.storyboard, case.registry, case.problems, client, farm_env)


# --- files too big to commit ---------------------------------------------------------------------------


@pytest.mark.parametrize("document", ["storyboard", "registry"])
def test_huge_sparse_file_is_refused_by_its_size_without_reading_it(
    document: str, tmp_path: Path, client: redis.Redis, farm_env: dict[str, str]
) -> None:
    """A 2 GiB file (sparse: it costs no disk) is refused from its size alone, in well under a second and
    without reading it: reading it would take seconds and gigabytes."""
    huge = tmp_path / f"huge_{document}.json"
    with huge.open("wb") as handle:
        handle.truncate(2 * 1024**3)
    storyboard, registry = (huge, VALID_REGISTRY) if document == "storyboard" else (VALID_STORYBOARD, huge)
    expected = (Expected(huge, "", (f"file is {2 * 1024**3:,} bytes", f"limit is {MAX_INPUT_BYTES:,}")),)
    started = time.monotonic()
    assert_refused_everywhere(storyboard, registry, expected, client, farm_env)
    assert time.monotonic() - started < 5

    tracemalloc.start()
    try:
        with pytest.raises(InputError):
            read_json(huge)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1024**2, f"refusing the file allocated {peak:,} bytes"


def test_endless_device_is_refused_after_reading_one_byte_past_the_limit(
    client: redis.Redis, farm_env: dict[str, str]
) -> None:
    """/dev/zero says it is 0 bytes long and never ends: the read stops one byte past the limit."""
    zero = Path("/dev/zero")
    if not zero.exists():
        pytest.skip("no /dev/zero here")
    expected = (Expected(zero, "", (f"more than {MAX_INPUT_BYTES:,} bytes",)),)
    started = time.monotonic()
    assert_refused_everywhere(zero, VALID_REGISTRY, expected, client, farm_env)
    assert time.monotonic() - started < 5


def test_many_problems_in_both_files_are_all_reported_at_once(
    client: redis.Redis, farm_env: dict[str, str]
) -> None:
    """Two broken files of the corpus together: every problem of both, in one refusal."""
    storyboard, registry = MALFORMED / "sb_wrong_types.json", MALFORMED / "reg_traversal_lora_path.json"
    by_file = {c.name: c.problems for c in CASES}
    expected = by_file[storyboard.name] + by_file[registry.name]
    assert_refused_everywhere(storyboard, registry, expected, client, farm_env)


# --- shell metacharacters and path tricks in an otherwise valid storyboard --------------------------------

SAFE_FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def test_shell_metacharacters_plan_with_every_output_inside_the_run_folder(
    tmp_path: Path, client: redis.Redis, farm_env: dict[str, str]
) -> None:
    """Prompts, title and unknown fields full of `$(...)`, backticks, `;`, `|`, quotes, newlines and
    `../` are text: the storyboard validates, plans and enqueues, and every file a step writes is named
    from the safe names only and lands directly in the run's deliverables folder."""
    SENTINEL.unlink(missing_ok=True)
    checked = farm("validate", METACHARS, "--registry", VALID_REGISTRY)
    assert checked.exit_code == 0, checked.output
    for line in checked.stdout.splitlines():
        assert not CONTROL.search(line), line

    episode = load_episode(METACHARS, VALID_REGISTRY)
    assert "$(touch" in episode.storyboard.title
    plan = build_plan(episode)
    out = tmp_path / "out"
    folder = deliverables_dir(out, plan).resolve()
    assert folder.is_relative_to(out.resolve())
    for step in plan.steps:
        assert re.fullmatch(r"[0-9a-f]{16}", step.id), step.id  # the artifact store's key
        for name in step.outputs:
            assert SAFE_FILE_NAME.fullmatch(name), (step.id, name)
            assert (folder / name).resolve().parent == folder, (step.id, name)

    submitted = farm("submit", METACHARS, "--registry", VALID_REGISTRY, "--out", out, env=farm_env)
    assert submitted.exit_code == 0, submitted.output
    run_id = submitted.stdout.strip()
    runs = RunStore(client)
    assert runs.exists(run_id)
    assert list(client.scan_iter("farm:*")), "the submit must be visible, or the refusals prove nothing"
    assert Path(runs.meta(run_id)["output_dir"]) == folder
    for step in runs.steps(run_id).values():
        for name in step.outputs:
            assert (folder / name).resolve().parent == folder, (step.id, name)
    assert not SENTINEL.exists(), "something ran a prompt through a shell"
