"""What every artifact store promises the farm, checked the same way on the local folder and on S3 (moto).

Steps hand their outputs to the store and later steps, retakes and the final edit read them back by key,
possibly on another machine; the store kind is a setting, so nothing may depend on which one is in use.
The stores offer no listing, so there is none to check.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from farm.storage.stores import ArtifactStore

KEY = "render/48/48aef055b02aeb15/0.png"
PAYLOAD = bytes(range(256)) * 40 + b"\x00 the end"
INVALID_KEYS = ["", "/abs.png", "../up.png", "a/../b.png", "a//b.png", "a/", "sp ace.png", "a\\b.png"]


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def fetched(store: ArtifactStore, key: str, folder: Path) -> bytes:
    dest = folder / "fetched" / key.replace("/", "_")
    store.get_file(key, dest)
    return dest.read_bytes()


def test_it_is_an_artifact_store(store: ArtifactStore) -> None:
    """The task layer only knows the protocol; both kinds must satisfy it as they are."""
    assert isinstance(store, ArtifactStore)


def test_what_is_put_comes_back_byte_for_byte(store: ArtifactStore, tmp_path: Path) -> None:
    """Outputs are binary (PNG, MP4) and are read back by the next step: no byte may change."""
    source = write(tmp_path / "src" / "frame.png", PAYLOAD)
    store.put_file(KEY, source)
    assert source.read_bytes() == PAYLOAD, "the source is copied, not moved or changed"
    dest = tmp_path / "not" / "yet" / "there" / "frame.png"
    store.get_file(KEY, dest)
    assert dest.read_bytes() == PAYLOAD, "the folders above dest are made as needed"


def test_an_empty_file_round_trips(store: ArtifactStore, tmp_path: Path) -> None:
    """Empty is a valid object (a marker, a silent track), distinct from missing."""
    store.put_file("markers/empty.bin", write(tmp_path / "empty.bin", b""))
    assert store.has("markers/empty.bin")
    assert fetched(store, "markers/empty.bin", tmp_path) == b""


def test_has_follows_put_and_delete(store: ArtifactStore, tmp_path: Path) -> None:
    """`has` is how a step decides to reuse an output instead of paying for it again."""
    assert not store.has(KEY)
    store.put_file(KEY, write(tmp_path / "a.png", PAYLOAD))
    assert store.has(KEY)
    assert not store.has(KEY + ".other"), "a longer key is another object"
    store.delete(KEY)
    assert not store.has(KEY)


def test_an_overwrite_replaces_the_whole_object(store: ArtifactStore, tmp_path: Path) -> None:
    """A retake writes the same key again; nothing of the longer old object may survive a shorter new one."""
    store.put_file(KEY, write(tmp_path / "long.png", PAYLOAD * 4))
    store.put_file(KEY, write(tmp_path / "short.png", b"short"))
    assert fetched(store, KEY, tmp_path) == b"short"


def test_keys_do_not_touch_each_other(store: ArtifactStore, tmp_path: Path) -> None:
    """Neighbouring outputs of one step, and the same asset under the two namespaces, are separate."""
    keys = {
        "render/48/48aef055b02aeb15/0.png": b"render",
        "embedded/48/48aef055b02aeb15/0.png": b"embedded",
        "render/48/48aef055b02aeb15/1.png": b"panel two",
    }
    for index, (key, data) in enumerate(keys.items()):
        store.put_file(key, write(tmp_path / f"{index}.png", data))
    store.delete("render/48/48aef055b02aeb15/1.png")
    assert fetched(store, "render/48/48aef055b02aeb15/0.png", tmp_path) == b"render"
    assert fetched(store, "embedded/48/48aef055b02aeb15/0.png", tmp_path) == b"embedded"


def test_getting_a_missing_key_is_file_not_found_and_leaves_dest_alone(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """The caller tells "never stored" from a real fault by FileNotFoundError; a file already at dest (an
    earlier download) must not be clobbered or truncated by the failed one."""
    dest = write(tmp_path / "dest" / "frame.png", b"what was here before")
    with pytest.raises(FileNotFoundError):
        store.get_file("render/00/never-stored/0.png", dest)
    assert dest.read_bytes() == b"what was here before"
    assert [p.name for p in dest.parent.iterdir()] == ["frame.png"], "no temp file left beside dest"


def test_deleting_is_idempotent(store: ArtifactStore, tmp_path: Path) -> None:
    """Clean-up runs again after a crash; deleting what is already gone is not an error."""
    store.delete("render/00/never-stored/0.png")
    store.put_file(KEY, write(tmp_path / "a.png", PAYLOAD))
    store.delete(KEY)
    store.delete(KEY)
    assert not store.has(KEY)


def test_putting_a_missing_source_is_file_not_found_and_stores_nothing(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """A backend that wrote nothing must not leave an empty object that later steps would reuse."""
    with pytest.raises(FileNotFoundError):
        store.put_file(KEY, tmp_path / "never-written.png")
    assert not store.has(KEY)


@pytest.mark.parametrize("key", INVALID_KEYS, ids=repr)
def test_an_unsafe_key_is_refused_by_every_operation(store: ArtifactStore, key: str, tmp_path: Path) -> None:
    """Keys are built from plan data; one that could climb out of the store is a bug, refused up front."""
    source = write(tmp_path / "a.png", PAYLOAD)
    for operation in (
        lambda: store.has(key),
        lambda: store.put_file(key, source),
        lambda: store.get_file(key, tmp_path / "dest.png"),
        lambda: store.locate(key),
        lambda: store.delete(key),
    ):
        with pytest.raises(ValueError):
            operation()
    assert not (tmp_path / "dest.png").exists()


def test_locate_names_the_object(store: ArtifactStore) -> None:
    """The manifest records where each output lives; the location has to end in the key."""
    where = store.locate(KEY)
    assert where.endswith(KEY)
    assert where.startswith(("/", "s3://"))


def test_a_reader_never_sees_a_partial_object_while_it_is_overwritten(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """Every write is atomic, so a step reading an output that a retake is rewriting gets one whole
    version or the other, never a mix or a truncated file."""
    versions = [write(tmp_path / f"v{n}.bin", bytes([n]) * 200_000) for n in (1, 2)]
    whole = {path.read_bytes() for path in versions}
    store.put_file(KEY, versions[0])
    done = threading.Event()
    seen: list[bytes] = []
    errors: list[BaseException] = []

    def read() -> None:
        dest = tmp_path / "reader" / "frame.bin"
        try:
            while not done.is_set() or not seen:
                store.get_file(KEY, dest)
                seen.append(dest.read_bytes())
        except BaseException as exc:  # reported below, in the test's own thread
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for n in range(6):
            store.put_file(KEY, versions[n % 2])
    finally:
        done.set()
        reader.join(30)
    assert errors == []
    assert seen and all(data in whole for data in seen)
    assert fetched(store, KEY, tmp_path) == versions[1].read_bytes(), "the last write wins"
