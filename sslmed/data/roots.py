"""Where data lives: the one lookup of the data root (recipe ``data_root``, then
``$SSLMED_DATA``, then ``../shared/data`` beside the repository) and of paths under it.

The web app, the tests and the bench scripts ask :func:`resolve_data_root` instead of
re-deriving the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from sslmed.core.errors import DataError

DATA_ENV = "SSLMED_DATA"


def repository_data_dir() -> Path:
    """``../shared/data`` next to the repository this package was installed from."""
    return Path(__file__).resolve().parents[3] / "shared" / "data"  # sslmed/data/roots.py -> repo/..


def resolve_data_root(recipe_root: str | None = None, relative_to: Path | None = None) -> Path:
    """Where relative data paths start: the recipe's ``data_root``, then ``$SSLMED_DATA``,
    then ``../shared/data`` beside the repository."""
    if recipe_root:
        root = Path(os.path.expanduser(recipe_root))
        if not root.is_absolute() and relative_to is not None:
            root = relative_to / root
        return root
    if os.environ.get(DATA_ENV):
        return Path(os.path.expanduser(os.environ[DATA_ENV]))
    return repository_data_dir()


def resolve_path(path: str, data_root: Path, what: str) -> Path:
    """``path`` under ``data_root`` (unless absolute); a clear error if it is missing."""
    resolved = Path(os.path.expanduser(path))
    if not resolved.is_absolute():
        resolved = data_root / resolved
    if not resolved.exists():
        hint = (
            ""
            if data_root.exists()
            else f" (data root {data_root} does not exist: set data_root in the recipe or ${DATA_ENV},"
            " or get the data with `sslmed data fetch`)"
        )
        raise DataError(f"{what} not found: {resolved}{hint}")
    return resolved
