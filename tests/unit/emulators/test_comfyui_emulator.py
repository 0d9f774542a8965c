"""The loopback ComfyUI emulator, driven over HTTP with httpx the way the GPU pool's client will drive it."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.sync.client import connect

from emulators.comfyui_server import ComfyFaults, ComfyUIEmulator
from workers import media
from workers.base import StepJob
from workers.local import LocalBackend

ROOT = Path(__file__).resolve().parents[3]
FAST = ComfyFaults(run_seconds=0.01)
Graph = dict[str, Any]
MakeEmulator = Callable[..., ComfyUIEmulator]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


@pytest.fixture
def make_emulator(tmp_path: Path) -> Iterator[MakeEmulator]:
    started: list[ComfyUIEmulator] = []

    def make(faults: ComfyFaults = FAST) -> ComfyUIEmulator:
        emulator = ComfyUIEmulator(root=tmp_path / "comfy", faults=faults).start()
        started.append(emulator)
        return emulator

    yield make
    for emulator in started:
        emulator.stop()


@pytest.fixture
def comfy(make_emulator: MakeEmulator) -> ComfyUIEmulator:
    return make_emulator()


# graphs (API format, as the farm's workflow templates will look) ------------------------------------------


def t2i_graph(text: str = "a lighthouse at dusk", size: tuple[int, int] = (96, 64), seed: int = 7) -> Graph:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "model.safetensors"}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": size[0], "height": size[1], "batch_size": 1},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": seed,
                "steps": 8,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "denoise": 1.0,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "job1"}},
    }


def img2img_graph(image: str, denoise: float) -> Graph:
    graph = t2i_graph("the same lighthouse in snow")
    del graph["5"]
    graph["10"] = {"class_type": "LoadImage", "inputs": {"image": image}}
    graph["11"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["10", 0],
            "upscale_method": "lanczos",
            "width": 128,
            "height": 0,
            "crop": "disabled",
        },
    }
    graph["12"] = {"class_type": "VAEEncode", "inputs": {"pixels": ["11", 0], "vae": ["4", 2]}}
    graph["3"]["inputs"].update(latent_image=["12", 0], denoise=denoise)
    graph["9"]["inputs"]["filename_prefix"] = "shots/i2i"
    return graph


def advanced_sampler(model: list[Any], latent: list[Any], add_noise: str, steps: tuple[int, int]) -> Graph:
    """One stage of Wan 2.2's two-model sampling (high noise, then low noise)."""
    inputs = {
        "model": model,
        "add_noise": add_noise,
        "noise_seed": 3,
        "steps": 4,
        "cfg": 1.0,
        "sampler_name": "euler",
        "scheduler": "simple",
        "positive": ["10", 0],
        "negative": ["10", 1],
        "latent_image": latent,
        "start_at_step": steps[0],
        "end_at_step": steps[1],
        "return_with_leftover_noise": "enable" if add_noise == "enable" else "disable",
    }
    return {"class_type": "KSamplerAdvanced", "inputs": inputs}


def wan_graph(first: str, last: str, save: str) -> Graph:
    """Wan 2.2 first-last-frame: 48x32, 9 frames, saved by VHS_VideoCombine or CreateVideo + SaveVideo."""
    graph: Graph = {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "wan.safetensors", "weight_dtype": "default"},
        },
        "2": {"class_type": "CLIPLoader", "inputs": {"clip_name": "umt5.safetensors", "type": "wan"}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "wan_vae.safetensors"}},
        "4": {
            "class_type": "LoraLoaderModelOnly",
            "inputs": {"model": ["1", 0], "lora_name": "x", "strength_model": 1},
        },
        "5": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["4", 0], "shift": 8.0}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "waves roll in", "clip": ["2", 0]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "static", "clip": ["2", 0]}},
        "8": {"class_type": "LoadImage", "inputs": {"image": first}},
        "9": {"class_type": "LoadImage", "inputs": {"image": last}},
        "10": {
            "class_type": "WanFirstLastFrameToVideo",
            "inputs": {
                "positive": ["6", 0],
                "negative": ["7", 0],
                "vae": ["3", 0],
                "start_image": ["8", 0],
                "end_image": ["9", 0],
                "width": 48,
                "height": 32,
                "length": 9,
                "batch_size": 1,
            },
        },
        "11": advanced_sampler(["5", 0], ["10", 2], "enable", (0, 2)),
        "15": advanced_sampler(["5", 0], ["11", 0], "disable", (2, 4)),
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["15", 0], "vae": ["3", 0]}},
    }
    if save == "VHS_VideoCombine":
        graph["13"] = {
            "class_type": "VHS_VideoCombine",
            "inputs": {"images": ["12", 0], "frame_rate": 8, "loop_count": 0, "filename_prefix": "clip"},
        }
    else:
        graph["13"] = {"class_type": "CreateVideo", "inputs": {"images": ["12", 0], "fps": 8}}
        graph["14"] = {
            "class_type": "SaveVideo",
            "inputs": {"video": ["13", 0], "filename_prefix": "video/clip"},
        }
    return graph


