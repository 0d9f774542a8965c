"""The dailies page against a real Redis: what a card shows, the static contact sheet on disk, and the
server's rules (a session for every request, bought once with the printed key; fresh GETs, token-only POSTs,
its own Host, only the run's own files)."""

from __future__ import annotations

import html
import http.client
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote, unquote

import httpx
import pytest
import redis
from PIL import Image
from typer.testing import CliRunner

from farm.cli.app import app
from farm.dailies.page import write_page
from farm.dailies.server import ACTION_PATH, KEY_PARAM, TOKEN_HEADER, DailiesServer
from farm.dailies.sheet import FRAME_ROLES, Card, Dailies, gather
from farm.dailies.thumbs import THUMB_EDGE
from farm.planning.plan import Step, StepKind
from farm.runs import review
from farm.runs.retake import Changes, retake
from farm.runs.state import RunStore
from tests.conftest import ROOT, Doc
from tests.integration.conftest import read_until
from tests.integration.dailies_support import (
    RecordingSender,
    drain,
    finish,
    finish_keyframes,
    run_of,
    serving,
    signed_in,
    submit,
    submit_for_review,
)
from workers.media import probe

HOSTILE_IMAGE = "<script>alert('frame')</script>"
HOSTILE_MOTION = '<img src=x onerror="alert(1)">'
HOSTILE_TITLE = 'Pressure <i>&</i> "Depth"'


class Tags(HTMLParser):
    """Start tags in document order, with their attributes."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, {name: value or "" for name, value in attrs}))

    def all(self, tag: str) -> list[dict[str, str]]:
        return [attrs for name, attrs in self.tags if name == tag]

    def pictures(self) -> list[tuple[str, str]]:
        """(link, thumbnail) of every linked image."""
        return [
            (attrs["href"], self.tags[i + 1][1]["src"])
            for i, (name, attrs) in enumerate(self.tags[:-1])
            if name == "a" and self.tags[i + 1][0] == "img"
        ]


@pytest.fixture
def runs(client: redis.Redis) -> RunStore:
    return RunStore(client)


@pytest.fixture
def sender() -> RecordingSender:
    return RecordingSender()


@pytest.fixture
def review_run(runs: RunStore, sender: RecordingSender, sample_path: Path, tmp_path: Path) -> str:
    """The sample submitted with --review, its keyframes rendered: every shot's video is held."""
    run_id = submit_for_review(runs, sender, sample_path, tmp_path / "out")
    assert runs.meta(run_id)["status"] == "review"
    return run_id


@pytest.fixture
def server(runs: RunStore, sender: RecordingSender, review_run: str) -> Iterator[DailiesServer]:
    with serving(DailiesServer(runs, sender, review_run, "127.0.0.1", 0)) as running:
        yield running


def card(dailies: Dailies, shot: int) -> Card:
    return next(c for c in dailies.cards if c.shot == shot)


def shot_steps(runs: RunStore, run_id: str, shot: int, *kinds: StepKind) -> list[Step]:
    return [s for s in runs.steps(run_id).values() if s.shot == shot and s.kind in kinds]


def first_shot(runs: RunStore, run_id: str, kind: StepKind, role: str | None = None) -> int:
    steps = runs.steps(run_id).values()
    shot = next(s.shot for s in steps if s.kind is kind and role in (None, s.role))
    assert shot is not None
    return shot


def fits(thumb: tuple[int, int], source: tuple[int, int]) -> bool:
    """`thumb` is `source` shrunk (never enlarged) to fit the thumbnail box, its aspect ratio kept."""
    scale = min(1.0, THUMB_EDGE / max(source))
    return all(abs(t - s * scale) <= 1 for t, s in zip(thumb, source, strict=True))


def review_snapshot(runs: RunStore, run_id: str) -> tuple[dict[int, str], dict[str, str], set[str]]:
    return runs.reviews(run_id), runs.states(run_id), runs.gated(run_id)


# what the page shows --------------------------------------------------------------------------------------


def hostile_storyboard(edit: Callable[[], Doc], write_episode: Callable[..., Path]) -> Path:
    doc = edit()
    doc["title"] = HOSTILE_TITLE
    image_shot, motion_shot = doc["shots"][0], next(s for s in doc["shots"] if s.get("motion_prompt"))
    image_shot["first_frame"] = f"{HOSTILE_IMAGE} {image_shot['first_frame']}"
    motion_shot["motion_prompt"] = f"{HOSTILE_MOTION} {motion_shot['motion_prompt']}"
    path: Path = write_episode(doc)
    return path


