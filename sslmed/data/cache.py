"""Decode once: a cache of every image of a source, decoded and resized to the training size.

Pre-training reads each image once per epoch per view pipeline; decoding a JPEG or
PNG and resizing it costs more than the augmentation itself at 64 px. The cache does
that work once per dataset and size: an ``N×C×S×S`` uint8 array in a ``.npy`` file
(numpy memmap), opened read-only and lazily by each DataLoader worker, so the
operating system's page cache holds one copy of the pixels for every process on the
machine instead of each worker holding its own.

A cache lives in its own folder, named after the source, its fingerprint, the size
and the channels (``<root>/<name>-<key>-<size>px-<channels>ch``). Its ``meta.json``
records what it was built from; a changed dataset (records, labels, splits, or a
file's size or modification time) or size gives another key, hence a new build. The
build writes into a temporary folder that is renamed into place with the
completeness marker written last, so an interrupted build never leaves a folder
that looks complete. One process builds and the others wait (a file lock beside the
folder): DDP ranks on one machine, or several machines sharing the cache folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from PIL import Image

from sslmed.core.errors import DataError
from sslmed.data.sources import ImageRecord, ImageSource

log = logging.getLogger(__name__)

CACHE_ENV = "SSLMED_CACHE_DIR"
#: ``cache: auto`` turns the cache on for file-based sources with at least this many images
AUTO_MIN_IMAGES = 4000
FORMAT = "sslmed-cache-v1"
IMAGES_FILE = "images.npy"
META_FILE = "meta.json"
COMPLETE_FILE = "COMPLETE"  # written last: marks the cache complete
#: how long a process waits for another one building the same cache (seconds)
LOCK_TIMEOUT = 6 * 3600


def default_cache_root() -> Path:
    """``$SSLMED_CACHE_DIR``, else ``$XDG_CACHE_HOME/sslmed``, else ``~/.cache/sslmed``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.path.expanduser(os.environ[CACHE_ENV]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sslmed"


def wants_cache(setting: str, source: ImageSource, n_images: int) -> bool:
    """Whether a step with ``cache: <setting>`` reads ``source`` through the cache.

    ``auto`` caches file-based sources of :data:`AUTO_MIN_IMAGES` images or more
    (in-memory arrays such as MedMNIST are decoded already)."""
    if setting == "off":
        return False
    if setting == "auto":
        return n_images >= AUTO_MIN_IMAGES and _reads_files(source)
    return True  # "on" or a folder


def cache_root(setting: str) -> Path:
    """The folder a ``cache:`` setting points at (``on``/``auto``: the default root)."""
    return default_cache_root() if setting in ("on", "auto") else Path(os.path.expanduser(setting))


def _reads_files(source: ImageSource) -> bool:
    records = source.records("all")
    return bool(records) and (source.root is not None or isinstance(records[0].ref, str))


def resize_image(image: Image.Image, size: int) -> np.ndarray:
    """The pixels the cache stores for one image: ``C×size×size`` uint8 (PIL bilinear,
    antialiased when shrinking, the whole image squeezed to a square as in evaluation)."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.array(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def decode_record(source: ImageSource, record: ImageRecord, size: int, channels: int) -> np.ndarray:
    """The direct path: read and resize one record as the cache would store it."""
    return resize_image(source.read(record.ref, "L" if channels == 1 else "RGB"), size)


def _files_digest(source: ImageSource, records: Sequence[ImageRecord]) -> str:
    """Size and modification time of every file: a file replaced in place changes the key."""
    digest = hashlib.sha256()
    for record in records:
        path = source.path_of(record)
        if path is None:
            continue
        try:
            stat = path.stat()
            digest.update(f"{record.ref}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{record.ref}\tmissing\n".encode())
    return digest.hexdigest()[:16]


def cache_key(source: ImageSource, size: int, channels: int) -> dict[str, Any]:
    """What a cache must match to be used for ``source`` at ``size`` and ``channels``."""
    records = source.records("all")
    return {
        "format": FORMAT,
        "source": source.name,
        "fingerprint": source.fingerprint(),
        "files": _files_digest(source, records),
        "size": size,
        "channels": channels,
        "images": len(records),
    }


def cache_folder(root: Path, key: dict[str, Any]) -> Path:
    """``<root>/<name>-<hash of the key>-<size>px-<channels>ch``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(key["source"])).strip("_")[:40] or "data"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    return Path(root) / f"{name}-{digest}-{key['size']}px-{key['channels']}ch"