# helpers --------------------------------------------------------------------------------------------------


def png(size: tuple[int, int], colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def upload(comfy: ComfyUIEmulator, name: str, data: bytes, **fields: str) -> dict[str, Any]:
    response = httpx.post(
        f"{comfy.url}/upload/image", files={"image": (name, data, "image/png")}, data=fields
    )
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def submit(comfy: ComfyUIEmulator, graph: Graph, prompt_id: str | None = None) -> str:
    body: dict[str, Any] = {"prompt": graph, "client_id": "worker-1"}
    if prompt_id is not None:
        body["prompt_id"] = prompt_id
    response = httpx.post(f"{comfy.url}/prompt", json=body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["node_errors"] == {} and isinstance(doc["number"], int)
    pid: str = doc["prompt_id"]
    return pid


def wait_entry(comfy: ComfyUIEmulator, prompt_id: str, timeout_s: float = 10.0) -> dict[str, Any]:
    """Poll /history/{id} until the run has finished, as the client will."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        doc = httpx.get(f"{comfy.url}/history/{prompt_id}").json()
        if doc:
            entry: dict[str, Any] = doc[prompt_id]
            return entry
        time.sleep(0.01)
    raise AssertionError(f"{prompt_id} did not finish in {timeout_s}s")


def wait_running(comfy: ComfyUIEmulator, prompt_id: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if [item[1] for item in httpx.get(f"{comfy.url}/queue").json()["queue_running"]] == [prompt_id]:
            return
        time.sleep(0.01)
    raise AssertionError(f"{prompt_id} did not start in {timeout_s}s")


def view(comfy: ComfyUIEmulator, record: dict[str, Any]) -> bytes:
    params = {"filename": record["filename"], "subfolder": record["subfolder"], "type": record["type"]}
    response = httpx.get(f"{comfy.url}/view", params=params)
    assert response.status_code == 200
    return response.content


def local_render(tmp_path: Path, kind: str, params: dict[str, Any], inputs: list[Path]) -> bytes:
    out = tmp_path / f"expected-{kind}.png"
    LocalBackend().run(StepJob("expected", kind, "local", None, params, inputs, [out]))
    return out.read_bytes()


# rendering ------------------------------------------------------------------------------------------------


def test_t2i_renders_the_requested_png(comfy: ComfyUIEmulator, tmp_path: Path) -> None:
    pid = submit(comfy, t2i_graph())
    entry = wait_entry(comfy, pid)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    names = [name for name, _ in entry["status"]["messages"]]
    assert names == ["execution_start", "execution_cached", "execution_success"]
    assert entry["prompt"][1] == pid and entry["prompt"][3] == {"client_id": "worker-1"}
    assert entry["prompt"][4] == ["9"] and entry["meta"]["9"]["node_id"] == "9"
    (record,) = entry["outputs"]["9"]["images"]
    assert record == {"filename": "job1_00001_.png", "subfolder": "", "type": "output"}
    data = view(comfy, record)
    assert data == (comfy.root / "output" / "job1_00001_.png").read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.size == (96, 64)
    params = {"prompt": "a lighthouse at dusk", "seed": 7, "width": 96, "height": 64}
    assert data == local_render(tmp_path, "t2i", params, [])  # text and seed come from the graph

    again = wait_entry(comfy, submit(comfy, t2i_graph()))
    assert again["outputs"]["9"]["images"][0]["filename"] == "job1_00002_.png"


def test_img2img_from_an_uploaded_input(comfy: ComfyUIEmulator, tmp_path: Path) -> None:
    source = png((64, 48), "teal")
    assert upload(comfy, "src.png", source) == {"name": "src.png", "subfolder": "", "type": "input"}
    assert upload(comfy, "src.png", source)["name"] == "src.png"  # identical content: reused
    assert upload(comfy, "src.png", png((8, 8), "red"))["name"] == "src (1).png"
    assert upload(comfy, "src.png", png((8, 8), "red"), overwrite="true")["name"] == "src.png"
    upload(comfy, "src.png", source, overwrite="1")

    pid = submit(comfy, img2img_graph("src.png", denoise=0.5))
    (record,) = wait_entry(comfy, pid)["outputs"]["9"]["images"]
    assert record == {"filename": "i2i_00001_.png", "subfolder": "shots", "type": "output"}
    data = view(comfy, record)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (128, 96)  # ImageScale width 128, height 0 keeps the 4:3 aspect
    params = {"prompt": "the same lighthouse in snow", "seed": 7, "width": 128, "height": 96, "strength": 0.5}
    assert data == local_render(tmp_path, "img2img", params, [comfy.root / "input" / "src.png"])


@pytest.mark.parametrize("save", ["VHS_VideoCombine", "SaveVideo"])
def test_wan_first_last_frame_makes_an_mp4(comfy: ComfyUIEmulator, tmp_path: Path, save: str) -> None:
    upload(comfy, "first.png", png((96, 64), "navy"), subfolder="ep1")
    upload(comfy, "last.png", png((96, 64), "orange"), subfolder="ep1")
    entry = wait_entry(comfy, submit(comfy, wan_graph("ep1/first.png", "ep1/last.png", save)))
    assert entry["status"]["status_str"] == "success", entry["status"]
    if save == "VHS_VideoCombine":
        (record,) = entry["outputs"]["13"]["gifs"]
        assert record["filename"] == "clip_00001.mp4" and record["subfolder"] == ""
        assert record["format"] == "video/h264-mp4" and record["frame_rate"] == 8
    else:
        output = entry["outputs"]["14"]
        (record,) = output["images"]
        assert output["animated"] == [True]
        assert record["filename"] == "clip_00001_.mp4" and record["subfolder"] == "video"
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(view(comfy, record))
    info = media.probe(clip)
    assert (info.codec, info.width, info.height, info.frames, info.fps) == ("h264", 48, 32, 9, 8.0)


# the queue ------------------------------------------------------------------------------------------------


def test_client_prompt_id_is_kept_and_a_repost_runs_nothing(comfy: ComfyUIEmulator) -> None:
    pid = submit(comfy, t2i_graph(), prompt_id="step-0042-attempt-1")
    assert pid == "step-0042-attempt-1"
    assert submit(comfy, t2i_graph(), prompt_id=pid) == pid  # still queued or running
    wait_entry(comfy, pid)
    reply = httpx.post(f"{comfy.url}/prompt", json={"prompt": t2i_graph(), "prompt_id": pid}).json()
    assert reply == {"prompt_id": pid, "number": 0, "node_errors": {}}  # in history
    time.sleep(0.1)
    assert comfy.executed() == [pid]
    assert len(list((comfy.root / "output").glob("job1_*.png"))) == 1
    assert list(httpx.get(f"{comfy.url}/history", params={"max_items": 5}).json()) == [pid]


def test_queue_interrupt_and_delete(make_emulator: MakeEmulator) -> None:
    comfy = make_emulator(ComfyFaults(run_seconds=5.0))
    running, pending = submit(comfy, t2i_graph()), submit(comfy, t2i_graph())
    wait_running(comfy, running)
    queue = httpx.get(f"{comfy.url}/queue").json()
    assert [item[1] for item in queue["queue_running"]] == [running]
    assert [item[1] for item in queue["queue_pending"]] == [pending]
    assert httpx.get(f"{comfy.url}/prompt").json() == {"exec_info": {"queue_remaining": 2}}

    assert httpx.post(f"{comfy.url}/queue", json={"delete": [pending]}).status_code == 200
    started = time.monotonic()
    assert httpx.post(f"{comfy.url}/interrupt").status_code == 200
    entry = wait_entry(comfy, running)
    assert time.monotonic() - started < 2
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    name, data = entry["status"]["messages"][-1]
    assert name == "execution_interrupted" and data["node_id"] == "3" and data["node_type"] == "KSampler"
    assert entry["outputs"] == {}
    assert httpx.get(f"{comfy.url}/queue").json() == {"queue_running": [], "queue_pending": []}
    assert httpx.get(f"{comfy.url}/history/{pending}").json() == {}
    assert comfy.executed() == [running]


def test_node_failure_keyword(comfy: ComfyUIEmulator) -> None:
    entry = wait_entry(comfy, submit(comfy, t2i_graph("a NODEFAIL cat")))
    status = entry["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    name, error = status["messages"][-1]
    assert name == "execution_error"
    assert (error["node_id"], error["node_type"], error["exception_type"]) == (
        "3",
        "KSampler",
        "RuntimeError",
    )
    assert "NODEFAIL" in error["exception_message"]
    assert entry["outputs"] == {}


def test_first_run_loads_models(make_emulator: MakeEmulator) -> None:
    load_s = 1.5  # well above what a warm 16x16 run takes on a busy machine (it took over 0.4 s under xdist)
    comfy = make_emulator(ComfyFaults(run_seconds=0.0, first_run_extra_s=load_s))
    assert httpx.get(f"{comfy.url}/system_stats").json()["devices"][0]["vram_total"] == 80 * 1024**3

    def timed() -> float:
        started = time.monotonic()
        wait_entry(comfy, submit(comfy, t2i_graph(size=(16, 16))))
        return time.monotonic() - started

    assert timed() >= load_s
    assert timed() < load_s
    assert (
        httpx.post(f"{comfy.url}/free", json={"unload_models": True, "free_memory": True}).status_code == 200
    )
    assert timed() >= load_s


def test_restart_forgets_history_but_keeps_files(comfy: ComfyUIEmulator) -> None:
    pid = submit(comfy, t2i_graph(), prompt_id="before-restart")
    (record,) = wait_entry(comfy, pid)["outputs"]["9"]["images"]
    url = comfy.url
    comfy.restart()
    assert comfy.url == url
    assert httpx.get(f"{url}/history/{pid}").json() == {}
    assert httpx.get(f"{url}/history").json() == {}
    assert view(comfy, record)  # the file survived
    assert submit(comfy, t2i_graph(), prompt_id=pid) == pid  # lost, so a resubmit runs again
    assert wait_entry(comfy, pid)["outputs"]["9"]["images"][0]["filename"] == "job1_00002_.png"
    assert comfy.executed() == [pid, pid]


# validation -----------------------------------------------------------------------------------------------


def post_error(comfy: ComfyUIEmulator, graph: Any) -> dict[str, Any]:
    response = httpx.post(f"{comfy.url}/prompt", json={"prompt": graph})
    assert response.status_code == 400
    doc: dict[str, Any] = response.json()
    return doc


def test_validation_errors(comfy: ComfyUIEmulator) -> None:
    unknown = t2i_graph()
    unknown["20"] = {"class_type": "MysteryNode", "inputs": {}}
    assert post_error(comfy, unknown)["error"]["type"] == "invalid_prompt"
    assert post_error(comfy, {"1": {"inputs": {}}})["error"]["type"] == "invalid_prompt"

    bad_link = t2i_graph()
    bad_link["8"]["inputs"]["samples"] = ["99", 0]
    doc = post_error(comfy, bad_link)
    assert doc["error"]["type"] == "prompt_outputs_failed_validation"
    assert doc["node_errors"]["8"]["class_type"] == "VAEDecode"
    assert doc["node_errors"]["8"]["dependent_outputs"] == ["9"]
    assert doc["node_errors"]["8"]["errors"][0]["type"] == "bad_linked_input"

    no_output = t2i_graph()
    del no_output["9"]
    assert post_error(comfy, no_output)["error"]["type"] == "prompt_no_outputs"

    missing_file = img2img_graph("never-uploaded.png", 0.5)
    assert (
        post_error(comfy, missing_file)["node_errors"]["10"]["errors"][0]["type"]
        == "custom_validation_failed"
    )

    comfy.set_faults(ComfyFaults(run_seconds=0.01, validation_error_class="CheckpointLoaderSimple"))
    doc = post_error(comfy, t2i_graph())
    (error,) = doc["node_errors"]["4"]["errors"]
    assert error["type"] == "value_not_in_list" and error["extra_info"]["input_name"] == "ckpt_name"
    assert comfy.executed() == []


# files, headers, prefixes ---------------------------------------------------------------------------------


def test_view_rejects_escapes(comfy: ComfyUIEmulator) -> None:
    (comfy.root / "secret.txt").write_text("no")

    def get(**params: str) -> int:
        return httpx.get(f"{comfy.url}/view", params=params).status_code

    assert get(filename="../secret.txt") == 400
    assert get(filename="/etc/passwd") == 400
    assert get(filename="secret.txt", subfolder="../..") == 403
    assert get(filename="nothing.png") == 404
    assert get(filename="x.png", type="models") == 400


def test_origin_check_and_api_prefix(comfy: ComfyUIEmulator) -> None:
    port = comfy.url.rsplit(":", 1)[1]
    assert (
        httpx.get(f"{comfy.url}/system_stats", headers={"Origin": "http://evil.example"}).status_code == 403
    )
    matching = {"Origin": f"http://127.0.0.1:{port}"}
    assert httpx.get(f"{comfy.url}/system_stats", headers=matching).status_code == 200
    assert httpx.get(f"{comfy.url}/api/system_stats").json()["devices"][0]["type"] == "cuda"
    info = httpx.get(f"{comfy.url}/api/object_info/KSampler").json()
    assert "seed" in info["KSampler"]["input"]["required"]
    assert httpx.get(f"{comfy.url}/object_info/MysteryNode").json() == {}
    assert "VHS_VideoCombine" in httpx.get(f"{comfy.url}/object_info").json()
    response = httpx.post(f"{comfy.url}/api/prompt", json={"prompt": t2i_graph(size=(16, 16))})
    assert response.status_code == 200
    assert wait_entry(comfy, response.json()["prompt_id"])["status"]["completed"] is True


# the command line -----------------------------------------------------------------------------------------


def test_module_serves_until_terminated(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "emulators.comfyui_server", "--root", str(tmp_path), "--port", "0"]
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            assert line.startswith("comfyui emulator on http://127.0.0.1:")
            url = line.removeprefix("comfyui emulator on ")
            assert httpx.get(f"{url}/system_stats").json()["system"]["comfyui_version"]
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    assert proc.returncode == 0
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input", "output", "temp"]


# websocket -------------------------------------------------------------------------------------------------


def test_the_websocket_streams_a_runs_events_to_the_client_that_queued_it(
    make_emulator: MakeEmulator,
) -> None:
    comfy = make_emulator(ComfyFaults(run_seconds=0.2))
    ws_url = comfy.url.replace("http://", "ws://")
    with (
        connect(f"{ws_url}/ws?clientId=worker-1", proxy=None) as mine,
        connect(f"{ws_url}/ws?clientId=someone-else", proxy=None) as other,
    ):
        greeting = json.loads(mine.recv(timeout=5))
        assert greeting["type"] == "status" and greeting["data"]["sid"] == "worker-1"
        json.loads(other.recv(timeout=5))  # its own status
        prompt_id = submit(comfy, t2i_graph())  # queued by client "worker-1"
        events: list[dict[str, Any]] = []
        while not (events and events[-1]["type"] == "executing" and events[-1]["data"]["node"] is None):
            events.append(json.loads(mine.recv(timeout=5)))
        with pytest.raises(TimeoutError):
            other.recv(timeout=0.3)  # run events go only to the queuing client
    types = [e["type"] for e in events]
    assert types[:3] == ["execution_start", "execution_cached", "executing"]
    assert types[-3:] == ["executed", "execution_success", "executing"]
    assert all(e["data"]["prompt_id"] == prompt_id for e in events)
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert [p["value"] for p in progress] == list(range(1, progress[-1]["max"] + 1))
    assert progress[-1]["max"] == 8, "one event per sampler step"
    assert wait_entry(comfy, prompt_id)["status"]["status_str"] == "success"
