"""A loopback emulator of fal.ai's queue and storage HTTP protocol (as spoken by fal-client 1.0.3).

It follows the project's protocol note (shared/protocols/fal.md): submit, status, result and cancel on the
queue, the CDN token + upload pair and the storage-initiate fallback, with the five model endpoints the
engine cards use. Outputs are real files rendered by the embedded engine (`workers.local.LocalBackend`) and
served from `/files/<name>`, so a farm run against the emulator exercises downloads, probes and reuse for
real. Faults (5xx, 429 with Retry-After, dropped connections, slow status, requests that never finish)
are drawn from a seeded `random.Random`, so a failing test replays exactly.

Point the real client at it with `patch_fal_client(emulator.url)` (Option A of the protocol note), in
every process that calls fal, before the first upload.

Emulator-only routes: `GET /_health`, `GET /_ledger`, `GET|POST /_faults`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import copy
import dataclasses
import hashlib
import json
import logging
import mimetypes
import random
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, TypeGuard
from urllib.parse import parse_qs, urlsplit

import httpx
from PIL import Image

from emulators.http_base import POLL_INTERVAL_S as POLL_INTERVAL_S
from emulators.http_base import Call, EmulatorRequestHandler, EmulatorServer, LoopbackEmulator
from emulators.http_base import Reply as Reply
from emulators.http_base import json_reply as json_reply
from farm.episode.engine_cards import CARDS, Operation
from workers.base import BackendError, StepJob
from workers.local import LocalBackend

LOG = logging.getLogger(__name__)

FLUX2 = "fal-ai/flux-2/lora"
Z_IMAGE = "fal-ai/z-image/turbo/lora"
Z_IMAGE_I2I = "fal-ai/z-image/turbo/image-to-image/lora"
SEEDVR = "fal-ai/seedvr/upscale/image"
WAN = "fal-ai/wan/v2.2-a14b/image-to-video/lora"
IMAGE_ENDPOINTS = frozenset({FLUX2, Z_IMAGE, Z_IMAGE_I2I})
ENDPOINTS = IMAGE_ENDPOINTS | {SEEDVR, WAN}
"""The model endpoints the emulator serves; a submit to any other id is answered 404."""

IN_QUEUE, IN_PROGRESS, COMPLETED = "IN_QUEUE", "IN_PROGRESS", "COMPLETED"
QUEUE_SHARE = 0.1
"""The first 10% of a request's latency is spent IN_QUEUE, the rest IN_PROGRESS."""
DEFAULT_LATENCY_S = 5.0
"""Used only if an emulated endpoint has no engine card (the cards name all five today)."""

IMAGE_PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}
UPSCALE_TARGETS = {"720p": 720, "1080p": 1080, "1440p": 1440, "2160p": 2160}
VIDEO_RESOLUTIONS = {"480p": 480, "580p": 580, "720p": 720}
VIDEO_ASPECTS = ("auto", "16:9", "9:16", "1:1")

CONTENT_POLICY_MSG = (
    "The content could not be processed because it contained material flagged by a content checker."
)
NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
"""Names of stored files: no slashes, no leading dot, so a name can never leave the store."""
REQUEST_PATH = r"(?:/.*)?/requests/(?P<rid>[^/]+)"
"""Status, result and cancel route on `/requests/{id}` whatever comes before it (§2 of the note)."""
SUBMIT_PATH = r"/(?!_|storage/|files/)(?!.*/requests/)(?P<endpoint>.+)"
"""Any other POST is a submit; the endpoint id is the path without its leading slash."""


# faults ---------------------------------------------------------------------------------------------------


@dataclass
class Faults:
    """Injected failures. Rates are probabilities in [0, 1], drawn from `random.Random(seed)`.

    One draw decides each submit (5xx, then 429, then drop, by cumulative rate) and each status/result
    GET (drop, then 5xx, then 429), so for the same sequence of calls the same calls fail.
    """

    submit_5xx_rate: float = 0.0
    """POST submit answered 500; the request is not created (not in the ledger)."""
    submit_429_rate: float = 0.0
    """POST submit answered 429 with `Retry-After: <retry_after_s>`; the request is not created."""
    poll_5xx_rate: float = 0.0
    """Status/result GETs answered 500, with no state change."""
    poll_429_rate: float = 0.0
    drop_submit_response_rate: float = 0.0
    """The request IS created and recorded, then the connection is closed without any response."""
    drop_poll_response_rate: float = 0.0
    """Status/result connections closed without a response."""
    slow_status_s: float = 0.0
    """Sleep this long before answering each status request."""
    retry_after_s: float = 1.0
    never_complete_keyword: str = "STALLFOREVER"
    """A request whose prompt contains it stays IN_PROGRESS until cancelled."""
    seed: int = 1234

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name.endswith("_rate") and not 0.0 <= float(value) <= 1.0:
                raise ValueError(f"{item.name} must be in [0, 1], got {value!r}")
        if self.slow_status_s < 0 or self.retry_after_s < 0:
            raise ValueError("slow_status_s and retry_after_s must not be negative")


