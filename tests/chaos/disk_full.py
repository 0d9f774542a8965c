"""A disk that fills up under the local artifact store, injected into a farm's worker processes.

While a flag file exists, every write into the store stops half way through its copy with ENOSPC, the
error the kernel gives for a full filesystem, after the first half of the bytes went into the store's
temp file. The store's own cleanup and the farm's handling of the error then run exactly as they would.

Why not a real full disk: a tiny filesystem under the store needs a mount (root) or FUSE; RLIMIT_FSIZE
fails with EFBIG (a file size limit, not a full disk) and hits the workers' logs too; a read-only folder
gives EACCES and does not stop root, which CI containers often are. So the fault is raised where the data is
written, in the workers only, switched by a file the test creates and deletes. It is installed at
interpreter start by a generated `sitecustomize` on the workers' PYTHONPATH (`worker_env`): nothing in the
farm's code knows about it.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, AnyStr

if TYPE_CHECKING:
    from _typeshed import SupportsRead, SupportsWrite

FLAG_VARIABLE = "CHAOS_DISK_FULL_FLAG"
STORE_VARIABLE = "CHAOS_DISK_FULL_STORE"
ROOT = Path(__file__).resolve().parents[2]
"""The repository, for the workers' PYTHONPATH (this module imports nothing of the tests: workers load it)."""


def worker_env(folder: Path, flag: Path, store: Path) -> dict[str, str]:
    """Environment for workers whose writes under `store` fail while `flag` exists; every refused write
    appends its path to `hits(flag)`."""
    folder.mkdir(parents=True, exist_ok=True)
    hook = "from tests.chaos import disk_full\n\ndisk_full.install()\n"
    (folder / "sitecustomize.py").write_text(hook)
    paths = [str(folder), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        "PYTHONPATH": os.pathsep.join(p for p in paths if p),
        FLAG_VARIABLE: str(flag),
        STORE_VARIABLE: str(store.absolute()),
    }


def hits(flag: Path) -> list[str]:
    """The store paths whose writes the full disk refused, oldest first."""
    log = flag.with_name(flag.name + ".hits")
    return log.read_text().splitlines() if log.exists() else []


def install() -> None:
    """Wrap the store's atomic write in this process (a no-op unless `worker_env` set the variables)."""
    flag, store = os.environ.get(FLAG_VARIABLE), os.environ.get(STORE_VARIABLE)
    if flag and store:
        _wrap(Path(flag), Path(store))


def _wrap(flag: Path, store: Path) -> None:
    from farm.storage import stores

    write_atomically, copyfileobj = stores._write_atomically, shutil.copyfileobj
    full = threading.local()

    def write(final: Path, source: Path) -> None:
        full.target = final if flag.exists() and final.is_relative_to(store) else None
        try:
            write_atomically(final, source)
        finally:
            full.target = None

    def copy(fsrc: SupportsRead[AnyStr], fdst: SupportsWrite[AnyStr], length: int = 0) -> None:
        target = getattr(full, "target", None)
        if target is None:
            copyfileobj(fsrc, fdst, length)
            return
        data = fsrc.read()
        fdst.write(data[: len(data) // 2])  # the store's temp file gets it when the writer closes
        with flag.with_name(flag.name + ".hits").open("a") as log:
            log.write(f"{target}\n")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    stores._write_atomically = write
    shutil.copyfileobj = copy  # only the store's writes, while full, behave differently
