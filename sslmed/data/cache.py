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
import math
import os
import re
import shutil
import time
import tokenize
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
from sslmed.core.files import read_bounded
from sslmed.data.sources import ImageRecord, ImageSource

log = logging.getLogger(__name__)

CACHE_ENV = "SSLMED_CACHE_DIR"
#: ``cache: auto`` turns the cache on for file-based sources with at least this many images
AUTO_MIN_IMAGES = 4000
FORMAT = "sslmed-cache-v1"
IMAGES_FILE = "images.npy"
META_FILE = "meta.json"
COMPLETE_FILE = "COMPLETE"  # written last: marks the cache complete
#: a meta.json larger than this is not read (a million refs is about 40 MB)
MAX_META_BYTES = 512 * 2**20
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

    #: why an earlier cache in this folder was rebuilt (None: it was sound or new)
    rebuilt_because: str | None = None

    @classmethod
    def open(cls, folder: Path) -> ImageCache:
        """Open a complete cache folder, checked (:func:`check_cache`; a :class:`DataError`
        naming what is wrong if it is not sound)."""
        folder = Path(folder)
        if not (folder / COMPLETE_FILE).is_file():
            raise DataError(f"{folder}: not a complete sslmed image cache (no {COMPLETE_FILE} marker)")
        problem = check_cache(folder)
        if problem:
            raise DataError(f"image cache {folder} is broken: {problem}")
        meta = _read_meta(folder)
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


def _read_meta(folder: Path) -> dict[str, Any]:
    """meta.json, bounded and parsed (a :class:`DataError` in one line if it is not)."""
    data = read_bounded(folder / META_FILE, MAX_META_BYTES, "image cache metadata", DataError)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise DataError(f"{folder / META_FILE}: not valid JSON ({str(exc)[:80]})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("refs"), list) or not isinstance(meta.get("key"), dict):
        raise DataError(f"{folder / META_FILE}: not an sslmed cache description (no key/refs)")
    if not all(isinstance(ref, str) for ref in meta["refs"]):  # each ref is an image's name
        raise DataError(f"{folder / META_FILE}: not an sslmed cache description (a ref that is not a name)")
    return meta


def _marker(meta_bytes: bytes) -> str:
    return json.dumps(
        {"format": FORMAT, "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "meta_sha256": _sha256(meta_bytes)}
    )


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_cache(folder: Path) -> str | None:
    """What is wrong with a complete-looking cache folder, in a few words; ``None`` if
    nothing: the marker's digest of ``meta.json`` matches, and ``images.npy`` is a regular
    file whose header declares ``N x C x S x S`` uint8 for the N refs and the key's size
    and channels, with exactly that many bytes after the header."""
    folder = Path(folder)
    try:
        marker = json.loads((folder / COMPLETE_FILE).read_text(encoding="utf-8")[:4096])
        expected = marker["meta_sha256"]
    except (OSError, ValueError, TypeError, KeyError):
        return f"its {COMPLETE_FILE} marker holds no digest of {META_FILE} (an older or damaged cache)"
    try:
        meta_bytes = (folder / META_FILE).read_bytes() if (folder / META_FILE).is_file() else None
    except OSError as exc:
        return f"{META_FILE} cannot be read ({exc.strerror or exc})"
    if meta_bytes is None:
        return f"{META_FILE} is missing"
    if _sha256(meta_bytes) != expected:
        return f"{META_FILE} changed since the cache was built (its digest differs)"
    try:
        meta = _read_meta(folder)
        key = meta["key"]
        shape_expected = (len(meta["refs"]), int(key["channels"]), int(key["size"]), int(key["size"]))
    except (DataError, KeyError, TypeError, ValueError, OverflowError) as exc:  # int(inf): OverflowError
        return f"{META_FILE} is not a cache description ({str(exc)[:80]})"
    images = folder / IMAGES_FILE
    if images.is_symlink() or not images.is_file():
        return f"{IMAGES_FILE} is missing or not a regular file"
    try:
        with open(images, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = reader(handle)
            offset = handle.tell()
    except (OSError, ValueError, SyntaxError, TypeError, tokenize.TokenError) as exc:
        # numpy parses the header as a Python literal: a damaged one raises any of these
        return f"{IMAGES_FILE} has no readable .npy header ({str(exc)[:80]})"
    if tuple(shape) != shape_expected or dtype != np.uint8 or fortran:
        return f"{IMAGES_FILE} holds {tuple(shape)} {dtype}, expected {shape_expected} uint8"
    size, wanted = images.stat().st_size, offset + math.prod(shape_expected)
    if size != wanted:
        return f"{IMAGES_FILE} is {size:,} bytes, its header says {wanted:,} (truncated or appended to)"
    return None


def _check_match(folder: Path, key: dict[str, Any]) -> None:
    """A cache folder named directly must hold this data at this size."""
    meta = _read_meta(folder)
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
    named = (root / META_FILE).is_file() or (root / COMPLETE_FILE).is_file()
    if named:  # the setting names one cache folder, not a root
        folder = root
        if check_cache(folder) is None:
            _check_match(folder, key)
    else:
        folder = cache_folder(root, key)
    broken = check_cache(folder) if (folder / COMPLETE_FILE).is_file() else None
    if (folder / COMPLETE_FILE).is_file() and broken is None:
        return ImageCache.open(folder)
    if broken:
        log.warning("image cache %s is broken (%s); rebuilding it", folder, broken)
    _check_writable(folder.parent)
    lock = FileLock(str(folder) + ".lock")
    try:
        with lock.acquire(timeout=LOCK_TIMEOUT):
            # another process may have built (or rebuilt) it meanwhile
            if not (folder / COMPLETE_FILE).is_file() or check_cache(folder) is not None:
                if (folder / COMPLETE_FILE).is_file():
                    (folder / COMPLETE_FILE).unlink()  # build_cache replaces an incomplete folder only
                build_cache(source, key, folder, progress=progress, workers=workers)
    except Timeout:
        raise DataError(f"waited {LOCK_TIMEOUT}s for another process building {folder}; is it stuck?") from None
    cache = ImageCache.open(folder)
    cache.rebuilt_because = broken
    return cache


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
        meta_bytes = json.dumps(meta).encode()
        (tmp / META_FILE).write_bytes(meta_bytes)
        _fsync_file(tmp / IMAGES_FILE)
        (tmp / COMPLETE_FILE).write_text(_marker(meta_bytes) + "\n")  # written last, with meta's digest
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
