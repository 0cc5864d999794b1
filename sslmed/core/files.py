"""Writing a file so that it is never half-written: a temporary file beside the target,
flushed to disk, then renamed over it (``os.replace`` is atomic on one file system).

Every writer of the project goes through :func:`atomic_target` (run-folder files,
safetensors exports, Lightning checkpoints, caches), so a kill at any moment leaves
the old file or the new one, never a mix. The temporary names are
``.<name>.<random>.tmp``; :func:`remove_partial_files` clears the ones a kill left.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

PARTIAL_GLOB = ".*.tmp"


@contextmanager
def atomic_target(path: Path, fsync: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block
    ends without an exception, deleted otherwise. ``fsync``: flush it to disk first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        if fsync:
            with open(temp, "rb") as written:
                os.fsync(written.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: never half-written."""
    with atomic_target(path) as temp:
        temp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, value: Any) -> None:
    """Write JSON atomically, pretty-printed."""
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False, default=str) + "\n")


def remove_partial_files(folder: Path) -> list[Path]:
    """Delete the temporary files (``.<name>.<random>.tmp``) that a write killed half-way
    left in ``folder``; returns them. A resumed run calls this before writing again."""
    removed = []
    for partial in sorted(folder.glob(PARTIAL_GLOB)) if folder.is_dir() else []:
        partial.unlink(missing_ok=True)
        removed.append(partial)
    return removed


def check_regular_file(path: str | Path, max_bytes: int | None, what: str, error: type[Exception]) -> int:
    """The size of ``path`` once it is known to be a regular file of at most ``max_bytes``;
    else ``error`` (an sslmed error type) naming ``what`` and the path in one line.

    A FIFO would block the reader for ever and ``/dev/zero`` never ends, so a path is
    checked with ``stat`` (links followed: the target counts) before anything is read."""
    import stat

    path = Path(path)
    try:
        info = path.stat()
    except OSError as exc:
        raise error(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise error(f"{what} {path}: {kind}; give a regular file") from None
    if max_bytes is not None and info.st_size > max_bytes:
        raise error(f"{what} {path}: {info.st_size:,} bytes, more than the {max_bytes:,} allowed") from None
    return info.st_size


def read_bounded(path: str | Path, max_bytes: int, what: str, error: type[Exception]) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (:func:`check_regular_file`),
    opened without blocking and read no further than the limit (a file growing meanwhile
    is refused too)."""
    check_regular_file(path, max_bytes, what, error)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{what} {path}: more than the {max_bytes:,} bytes allowed") from None
    return data
