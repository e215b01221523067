"""The file system's side of a run: writable folders before training, free space before a
checkpoint, and write failures reported as what they are (disk full, read-only), not as the
library error that noticed them."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import uuid
from pathlib import Path

from lhdist.errors import describe_os_error

GIB = 2**30
# The margin over a checkpoint's size that a save wants free (metadata, a slightly larger state).
FREE_MARGIN = 1.1
# torch.save reports a failed write of its zip container as a RuntimeError, never an OSError.
TORCH_WRITE_FAILURES = ("file write failed", "unexpected pos", "inline_container")
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class DiskError(ValueError):
    """A write the file system refused: the user frees space or picks another folder."""


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def check_writable(folder: str | os.PathLike, key: str) -> None:
    """DiskError unless `folder` (config key `key`) exists or can be made, and takes a file."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise DiskError(f"{key}={folder} is a file; it must be a directory")
    probe = path / f".lhdist-write-probe-{uuid.uuid4().hex[:8]}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise DiskError(f"{key}={folder} is not writable ({describe_os_error(e)})") from None


def tree_bytes(root: Path) -> int:
    """Bytes of the files under `root`."""
    total = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            with contextlib.suppress(OSError):  # a file removed meanwhile
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def free_bytes(folder: Path) -> int:
    """Free bytes of the file system holding `folder` (or its nearest existing parent)."""
    path = folder
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_space(folder: Path, needed: int, what: str, how: str) -> None:
    """DiskError unless `folder`'s file system has `needed` bytes (+ margin) free."""
    want = int(needed * FREE_MARGIN)
    free = free_bytes(folder)
    if free < want:
        raise DiskError(
            f"{what} needs about {gib(want)} in {folder} but only {gib(free)} are free; {how}"
        )


def as_disk_error(error: BaseException, where: Path) -> DiskError | None:
    """The DiskError behind a failed write under `where`, or None when it was something else.

    OSErrors carry their errno; torch.save's RuntimeError does not, so a full disk is recognised
    by its message together with the free space left."""
    if isinstance(error, OSError) and error.errno in DISK_ERRNOS:
        return DiskError(f"writing under {where} failed: {describe_os_error(error)}")
    text = str(error)
    if isinstance(error, RuntimeError) and any(m in text for m in TORCH_WRITE_FAILURES):
        free = free_bytes(where)
        cause = f"the disk is full ({gib(free)} free)" if free < 64 * 2**20 else "a write failed"
        if not os.access(where if where.exists() else where.parent, os.W_OK):
            cause = "the folder is not writable"
        return DiskError(f"writing under {where} failed: {cause} (torch: {text.splitlines()[0]})")
    return None