# replies --------------------------------------------------------------------------------------------------


def detail(status: int, message: str, **extra: Any) -> Reply:
    return json_reply(status, {"detail": message, **extra})


def validation_error(loc: str, message: str, error_type: str) -> Reply:
    """fal's model-error shape: a 422 whose `detail` is a list of error objects."""
    return json_reply(422, {"detail": [{"loc": ["body", loc], "msg": message, "type": error_type}]})


class ModelError(Exception):
    """A request the model refuses; becomes the result reply."""

    def __init__(self, loc: str, message: str, error_type: str = "value_error") -> None:
        super().__init__(message)
        self.reply = validation_error(loc, message, error_type)


def payload_sha256(payload: Mapping[str, Any]) -> str:
    """Hash of the canonical JSON of a submit body (sorted keys, no spaces), as the ledger records it."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# latency --------------------------------------------------------------------------------------------------


def _fal_operations() -> dict[str, list[Operation]]:
    ops: dict[str, list[Operation]] = {}
    for card in CARDS.values():
        for op in card.operations.values():
            if card.provider == "fal" and op.endpoint:
                ops.setdefault(op.endpoint, []).append(op)
    return ops


OPERATIONS = _fal_operations()


def typical_latency_s(endpoint: str, payload: Mapping[str, Any]) -> float:
    """The card's typical latency; an endpoint with per-length operations (WAN: 49 or 81 frames) uses the
    shortest operation that covers the requested `num_frames` (default 81), else the longest."""
    ops = OPERATIONS.get(endpoint)
    if not ops:
        return DEFAULT_LATENCY_S
    framed = sorted((op for op in ops if op.frames), key=lambda op: op.frames or 0)
    if not framed:
        return max(op.latency_s for op in ops)
    frames = payload.get("num_frames", 81)
    wanted = frames if isinstance(frames, int) else 81
    return next((op.latency_s for op in framed if wanted <= (op.frames or 0)), framed[-1].latency_s)


# sizes ----------------------------------------------------------------------------------------------------


def even(value: float) -> int:
    """Nearest even integer, at least 2 (H.264 4:2:0 and most models want even sides)."""
    return max(2, 2 * round(value / 2))


def image_size(value: Any, source: tuple[int, int] | None) -> tuple[int, int]:
    """`image_size` as a preset name, `auto` (the source's size) or `{width, height}`."""
    if value == "auto" and source is not None:
        return source
    if isinstance(value, str) and value in IMAGE_PRESETS:
        return IMAGE_PRESETS[value]
    if isinstance(value, dict):
        width, height = value.get("width"), value.get("height")
        if _positive_int(width) and _positive_int(height):
            return width, height
    raise ModelError("image_size", f"image_size must be one of {sorted(IMAGE_PRESETS)} or {{width, height}}")


def upscale_size(source: tuple[int, int], payload: Mapping[str, Any]) -> tuple[int, int]:
    """SeedVR's output size: the source times `upscale_factor`, or scaled so its short side is the
    `target_resolution`; both rounded to even numbers."""
    mode = payload.get("upscale_mode", "factor")
    if mode == "target":
        target = payload.get("target_resolution", "1080p")
        if target not in UPSCALE_TARGETS:
            raise ModelError("target_resolution", f"must be one of {list(UPSCALE_TARGETS)}", "literal_error")
        scale = UPSCALE_TARGETS[target] / min(source)
    elif mode == "factor":
        scale = _number(payload, "upscale_factor", 2.0, low=1.0, high=10.0)
    else:
        raise ModelError("upscale_mode", "must be 'factor' or 'target'", "literal_error")
    return even(source[0] * scale), even(source[1] * scale)


def video_size(resolution: Any, aspect_ratio: Any, first: tuple[int, int]) -> tuple[int, int]:
    """WAN's frame size: the resolution is the short side, 16:9 or 9:16 (rounded to even) or square;
    `auto` follows the first image's orientation."""
    if resolution not in VIDEO_RESOLUTIONS:
        raise ModelError("resolution", f"must be one of {list(VIDEO_RESOLUTIONS)}", "literal_error")
    if aspect_ratio not in VIDEO_ASPECTS:
        raise ModelError("aspect_ratio", f"must be one of {list(VIDEO_ASPECTS)}", "literal_error")
    short = VIDEO_RESOLUTIONS[resolution]
    long = even(short * 16 / 9)
    if aspect_ratio == "auto":
        aspect_ratio = "9:16" if first[0] < first[1] else "16:9" if first[0] > first[1] else "1:1"
    return {"9:16": (short, long), "16:9": (long, short)}.get(aspect_ratio, (short, short))


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _number(payload: Mapping[str, Any], key: str, default: float, *, low: float, high: float) -> float:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise ModelError(key, f"{key} must be a number in [{low:g}, {high:g}]")
    return float(value)


def _int_field(payload: Mapping[str, Any], key: str, default: int, *, low: int, high: int) -> int:
    value = payload.get(key, default)
    if not _positive_int(value) or not low <= value <= high:
        raise ModelError(key, f"{key} must be an integer in [{low}, {high}]")
    return int(value)


def _require_str(payload: Mapping[str, Any], key: str) -> str:
    value = payload.get(key)
    if value is None:
        raise ModelError(key, "Field required", "missing")
    if not isinstance(value, str) or not value.strip():
        raise ModelError(key, f"{key} must be a non-empty string", "string_type")
    return value


# file store -----------------------------------------------------------------------------------------------


class FileStore:
    """Uploads and rendered outputs, served at `{base_url}/files/<name>`."""

    def __init__(self, root: Path, base_url: str) -> None:
        self.root = root
        self.base_url = base_url
        self.root.mkdir(parents=True, exist_ok=True)
        self._types: dict[str, str] = {}
        self._lock = threading.Lock()

    def new_name(self, file_name: str | None, content_type: str) -> str:
        stem = re.sub(r"[^A-Za-z0-9._-]", "_", file_name or "").strip("._")[-80:]
        if not stem:
            stem = "upload" + (mimetypes.guess_extension(content_type) or ".bin")
        return f"{uuid.uuid4().hex[:12]}-{stem}"

    def put(self, name: str, data: bytes, content_type: str) -> None:
        self.path(name).write_bytes(data)
        self.register(name, content_type)

    def register(self, name: str, content_type: str) -> None:
        with self._lock:
            self._types[name] = content_type

    def path(self, name: str) -> Path:
        if not re.fullmatch(NAME, name):
            raise ValueError(f"bad file name {name!r}")
        return self.root / name

    def content_type(self, name: str) -> str | None:
        with self._lock:
            return self._types.get(name)

    def url(self, name: str) -> str:
        return f"{self.base_url}/files/{name}"

    def local(self, url: str) -> Path | None:
        """The stored file behind one of our own `/files/` URLs, or None if the URL is not ours."""
        prefix = f"{self.base_url}/files/"
        if not url.startswith(prefix):
            return None
        name = urlsplit(url).path.rsplit("/", 1)[-1]
        if self.content_type(name) is None:
            raise FileNotFoundError(name)
        return self.path(name)


def fetch_input(store: FileStore, url: Any, key: str, dest: Path) -> Path:
    """Make an input URL a local file: our own store directly, a `data:` URI decoded, else HTTP(S)."""
    if not isinstance(url, str) or not url:
        raise ModelError(key, "Field required", "missing")
    try:
        own = store.local(url)
        if own is not None:
            return own
        dest.write_bytes(_download(url))
    except (OSError, ValueError, httpx.HTTPError) as exc:
        raise ModelError(
            key, f"Failed to download the file from {key}: {exc}", "file_download_error"
        ) from exc
    return dest


def _download(url: str) -> bytes:
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        try:
            return base64.b64decode(data, validate=True) if header.endswith(";base64") else data.encode()
        except binascii.Error as exc:
            raise ValueError(f"bad data URI: {exc}") from exc
    if not url.startswith(("http://", "https://")):
        raise ValueError("only http(s) and data: URLs can be fetched")
    response = httpx.get(url, timeout=30.0, follow_redirects=True)
    response.raise_for_status()
    return response.content


def image_dimensions(path: Path, key: str) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ModelError(key, f"Failed to load the image from {key}: {exc}", "image_load_error") from exc


# rendering ------------------------------------------------------------------------------------------------


@dataclass
class Job:
    """One accepted request and its place in the queue state machine."""

    request_id: str
    endpoint: str
    payload: dict[str, Any]
    submitted: float
    """time.monotonic() at submit."""
    latency_s: float
    stalls: bool = False
    cancelled: bool = False
    result: Reply | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def phase(self, now: float) -> str:
        if self.cancelled:
            return COMPLETED
        elapsed = now - self.submitted
        if elapsed < self.latency_s * QUEUE_SHARE:
            return IN_QUEUE
        if self.stalls or elapsed < self.latency_s:
            return IN_PROGRESS
        return COMPLETED

    @property
    def prompt(self) -> str:
        prompt = self.payload.get("prompt")
        return prompt if isinstance(prompt, str) else ""


class Renderer:
    """Turns a completed job's payload into real output files and the endpoint's output JSON (§4)."""

    def __init__(self, store: FileStore, scratch: Path, nsfw_keyword: str) -> None:
        self.store = store
        self.scratch = scratch
        self.nsfw_keyword = nsfw_keyword
        self.engine = LocalBackend()
        scratch.mkdir(parents=True, exist_ok=True)

    def render(self, job: Job) -> dict[str, Any]:
        if job.endpoint in IMAGE_ENDPOINTS:
            return self.images(job)
        if job.endpoint == SEEDVR:
            return self.upscale(job)
        return self.video(job)

    def images(self, job: Job) -> dict[str, Any]:
        payload = job.payload
        prompt, seed = _require_str(payload, "prompt"), self._seed(job)
        count = _int_field(payload, "num_images", 1, low=1, high=4)
        source = self._source(job)
        size = image_size(payload.get("image_size", self._default_size(job)), source[1] if source else None)
        files = [self._image(job, index, prompt, seed + index, size, source) for index in range(count)]
        nsfw = bool(self.nsfw_keyword) and self.nsfw_keyword in prompt
        return {
            "images": files,
            "seed": seed,
            "has_nsfw_concepts": [nsfw] * count,
            "prompt": prompt,
            "timings": {},
        }

    def upscale(self, job: Job) -> dict[str, Any]:
        source = self._input(job, "image_url")
        width, height = upscale_size(image_dimensions(source, "image_url"), job.payload)
        name = f"{job.request_id}.png"
        self._run(job, "upscale", {"width": width, "height": height}, [source], name)
        return {"image": self._file(name, "image/png", (width, height)), "seed": self._seed(job)}

    def video(self, job: Job) -> dict[str, Any]:
        payload = job.payload
        prompt, seed = _require_str(payload, "prompt"), self._seed(job)
        first = self._input(job, "image_url")
        first_size = image_dimensions(first, "image_url")
        last = first
        if payload.get("end_image_url") is not None:
            last = self._input(job, "end_image_url")
            image_dimensions(last, "end_image_url")
        size = video_size(payload.get("resolution", "720p"), payload.get("aspect_ratio", "auto"), first_size)
        frames = _int_field(payload, "num_frames", 81, low=2, high=1000)
        fps = _int_field(payload, "frames_per_second", 16, low=1, high=240)
        params = {"width": size[0], "height": size[1], "fps": fps, "num_frames": frames}
        name = f"{job.request_id}.mp4"
        self._run(job, "video", params, [first, last], name)
        return {"video": self._file(name, "video/mp4", None), "seed": seed, "prompt": prompt}

    def _image(
        self,
        job: Job,
        index: int,
        prompt: str,
        seed: int,
        size: tuple[int, int],
        source: tuple[Path, tuple[int, int]] | None,
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"prompt": prompt, "seed": seed, "width": size[0], "height": size[1]}
        name = f"{job.request_id}-{index}.png"
        if source is None:
            self._run(job, "t2i", params, [], name)
        else:
            params["strength"] = _number(job.payload, "strength", 0.6, low=0.01, high=1.0)
            self._run(job, "img2img", params, [source[0]], name)
        return self._file(name, "image/png", size)

    def _source(self, job: Job) -> tuple[Path, tuple[int, int]] | None:
        """The img2img source: required on the image-to-image endpoint, optional on Flux 2 (the studio's
        img2img card uses the same endpoint with image_url + strength), ignored elsewhere."""
        wanted = job.endpoint == Z_IMAGE_I2I or (job.endpoint == FLUX2 and "image_url" in job.payload)
        if not wanted:
            return None
        path = self._input(job, "image_url")
        return path, image_dimensions(path, "image_url")

    @staticmethod
    def _default_size(job: Job) -> str:
        return "auto" if job.endpoint == Z_IMAGE_I2I else "landscape_4_3"

    def _input(self, job: Job, key: str) -> Path:
        return fetch_input(self.store, job.payload.get(key), key, self.scratch / f"{job.request_id}-{key}")

    @staticmethod
    def _seed(job: Job) -> int:
        seed = job.payload.get("seed")
        if seed is None:
            return random.Random(job.request_id).randrange(2**31)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ModelError("seed", "seed must be a non-negative integer", "int_type")
        return int(seed)

    def _run(self, job: Job, kind: str, params: dict[str, Any], inputs: list[Path], name: str) -> None:
        step = StepJob(
            step_id=f"fal-{job.request_id}",
            kind=kind,
            engine="fal-emulator",
            endpoint=job.endpoint,
            params=params,
            inputs=inputs,
            outputs=[self.store.path(name)],
        )
        self.engine.run(step)

    def _file(self, name: str, content_type: str, size: tuple[int, int] | None) -> dict[str, Any]:
        self.store.register(name, content_type)
        doc: dict[str, Any] = {"url": self.store.url(name), "content_type": content_type}
        if size is not None:
            doc.update(width=size[0], height=size[1])
        return {**doc, "file_name": name, "file_size": self.store.path(name).stat().st_size}


# the emulator ---------------------------------------------------------------------------------------------


Handler = Callable[[Call], Reply | None]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]
    label: str
    """The name `FalEmulator.calls()` counts it under."""
    auth: str | None
    """"key" (Authorization: Key <key>), "bearer" (the CDN token) or None."""
    handler: Handler


