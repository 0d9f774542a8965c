"""The loopback fal emulator, driven only through the real fal-client 1.0.3 (patched per Option A)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fal_client
import fal_client.client
import httpx
import pytest
from PIL import Image

from emulators.fal_server import (
    FLUX2,
    SEEDVR,
    WAN,
    Z_IMAGE,
    Z_IMAGE_I2I,
    FalEmulator,
    Faults,
    patch_fal_client,
    payload_sha256,
    video_size,
)
from workers import media

ROOT = Path(__file__).resolve().parents[3]
KEY = "test-key"
SCALE = 0.002
"""Flux 2 takes 18 ms, WAN 49 frames 78 ms: fast, but every request still passes through each state."""
POLL = 0.005
SMALL = {"width": 96, "height": 160}

MakeEmulator = Callable[..., FalEmulator]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def make_emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[MakeEmulator]:
    """Start an emulator (stopped after the test) and point fal-client at it, restoring the globals."""
    started: list[FalEmulator] = []

    def make(**kwargs: Any) -> FalEmulator:
        emulator = FalEmulator(**{"latency_scale": SCALE, "key": KEY, **kwargs}).start()
        started.append(emulator)
        for name in ("QUEUE_URL_FORMAT", "RUN_URL_FORMAT", "REST_URL", "CDN_URL"):
            monkeypatch.setattr(fal_client.client, name, getattr(fal_client.client, name))
        patch_fal_client(emulator.url)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def emu(make_emulator: MakeEmulator) -> FalEmulator:
    return make_emulator()


@pytest.fixture
def client(emu: FalEmulator) -> fal_client.SyncClient:
    return fal_client.SyncClient(key=KEY)


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Set the client's own retry budget (MAX_ATTEMPTS is read at call time)."""
    return lambda count: monkeypatch.setattr(fal_client.client, "MAX_ATTEMPTS", count)


def png(size: tuple[int, int], colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def upload_png(client: fal_client.SyncClient, tmp_path: Path, size: tuple[int, int], colour: str) -> str:
    path = tmp_path / f"{colour}.png"
    path.write_bytes(png(size, colour))
    return client.upload_file(path)


def download(url: str, dest: Path) -> Path:
    response = httpx.get(url)
    response.raise_for_status()
    dest.write_bytes(response.content)
    return dest


def image_of(file: dict[str, Any], tmp_path: Path) -> tuple[int, int]:
    """Download an output image, check it against its file object, return its real size."""
    path = download(file["url"], tmp_path / file["file_name"])
    assert file["content_type"] == "image/png"
    assert file["file_size"] == path.stat().st_size
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert (file["width"], file["height"]) == image.size
        return image.size


def run(client: fal_client.SyncClient, endpoint: str, payload: dict[str, Any]) -> dict[str, Any]:
    """submit -> status until Completed -> result, the way the farm's adapter will drive it."""
    handle = client.submit(endpoint, payload)
    events = list(handle.iter_events(with_logs=True, interval=POLL))
    assert isinstance(events[-1], fal_client.Completed)
    assert all(isinstance(e, fal_client.Queued | fal_client.InProgress) for e in events[:-1])
    return handle.get(interval=POLL)


# storage ----------------------------------------------------------------------------------------------


def test_upload_file_round_trip(client: fal_client.SyncClient, emu: FalEmulator, tmp_path: Path) -> None:
    url = upload_png(client, tmp_path, (32, 48), "red")
    assert url.startswith(f"{emu.url}/files/") and url.endswith("-red.png")
    response = httpx.get(url)
    assert response.content == png((32, 48), "red")
    assert response.headers["content-type"] == "image/png"
    assert emu.calls()["token"] == 1 and emu.calls()["upload"] == 1


def test_upload_through_the_storage_fallback(client: fal_client.SyncClient, emu: FalEmulator) -> None:
    url = client.upload(b"hello", "text/plain", "note.txt", repository="fal")
    assert httpx.get(url).content == b"hello"
    assert emu.calls()["initiate"] == 1 and emu.calls()["put"] == 1


def test_wrong_key_fails_the_upload_with_401(emu: FalEmulator) -> None:
    # The token is fetched while the client builds its upload attempts, outside the fallback: a refused
    # token is a raw httpx.HTTPStatusError (not a FalClientHTTPError) and the storage fallback never runs.
    with pytest.raises(httpx.HTTPStatusError) as exc:
        fal_client.SyncClient(key="wrong").upload(b"x", "text/plain", "x.txt")
    assert exc.value.response.status_code == 401
    assert emu.calls() == {"token": 1}


# the five endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", [FLUX2, Z_IMAGE])
def test_text_to_image(client: fal_client.SyncClient, endpoint: str, tmp_path: Path) -> None:
    payload = {"prompt": "A lighthouse at dusk", "image_size": SMALL, "seed": 42, "loras": []}
    result = run(client, endpoint, payload)
    assert set(result) == {"images", "seed", "has_nsfw_concepts", "prompt", "timings"}
    (file,) = result["images"]
    assert image_of(file, tmp_path) == (96, 160)
    assert result["seed"] == 42 and result["has_nsfw_concepts"] == [False]
    assert result["prompt"] == payload["prompt"]


@pytest.mark.parametrize(
    ("endpoint", "size", "expected"), [(Z_IMAGE_I2I, None, (64, 112)), (FLUX2, SMALL, (96, 160))]
)
def test_image_to_image(
    client: fal_client.SyncClient,
    tmp_path: Path,
    endpoint: str,
    size: dict[str, int] | None,
    expected: tuple[int, int],
) -> None:
    source = upload_png(client, tmp_path, (64, 112), "red")
    payload: dict[str, Any] = {
        "prompt": "Same room, at night",
        "image_url": source,
        "strength": 0.5,
        "seed": 1,
    }
    if size is not None:
        payload["image_size"] = size
    (file,) = run(client, endpoint, payload)["images"]
    assert image_of(file, tmp_path) == expected


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, (128, 224)),
        ({"upscale_factor": 3}, (192, 336)),
        ({"upscale_mode": "target", "target_resolution": "720p"}, (720, 1260)),
    ],
)
def test_upscale(
    client: fal_client.SyncClient, tmp_path: Path, extra: dict[str, Any], expected: tuple[int, int]
) -> None:
    source = upload_png(client, tmp_path, (64, 112), "blue")
    result = run(client, SEEDVR, {"image_url": source, **extra})
    assert set(result) == {"image", "seed"}
    assert image_of(result["image"], tmp_path) == expected


