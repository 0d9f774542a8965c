"""fal.ai backend through the real fal-client, built so that one step never pays for two requests.

- Before submitting, the step claims its request slot in Redis (RequestBook); the request id is stored
  the moment fal returns it. A redelivered task that finds an id resumes polling that request.
- The submit itself goes through a client whose transport refuses fal-client's automatic retries (a
  retried submit whose first attempt reached fal would be a second paid request). A submit that was
  provably not accepted (connection refused, 429, 5xx) is released and retried later by the farm.
- The one remaining window: fal accepts a submit but the response is lost (connection reset after
  sending) or the worker dies before the id is stored. The claim then stays without an id; after
  `claim_grace_s` another attempt submits again, and the manifest records the unconfirmed submit.
- The account's concurrency cap is a lease per in-flight request (ProviderCap), shared by every worker.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import fal_client
import httpx
from fal_client.client import USER_AGENT, Completed, FalClientHTTPError

from farm.config.settings import Settings
from farm.episode.engine_cards import CARDS
from workers.base import (
    CapacityWait,
    ContentPolicyError,
    PermanentError,
    StepJob,
    StepResult,
    TransientError,
)
from workers.fal.outputs import save_outputs
from workers.fal.payloads import build_payload
from workers.fal.provider_cap import ProviderCap
from workers.fal.request_book import RequestBook, RequestRecord

SUBMIT_TIMEOUT_S = 30.0
T = TypeVar("T")
POLL_ATTEMPTS = 8
"""Consecutive failed polls tolerated in place before the step is handed back for a later retry."""
RETRY_STATUSES = frozenset({408, 409, 429, 502, 503, 504})


class SubmitNotAccepted(Exception):
    """fal did not take the submit (never reached it, or refused it): safe to try again later.

    Not an httpx error on purpose: fal-client retries those, and a submit must never be retried blindly.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class SubmitOutcomeUnknown(Exception):
    """The submit was sent but no answer came back: fal may have accepted it."""


class CapReached(CapacityWait):
    """The account's in-flight cap is full: wait (not an error, not counted as a retry)."""