def test_the_contact_sheet_has_a_card_per_shot_with_thumbnails_a_clip_poster_and_escaped_text(
    runs: RunStore,
    sender: RecordingSender,
    edit: Callable[[], Doc],
    write_episode: Callable[..., Path],
    tmp_path: Path,
) -> None:
    plan = submit(runs, sender, hostile_storyboard(edit, write_episode), tmp_path / "out", review=True)
    run_id = run_of(runs)
    finish_keyframes(runs, run_id)
    held_shot = first_shot(runs, run_id, StepKind.KEN_BURNS)
    released = review.approve(runs, sender, run_id, [held_shot])
    finish(runs, run_id, [runs.step(run_id, i) for i in released.steps])

    dailies = gather(runs, run_id)
    index = write_page(dailies)
    page = index.read_text("utf-8")
    tags = Tags(page)

    assert [int(a["data-shot"]) for a in tags.all("article")] == [s.shot for s in plan.shots]
    assert len(tags.all("script")) == 1, "the page's own script, and nothing a prompt smuggled in"
    prompts = [str(s.params.get("prompt", "")) for s in plan.steps]
    for hostile in (HOSTILE_IMAGE, HOSTILE_MOTION):
        compiled = next(p for p in prompts if hostile in p)
        assert hostile not in page and html.escape(compiled) in page
    assert HOSTILE_TITLE not in page and html.escape(HOSTILE_TITLE) in page
    assert run_id in page and dailies.status == "review" and "review" in page

    links = [*(a["href"] for a in tags.all("a")), *(i["src"] for i in tags.all("img"))]
    assert links and all(not link.startswith(("http:", "https:", "//", "/")) for link in links), "local only"
    for link in links:
        assert (index.parent / unquote(link)).is_file(), f"{link} leads nowhere"

    shown = {m.name for c in dailies.cards for m in (*c.frames, *([c.clip] if c.clip else []))}
    pictures = tags.pictures()
    assert {unquote(href).removeprefix("../") for href, _ in pictures} == shown
    for href, src in pictures:
        source, thumb = index.parent / unquote(href), index.parent / unquote(src)
        with Image.open(thumb) as small:
            assert small.format == "JPEG"
            if source.suffix == ".mp4":
                info = probe(source)
                assert fits(small.size, (info.width, info.height)), (small.size, info)
            else:
                with Image.open(source) as frame:
                    assert fits(small.size, frame.size), (small.size, frame.size)

    clip = card(dailies, held_shot).clip
    assert clip is not None and clip.present and f'href="../{quote(clip.name)}"' in page
    assert card(dailies, held_shot).review == "approved"
    buttons = tags.all("button")
    assert buttons and all("disabled" in b for b in buttons), "a file on disk cannot act"
    assert not [m for m in tags.all("meta") if m.get("name") == "farm-token"]
    assert f"farm dailies {run_id} --serve" in page


