"""``sslmed data fetch``: obtain catalogue datasets from their public origins.

For each dataset: download its files into ``<data root>/.downloads/`` (resuming, with
checksums, :mod:`sslmed.data.fetch.download`), prepare them into a temporary folder beside
the destination (:mod:`sslmed.data.fetch.unpack`), write the completeness marker last, and
rename the folder into place. A fetch that stops half-way (network, full disk, a
wrong archive) leaves no dataset folder behind: either the whole prepared dataset is
there, with its marker, or nothing is.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sslmed import __version__
from sslmed.core.errors import DataError
from sslmed.data.catalog import CATALOG, DOWNLOADS, MARKER, CatalogEntry, Download, dataset_dir, earlier, is_present
from sslmed.data.fetch.download import download, file_digest
from sslmed.data.fetch.unpack import preparation, remove_duplicates, write_bytes, write_labels

log = logging.getLogger(__name__)


@dataclass
class FetchResult:
    """What one dataset's fetch did: ``status`` is ``fetched`` or ``present`` (left as it was)."""

    name: str
    status: str
    path: Path
    images: int | None = None
    removed: int = 0


def _local_file(item: Download, root: Path, search: Sequence[Path]) -> Path | None:
    for folder in [root / DOWNLOADS, *search]:
        candidate = Path(folder) / item.filename
        if candidate.is_file():
            return candidate
    return None


def obtain(item: Download, root: Path, *, search: Sequence[Path] = (), quiet: bool = False, retries: int = 3) -> Path:
    """The local path of one download: a file the user put in place, or a fresh download.

    Files that need an account are never downloaded: without them the error says where
    to get them and where to put them.
    """
    if item.manual:
        found = _local_file(item, root, search)
        if found is None:
            raise DataError(
                f"{item.filename} must be downloaded by hand: {item.manual}; save it as "
                f"{root / DOWNLOADS / item.filename} (or pass --from FOLDER) and run the fetch again"
            )
        return found
    return download(item, root / DOWNLOADS, quiet=quiet, retries=retries)


def archive_commit(path: Path) -> str | None:
    """The commit a GitHub repository archive was made from (git writes it into the zip comment)."""
    try:
        with zipfile.ZipFile(path) as archive:
            comment = archive.comment.decode("ascii", "replace").strip()
    except (zipfile.BadZipFile, OSError):
        return None
    return comment if re.fullmatch(r"[0-9a-f]{40}", comment) else None


def _record(entry: CatalogEntry, files: Mapping[str, Path], counts: dict[str, Any]) -> dict[str, Any]:
    return {
        "dataset": entry.name,
        "origin": "fetched by sslmed data fetch",
        "fetched_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sslmed": __version__,
        "source": entry.source,
        "licence": entry.licence,
        "citation": entry.citation,
        "files": [
            {
                "url": item.url,
                "filename": item.filename,
                "sha256": file_digest(files[item.key], "sha256"),
                "pinned": item.pinned,
                **({"md5": item.md5} if item.md5 else {}),
                **({"commit": commit} if (commit := archive_commit(files[item.key])) else {}),
            }
            for item in entry.downloads
        ],
        **counts,
    }


def check_image_count(entry: CatalogEntry, found: int, files: Mapping[str, Path], destination: Path) -> None:
    """Refuse a prepared copy with fewer than ``entry.min_images`` images (a truncated or
    wrong archive) in one line naming the dataset, the count found and the one expected.

    The downloads that no checksum pins (repository archives) are removed, so the next
    fetch gets a fresh copy; a pinned or hand-downloaded file is named instead."""
    if found >= entry.min_images:
        return
    fresh = [item for item in entry.downloads if not item.pinned and not item.manual]
    for item in fresh:
        files[item.key].unlink(missing_ok=True)
    by_hand = [str(files[item.key]) for item in entry.downloads if item.manual]
    if fresh:
        advice = f"removed {', '.join(i.filename for i in fresh)} from .downloads: run the fetch again"
    elif by_hand:
        advice = f"check that {', '.join(by_hand)} is the whole download from {entry.source}"
    else:  # every file matched its published checksum: a new download would be the same
        advice = "its files match their published checksums, so the catalogue or its preparation is wrong: report it"
    raise DataError(
        f"{entry.name}: the prepared copy holds {found:,} images, the catalogue expects {entry.images:,} "
        f"(at least {entry.min_images:,}): an incomplete or wrong archive, so nothing was put in {destination}; "
        f"{advice}"
    )


