"""Artifact store contract, run over both backends: LocalStore on tmp_path, S3Store against a moto server.

The moto server is a real HTTP server in a subprocess, bound to 127.0.0.1 on a free port, so the S3 path
goes through boto3's full stack (signing, upload_file/download_file, error responses) without the
internet. Atomicity is checked by breaking the write path midway (copy, fsync, rename) and looking at
what is left on disk.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import pytest
from boto3.exceptions import S3UploadFailedError  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from farm.storage.stores import ArtifactStore, LocalStore, S3Store, StoreUnavailable, open_store, validate_key
from tests.conftest import MOTO_BUCKET as BUCKET
from tests.conftest import MOTO_SECRET as SECRET

KEY = "steps/0123abcd4567ef89/PRJ_EP001_S01_T01_ENV_first.png"
PAYLOAD = bytes(range(256)) * 64 + b"\x00\xff tail"

BAD_KEYS = [
    "",
    "/abs/path.png",
    "a/../b.png",
    "..",
    "../escape.png",
    ".",
    "a/./b.png",
    "a\\b.png",
    "a//b.png",
    "a/",
    "with space.png",
    "caf\u00e9.png",
    "a/b?.png",
    "x" * 1025,
]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    """A fresh, empty store of each kind (S3: a bucket prefix of its own per test)."""
    if request.param == "local":
        return open_store("local", root=tmp_path / "store")
    endpoint: str = request.getfixturevalue("moto_endpoint")
    return open_store("s3", bucket=BUCKET, prefix=f"runs/{uuid.uuid4().hex}", endpoint_url=endpoint)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "frame.png"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- the contract, over both backends ------------------------------------------------------------------


def test_put_then_has_and_get_round_trip_bytes(store: ArtifactStore, source: Path, tmp_path: Path) -> None:
    store.put_file(KEY, source)
    assert store.has(KEY)
    dest = tmp_path / "out" / "nested" / "frame.png"
    store.get_file(KEY, dest)
    assert dest.read_bytes() == PAYLOAD
    assert _files(tmp_path / "out") == ["nested/frame.png"]


def test_empty_file_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_file("empty.bin", _write(tmp_path / "empty.bin", b""))
    assert store.has("empty.bin")
    store.get_file("empty.bin", tmp_path / "got.bin")
    assert (tmp_path / "got.bin").read_bytes() == b""


def test_has_is_false_for_a_missing_key(store: ArtifactStore, source: Path) -> None:
    assert not store.has(KEY)
    store.put_file(KEY, source)
    assert not store.has(KEY + ".other")
    assert not store.has("steps/0123abcd4567ef89")  # a "directory" is not an artifact


def test_get_of_a_missing_key_raises_file_not_found_and_leaves_dest_alone(
    store: ArtifactStore, tmp_path: Path
) -> None:
    dest = _write(tmp_path / "out" / "frame.png", b"previous")
    with pytest.raises(FileNotFoundError):
        store.get_file("steps/missing/frame.png", dest)
    assert dest.read_bytes() == b"previous"
    assert _files(tmp_path / "out") == ["frame.png"]


def test_overwriting_replaces_the_content(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_file(KEY, _write(tmp_path / "a.bin", b"a much longer first version " * 100))
    store.put_file(KEY, _write(tmp_path / "b.bin", b"short"))
    dest = _write(tmp_path / "dest.bin", b"stale content that is longer than the new one")
    store.get_file(KEY, dest)
    assert dest.read_bytes() == b"short"


def test_keys_are_independent(store: ArtifactStore, tmp_path: Path) -> None:
    store.put_file("steps/a/x.png", _write(tmp_path / "1", b"one"))
    store.put_file("steps/b/x.png", _write(tmp_path / "2", b"two"))
    store.get_file("steps/a/x.png", tmp_path / "got1")
    store.get_file("steps/b/x.png", tmp_path / "got2")
    assert (tmp_path / "got1").read_bytes() == b"one"
    assert (tmp_path / "got2").read_bytes() == b"two"


def test_delete_removes_and_is_idempotent(store: ArtifactStore, source: Path, tmp_path: Path) -> None:
    store.put_file(KEY, source)
    store.delete(KEY)
    assert not store.has(KEY)
    with pytest.raises(FileNotFoundError):
        store.get_file(KEY, tmp_path / "dest")
    store.delete(KEY)  # deleting a missing artifact is not an error


def test_put_of_a_missing_source_raises_and_stores_nothing(store: ArtifactStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "no-such-file.png")
    assert not store.has(KEY)


@pytest.mark.parametrize("bad", BAD_KEYS, ids=range(len(BAD_KEYS)))
def test_invalid_keys_raise_value_error_everywhere(
    store: ArtifactStore, bad: str, source: Path, tmp_path: Path
) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: store.has(bad),
        lambda: store.put_file(bad, source),
        lambda: store.get_file(bad, tmp_path / "dest"),
        lambda: store.locate(bad),
        lambda: store.delete(bad),
    ]
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "escape.png").exists()


def test_locate(store: ArtifactStore) -> None:
    where = store.locate(KEY)
    if isinstance(store, LocalStore):
        assert Path(where).is_absolute()
        assert Path(where) == store.root / KEY
    else:
        assert isinstance(store, S3Store)
        assert where == f"s3://{BUCKET}/{store.prefix}/{KEY}"
        assert store.prefix.startswith("runs/")


def test_a_failed_fsync_on_get_leaves_dest_untouched(
    store: ArtifactStore, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local write of a download fails (disk full at flush): the old dest stays, no temp is left."""
    store.put_file(KEY, source)
    dest = _write(tmp_path / "out" / "frame.png", b"previous")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        store.get_file(KEY, dest)
    assert dest.read_bytes() == b"previous"
    assert _files(tmp_path / "out") == ["frame.png"]