def test_keyframes_are_the_upscales_once_done_else_the_images_generated_for_them(
    runs: RunStore, sender: RecordingSender, sample_path: Path, tmp_path: Path
) -> None:
    submit(runs, sender, sample_path, tmp_path / "out", review=True)
    run_id = run_of(runs)
    hero_shot = first_shot(runs, run_id, StepKind.T2I, "hero")
    triptych = first_shot(runs, run_id, StepKind.SPLIT)

    def frames(shot: int) -> list[str]:
        return [m.name for m in card(gather(runs, run_id), shot).frames]

    images = shot_steps(runs, run_id, hero_shot, StepKind.T2I, StepKind.IMG2IMG)
    generated = {s.role: s.outputs[0] for s in images}
    assert frames(hero_shot) == [] and card(gather(runs, run_id), hero_shot).review == "pending"
    finish(runs, run_id, images)
    assert frames(hero_shot) == [generated[role] for role in FRAME_ROLES if role in generated]

    upscales = shot_steps(runs, run_id, hero_shot, StepKind.UPSCALE)
    finish(runs, run_id, upscales)
    upscaled = {s.role: s.outputs[0] for s in upscales}
    assert "hero" in generated and "hero" not in upscaled, "a standard hero is used as generated"
    assert frames(hero_shot) == [upscaled.get(r) or generated[r] for r in FRAME_ROLES if r in generated]

    (strip,) = shot_steps(runs, run_id, triptych, StepKind.T2I)
    finish(runs, run_id, [strip])
    assert frames(triptych) == [strip.outputs[0]], "the strip stands in until its panels are upscaled"
    panels = shot_steps(runs, run_id, triptych, StepKind.UPSCALE)
    finish(runs, run_id, shot_steps(runs, run_id, triptych, StepKind.SPLIT) + panels)
    by_role = {s.role: s.outputs[0] for s in panels}
    assert frames(triptych) == [by_role[r] for r in FRAME_ROLES if r in by_role]

    shown = card(gather(runs, run_id), hero_shot)
    (video,) = shot_steps(runs, run_id, hero_shot, StepKind.VIDEO)
    assert shown.review == "generated" and shown.state == "held" and shown.clip is None
    assert shown.take == 1 and shown.earlier == ()
    assert shown.image_prompts == tuple((s.role, s.params["prompt"]) for s in images)
    assert shown.motion_prompt == video.params["prompt"]
    assert dict(shown.seeds) == {s.role: s.params["seed"] for s in [*images, video]}
    assert set(shown.engines) == {s.engine for s in [*images, *upscales, video]}


def test_a_retaken_shot_shows_its_take_and_links_the_files_of_earlier_takes(
    runs: RunStore, sender: RecordingSender, sample_path: Path, sample_doc: Doc, tmp_path: Path
) -> None:
    submit(runs, sender, sample_path, tmp_path / "out", review=False)
    run_id = run_of(runs)
    drain(runs, run_id)
    shot = first_shot(runs, run_id, StepKind.T2I, "hero")
    entry = next(s for s in sample_doc["shots"] if s["shot"] == shot)
    retake(
        runs, sender, run_id, {shot: Changes({"last": f"{entry['last_frame']} Her breath fogs the glass."})}
    )

    dailies = gather(runs, run_id)
    shown = card(dailies, shot)
    replaced = [s for s in runs.history(run_id) if s.shot == shot]
    assert replaced and shown.take == runs.takes(run_id)[shot] > 1
    (earlier,) = shown.earlier
    assert earlier.take == 1 and {m.name for m in earlier.files} == {n for s in replaced for n in s.outputs}
    assert not dailies.review and shown.review == ""

    page = write_page(dailies).read_text("utf-8")
    assert f"T01 ({len(earlier.files)} files)" in page and f"T{shown.take:02d}" in page
    for media in earlier.files:
        assert f'href="../{quote(media.name)}"' in page
    assert not Tags(page).all("button"), "nothing to approve in a run submitted without --review"
    assert "not submitted with --review" in page


# the server -----------------------------------------------------------------------------------------------


def test_every_get_rebuilds_the_page_from_redis_with_the_sessions_token_and_changes_nothing(
    runs: RunStore, server: DailiesServer, review_run: str
) -> None:
    before = review_snapshot(runs, review_run)
    with signed_in(server) as web:
        assert web.get("/").headers["location"] == "/dailies/"
        reply = web.get("/dailies/")
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in reply.headers["content-security-policy"]
        tags = Tags(reply.text)
        assert [m["content"] for m in tags.all("meta") if m.get("name") == "farm-token"] == [server.token]
        assert tags.all("button") and not any("disabled" in b for b in tags.all("button"))
        assert review_snapshot(runs, review_run) == before, "a GET changes nothing"

        shot = min(review.shot_states(runs, review_run))
        review.mark(runs, review_run, [shot], "needs_review")
        fresh = Tags(web.get("/dailies/index.html").text)
        badges = [a for a in fresh.all("span") if a.get("data-field") == "review"]
        assert "review-needs_review" in badges[0]["class"], "the page is read again on every GET"
        _, thumb = fresh.pictures()[0]
        picture = web.get(f"/dailies/{thumb}")
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"


