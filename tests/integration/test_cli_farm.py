"""The farm's commands as a user runs them: `farm render` on a fresh home, and `farm up` with Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from farm.config.settings import Settings
from farm.ops.supervisor import flower_credentials
from tests.conftest import EXAMPLE, Doc
from tests.integration.conftest import read_until
from tests.support.ports import free_port
from workers.media import probe


def farm_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(
        {"FARM_HOME": str(home), "FARM_REDIS_PORT": str(free_port()), "FARM_FLOWER_PORT": str(free_port())}
    )
    return env


def descendants(pid: int) -> set[int]:
    """Every process below `pid`, read from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_render_the_bundled_example_on_a_fresh_home(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "farm.cli", "render", str(EXAMPLE), "--out", str(out)],
        env=farm_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = dict(
        line.split(": ", 1)
        for line in result.stdout.splitlines()
        if line.startswith(("episode: ", "manifest: "))
    )
    episode, manifest = Path(lines["episode"]), Path(lines["manifest"])
    assert episode.parent == out / "lighthouse_keepers" / "ep_001" and manifest.exists()
    info = probe(episode)
    assert (info.codec, info.width, info.height) == ("h264", 720, 1280)
    clips = sorted(episode.parent.glob("*_clip.mp4"))
    assert len(clips) == 7
    assert abs(info.duration_s - sum(probe(c).duration_s for c in clips)) <= 0.2


def test_up_starts_everything_and_ctrl_c_leaves_no_process(tmp_path: Path) -> None:
    """With FARM_METRICS_PORT, /metrics too: on loopback, behind a generated scrape password."""
    env = {**farm_env(tmp_path / "home"), "FARM_METRICS_PORT": str(free_port())}
    with subprocess.Popen(
        [sys.executable, "-m", "farm.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        seen = read_until(process, "metrics ")  # the whole line: read line by line
        children = descendants(process.pid)
        assert len(children) >= 5, "redis-server, three workers (with pool children) and flower"
        words = seen.split("metrics ", 1)[1].split()
        url, user, password = words[0], words[2], words[4]
        assert url.startswith("http://127.0.0.1:") and user == "prometheus"
        assert httpx.get(url, timeout=10).status_code == 401
        assert httpx.get(url, auth=(user, password), timeout=10).status_code == 200
        redis_password = json.loads((tmp_path / "home" / "redis.json").read_text())["password"]
        assert redis_password not in seen and "broker  redis://***@127.0.0.1:" in seen
        process.send_signal(signal.SIGINT)
        assert process.wait(90) == 0
        seen += process.stdout.read() if process.stdout else ""
    assert "farm stopped" in seen
    time.sleep(0.5)
    assert [pid for pid in children if alive(pid)] == []


def test_flower_password_is_generated_once_and_kept_private(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path)
    user, password, generated = flower_credentials(settings)
    assert generated and len(password) >= 16
    assert (tmp_path / "flower.json").stat().st_mode & 0o077 == 0
    assert flower_credentials(settings) == (user, password, False)


def test_render_with_the_fal_emulator(tmp_path: Path, sample_doc: Doc, registry_doc: Doc) -> None:
    small = {**sample_doc, "shots": [s for s in sample_doc["shots"] if s["shot"] in (1, 6)]}
    (tmp_path / "storyboard.json").write_text(json.dumps(small))
    (tmp_path / "lora_registry.json").write_text(json.dumps(registry_doc))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "farm.cli",
            "render",
            str(tmp_path / "storyboard.json"),
            "--fal-emulator",
            "--fal-latency-scale",
            "0.01",
            "--out",
            str(tmp_path / "out"),
        ],
        env=farm_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "fal     emulator on http://127.0.0.1:" in result.stdout
    manifest_path = next(
        line[len("manifest: ") :] for line in result.stdout.splitlines() if line.startswith("manifest: ")
    )
    manifest = json.loads(Path(manifest_path).read_text())
    paid = [row for row in manifest["steps"] if row["kind"] == "t2i"]
    assert paid and all(row["backend"] == "fal" and row["provider"]["request_id"] for row in paid)
    assert manifest["cost_usd"]["actual"] == manifest["cost_usd"]["estimated"] > 0


def test_previz_renders_one_small_frame_per_shot_and_a_contact_sheet(
    tmp_path: Path, sample_path: Path
) -> None:
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "farm.cli", "previz", str(sample_path), "--out", str(out)],
        env=farm_env(tmp_path / "home"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    folder = out / "previz" / "leviathan" / "ep_001"
    previz = json.loads((folder / "previz_manifest.json").read_text())
    shots = previz["shots"]
    assert [s["shot"] for s in shots] == list(range(1, 11)), "one frame per shot"
    assert all(s["engine"] == "z_image_turbo" and s["steps"] == 8 and s["size"] == [512, 896] for s in shots)
    for shot in shots:
        with Image.open(folder / shot["file"]) as frame:
            assert frame.size == (512, 896)
    assert previz["cost_usd"]["estimated"] == pytest.approx(10 * 0.005)
    with Image.open(folder / "contact_sheet.png") as sheet:
        assert sheet.size == (5 * 160, 2 * (280 + 22))
    page = (folder / "contact_sheet.html").read_text()
    assert page.count("<figure>") == 10 and shots[0]["file"] in page
    assert not (out / "leviathan").exists(), "previz never writes into the episode's own folder"