class _RequestHandler(EmulatorRequestHandler):
    """`FalEmulator`'s handler; PUT (storage uploads, cancel) and DELETE are served too."""

    server_version = "fal-emulator/1"
    log = LOG
    label = "fal emulator"

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def error_reply(self, exc: Exception) -> Reply:
        return detail(500, f"emulator error: {exc}")


class FalEmulator(LoopbackEmulator):
    """fal.ai's queue + storage protocol on 127.0.0.1, for tests and offline runs.

    >>> with FalEmulator(latency_scale=0.01) as emu:
    ...     patch_fal_client(emu.url)
    """

    handler_class = _RequestHandler
    name = "fal emulator"
    thread_name = "fal-emulator"

    store: FileStore
    renderer: Renderer
    """Both exist once `start()` has bound the port (their URLs need it)."""

    def __init__(
        self,
        *,
        latency_scale: float = 0.01,
        faults: Faults | None = None,
        content_policy_keyword: str = "FORBIDDENWORD",
        nsfw_keyword: str = "NSFWFLAG",
        echo_headers_keyword: str = "ECHOHEADERS",
        key: str | None = None,
        port: int = 0,
        workdir: Path | None = None,
    ) -> None:
        if latency_scale < 0:
            raise ValueError("latency_scale must not be negative")
        super().__init__(port=port)
        self.latency_scale = latency_scale
        self.content_policy_keyword = content_policy_keyword
        self.nsfw_keyword = nsfw_keyword
        self.echo_headers_keyword = echo_headers_keyword
        """A submit whose prompt holds it is refused (400) with the request's headers, its Authorization
        among them, quoted in the error: what a misconfigured proxy or a debug error page does."""
        self.key = key
        self._workdir_arg = workdir
        self._faults = faults or Faults()
        self._rng = random.Random(self._faults.seed)
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._ledger: list[dict[str, Any]] = []
        self._calls: Counter[str] = Counter()
        self._cdn_token = secrets.token_urlsafe(24)
        self._workdir: Path | None = None
        self._owns_workdir = False
        self.routes = self._routes()

    # lifecycle: `start()`, `stop()`, `url` and the context manager come from LoopbackEmulator

    def _prepare(self) -> None:
        self._owns_workdir = self._workdir_arg is None
        self._workdir = self._workdir_arg or Path(tempfile.mkdtemp(prefix="fal-emulator-"))

    def _bound(self, server: EmulatorServer) -> None:
        assert self._workdir is not None
        self.store = FileStore(self._workdir / "files", self._url)
        self.renderer = Renderer(self.store, self._workdir / "inputs", self.nsfw_keyword)

    def _after_shutdown(self) -> None:
        if self._owns_workdir and self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)

    # inspection and control

    def ledger(self) -> list[dict[str, Any]]:
        """One entry per accepted submit, oldest first: request_id, endpoint, payload_sha256 (see
        `payload_sha256`), payload, at (time.time() of acceptance)."""
        with self._lock:
            return copy.deepcopy(self._ledger)

    def submits_by_payload(self) -> dict[str, int]:
        """payload_sha256 -> number of accepted submits: anything above 1 is a duplicate submission."""
        with self._lock:
            return dict(Counter(entry["payload_sha256"] for entry in self._ledger))

    def outstanding(self) -> int:
        """Accepted requests whose result nobody has fetched yet: what clients hold in flight."""
        with self._lock:
            return sum(1 for job in self._jobs.values() if job.result is None and not job.cancelled)

    def calls(self) -> dict[str, int]:
        """HTTP calls received per route (submit, status, result, cancel, token, upload, ...), faulted ones
        included: the way to count the client's retries."""
        with self._lock:
            return dict(self._calls)

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults) -> None:
        """Replace the faults and restart their random sequence from `faults.seed`."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)

    # HTTP entry point

    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> Reply | None:
        """Answer one request; None means: close the connection without a response."""
        parts = urlsplit(target)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        for route in self.routes:
            match = route.pattern.fullmatch(parts.path)
            if match is None or route.method != method:
                continue
            with self._lock:
                self._calls[route.label] += 1
            denied = self._deny(route.auth, headers)
            if denied is not None:
                return denied
            return route.handler(Call(method, parts.path, query, headers, body, match.groupdict()))
        return detail(404, f"Not Found: {method} {parts.path}")

    def _routes(self) -> list[Route]:
        requests = REQUEST_PATH
        table: list[tuple[str, str, str, str | None, Handler]] = [
            ("GET", "/_health", "health", None, lambda call: json_reply(200, {"ok": True})),
            ("GET", "/_ledger", "ledger", None, lambda call: json_reply(200, self.ledger())),
            ("GET", "/_faults", "faults", None, self._get_faults),
            ("POST", "/_faults", "faults", None, self._post_faults),
            ("POST", "/storage/auth/token", "token", "key", self._token),
            ("POST", "/storage/upload/initiate", "initiate", "key", self._initiate),
            ("PUT", f"/storage/upload/put/(?P<name>{NAME})", "put", None, self._put_upload),
            ("POST", "/files/upload", "upload", "bearer", self._upload),
            ("GET", f"/files/(?P<name>{NAME})", "file", None, self._serve_file),
            ("GET", requests + "/status/?", "status", "key", self._status),
            ("PUT", requests + "/cancel/?", "cancel", "key", self._cancel),
            ("GET", requests + "/?", "result", "key", self._result),
            ("POST", SUBMIT_PATH, "submit", "key", self._submit),
        ]
        return [Route(m, re.compile(p), label, auth, h) for m, p, label, auth, h in table]

    def _deny(self, auth: str | None, headers: Mapping[str, str]) -> Reply | None:
        if auth is None or self.key is None:
            return None
        expected = f"Key {self.key}" if auth == "key" else f"Bearer {self._cdn_token}"
        given = headers.get("authorization")
        if given is None:
            return detail(401, "Missing Authorization header")
        if not secrets.compare_digest(given.encode(), expected.encode()):
            return detail(401, "Invalid authorization credentials")
        return None

    def _draw(self, *options: tuple[str, float]) -> str | None:
        """One seeded draw: the first option whose cumulative rate exceeds it, else None."""
        with self._lock:
            roll = self._rng.random()
        edge = 0.0
        for name, rate in options:
            edge += rate
            if roll < edge:
                return name
        return None

    def _fault_reply(self, fault: str) -> Reply:
        if fault == "5xx":
            return detail(500, "Internal Server Error")
        retry_after = f"{self.faults.retry_after_s:g}"
        return Reply(429, b'{"detail": "Too Many Requests"}', headers={"Retry-After": retry_after})

    # queue

    def _submit(self, call: Call) -> Reply | None:
        endpoint = call.params["endpoint"].strip("/")
        if endpoint not in ENDPOINTS:
            return detail(404, f"Application '{endpoint}' not found")
        try:
            payload = call.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return detail(422, "The request body must be a JSON object")
        if self.echo_headers_keyword and self.echo_headers_keyword in str(payload.get("prompt", "")):
            return detail(400, f"Bad request to {endpoint}; request headers: {dict(call.headers)}")
        faults = self.faults
        fault = self._draw(
            ("5xx", faults.submit_5xx_rate),
            ("429", faults.submit_429_rate),
            ("drop", faults.drop_submit_response_rate),
        )
        if fault is not None and fault != "drop":
            return self._fault_reply(fault)
        job = self._accept(endpoint, payload, faults.never_complete_keyword)
        if fault == "drop":
            return None
        return json_reply(200, {**self._urls(job), "queue_position": 0, "status": IN_QUEUE}, self._rid(job))

    def _accept(self, endpoint: str, payload: dict[str, Any], stall_keyword: str) -> Job:
        rid = str(uuid.uuid4())
        latency = typical_latency_s(endpoint, payload) * self.latency_scale
        job = Job(rid, endpoint, payload, time.monotonic(), latency)
        job.stalls = bool(stall_keyword) and stall_keyword in job.prompt
        entry = {
            "request_id": rid,
            "endpoint": endpoint,
            "payload_sha256": payload_sha256(payload),
            "payload": payload,
            "at": time.time(),
        }
        with self._lock:
            self._jobs[rid] = job
            self._ledger.append(entry)
        return job

    def _urls(self, job: Job) -> dict[str, str]:
        owner_app = "/".join(job.endpoint.split("/")[:2])
        base = f"{self.url}/{owner_app}/requests/{job.request_id}"
        return {
            "request_id": job.request_id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    @staticmethod
    def _rid(job: Job) -> dict[str, str]:
        return {"X-Fal-Request-Id": job.request_id}

    def _job(self, call: Call) -> Job | None:
        with self._lock:
            return self._jobs.get(call.params["rid"])

    def _poll_fault(self) -> tuple[bool, Reply | None]:
        """(drop?, fault reply) for one status/result GET."""
        faults = self.faults
        fault = self._draw(
            ("drop", faults.drop_poll_response_rate),
            ("5xx", faults.poll_5xx_rate),
            ("429", faults.poll_429_rate),
        )
        if fault == "drop":
            return True, None
        return False, (self._fault_reply(fault) if fault else None)

    def _status(self, call: Call) -> Reply | None:
        logs = call.query.get("logs", "false").lower()
        if logs not in ("true", "false", "1", "0"):
            return validation_error("logs", "logs must be true, false, 1 or 0", "bool_parsing")
        job = self._job(call)
        if job is None:
            return detail(404, "Request not found")
        if self.faults.slow_status_s:
            time.sleep(self.faults.slow_status_s)
        drop, fault = self._poll_fault()
        if drop or fault is not None:
            return fault
        status, body = self._status_body(job)
        return json_reply(status, {**body, **self._urls(job)}, self._rid(job))

    def _status_body(self, job: Job) -> tuple[int, dict[str, Any]]:
        now = time.monotonic()
        phase = job.phase(now)
        if phase == IN_QUEUE:
            return 202, {"status": IN_QUEUE, "queue_position": self._queue_position(job, now)}
        if phase == IN_PROGRESS:
            return 202, {"status": IN_PROGRESS, "logs": []}
        metrics = {} if job.cancelled else {"inference_time": round(job.latency_s * (1 - QUEUE_SHARE), 4)}
        return 200, {"status": COMPLETED, "logs": [], "metrics": metrics}

    def _queue_position(self, job: Job, now: float) -> int:
        with self._lock:
            ahead = [other for other in self._jobs.values() if other.submitted < job.submitted]
        return sum(1 for other in ahead if other.phase(now) == IN_QUEUE)

    def _result(self, call: Call) -> Reply | None:
        job = self._job(call)
        if job is None:
            return detail(404, "Request not found")
        drop, fault = self._poll_fault()
        if drop or fault is not None:
            return fault
        if job.phase(time.monotonic()) != COMPLETED:
            return detail(400, "Request is still in progress")
        with job.lock:
            if job.result is None:
                job.result = self._outcome(job)
            reply = job.result
        return dataclasses.replace(reply, headers={**reply.headers, **self._rid(job)})

    def _outcome(self, job: Job) -> Reply:
        if job.cancelled:
            return detail(400, "Request was cancelled")
        if self.content_policy_keyword and self.content_policy_keyword in job.prompt:
            return validation_error("prompt", CONTENT_POLICY_MSG, "content_policy_violation")
        try:
            return json_reply(200, self.renderer.render(job))
        except ModelError as exc:
            return exc.reply
        except BackendError as exc:
            LOG.warning("fal emulator: %s failed to render: %s", job.request_id, exc)
            return detail(500, str(exc), error_type="internal_server_error")

    def _cancel(self, call: Call) -> Reply | None:
        job = self._job(call)
        if job is None:
            return json_reply(404, {"status": "NOT_FOUND"})
        with job.lock:
            if job.phase(time.monotonic()) == COMPLETED:
                return json_reply(400, {"status": "ALREADY_COMPLETED"})
            job.cancelled = True
        return json_reply(202, {"status": "CANCELLATION_REQUESTED"})

    # storage

    def _token(self, call: Call) -> Reply:
        expires = datetime.now(UTC) + timedelta(hours=1)
        doc = {
            "token": self._cdn_token,
            "token_type": "Bearer",
            "base_url": self.url,
            "expires_at": expires.isoformat(),
        }
        return json_reply(200, doc)

    def _upload(self, call: Call) -> Reply:
        content_type = call.headers.get("content-type", "application/octet-stream")
        name = self.store.new_name(call.headers.get("x-fal-file-name"), content_type)
        self.store.put(name, call.body, content_type)
        return json_reply(200, {"access_url": self.store.url(name), "content_type": content_type})

    def _initiate(self, call: Call) -> Reply:
        try:
            doc = call.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return detail(422, "The request body must be a JSON object")
        content_type = str(doc.get("content_type") or "application/octet-stream")
        file_name = doc.get("file_name")
        name = self.store.new_name(file_name if isinstance(file_name, str) else None, content_type)
        self.store.register(name, content_type)
        self.store.path(name).write_bytes(b"")
        upload_url = f"{self.url}/storage/upload/put/{name}"
        return json_reply(200, {"upload_url": upload_url, "file_url": self.store.url(name)})

    def _put_upload(self, call: Call) -> Reply:
        name = call.params["name"]
        known = self.store.content_type(name)
        if known is None:
            return detail(404, "Unknown upload")
        self.store.put(name, call.body, call.headers.get("content-type", known))
        return Reply(200)

    def _serve_file(self, call: Call) -> Reply:
        name = call.params["name"]
        content_type = self.store.content_type(name)
        path = self.store.path(name)
        if content_type is None or not path.is_file():
            return detail(404, "File not found")
        return Reply(200, path.read_bytes(), content_type)

    # control

    def _get_faults(self, call: Call) -> Reply:
        return json_reply(200, dataclasses.asdict(self.faults))

    def _post_faults(self, call: Call) -> Reply:
        try:
            updates = call.json()
            if not isinstance(updates, dict):
                raise TypeError("the body must be a JSON object of Faults fields")
            faults = dataclasses.replace(self.faults, **updates)
        except (TypeError, ValueError) as exc:
            return detail(400, f"bad faults: {exc}")
        self.set_faults(faults)
        return json_reply(200, dataclasses.asdict(faults))


# the fal client and the command line ----------------------------------------------------------------------


def patch_fal_client(base_url: str) -> None:
    """Option A of the protocol note: send every fal-client call of this process to `base_url`.

    Patch before the first upload of a client: its CDN token manager copies REST_URL when created.
    """
    import fal_client.client as fal

    base = base_url.rstrip("/")
    fal.QUEUE_URL_FORMAT = base + "/"
    fal.RUN_URL_FORMAT = base + "/"
    fal.REST_URL = base
    fal.CDN_URL = base


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m emulators.fal_server --port P --latency-scale X [--key K]`, until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description="fal.ai queue + storage emulator on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency-scale", type=float, default=0.01)
    parser.add_argument("--key", default=None, help="require Authorization: Key <KEY>")
    parser.add_argument("--workdir", type=Path, default=None, help="where outputs go (default: a temp dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    emulator = FalEmulator(
        latency_scale=args.latency_scale, key=args.key, port=args.port, workdir=args.workdir
    )
    with emulator:
        print(f"fal emulator on {emulator.url}", flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
