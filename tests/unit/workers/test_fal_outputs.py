"""Downloading a finished fal request's output: a full scratch disk means come back later, not fail."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import httpx
import pytest

from workers.base import TransientError, scratch_room
from workers.fal import outputs as fal_outputs

BODY = b"\x89PNG" + bytes(4096)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> None:
    """The output URL answers with BODY (httpx's own in-process transport: nothing leaves the process)."""
    client = httpx.Client(transport=httpx.MockTransport(lambda _: httpx.Response(200, content=BODY)))
    monkeypatch.setattr(fal_outputs, "_download_client", lambda: client)


@pytest.mark.usefixtures("served")
def test_a_full_scratch_disk_is_transient_and_leaves_no_part_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = fal_outputs._write_capped

    def fills_half_way(response: httpx.Response, tmp: Path) -> None:
        tmp.write_bytes(BODY[: len(BODY) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))

    monkeypatch.setattr(fal_outputs, "_write_capped", fills_half_way)
    dest = tmp_path / "LEV_EP001_S01_first.png"
    with pytest.raises(TransientError, match="no room to download the output"):
        fal_outputs._download("https://fal.invalid/out.png", dest)
    assert list(tmp_path.iterdir()) == [], "no output and no half-written .part file"

    monkeypatch.setattr(fal_outputs, "_write_capped", real_write)  # room again: the retry fetches it whole
    fal_outputs._download("https://fal.invalid/out.png", dest)
    assert dest.read_bytes() == BODY


@pytest.mark.usefixtures("served")
def test_other_write_errors_are_not_mistaken_for_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def denied(response: httpx.Response, tmp: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(tmp))

    monkeypatch.setattr(fal_outputs, "_write_capped", denied)
    with pytest.raises(PermissionError):
        fal_outputs._download("https://fal.invalid/out.png", tmp_path / "x.png")


def test_a_full_scratch_disk_under_a_pod_download_is_transient_too(tmp_path: Path) -> None:
    expected = pytest.raises(TransientError, match=f"no room to download the output into {tmp_path}")
    with expected, scratch_room(tmp_path):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
