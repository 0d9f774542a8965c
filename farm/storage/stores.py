"""Artifact store: where step outputs live between steps and runs (a local folder or an S3 bucket).

Keys are relative posix paths built from step ids and asset names (`steps/<id>/<asset>`). Every write
is atomic: a reader sees either no object or a complete one, never a partial file. Locally that is a temp
file in the destination's own directory, fsynced, then `os.replace`; on S3 an object becomes visible only
once its (possibly multipart) upload completes. Downloads land the same way on the local side.

A failure that passes (a full disk, S3 throttling or a 5xx, a connection lost) raises StoreUnavailable, so
the farm retries the step later instead of failing it; anything else (a bad key, a missing bucket, access
denied) raises as it came.

boto3 is imported lazily, inside `S3Store`, so importing the farm core stays light. Credentials come
from boto3's normal chain (environment, shared config, instance role); nothing here logs them or puts
them into messages.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

KEY_PATTERN = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
"""Relative posix path: segments of [A-Za-z0-9._-], one '/' between them, none leading or trailing."""
MAX_KEY_LENGTH = 1024
"""S3's own limit on object keys (bytes; keys here are ASCII)."""
STORE_KINDS = ("local", "s3")
_NOT_FOUND_CODES = frozenset({"404", "NoSuchKey", "NotFound"})
_PASSING_CODES = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}
)
"""S3 error codes that say "try again later" (a 5xx status says it too, whatever its code)."""
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
_SESSION_LOCK = threading.Lock()
_session: Any = None


class StoreUnavailable(OSError):
    """The store could not take or give an object for a reason that passes: a full disk, S3 throttling or
    a 5xx, a connection lost on the way. Worth trying again later, unlike a bad key or a missing bucket.
    Nothing partial is left behind either way."""


def _raise_if_disk_full(exc: BaseException, path: Path) -> None:
    if isinstance(exc, OSError) and not isinstance(exc, StoreUnavailable) and exc.errno in DISK_FULL:
        raise StoreUnavailable(f"cannot write {path}: {exc}") from exc


def validate_key(key: str, *, what: str = "key") -> str:
    """Return `key` if it is a safe relative path of [A-Za-z0-9._-] segments; raise ValueError otherwise.

    Keys come from step ids and asset names, so this is defence in depth against path traversal:
    no absolute paths, no '.' or '..' segments, no backslashes, no empty segments.
    """
    if not isinstance(key, str):
        raise ValueError(f"{what} must be a string, got {type(key).__name__}")
    if not key:
        raise ValueError(f"{what} is empty")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"{what} is longer than {MAX_KEY_LENGTH} characters")
    if not KEY_PATTERN.fullmatch(key):
        raise ValueError(
            f"{what} {key!r} is not a relative path of [A-Za-z0-9._-] segments separated by single '/'"
        )
    if any(segment in {".", ".."} for segment in key.split("/")):
        raise ValueError(f"{what} {key!r} has a '.' or '..' segment")
    return key


@runtime_checkable
class ArtifactStore(Protocol):
    """Where artifacts live. Writes are atomic: no reader ever sees a partial object."""

    def has(self, key: str) -> bool: ...

    def put_file(self, key: str, source: Path) -> None: ...

    def get_file(self, key: str, dest: Path) -> None:
        """Copy the artifact to `dest` atomically; FileNotFoundError if there is no such artifact."""
        ...

    def locate(self, key: str) -> str:
        """A human/manifest-readable location: an absolute path or s3://bucket/prefix/key."""
        ...

    def delete(self, key: str) -> None:
        """Remove the artifact; deleting a missing artifact is not an error."""
        ...


def _temp_path(final: Path) -> Path:
    """A fresh, unpredictable name in `final`'s own directory (same filesystem, so os.replace is atomic)."""
    return final.with_name(f".{final.name}.{secrets.token_hex(8)}.tmp")


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable; best effort (not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_atomically(final: Path, source: Path) -> None:
    """Copy `source` to `final` via an fsynced temp file and os.replace; leave no temp file on failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_path(final)
    try:
        with source.open("rb") as reader:
            # O_EXCL: never write through something already there; mode 0o666 lets the umask decide.
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with os.fdopen(fd, "wb") as writer:
                shutil.copyfileobj(reader, writer, 1024 * 1024)
                writer.flush()
                os.fsync(writer.fileno())
        os.replace(temp, final)
    except BaseException as exc:
        temp.unlink(missing_ok=True)
        _raise_if_disk_full(exc, final)
        raise
    _fsync_dir(final.parent)


class LocalStore:
    """Artifacts as files under `root`; a key is the file's path relative to it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().absolute()

    def __repr__(self) -> str:
        return f"LocalStore(root={str(self.root)!r})"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*validate_key(key).split("/"))

    def has(self, key: str) -> bool:
        return self._path(key).is_file()

    def put_file(self, key: str, source: Path) -> None:
        _write_atomically(self._path(key), Path(source))

    def get_file(self, key: str, dest: Path) -> None:
        path = self._path(key)
        if not path.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such artifact", str(path))
        _write_atomically(Path(dest), path)

    def locate(self, key: str) -> str:
        return str(self._path(key))

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def _passes(exc: BaseException) -> bool:
    """S3 throttling, a 5xx or a connection lost or timed out, found anywhere in the exception's chain (boto3
    wraps an upload's error in S3UploadFailedError, a download's retries in RetriesExceededError)."""
    from botocore import exceptions as boto  # type: ignore[import-untyped]

    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; never loop on a cyclic one
        if seen is None:
            break
        lost = isinstance(seen, boto.ConnectionError | boto.HTTPClientError)
        if lost and not isinstance(seen, boto.SSLError):  # a certificate problem does not pass
            return True
        response = getattr(seen, "response", None)
        if isinstance(response, dict):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = str(response.get("Error", {}).get("Code", ""))
            if code in _PASSING_CODES or (isinstance(status, int) and status >= 500):
                return True
        seen = seen.__cause__ or seen.__context__ or getattr(seen, "last_exception", None)
    return False


