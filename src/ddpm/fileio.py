"""Crash-safe writing, in one place: a crash or a full disk leaves the old file or the new one, never half.

A file is written under a temporary name beside it, fsynced, then renamed over the old one (``os.replace``,
atomic on POSIX); a write that fails removes its temporary. :func:`atomic_path` does this for any writer that
takes a path; :func:`write_synced` and :func:`fsync_dir` are its pieces, for the checkpoint, which renames a
whole folder into place the same way.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_synced(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it: on disk, not only in the page cache, when this returns."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def check_writable(folder: Path) -> None:
    """Raise the OSError that writing a new file in ``folder`` would raise (a read-only folder or disk, a
    full one); the probe leaves nothing behind."""
    with tempfile.TemporaryFile(dir=folder):
        pass


def fsync_file(path: Path) -> None:
    """Flush a file that another writer has closed to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path: Path) -> None:
    """Flush a folder's entries (a rename into it, a new file) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the ``with`` block to write; when the block ends normally the
    file is fsynced and renamed over ``path``, and when anything raises (a full disk, Ctrl-C) it is removed.

    The temporary ``.<name>.tmp-<pid><suffix>`` keeps ``path``'s suffix, for writers that choose a format by
    it or append one without it (``np.savez`` adds ``.npz``). To leave ``path`` as it was, raise. An OSError
    (a full disk, a read-only folder) is raised again naming ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temporary behind
        if isinstance(e, OSError) and e.errno is not None:  # name the file, not only the errno
            raise OSError(e.errno, f"could not write {path}: {e.strerror}") from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    with atomic_path(path) as tmp:
        write_synced(tmp, text.encode())