@dataclass
class ImageCache:
    """A complete cache: its folder and which row holds each record's image."""

    folder: Path
    meta: dict[str, Any]
    rows: dict[str, int]

    @classmethod
    def open(cls, folder: Path) -> ImageCache:
        """Open a complete cache folder (a :class:`DataError` if it is not one)."""
        folder = Path(folder)
        if not (folder / COMPLETE_FILE).is_file():
            raise DataError(f"{folder}: not a complete sslmed image cache (no {COMPLETE_FILE} marker)")
        meta = json.loads((folder / META_FILE).read_text())
        return cls(folder, meta, {ref: row for row, ref in enumerate(meta["refs"])})

    @property
    def path(self) -> Path:
        """The ``.npy`` file of the images."""
        return self.folder / IMAGES_FILE

    def array(self) -> np.ndarray:
        """The images as a read-only memmap (no pixel is read until it is used)."""
        return np.load(self.path, mmap_mode="r")

    def row_of(self, record: ImageRecord) -> int:
        """The row of ``record``'s image (a :class:`DataError` if the cache lacks it)."""
        try:
            return self.rows[str(record.ref)]
        except KeyError:
            raise DataError(f"image cache {self.folder} has no image {record.ref!r}: built from other data") from None


def _check_match(folder: Path, key: dict[str, Any]) -> None:
    """A cache folder named directly must hold this data at this size."""
    meta = json.loads((folder / META_FILE).read_text())
    differs = [k for k in key if meta.get("key", {}).get(k) != key[k]]
    if differs:
        found = ", ".join(f"{k}={meta.get('key', {}).get(k)!r} (expected {key[k]!r})" for k in differs)
        raise DataError(
            f"image cache {folder} was built from other data: {found}; point cache: at its parent folder "
            "(each data and size gets its own sub-folder) or delete it"
        )


def _check_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(
            f"cache folder {root} is not writable ({exc.strerror or exc}); set the step's cache: to a writable "
            f"folder, set ${CACHE_ENV}, or build it elsewhere with `sslmed data cache` (cache: off reads the files)"
        ) from None


def _check_space(root: Path, needed: int) -> None:
    free = shutil.disk_usage(root).free
    if free < needed * 1.05 + 16 * 2**20:
        raise DataError(
            f"not enough disk space for the image cache in {root}: it needs {needed / 2**20:.0f} MiB, "
            f"{free / 2**20:.0f} MiB are free (free some space or set cache: to another folder)"
        )


