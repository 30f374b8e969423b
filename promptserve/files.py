"""Atomic file writes: the one helper every writer in the project uses (prompt sets, the registry's
content-addressed blobs and task files, reports and plots, decode caches, pretraining checkpoints).

A file is written to a temp name, then renamed over its target, so a reader (or a crash) sees either the old
file or the new one, never half of one. `durable=True` adds the fsyncs a crash-safe store needs: the temp
file before the rename, and the folder after it, so the rename itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_target(path: str | Path, *, durable: bool = False, tmp_dir: str | Path | None = None) -> Iterator[Path]:
    """Yields a fresh temp path for a writer that wants a file name (np.savez, torch.save, savefig); when the
    block ends without an error the temp file replaces `path`, otherwise it is removed.

    The temp name keeps the target's suffix (np.savez and savefig pick the format from it) and is unique
    (mkstemp), so concurrent writers of one target never share a temp file. tmp_dir: where the temp file
    lives (default: beside the target; it must be on the target's filesystem)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=tmp_dir or path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        fsync_dir(path.parent)  # makes the rename itself durable before the next step depends on it


def write_atomic(path: str | Path, data: bytes, *, durable: bool = False, tmp_dir: str | Path | None = None) -> None:
    """Write `data` to `path` all or nothing (see atomic_target)."""
    with atomic_target(path, durable=durable, tmp_dir=tmp_dir) as tmp:
        tmp.write_bytes(data)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename or unlink inside it) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