def test_first_last_frame_video(client: fal_client.SyncClient, tmp_path: Path) -> None:
    first = upload_png(client, tmp_path, (72, 128), "red")
    last = upload_png(client, tmp_path, (72, 128), "blue")
    payload = {
        "prompt": "The keeper turns",
        "image_url": first,
        "end_image_url": last,
        "num_frames": 17,
        "frames_per_second": 16,
        "resolution": "480p",
        "aspect_ratio": "9:16",
        "seed": 5,
    }
    result = run(client, WAN, payload)
    assert set(result) == {"video", "seed", "prompt"} and result["seed"] == 5
    video = result["video"]
    assert video["content_type"] == "video/mp4"
    info = media.probe(download(video["url"], tmp_path / "clip.mp4"))
    assert (info.codec, info.frames, info.width, info.height) == ("h264", 17, 480, 854)
    assert info.fps == 16


def test_video_sizes() -> None:
    assert video_size("720p", "9:16", (1, 1)) == (720, 1280)
    assert video_size("480p", "9:16", (1, 1)) == (480, 854)
    assert video_size("480p", "16:9", (1, 1)) == (854, 480)
    assert video_size("720p", "auto", (300, 200)) == (1280, 720)


# the queue --------------------------------------------------------------------------------------------


def test_queue_states_in_order(make_emulator: MakeEmulator) -> None:
    make_emulator(latency_scale=0.2)  # Flux 2: 1.8 s, of which the first 0.18 s IN_QUEUE
    client = fal_client.SyncClient(key=KEY)
    first = client.submit(FLUX2, {"prompt": "one", "image_size": SMALL})
    assert first.status() == fal_client.Queued(position=0)
    second = client.submit(FLUX2, {"prompt": "two", "image_size": SMALL})
    assert second.status() == fal_client.Queued(position=1)
    early = second.client.get(second.response_url)  # the result GET alone, before Completed
    assert early.status_code == 400 and early.json() == {"detail": "Request is still in progress"}
    events = list(first.iter_events(interval=0.05))
    kinds = [type(event).__name__ for event in events]
    assert "InProgress" in kinds and kinds[-1] == "Completed"
    assert kinds == sorted(kinds, key=["Queued", "InProgress", "Completed"].index)
    completed = events[-1]
    assert isinstance(completed, fal_client.Completed)
    assert completed.logs == [] and completed.metrics == {"inference_time": pytest.approx(1.62)}