@contextmanager
def _unavailable_when_passing(what: str) -> Iterator[None]:
    """Raise StoreUnavailable for an S3 failure that passes, so the farm retries later."""
    try:
        yield
    except StoreUnavailable:
        raise
    except Exception as exc:
        if _passes(exc):
            raise StoreUnavailable(f"{what}: {exc}") from exc
        raise


def _is_not_found(exc: BaseException) -> bool:
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return False
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or status == 404


class S3Store:
    """Artifacts as objects in `bucket` under `prefix`; works with AWS S3 and S3-compatible servers.

    The boto3 client is created on first use (boto3 is imported only then). With `endpoint_url` (MinIO,
    R2, moto, ...) path-style addressing is used and checksums are sent only when the operation requires
    them, which S3-compatible servers accept more widely than botocore's newer defaults.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket or not re.fullmatch(r"[A-Za-z0-9._-]+", bucket):
            raise ValueError(f"bucket {bucket!r} is not a valid bucket name")
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix, what="prefix")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.region = region
        self._client: Any = client
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client, created on first use from boto3's normal credential chain."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._make_client()
        return self._client

    def _make_client(self) -> Any:
        global _session
        import boto3  # type: ignore[import-untyped]  # lazy: only S3 users pay for it
        from botocore.config import Config  # type: ignore[import-untyped]

        options: dict[str, Any] = {"retries": {"mode": "standard"}}
        if self.endpoint_url is not None:
            options["s3"] = {"addressing_style": "path"}
            options["request_checksum_calculation"] = "when_required"
            options["response_checksum_validation"] = "when_required"
        # One session for the process (it caches the parsed service model, ~0.1 s per client otherwise);
        # sessions are not thread-safe, so clients are made under a lock. Clients themselves are.
        with _SESSION_LOCK:
            if _session is None:
                _session = boto3.session.Session()
            return _session.client(
                "s3", endpoint_url=self.endpoint_url, region_name=self.region, config=Config(**options)
            )

    def _object_key(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def has(self, key: str) -> bool:
        object_key = self._object_key(key)
        try:
            with _unavailable_when_passing(f"S3 did not say whether it has {self.locate(key)}"):
                self.client.head_object(Bucket=self.bucket, Key=object_key)
        except Exception as exc:
            if _is_not_found(exc):
                return False
            raise
        return True

    def put_file(self, key: str, source: Path) -> None:
        object_key = self._object_key(key)
        source = Path(source)
        if not source.is_file():
            raise FileNotFoundError(errno.ENOENT, "no such file to upload", str(source))
        # upload_file switches to multipart for large files; S3 shows the object only once complete.
        with _unavailable_when_passing(f"S3 did not take {self.locate(key)}"):
            self.client.upload_file(str(source), self.bucket, object_key)

    def get_file(self, key: str, dest: Path) -> None:
        object_key = self._object_key(key)
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = _temp_path(dest)
        try:
            try:
                with _unavailable_when_passing(f"S3 did not give {self.locate(key)}"):
                    self.client.download_file(self.bucket, object_key, str(temp))
            except Exception as exc:
                if _is_not_found(exc):
                    raise FileNotFoundError(errno.ENOENT, "no such artifact", self.locate(key)) from exc
                raise
            fd = os.open(temp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp, dest)
        except BaseException as exc:
            temp.unlink(missing_ok=True)
            _raise_if_disk_full(exc, dest)
            raise
        _fsync_dir(dest.parent)

    def locate(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._object_key(key)}"

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._object_key(key))


def open_store(
    kind: str,
    *,
    root: Path | None = None,
    bucket: str | None = None,
    prefix: str = "",
    endpoint_url: str | None = None,
    region: str | None = None,
) -> ArtifactStore:
    """The store of `kind`: "local" needs `root`; "s3" needs `bucket` (the rest is optional)."""
    if kind == "local":
        if root is None:
            raise ValueError("a local store needs a root folder")
        return LocalStore(root)
    if kind == "s3":
        if not bucket:
            raise ValueError("an s3 store needs a bucket")
        return S3Store(bucket, prefix, endpoint_url=endpoint_url, region=region)
    raise ValueError(f"unknown store kind {kind!r}; expected one of: {', '.join(STORE_KINDS)}")