class _SubmitOnceTransport(httpx.BaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self.inner.handle_request(request)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise SubmitNotAccepted(f"could not reach fal: {exc}") from exc
        except httpx.TransportError as exc:
            raise SubmitOutcomeUnknown(f"no answer to the submit: {type(exc).__name__}") from exc
        if response.status_code in RETRY_STATUSES:
            response.read()
            raise SubmitNotAccepted(
                f"fal refused the submit with HTTP {response.status_code}", _retry_after(response.headers)
            )
        return response

    def close(self) -> None:
        self.inner.close()


@dataclass(frozen=True)
class _UploadingClient(fal_client.SyncClient):
    """fal-client's SyncClient, but uploads share one CDN client per token: fal-client builds a new httpx
    client (tens of milliseconds of CPU for its TLS context) for every upload and never closes it."""

    _cdn: ClassVar[dict[tuple[str, str], httpx.Client]] = {}
    _cdn_lock: ClassVar[threading.Lock] = threading.Lock()

    def _get_cdn_client(self) -> httpx.Client:
        token = self._token_manager.get_token()
        key = (token.token_type, token.token)
        with self._cdn_lock:
            client = self._cdn.get(key)
            if client is None:  # a new token: the old client is left to finish what it is doing
                client = httpx.Client(
                    headers={"Authorization": f"{token.token_type} {token.token}", "User-Agent": USER_AGENT},
                    timeout=self.default_timeout,
                )
                self._cdn.clear()
                self._cdn[key] = client
            return client


class _SubmitOnceClient(fal_client.SyncClient):
    """fal-client's SyncClient whose submits are attempted exactly once."""

    @cached_property
    def _client(self) -> httpx.Client:
        return httpx.Client(
            transport=_SubmitOnceTransport(),
            headers={"Authorization": f"Key {self.key}", "User-Agent": USER_AGENT},
            timeout=self.default_timeout,
            follow_redirects=True,
        )


class FalBackend:
    name = "fal"

    def __init__(self, settings: Settings, book: RequestBook, cap: ProviderCap) -> None:
        if settings.fal_key is None:
            raise PermanentError("the fal engine needs FAL_KEY (or FARM_FAL_KEY) in the settings")
        if settings.fal_url:
            point_client_at(settings.fal_url)
        key = settings.fal_key.get_secret_value()
        self.settings = settings
        self.book = book
        self.cap = cap
        self.client = _UploadingClient(key=key)
        self.submitter = _SubmitOnceClient(key=key, default_timeout=SUBMIT_TIMEOUT_S)
        self.claim_grace_s = 2 * SUBMIT_TIMEOUT_S
        self.poll_errors = 0
        """Failed polls absorbed since this engine started (a gauge for ops, not per step)."""

    def run(self, job: StepJob) -> StepResult:
        endpoint = _endpoint(job)
        record = self.book.get(job.step_id)
        notes: dict[str, Any] = {}
        if record is not None and record.state == "claimed":
            self._take_over_stale_claim(job, record)
            notes["unconfirmed_submit"] = "an earlier attempt's submit got no answer; submitted again"
            record = None
        if record is None:
            request_id = self._submit(job, endpoint)
        else:
            assert record.request_id is not None
            request_id, notes["resumed"] = record.request_id, True
            self.cap.acquire(job.step_id)  # it is in flight at fal whatever the cap says
        return self._finish(job, endpoint, request_id, notes)

    # submitting ----------------------------------------------------------------------------------

    def _take_over_stale_claim(self, job: StepJob, record: RequestRecord) -> None:
        age = time.time() - record.claimed_at
        if age < self.claim_grace_s:
            raise TransientError(
                "another attempt is submitting this step", retry_after_s=self.claim_grace_s - age
            )
        self.book.release(job.step_id)

    def _submit(self, job: StepJob, endpoint: str) -> str:
        if not self.cap.acquire(job.step_id):
            raise CapReached("fal's concurrency cap is reached", retry_after_s=random.uniform(0.5, 2.0))
        try:
            payload = build_payload(job, self._upload)
            if not self.book.claim(job.step_id, endpoint):
                raise TransientError("another attempt is submitting this step", retry_after_s=1.0)
        except BaseException:
            self.cap.release(job.step_id)
            raise
        try:
            handle = self.submitter.submit(endpoint, arguments=payload)
        except SubmitOutcomeUnknown as exc:
            raise TransientError(str(exc)) from exc  # claim kept: see the module docstring
        except SubmitNotAccepted as exc:
            self._abandon(job)
            raise TransientError(str(exc), exc.retry_after_s) from exc
        except FalClientHTTPError as exc:
            self._abandon(job)
            raise _translate(exc) from exc
        self.book.submitted(job.step_id, handle.request_id, endpoint)
        return handle.request_id

    def _abandon(self, job: StepJob) -> None:
        self.book.release(job.step_id)
        self.cap.release(job.step_id)

    def _upload(self, path: Path) -> str:
        try:
            return self.client.upload_file(path)
        except (httpx.HTTPError, FalClientHTTPError) as exc:
            raise TransientError(f"uploading {path.name} to fal failed: {exc}") from exc

    # waiting and fetching ------------------------------------------------------------------------

    def _finish(self, job: StepJob, endpoint: str, request_id: str, notes: dict[str, Any]) -> StepResult:
        done = self._guarded(job, lambda: self._wait(job, endpoint, request_id), failed_at_fal=False)
        fetch = lambda: self._retrying(lambda: self.client.result(endpoint, request_id))  # noqa: E731
        result = self._guarded(job, fetch, failed_at_fal=bool(done.error))
        try:
            checks = save_outputs(job, result)
        finally:
            self.cap.release(job.step_id)
        record = self.book.get(job.step_id)
        metadata = {
            "request_id": request_id,
            "endpoint": endpoint,
            "paid_submits": record.attempts if record else 1,
        }
        return StepResult(cost_usd=_price(job), metadata={**metadata, **notes, **checks})

    def _guarded(self, job: StepJob, call: Callable[[], T], *, failed_at_fal: bool) -> T:
        """Run a poll or fetch, translating its failure into the farm's error tree."""
        try:
            return call()
        except FalClientHTTPError as exc:
            error = _translate(exc)
            if not isinstance(error, TransientError):
                self.cap.release(job.step_id)
            elif failed_at_fal:
                self._abandon(job)  # fal reports the request itself failed: a later attempt submits anew
            raise error from exc
        except httpx.HTTPError as exc:
            raise TransientError(f"polling fal failed: {exc}") from exc

    def _wait(self, job: StepJob, endpoint: str, request_id: str) -> Completed:
        deadline = time.monotonic() + self.settings.fal_request_timeout_s
        while not isinstance(
            status := self._retrying(lambda: self.client.status(endpoint, request_id)), Completed
        ):
            self.cap.renew(job.step_id)
            if time.monotonic() > deadline:
                self._give_up(job, endpoint, request_id)
            time.sleep(self.settings.fal_poll_interval_s)
        return status

    def _retrying(self, call: Callable[[], T]) -> T:
        """Polls and result fetches are free and idempotent: retried here rather than by redelivery."""
        for attempt in range(1, POLL_ATTEMPTS + 1):
            try:
                return call()
            except (httpx.HTTPError, FalClientHTTPError) as exc:
                if isinstance(exc, FalClientHTTPError) and exc.status_code < 500 and exc.status_code != 429:
                    raise
                self.poll_errors += 1
                if attempt == POLL_ATTEMPTS:
                    raise
                time.sleep(min(10.0, 0.2 * 2**attempt) * random.uniform(0.5, 1.5))
        raise AssertionError("unreachable")

    def _give_up(self, job: StepJob, endpoint: str, request_id: str) -> None:
        try:
            self.client.cancel(endpoint, request_id)
        finally:
            self.cap.release(job.step_id)
        raise PermanentError(
            f"fal request {request_id} did not finish within {self.settings.fal_request_timeout_s:g} s"
        )


def point_client_at(base_url: str) -> None:
    """Send every fal-client call to `base_url` (the loopback emulator); must run before the first upload."""
    base = base_url.rstrip("/")
    fal_client.client.QUEUE_URL_FORMAT = base + "/"
    fal_client.client.RUN_URL_FORMAT = base + "/"
    fal_client.client.REST_URL = base
    fal_client.client.CDN_URL = base


def _endpoint(job: StepJob) -> str:
    if not job.endpoint:
        raise PermanentError(f"{job.kind} steps have no fal endpoint")
    return job.endpoint


def _price(job: StepJob) -> Decimal:
    return CARDS[job.engine].op(job.operation).price_usd


def _translate(exc: FalClientHTTPError) -> Exception:
    """fal's HTTP errors into the farm's error tree: transient, permanent or content policy."""
    kinds: set[str] = {_detail_type(d) for d in exc.message} if isinstance(exc.message, list) else set()
    message = _readable(exc.message)
    if "content_policy_violation" in kinds or exc.error_type == "content_policy_violation":
        return ContentPolicyError(f"fal refused the content: {message}")
    if exc.status_code in RETRY_STATUSES or exc.status_code >= 500:
        return TransientError(
            f"fal answered HTTP {exc.status_code}: {message}", _retry_after(exc.response_headers)
        )
    return PermanentError(f"fal rejected the request (HTTP {exc.status_code}): {message}")


def _detail_type(detail: object) -> str:
    return str(detail.get("type", "")) if isinstance(detail, dict) else ""


def _readable(message: object) -> str:
    if isinstance(message, list):
        return "; ".join(
            f"{'.'.join(str(p) for p in d.get('loc', []))}: {d.get('msg', '')}"
            if isinstance(d, dict)
            else str(d)
            for d in message
        )
    return str(message)


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