def test_ledger_counts_accepted_submits(client: fal_client.SyncClient, emu: FalEmulator) -> None:
    a = {"prompt": "a", "image_size": SMALL, "seed": 1}
    b = {"prompt": "b", "image_size": SMALL, "seed": 1}
    handles = [client.submit(FLUX2, a), client.submit(FLUX2, a), client.submit(Z_IMAGE, b)]
    ledger = emu.ledger()
    assert [e["request_id"] for e in ledger] == [h.request_id for h in handles]
    assert [e["endpoint"] for e in ledger] == [FLUX2, FLUX2, Z_IMAGE]
    assert ledger[0]["payload"] == a and ledger[0]["payload_sha256"] == payload_sha256(a)
    assert emu.submits_by_payload() == {payload_sha256(a): 2, payload_sha256(b): 1}
    assert httpx.get(f"{emu.url}/_ledger").json() == ledger


def test_submit_urls_use_owner_and_app(client: fal_client.SyncClient, emu: FalEmulator) -> None:
    handle = client.submit(WAN, {"prompt": "p", "image_url": "x", "num_frames": 17})
    assert handle.status_url == f"{emu.url}/fal-ai/wan/requests/{handle.request_id}/status"
    assert client.status(WAN, handle.request_id) is not None  # rebuilt from the id, same form


def test_wrong_key_is_401(emu: FalEmulator) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        fal_client.SyncClient(key="wrong-key").submit(FLUX2, {"prompt": "p"})
    assert exc.value.status_code == 401
    assert emu.ledger() == []


def test_missing_key_is_401(emu: FalEmulator) -> None:
    # fal-client cannot send a request without the header: key="" makes httpx refuse the value "Key "
    # (LocalProtocolError, which the client retries as a transport error), and no key at all raises
    # MissingCredentialsError before any request. So this one call is made with plain httpx.
    response = httpx.post(f"{emu.url}/{FLUX2}", json={"prompt": "p"})
    assert response.status_code == 401 and "detail" in response.json()
    assert emu.ledger() == []