def test_a_post_without_the_token_or_from_another_host_is_refused_and_changes_nothing(
    runs: RunStore, sender: RecordingSender, server: DailiesServer, review_run: str
) -> None:
    before, sent = review_snapshot(runs, review_run), list(sender.sent)
    shot = min(review.shot_states(runs, review_run))
    action = {"shot": shot, "action": "approve"}
    with signed_in(server) as web:
        assert web.post(ACTION_PATH, json=action).status_code == 403
        assert web.post(ACTION_PATH, json=action, headers={TOKEN_HEADER: "guess"}).status_code == 403
        rebound = {TOKEN_HEADER: server.token, "Host": f"attacker.example:{server.server_address[1]}"}
        assert web.post(ACTION_PATH, json=action, headers=rebound).status_code == 400
        assert web.get("/dailies/", headers={"Host": "attacker.example"}).status_code == 400
        assert web.get(ACTION_PATH, params={"shot": shot, "action": "approve"}).status_code == 405
    assert review_snapshot(runs, review_run) == before and sender.sent == sent


def test_nothing_is_served_without_the_session_the_printed_one_time_key_buys_on_this_host_only(
    runs: RunStore, sender: RecordingSender, server: DailiesServer, review_run: str
) -> None:
    frame = next(s.outputs[0] for s in runs.steps(review_run).values() if s.kind is StepKind.UPSCALE)
    paths = ["/", "/dailies/", "/dailies/index.html", f"/{quote(frame)}", "/dailies/thumbs/x.jpg"]
    key = server.login_url.partition(f"?{KEY_PARAM}=")[2]
    before, sent = review_snapshot(runs, review_run), list(sender.sent)
    with httpx.Client(base_url=f"http://{server.authority}") as stranger:
        for path in paths:
            refused = stranger.get(path)
            assert refused.status_code == 403 and frame.encode() not in refused.content, path
        forged = {"Cookie": f"{server.cookie_name}=guess"}
        assert stranger.get("/dailies/", headers=forged).status_code == 403
        assert stranger.get("/dailies/", params={KEY_PARAM: "guess"}).status_code == 403
        rebound = {"Host": f"attacker.example:{server.server_address[1]}"}
        assert stranger.get("/dailies/", params={KEY_PARAM: key}, headers=rebound).status_code == 400
        action = {"shot": min(review.shot_states(runs, review_run)), "action": "approve"}
        with_token = {TOKEN_HEADER: server.token}
        assert stranger.post(ACTION_PATH, json=action, headers=with_token).status_code == 403
        assert not stranger.cookies
    assert review_snapshot(runs, review_run) == before and sender.sent == sent

    with httpx.Client(base_url=f"http://{server.authority}") as reviewer:
        opened = reviewer.get("/dailies/", params={KEY_PARAM: key})  # not spent by the other Host's request
        assert opened.status_code == 303 and opened.headers["location"] == "/dailies/"
        cookie = opened.headers["set-cookie"]
        assert cookie.startswith(f"{server.cookie_name}={server.session};") and key not in cookie
        assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= {part.strip() for part in cookie.split(";")}
        assert reviewer.get("/dailies/").status_code == 200
        assert reviewer.get(f"/{quote(frame)}").status_code == 200
        assert reviewer.get("/dailies/", params={KEY_PARAM: key}).status_code == 303, "signed in already"
    with httpx.Client(base_url=f"http://{server.authority}") as late:
        assert late.get("/dailies/", params={KEY_PARAM: key}).status_code == 403, "the key works once"
        assert late.get("/dailies/").status_code == 403


def test_approve_releases_the_shots_held_video_and_the_other_keys_record_a_decision(
    runs: RunStore, sender: RecordingSender, server: DailiesServer, review_run: str
) -> None:
    first, second, third, *_ = sorted(review.shot_states(runs, review_run))
    held = {i for i in runs.gated(review_run) if runs.step(review_run, i).shot == first}
    headers = {TOKEN_HEADER: server.token}
    with signed_in(server, headers=headers) as web:
        approved = web.post(ACTION_PATH, json={"shot": first, "action": "approve"})
        retaken = web.post(ACTION_PATH, json={"shot": second, "action": "retake"})
        flagged = web.post(ACTION_PATH, json={"shot": third, "action": "needs_review"})
        incomplete = web.post(ACTION_PATH, json={"shot": first})
        unknown = web.post(ACTION_PATH, json={"shot": first, "action": "delete"})
        no_shot = web.post(ACTION_PATH, json={"shot": 10_000, "action": "approve"})
        bad = web.post(ACTION_PATH, content=b"approve everything")
    assert approved.status_code == 200 and approved.json()["review"] == "approved"
    assert approved.json()["state"] == "running" and approved.json()["message"].startswith("approved")
    assert retaken.json()["review"] == "retake" and flagged.json()["review"] == "needs_review"
    assert incomplete.status_code == unknown.status_code == bad.status_code == 400
    assert no_shot.status_code == 404 and "no shot" in no_shot.json()["error"]
    assert runs.reviews(review_run) == {first: "approved", second: "retake", third: "needs_review"}
    states = runs.states(review_run)
    assert held and all(states[i] == "queued" for i in held) and held <= set(sender.sent)
    assert not held & runs.gated(review_run)