def prepare_dataset(entry: CatalogEntry, files: Mapping[str, Path], root: Path) -> FetchResult:
    """Prepare ``entry`` from its downloaded ``files`` and move it into ``root`` atomically
    (only when it holds at least ``entry.min_images`` images: :func:`check_image_count`)."""
    destination = dataset_dir(entry.name, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=root))
    except OSError as exc:
        raise DataError(f"cannot write in the data root {root}: {exc.strerror or exc}") from None
    try:
        try:
            prepared = preparation(entry)(entry, dict(files), work)
            counts: dict[str, Any] = {}
            if prepared is not None:
                if entry.deduplicate:
                    remove_duplicates(work, prepared, earlier(entry.name), root)
                check_image_count(entry, len(prepared.rows), files, destination)
                write_labels(work, prepared)
                classes = Counter(row.get("label") or "(unlabelled)" for row in prepared.rows)
                counts = {
                    "images": len(prepared.rows),
                    "classes": dict(classes),
                    "duplicates_removed": prepared.removed,
                }
            # written last: a folder with this record is a complete dataset
            write_bytes(work / MARKER, (json.dumps(_record(entry, files, counts), indent=2) + "\n").encode())
        except OSError as exc:  # anything the preparation did not already turn into a DataError
            raise DataError(f"{entry.name}: preparing failed: {exc.strerror or exc}") from None
        old = None
        if destination.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{entry.name}.old-", dir=root))
            os.replace(destination, old / entry.name)
        os.replace(work, destination)  # the one step that makes the dataset appear, complete
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    return FetchResult(
        entry.name, "fetched", destination, counts.get("images"), len(counts.get("duplicates_removed", []))
    )


def fetch_dataset(
    name: str,
    root: Path,
    *,
    force: bool = False,
    search: Sequence[Path] = (),
    quiet: bool = False,
    retries: int = 3,
    catalog: Mapping[str, CatalogEntry] | None = None,
) -> FetchResult:
    """Fetch one catalogue dataset into ``root`` (a no-op when it is already there, unless ``force``)."""
    entry = (catalog or CATALOG)[name]
    root = Path(root)
    if is_present(name, root) and not force:
        return FetchResult(name, "present", dataset_dir(name, root))
    # files downloaded by hand first: nothing is downloaded while one of them is missing
    items = sorted(entry.downloads, key=lambda item: item.manual is None)
    files = {item.key: obtain(item, root, search=search, quiet=quiet, retries=retries) for item in items}
    return prepare_dataset(entry, files, root)


def clean_partials(root: Path, name: str, older_than: float = 3600.0) -> list[Path]:
    """Remove the temporary folders of ``name`` that a killed fetch left in ``root``.

    Only folders untouched for ``older_than`` seconds go: a fetch of the same dataset
    running at the same time in another process keeps its own. (An interrupted fetch
    that is not killed removes its folder itself.)
    """
    removed = []
    if Path(root).is_dir():
        for folder in Path(root).glob(f".{name}.*-*"):
            stale = time.time() - folder.stat().st_mtime > older_than
            if folder.is_dir() and stale and (".partial-" in folder.name or ".old-" in folder.name):
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
    return removed


__all__ = ["FetchResult", "check_image_count", "clean_partials", "fetch_dataset", "obtain", "prepare_dataset"]