def test_unknown_endpoint_and_request(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        client.submit("fal-ai/flux/dev", {"prompt": "p"})
    assert exc.value.status_code == 404
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        client.status(FLUX2, "no-such-request")
    assert exc.value.status_code == 404


def test_content_policy_is_a_422_after_completion(client: fal_client.SyncClient) -> None:
    handle = client.submit(Z_IMAGE, {"prompt": "a FORBIDDENWORD scene", "image_size": SMALL})
    assert isinstance(list(handle.iter_events(interval=POLL))[-1], fal_client.Completed)
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        handle.get()
    assert exc.value.status_code == 422
    details: Any = exc.value.message
    assert details[0]["type"] == "content_policy_violation" and details[0]["loc"] == ["body", "prompt"]


def test_echo_headers_keyword_refuses_the_submit_quoting_its_authorization(
    client: fal_client.SyncClient, emu: FalEmulator
) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        client.submit(Z_IMAGE, {"prompt": "ECHOHEADERS a scene", "image_size": SMALL})
    assert exc.value.status_code == 400 and f"Key {KEY}" in str(exc.value)
    assert emu.ledger() == [], "nothing was accepted, nothing is paid for"


def test_nsfw_keyword_flags_the_image(client: fal_client.SyncClient) -> None:
    result = run(client, FLUX2, {"prompt": "NSFWFLAG beach", "image_size": SMALL, "num_images": 2})
    assert result["has_nsfw_concepts"] == [True, True] and len(result["images"]) == 2


def test_missing_prompt_is_a_422(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        client.submit(FLUX2, {"image_size": SMALL}).get(interval=POLL)
    assert exc.value.status_code == 422
    details: Any = exc.value.message
    assert details[0]["type"] == "missing"


def test_cancel_before_start(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(latency_scale=1.0)  # Flux 2: IN_QUEUE for 0.9 s
    client = fal_client.SyncClient(key=KEY)
    handle = client.submit(FLUX2, {"prompt": "p", "image_size": SMALL})
    handle.cancel()
    assert isinstance(handle.status(), fal_client.Completed)
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        handle.get()
    assert exc.value.status_code == 400
    assert emu.calls()["cancel"] == 1


def test_cancel_after_completion_is_refused(client: fal_client.SyncClient) -> None:
    handle = client.submit(Z_IMAGE, {"prompt": "p", "image_size": SMALL})
    handle.get(interval=POLL)
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        handle.cancel()
    assert exc.value.status_code == 400 and "ALREADY_COMPLETED" in exc.value.response.text


def test_stalled_request_runs_until_cancelled(client: fal_client.SyncClient) -> None:
    handle = client.submit(Z_IMAGE, {"prompt": "STALLFOREVER", "image_size": SMALL})
    time.sleep(0.05)  # several times the 8 ms latency
    assert isinstance(handle.status(), fal_client.InProgress)
    handle.cancel()
    assert isinstance(handle.status(), fal_client.Completed)
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        handle.get()
    assert exc.value.status_code == 400


# faults -----------------------------------------------------------------------------------------------


def test_submit_429_carries_retry_after(
    client: fal_client.SyncClient, emu: FalEmulator, attempts: Callable[[int], None]
) -> None:
    attempts(1)
    emu.set_faults(Faults(submit_429_rate=1.0, retry_after_s=7))
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        client.submit(FLUX2, {"prompt": "p"})
    assert exc.value.status_code == 429 and exc.value.response_headers["retry-after"] == "7"
    assert emu.ledger() == []


def test_client_retries_429_on_its_own(
    client: fal_client.SyncClient, emu: FalEmulator, attempts: Callable[[int], None]
) -> None:
    attempts(3)
    emu.set_faults(Faults(submit_429_rate=1.0))
    with pytest.raises(fal_client.FalClientHTTPError):
        client.submit(FLUX2, {"prompt": "p"})
    assert emu.calls()["submit"] == 3  # the Retry-After value is not honoured: backoff is 0.1 s, 0.2 s


def test_submit_500_is_not_retried_and_not_recorded(client: fal_client.SyncClient, emu: FalEmulator) -> None:
    emu.set_faults(Faults(submit_5xx_rate=1.0))
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        client.submit(FLUX2, {"prompt": "p"})  # MAX_ATTEMPTS is still 10
    assert exc.value.status_code == 500
    assert emu.calls()["submit"] == 1 and emu.ledger() == []


def test_dropped_submit_response(
    client: fal_client.SyncClient, emu: FalEmulator, attempts: Callable[[int], None]
) -> None:
    attempts(1)
    emu.set_faults(Faults(drop_submit_response_rate=1.0))
    payload = {"prompt": "p", "image_size": SMALL}
    with pytest.raises(httpx.RemoteProtocolError):
        client.submit(FLUX2, payload)
    assert [entry["payload"] for entry in emu.ledger()] == [payload]


def test_dropped_submit_retried_by_the_client_duplicates_the_request(
    client: fal_client.SyncClient, emu: FalEmulator, attempts: Callable[[int], None]
) -> None:
    attempts(3)
    emu.set_faults(Faults(drop_submit_response_rate=1.0))
    payload = {"prompt": "p", "image_size": SMALL}
    with pytest.raises(httpx.TransportError):
        client.submit(FLUX2, payload)
    assert emu.submits_by_payload() == {payload_sha256(payload): 3}


def test_poll_faults(
    client: fal_client.SyncClient, emu: FalEmulator, attempts: Callable[[int], None]
) -> None:
    handle = client.submit(Z_IMAGE, {"prompt": "p", "image_size": SMALL})
    emu.set_faults(Faults(poll_5xx_rate=1.0))
    with pytest.raises(fal_client.FalClientHTTPError) as exc:
        handle.status()
    assert exc.value.status_code == 500
    emu.set_faults(Faults(drop_poll_response_rate=1.0))
    attempts(1)
    with pytest.raises(httpx.RemoteProtocolError):
        handle.status()
    assert len(emu.ledger()) == 1


def test_client_rides_through_dropped_and_throttled_polls(
    client: fal_client.SyncClient, emu: FalEmulator
) -> None:
    emu.set_faults(Faults(drop_poll_response_rate=0.2, poll_429_rate=0.2, retry_after_s=0, seed=7))
    result = client.submit(Z_IMAGE, {"prompt": "p", "image_size": SMALL}).get(interval=POLL)
    assert len(result["images"]) == 1


def test_slow_status(client: fal_client.SyncClient, emu: FalEmulator) -> None:
    handle = client.submit(Z_IMAGE, {"prompt": "p", "image_size": SMALL})
    emu.set_faults(Faults(slow_status_s=0.2))
    started = time.monotonic()
    handle.status()
    assert time.monotonic() - started >= 0.2


def test_faults_over_http(emu: FalEmulator) -> None:
    response = httpx.post(f"{emu.url}/_faults", json={"poll_429_rate": 0.5, "retry_after_s": 3})
    assert response.status_code == 200
    assert emu.faults == Faults(poll_429_rate=0.5, retry_after_s=3)
    assert httpx.get(f"{emu.url}/_faults").json()["poll_429_rate"] == 0.5
    assert httpx.post(f"{emu.url}/_faults", json={"nope": 1}).status_code == 400
    assert httpx.post(f"{emu.url}/_faults", json={"poll_5xx_rate": 2}).status_code == 400


# the command line -------------------------------------------------------------------------------------


def test_module_serves_until_terminated() -> None:
    cmd = [sys.executable, "-m", "emulators.fal_server", "--port", "0", "--latency-scale", "0.01"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("fal emulator on http://127.0.0.1:")
            url = line.removeprefix("fal emulator on ")
            assert httpx.get(f"{url}/_health").json() == {"ok": True}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0