def test_only_the_runs_own_outputs_are_served_whatever_the_path(
    runs: RunStore, server: DailiesServer, review_run: str
) -> None:
    output_dir = Path(runs.meta(review_run)["output_dir"])
    frame = next(s.outputs[0] for s in runs.steps(review_run).values() if s.kind is StepKind.UPSCALE)
    (output_dir / "notes.txt").write_text("not an output of the run")
    with signed_in(server) as web:
        served = web.get(f"/{quote(frame)}")
        assert served.status_code == 200 and served.headers["content-type"] == "image/png"
        assert served.content == (output_dir / frame).read_bytes()
        encoded = ["/notes.txt", "/%2e%2e%2f%2e%2e%2fetc%2fpasswd", f"/%2F{quote(str(output_dir / frame))}"]
        encoded.append(f"/dailies/thumbs/..%2f..%2f{quote(frame)}")
        for path in encoded:
            assert web.get(path).status_code == 404, path
    raw = ["/../../etc/passwd", f"/dailies/thumbs/../../{frame}", f"/dailies/../{frame}/../notes.txt"]
    for path in raw:  # sent exactly as written: httpx would resolve the dots first
        connection = http.client.HTTPConnection(server.authority)
        session = f"{server.cookie_name}={server.session}"
        connection.request("GET", path, headers={"Host": server.authority, "Cookie": session})
        assert connection.getresponse().status == 404, path
        connection.close()


def test_a_run_submitted_without_review_has_nothing_to_approve(
    runs: RunStore, sender: RecordingSender, sample_path: Path, tmp_path: Path
) -> None:
    submit(runs, sender, sample_path, tmp_path / "out", review=False)
    run_id = run_of(runs)
    with (
        serving(DailiesServer(runs, sender, run_id, "127.0.0.1", 0)) as server,
        signed_in(server, headers={TOKEN_HEADER: server.token}) as web,
    ):
        shot = min(c.shot for c in gather(runs, run_id).cards)
        refused = web.post(ACTION_PATH, json={"shot": shot, "action": "approve"})
    assert refused.status_code == 409 and "--review" in refused.json()["error"]
    assert runs.reviews(run_id) == {}


# the command ----------------------------------------------------------------------------------------------


def test_the_command_writes_the_page_and_refuses_unknown_runs_and_non_loopback_hosts(
    runs: RunStore, review_run: str, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FARM_REDIS_URL", redis_url)
    written = CliRunner().invoke(app, ["dailies", review_run])
    assert written.exit_code == 0, written.output
    index = Path(written.output.strip())
    assert index.name == "index.html" and index.is_file() and review_run in index.read_text("utf-8")
    assert CliRunner().invoke(app, ["dailies", "no-such-run"]).exit_code == 2
    exposed = CliRunner().invoke(app, ["dailies", review_run, "--serve", "--host", "0.0.0.0"])
    assert exposed.exit_code == 2 and "loopback" in exposed.output


def test_serve_prints_its_url_and_stops_cleanly_on_ctrl_c(review_run: str, redis_url: str) -> None:
    env = {**os.environ, "FARM_REDIS_URL": redis_url}
    command = [sys.executable, "-m", "farm.cli", "dailies", review_run, "--serve"]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT
    ) as child:
        try:
            banner = read_until(child, "(Ctrl-C stops)", timeout_s=30)
            url = next(word for word in banner.split() if word.startswith("http://"))
            assert "/dailies/?key=" in url
            with httpx.Client(follow_redirects=True) as browser:
                assert browser.get(url).status_code == 200
            assert httpx.get(url).status_code == 403, "the key was used"
            child.send_signal(signal.SIGINT)
            rest, _ = child.communicate(timeout=10)
        finally:
            child.kill()
    assert child.returncode == 0 and "stopped" in rest
    with pytest.raises(httpx.ConnectError):
        httpx.get(url)
