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