def ensure_cache(
    source: ImageSource,
    size: int,
    channels: int,
    root: Path | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> ImageCache:
    """The complete cache of ``source`` at ``size``/``channels`` under ``root``, built if missing.

    ``root`` may also be a cache folder itself (it must then hold this data). Safe to
    call from several processes at once: one builds, the others wait and open it.
    """
    root = Path(root) if root is not None else default_cache_root()
    key = cache_key(source, size, channels)
    if (root / META_FILE).is_file():  # the setting names one cache folder, not a root
        _check_match(root, key)
        return ImageCache.open(root)
    folder = cache_folder(root, key)
    if (folder / COMPLETE_FILE).is_file():
        return ImageCache.open(folder)
    _check_writable(root)
    lock = FileLock(str(folder) + ".lock")
    try:
        with lock.acquire(timeout=LOCK_TIMEOUT):
            if not (folder / COMPLETE_FILE).is_file():  # another process may have built it meanwhile
                build_cache(source, key, folder, progress=progress, workers=workers)
    except Timeout:
        raise DataError(f"waited {LOCK_TIMEOUT}s for another process building {folder}; is it stuck?") from None
    return ImageCache.open(folder)


def build_cache(
    source: ImageSource,
    key: dict[str, Any],
    folder: Path,
    progress: bool = True,
    workers: int | None = None,
) -> Path:
    """Decode every image of ``source`` into ``folder`` (atomically: temp folder, marker, rename)."""
    records = source.records("all")
    size, channels = key["size"], key["channels"]
    needed = len(records) * channels * size * size
    _check_space(folder.parent, needed)
    for stale in folder.parent.glob(folder.name + ".tmp-*"):  # left by an interrupted build
        shutil.rmtree(stale, ignore_errors=True)
    if folder.exists():  # incomplete (no marker): never used, rebuilt
        shutil.rmtree(folder)
    tmp = folder.parent / f"{folder.name}.tmp-{os.getpid()}"
    tmp.mkdir(parents=True)
    started = time.perf_counter()
    try:
        images = np.lib.format.open_memmap(
            tmp / IMAGES_FILE, mode="w+", dtype=np.uint8, shape=(len(records), channels, size, size)
        )
        bar = _progress_bar(len(records), f"caching {source.name} at {size}px", progress)
        with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:  # PIL decodes without the GIL
            for row, pixels in enumerate(pool.map(lambda r: decode_record(source, r, size, channels), records)):
                images[row] = pixels
                bar.update(1)
        bar.close()
        images.flush()
        del images
        meta = {"key": key, "refs": [str(r.ref) for r in records], "built_seconds": 0.0}
        meta["built_seconds"] = round(time.perf_counter() - started, 1)
        (tmp / META_FILE).write_text(json.dumps(meta))
        _fsync_file(tmp / IMAGES_FILE)
        (tmp / COMPLETE_FILE).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))  # written last
        os.replace(tmp, folder)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise DataError(
                f"the disk filled up while building the image cache in {folder.parent} "
                f"(it needs {needed / 2**20:.0f} MiB); nothing was kept: free some space or set cache: to another "
                "folder"
            ) from None
        raise DataError(f"could not build the image cache in {folder.parent}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # interrupted: never leave a half-written cache
        raise
    log.info("image cache %s: %d images in %.1fs", folder, len(records), meta["built_seconds"])
    return folder


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _progress_bar(total: int, description: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="img", disable=not enabled, mininterval=1.0, leave=False)


class CachedImageDataset(torch.utils.data.Dataset):
    """Records of one split read from an :class:`ImageCache`.

    ``as_tensor=False``: ``(transform(PIL image), label)``, the CPU augmentation path;
    ``as_tensor=True``: ``(C×S×S uint8 tensor, label)`` for augmentation on the device.
    The memmap is opened in each worker on first use (never pickled with the dataset).
    """

    def __init__(
        self,
        cache: ImageCache,
        records: Sequence[ImageRecord],
        transform: Any = None,
        as_tensor: bool = False,
    ) -> None:
        self.cache = cache
        self.records = list(records)
        self.rows = np.array([cache.row_of(r) for r in self.records], dtype=np.int64)
        self.transform = transform
        self.as_tensor = as_tensor
        self._array: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_array"] = None  # each worker maps the file itself
        return state

    def __len__(self) -> int:
        return len(self.records)

    def pixels(self, index: int) -> np.ndarray:
        """The cached ``C×S×S`` uint8 pixels of item ``index``."""
        if self._array is None:
            self._array = self.cache.array()
        return self._array[self.rows[index]]

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        record = self.records[index]
        pixels = self.pixels(index)
        if self.as_tensor:
            image: Any = torch.from_numpy(np.array(pixels))
        else:
            image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
            if self.transform is not None:
                image = self.transform(image)
        if record.targets is not None:
            return image, torch.tensor(record.targets, dtype=torch.float32)
        return image, record.label


class DecodedImageDataset(torch.utils.data.Dataset):
    """``(C×S×S uint8 tensor, label)`` decoded from the files (augmentation on the device, no cache)."""

    def __init__(self, source: ImageSource, records: Sequence[ImageRecord], size: int, channels: int) -> None:
        self.source = source
        self.records = list(records)
        self.size = size
        self.channels = channels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        record = self.records[index]
        image = torch.from_numpy(decode_record(self.source, record, self.size, self.channels))
        if record.targets is not None:
            return image, torch.tensor(record.targets, dtype=torch.float32)
        return image, record.label