def test_a_failed_rename_on_get_leaves_dest_untouched(
    store: ArtifactStore, source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put_file(KEY, source)
    dest = _write(tmp_path / "out" / "frame.png", b"previous")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="Input/output"):
        store.get_file(KEY, dest)
    assert dest.read_bytes() == b"previous"
    assert _files(tmp_path / "out") == ["frame.png"]


# --- LocalStore atomicity -----------------------------------------------------------------------------


def _half_then(fail: bool, check: Callable[[], None]) -> Callable[..., None]:
    """A copyfileobj writing half the data, then running `check` (a reader's view mid-write), then failing
    or finishing."""

    def copy(reader: BinaryIO, writer: BinaryIO, length: int = 0) -> None:
        data = reader.read()
        writer.write(data[: len(data) // 2])
        writer.flush()
        check()
        if fail:
            raise OSError(5, "Input/output error")
        writer.write(data[len(data) // 2 :])

    return copy


@pytest.mark.parametrize("existing", [None, b"old version"], ids=["new", "overwrite"])
@pytest.mark.chaos
def test_local_put_failing_midway_leaves_no_partial_object_and_no_temp(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch, existing: bytes | None
) -> None:
    store = LocalStore(tmp_path / "store")
    final = store.root / KEY
    if existing is not None:
        _write(final, existing)

    def reader_view() -> None:
        if existing is None:
            assert not final.exists()
        else:
            assert final.read_bytes() == existing
        assert store.has(KEY) is (existing is not None)

    monkeypatch.setattr(shutil, "copyfileobj", _half_then(True, reader_view))
    with pytest.raises(OSError, match="Input/output"):
        store.put_file(KEY, source)
    assert _files(store.root) == ([] if existing is None else [KEY])
    if existing is not None:
        assert final.read_bytes() == existing


def test_a_full_disk_makes_a_local_put_unavailable_for_now_and_leaves_no_temp(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC passes (space comes back): the farm retries on StoreUnavailable instead of failing the step."""
    store = LocalStore(tmp_path / "store")

    def full(reader: BinaryIO, writer: BinaryIO, length: int = 0) -> None:
        writer.write(reader.read()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shutil, "copyfileobj", full)
    with pytest.raises(StoreUnavailable, match="No space left on device"):
        store.put_file(KEY, source)
    assert _files(store.root) == []


def test_local_put_failing_at_the_rename_leaves_no_temp(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        store.put_file(KEY, source)
    assert not store.has(KEY)
    assert _files(store.root) == []


def test_local_put_is_invisible_until_complete_and_fsyncs_before_the_rename(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    final = store.root / KEY
    _write(final, b"old version")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append(f"replace:{Path(src).parent == Path(dst).parent}")
        real_replace(src, dst)

    def reader_view() -> None:
        assert final.read_bytes() == b"old version"

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(shutil, "copyfileobj", _half_then(False, reader_view))
    store.put_file(KEY, source)
    assert final.read_bytes() == PAYLOAD
    assert events[:2] == ["fsync", "replace:True"]  # file fsynced, then renamed within its own directory
    assert _files(store.root) == [KEY]


def test_local_get_failing_midway_leaves_dest_untouched(
    tmp_path: Path, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_file(KEY, source)
    dest = _write(tmp_path / "out" / "frame.png", b"previous")

    def reader_view() -> None:
        assert dest.read_bytes() == b"previous"

    monkeypatch.setattr(shutil, "copyfileobj", _half_then(True, reader_view))
    with pytest.raises(OSError, match="Input/output"):
        store.get_file(KEY, dest)
    assert dest.read_bytes() == b"previous"
    assert _files(tmp_path / "out") == ["frame.png"]


def test_local_files_get_the_umask_mode_not_the_temp_file_mode(tmp_path: Path, source: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_file(KEY, source)
    umask = os.umask(0)
    os.umask(umask)
    assert (store.root / KEY).stat().st_mode & 0o777 == 0o666 & ~umask


# --- S3Store specifics and the factory -------------------------------------------------------------------


def test_s3_multipart_upload_round_trips(moto_endpoint: str, tmp_path: Path) -> None:
    """Above boto3's 8 MiB threshold upload_file goes multipart; the object appears whole."""
    store = S3Store(BUCKET, "multipart", endpoint_url=moto_endpoint)
    big = _write(tmp_path / "big.bin", os.urandom(9 * 1024 * 1024))
    store.put_file("clips/big.mp4", big)
    store.get_file("clips/big.mp4", tmp_path / "got.bin")
    assert (tmp_path / "got.bin").read_bytes() == big.read_bytes()
    store.delete("clips/big.mp4")


def test_s3_store_without_prefix(moto_endpoint: str, source: Path, tmp_path: Path) -> None:
    store = S3Store(BUCKET, endpoint_url=moto_endpoint)
    key = f"noprefix-{uuid.uuid4().hex}.png"
    assert store.locate(key) == f"s3://{BUCKET}/{key}"
    store.put_file(key, source)
    assert store.has(key)
    store.delete(key)


def test_s3_errors_and_repr_do_not_carry_credentials(moto_endpoint: str, tmp_path: Path) -> None:
    store = S3Store(BUCKET, "creds", endpoint_url=moto_endpoint)
    with pytest.raises(FileNotFoundError) as missing:
        store.get_file("missing.png", tmp_path / "dest")
    assert "s3://farm-artifacts/creds/missing.png" in str(missing.value)
    other = S3Store("no-such-bucket-here", endpoint_url=moto_endpoint)
    with pytest.raises(Exception) as failed:
        other.put_file("x.png", _write(tmp_path / "x.png", b"x"))
    for text in (repr(store), str(missing.value), str(failed.value), repr(failed.value)):
        assert SECRET not in text


class _FailingS3:
    """A boto3 S3 client whose every call raises what `make` gives (a stand-in for an S3 in trouble)."""

    def __init__(self, make: Callable[[], Exception]) -> None:
        self.make = make

    def __getattr__(self, name: str) -> Callable[..., None]:
        def call(*args: object, **kwargs: object) -> None:
            raise self.make()

        return call


def _client_error(code: str, status: int) -> Exception:
    response = {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error: Exception = ClientError(response, "PutObject")
    return error


def _upload_failed(code: str, status: int) -> Exception:
    """What boto3's upload_file raises: S3UploadFailedError, the ClientError as its implicit context."""
    try:
        try:
            raise _client_error(code, status)
        except ClientError as exc:
            raise S3UploadFailedError(f"Failed to upload: {exc}")  # noqa: B904 - as boto3 does
    except S3UploadFailedError as wrapped:
        error: Exception = wrapped
    return error


@pytest.mark.parametrize(
    "make",
    [
        lambda: _upload_failed("SlowDown", 503),
        lambda: _upload_failed("InternalError", 500),
        lambda: _client_error("ServiceUnavailable", 503),
        lambda: EndpointConnectionError(endpoint_url="http://s3"),
        lambda: ReadTimeoutError(endpoint_url="http://s3"),
    ],
    ids=["slowdown", "500", "503", "unreachable", "read-timeout"],
)
def test_s3_trouble_that_passes_makes_the_store_unavailable_for_now(
    make: Callable[[], Exception], source: Path, tmp_path: Path
) -> None:
    store = S3Store(BUCKET, "p", client=_FailingS3(make))
    with pytest.raises(StoreUnavailable, match=r"S3 did not take s3://farm-artifacts/p/a\.png"):
        store.put_file("a.png", source)
    with pytest.raises(StoreUnavailable, match="S3 did not give"):
        store.get_file("a.png", tmp_path / "dest.png")
    with pytest.raises(StoreUnavailable):
        store.has("a.png")
    assert _files(tmp_path) == ["src/frame.png"], "no temp file left by the failed get"


@pytest.mark.parametrize(
    "make",
    [lambda: _upload_failed("AccessDenied", 403), lambda: _upload_failed("NoSuchBucket", 404)],
    ids=["403", "no-bucket"],
)
def test_s3_refusals_that_do_not_pass_are_not_unavailable(
    make: Callable[[], Exception], source: Path
) -> None:
    store = S3Store(BUCKET, "p", client=_FailingS3(make))
    with pytest.raises(Exception) as refused:
        store.put_file("a.png", source)
    assert not isinstance(refused.value, StoreUnavailable)


def test_importing_the_store_and_making_an_s3_store_does_not_import_boto3() -> None:
    code = (
        "import sys; from farm.storage.stores import open_store; "
        "s = open_store('s3', bucket='b', prefix='p'); s.locate('k'); "
        "assert 'boto3' not in sys.modules and 'botocore' not in sys.modules, 'boto3 imported eagerly'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_open_store() -> None:
    assert isinstance(open_store("local", root=Path("rel")), LocalStore)
    assert Path(open_store("local", root=Path("rel")).locate("a.png")).is_absolute()
    s3 = open_store("s3", bucket="b", prefix="/runs/ep1/", region="eu-west-1")
    assert isinstance(s3, S3Store)
    assert isinstance(s3, ArtifactStore)
    assert s3.locate("a.png") == "s3://b/runs/ep1/a.png"
    with pytest.raises(ValueError, match="root"):
        open_store("local")
    with pytest.raises(ValueError, match="bucket"):
        open_store("s3")
    with pytest.raises(ValueError, match="unknown store kind"):
        open_store("ftp", root=Path("x"))
    with pytest.raises(ValueError, match="prefix"):
        open_store("s3", bucket="b", prefix="runs/../other")
    with pytest.raises(ValueError, match="bucket"):
        S3Store("bad/bucket")


@pytest.mark.parametrize(
    "key", ["a", "a.png", "steps/0123abcd/PRJ_EP001_S01_T01_MARA_first.png", "x/y/z-1_2.tar.gz", ".hidden"]
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key
