"""Preparations: downloaded files -> the ``../shared/data`` layout of one dataset.

Every preparation writes into an empty (temporary) folder: ``images/`` with 8-bit grey
images whose shorter side is at most 256 px (or the entry's size), never enlarged, and
``labels.csv`` (``path`` relative to ``images/``, ``label``, the source's metadata).
An image that needs no change (already 8-bit grey, small enough, in the target format)
is copied byte for byte, so a source that is already prepared comes out identical.

Duplicates are then removed (:func:`remove_duplicates`): within the set and against
every dataset listed before it in the catalogue that the data root holds, by file md5
and by 16x16 average hash, the earlier image keeping its place.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import lzma
import os
import re
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

import numpy as np
from PIL import Image

from sslmed.core.errors import DataError
from sslmed.core.files import atomic_target
from sslmed.data.catalog import CATALOG, CatalogEntry, is_present
from sslmed.data.fetch.download import no_space
from sslmed.data.imaging import load_image
from sslmed.data.inspection import average_hash

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jfif", ".bmp", ".tif", ".tiff", ".webp"}
SHORT_SIDE = 256
# Near duplicates are images with identical 16x16 average hashes (the hash of ``sslmed data
# inspect``; issue 9 moves it to sslmed.data.inspection): the sets the recipes read
# (pneumoniamnist, covid3, covid_extra_*) hold cross-set pairs 1 bit apart in ../shared/data
# and none 0 bits apart, so identical hashes is the rule they were cleaned with.


# ---------------------------------------------------------------------- writing


def _write_error(path: Path, exc: OSError) -> DataError:
    """A failed write of ``path`` (a full disk: :func:`no_space`) as one line, never taken
    for a damaged archive (whose decompressors raise OSErrors too)."""
    if exc.errno == errno.ENOSPC:
        return no_space(path)
    return DataError(f"cannot write {path}: {exc.strerror or exc}")


def write_bytes(path: Path, data: bytes) -> None:
    """Write a prepared file; a full disk becomes a :class:`DataError` naming the file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "wb") as handle:
            handle.write(data)
    except OSError as exc:
        raise _write_error(path, exc) from None


def encode(image: Image.Image, fmt: str) -> bytes:
    """``image`` as PNG or JPEG (quality 90) bytes."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, format="JPEG", quality=90)
    else:
        image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


def shrink(image: Image.Image, short_side: int = SHORT_SIDE) -> Image.Image:
    """``image`` with its shorter side at most ``short_side`` (never enlarged)."""
    width, height = image.size
    if min(width, height) <= short_side:
        return image
    scale = short_side / min(width, height)
    return image.resize((max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS)


def prepared_image(
    data: bytes, name: str, fmt: str, short_side: int | None = SHORT_SIDE, size: tuple[int, int] | None = None
) -> tuple[bytes, Image.Image]:
    """The bytes to store for one source image, and the grey image they hold.

    ``fmt``: ``"PNG"`` or ``"JPEG"``; ``size``: an exact size (e.g. 224×224) instead of
    the shorter-side rule. Unchanged images keep their original bytes.
    """
    buffer = io.BytesIO(data)
    buffer.name = name
    try:
        with Image.open(io.BytesIO(data)) as raw:
            raw_format, raw_mode, raw_size = raw.format, raw.mode, raw.size
    except (OSError, ValueError, Image.DecompressionBombError):  # load_image below says what is wrong
        raw_format = raw_mode = None
        raw_size = (0, 0)
    image = load_image(buffer, "L")  # ImageLoadError names the member
    target = size or (shrink(image, short_side).size if short_side else image.size)
    unchanged = raw_format == fmt and raw_mode == "L" and raw_size == image.size == target
    if unchanged:
        return data, image
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS)
    return encode(image, fmt), image


# --------------------------------------------------------------------- archives


class Archive:
    """The files of a zip or tar archive: ``members`` (paths) and ``read(member)`` (bytes)."""

    def __init__(self, members: list[PurePosixPath], read: Callable[[PurePosixPath], bytes]) -> None:
        self.members = members
        self.read = read


#: what a damaged archive raises while it is opened or a member is read: zipfile, tarfile
#: and the decompressors under them (gzip's BadGzipFile and bz2's "Invalid data stream" are
#: OSErrors, lzma has its own; an unknown zip compression method is NotImplementedError, an
#: encrypted member RuntimeError, a bad header field ValueError)
DAMAGED = (
    zipfile.BadZipFile,
    tarfile.TarError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)

#: an archive member larger than this (uncompressed) is refused: the largest image of the
#: catalogue's sets is a few MB, its largest table a few; a zip bomb's member is gigabytes
MAX_MEMBER_BYTES = 256 * 2**20


def _damaged(path: Path, exc: BaseException) -> DataError:
    """A damaged archive is removed from ``.downloads``, so the next fetch gets a fresh copy."""
    path.unlink(missing_ok=True)
    return DataError(f"{path}: a damaged archive ({str(exc)[:120]}); it was removed: run the fetch again")


def _too_large(path: Path, member: str, size: int | str) -> DataError:
    return DataError(
        f"{path}: member {member} is {size} bytes uncompressed, more than the {MAX_MEMBER_BYTES:,} allowed "
        "for one file of a dataset archive (a zip bomb, or not the archive the catalogue names)"
    )


#: a tar member is copied to its temporary file this many bytes at a time (a read from
#: tarfile's gzip stream briefly takes about four times that: some 1.4 MB in all)
SPOOL_CHUNK = 1 << 18


def _scratch(folder: Path, path: Path) -> Path:
    """A fresh temporary folder in ``folder`` for the members of the tar ``path``."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.members-", dir=folder))
    except OSError as exc:
        raise DataError(f"cannot unpack {path} into {folder}: {exc.strerror or exc}") from None


def _copy_member(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path, path: Path) -> None:
    """Write one tar member to ``target`` a :data:`SPOOL_CHUNK` at a time, atomically, and
    never more than :data:`MAX_MEMBER_BYTES` of it. A damaged archive raises what the
    decompressor raises (for :func:`open_archive`); a failed write is a :class:`DataError`."""
    stream = tar.extractfile(member)
    if stream is None:  # not a regular file after all
        return
    with stream, atomic_target(target) as temp:
        try:
            out = open(temp, "wb")
        except OSError as exc:
            raise _write_error(target, exc) from None
        with out:
            copied = 0
            while block := stream.read(SPOOL_CHUNK):
                copied += len(block)
                if copied > MAX_MEMBER_BYTES:  # a stream longer than its header says
                    raise _too_large(path, member.name, f"over {MAX_MEMBER_BYTES:,}")
                try:
                    out.write(block)
                except OSError as exc:
                    raise _write_error(target, exc) from None


def _read_spooled(file: Path, member: PurePosixPath) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the unpacked member {member} ({file}): {exc.strerror or exc}") from None


def _spool_tar(path: Path, want: Callable[[PurePosixPath], bool], folder: Path) -> Archive:
    """The ``want``-ed files of the tar ``path``, each copied to a file of ``folder`` in one
    pass (a compressed tar cannot be read out of order cheaply) and read back on demand."""
    spooled: dict[PurePosixPath, Path] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            name = PurePosixPath(member.name)
            if member.isfile() and want(name):
                if member.size > MAX_MEMBER_BYTES:
                    raise _too_large(path, member.name, f"{member.size:,}")
                target = folder / f"{len(spooled):08d}"  # never the member's own name (zip-slip)
                _copy_member(tar, member, target, path)
                spooled[name] = target
    return Archive(list(spooled), lambda member: _read_spooled(spooled[member], member))


@contextmanager
def open_archive(
    path: Path, want: Callable[[PurePosixPath], bool] = lambda m: True, spool: Path | None = None
) -> Iterator[Archive]:
    """Open a zip (read on demand) or a tar archive (the ``want``-ed files streamed in one
    pass, a chunk at a time, to a temporary folder made in ``spool``, default the archive's
    folder, and read from there on demand; the folder is removed when the block ends).

    Each member is read through a bounded stream: no more than :data:`MAX_MEMBER_BYTES`
    of it is ever decompressed, whatever its header declares, and no more than one
    member (a zip's, or one read back) is in memory at a time. A corrupt member (a bad
    CRC, a broken deflate stream) is one line, and the archive is removed."""
    zipped = None
    scratch = None
    try:
        try:
            if zipfile.is_zipfile(path):
                zipped = zipfile.ZipFile(path)
                archive = _zip_archive(path, zipped, want)
            elif tarfile.is_tarfile(path):
                scratch = _scratch(spool if spool is not None else path.parent, path)
                archive = _spool_tar(path, want, scratch)
            else:
                raise DataError(f"{path}: neither a zip nor a tar archive; delete it and run the fetch again")
        except DAMAGED as exc:
            raise _damaged(path, exc) from None
        yield archive
    finally:
        if zipped is not None:
            zipped.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _zip_archive(path: Path, zipped: zipfile.ZipFile, want: Callable[[PurePosixPath], bool]) -> Archive:
    """The ``want``-ed files of an open zip, each read on demand through a bounded stream."""
    infos = {PurePosixPath(i.filename): i for i in zipped.infolist() if not i.is_dir() and "__MACOSX" not in i.filename}

    def read_zip(member: PurePosixPath) -> bytes:
        info = infos[member]
        if info.file_size > MAX_MEMBER_BYTES:
            raise _too_large(path, info.filename, f"{info.file_size:,}")
        try:
            with zipped.open(info) as stream:
                data = stream.read(MAX_MEMBER_BYTES + 1)
        except DAMAGED as exc:
            raise _damaged(path, exc) from None
        if len(data) > MAX_MEMBER_BYTES:  # a header that lies about the size
            raise _too_large(path, info.filename, f"over {MAX_MEMBER_BYTES:,}")
        return data

    return Archive([m for m in infos if want(m)], read_zip)


def natural_key(text: str) -> list[Any]:
    """Sort key that puts ``COVID-9`` before ``COVID-10``."""
    return [(0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", text)]


def is_image(member: PurePosixPath) -> bool:
    """True for an image file that is not a hidden or resource-fork file."""
    return member.suffix.lower() in IMAGE_SUFFIXES and not member.name.startswith(".")


# ------------------------------------------------------------------- the result


@dataclass
class Prepared:
    """The rows of a prepared folder (``labels.csv``), its columns, and per-image hashes."""

    columns: list[str]
    rows: list[dict[str, str]] = field(default_factory=list)
    md5: list[str] = field(default_factory=list)
    ahash: list[np.ndarray] = field(default_factory=list)
    removed: list[dict[str, str]] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, out: Path, row: dict[str, str], data: bytes, image: Image.Image) -> None:
        """Store one image under ``out/images/<row['path']>`` and remember its row and hashes."""
        write_bytes(out / "images" / row["path"], data)
        self.rows.append(row)
        self.md5.append(hashlib.md5(data).hexdigest())
        self.ahash.append(average_hash(image))

    def paths(self) -> set[str]:
        """Paths already taken."""
        return {row["path"] for row in self.rows}


def write_labels(out: Path, prepared: Prepared) -> None:
    """``labels.csv`` with the prepared rows."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=prepared.columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(prepared.rows)
    write_bytes(out / "labels.csv", buffer.getvalue().encode("utf-8"))


# ------------------------------------------------------------------ duplicates

_index_cache: dict[tuple[str, str], tuple[set[str], set[bytes]]] = {}


def hash_key(bits: np.ndarray) -> bytes:
    """An average hash as hashable bytes."""
    return np.packbits(bits.astype(bool)).tobytes()


def _file_hashes(path: Path) -> tuple[str, bytes]:
    data = path.read_bytes()
    return hashlib.md5(data).hexdigest(), hash_key(average_hash(load_image(data)))


def hash_index(name: str, root: Path) -> tuple[set[str], set[bytes]]:
    """File md5s and average hashes of the copy of ``name`` under ``root`` (cached)."""
    key = (name, str(Path(root).resolve()))
    if key in _index_cache:
        return _index_cache[key]
    folder = Path(root) / name
    md5s: set[str] = set()
    hashes: set[bytes] = set()
    if CATALOG[name].layout == "npz":
        with np.load(folder / f"{name}.npz", allow_pickle=False) as arrays:
            for split in ("train", "val", "test"):
                if f"{split}_images" in arrays.files:
                    hashes |= {hash_key(average_hash(Image.fromarray(a))) for a in arrays[f"{split}_images"]}
    else:
        with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
            paths = [folder / "images" / row["path"] for row in csv.DictReader(handle)]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # decoders release the GIL
            for md5, bits in pool.map(_file_hashes, paths, chunksize=32):
                md5s.add(md5)
                hashes.add(bits)
    _index_cache[key] = (md5s, hashes)
    return md5s, hashes


def remove_duplicates(out: Path, prepared: Prepared, earlier: list[str], root: Path) -> None:
    """Drop images that duplicate one of an earlier dataset under ``root`` or an earlier
    image of this set (exact: file md5; near: identical average hash); their files are deleted."""
    indexes = [(n, hash_index(n, root)) for n in earlier if is_present(n, root)]
    keep_rows, keep_md5, keep_hash = [], [], []
    seen_md5: set[str] = set()
    seen_hash: set[bytes] = set()
    for row, md5, bits in zip(prepared.rows, prepared.md5, prepared.ahash, strict=True):
        key = hash_key(bits)
        reason = next((f"duplicate of an image of {n}" for n, (m, h) in indexes if md5 in m or key in h), None)
        if reason is None and (md5 in seen_md5 or key in seen_hash):
            reason = "duplicate of an image listed before it in this set"
        if reason:
            (out / "images" / row["path"]).unlink(missing_ok=True)
            prepared.removed.append({"path": row["path"], "reason": reason})
            continue
        keep_rows.append(row)
        keep_md5.append(md5)
        keep_hash.append(bits)
        seen_md5.add(md5)
        seen_hash.add(key)
    prepared.rows, prepared.md5, prepared.ahash = keep_rows, keep_md5, keep_hash


# ---------------------------------------------------------------- preparations

Files = dict[str, Path]


def _need(condition: bool, message: str) -> None:
    if not condition:
        raise DataError(message)


def prepare_pneumoniamnist(entry: CatalogEntry, files: Files, out: Path) -> Prepared | None:
    """The official MedMNIST file, checked (keys, counts, 28×28 uint8) and kept as published."""
    source = files["pneumoniamnist.npz"]
    try:
        with np.load(source, allow_pickle=False) as arrays:
            for split, count in entry.options["counts"].items():
                images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
                _need(
                    images.shape[0] == count and labels.shape[0] == count and images.dtype == np.uint8,
                    f"{source}: {split} split has {images.shape[0]} images ({images.dtype}), expected {count} uint8",
                )
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(f"{source}: not the MedMNIST PneumoniaMNIST file ({exc})") from None
    out.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copyfile(source, out / f"{entry.name}.npz")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise no_space(out / f"{entry.name}.npz") from None
        raise DataError(f"cannot write {out / entry.name}.npz: {exc.strerror or exc}") from None
    return None


NIH_NAME = re.compile(r"^(\d{8})_\d{3}$")


def prepare_covid3(entry: CatalogEntry, files: Files, out: Path) -> Prepared:
    """DarkCovidNet's ``Covid-19``/``No_findings``/``Pneumonia`` folders -> grey PNG, shorter side 256;
    NIH file names (``00000211_013``) give the patient id."""
    path = files["darkcovidnet.zip"]
    classes = entry.options["classes"]
    prepared = Prepared(["path", "label", "patient_id", "source"])
    with open_archive(
        path, lambda m: is_image(m) and len(m.parts) >= 2 and m.parts[-2] in classes, spool=out
    ) as archive:
        empty = [c for c in classes if not any(m.parts[-2] == c for m in archive.members)]
        _need(not empty, f"{path}: no images in class folder(s) {', '.join(empty)}: not the DarkCovidNet repository")
        for label in classes:
            for member in sorted(m for m in archive.members if m.parts[-2] == label):
                ref = f"{label}/{member.stem}.png"
                if ref in prepared.paths():
                    continue
                data, image = prepared_image(archive.read(member), str(member), "PNG")
                nih = NIH_NAME.match(member.stem)
                row = {
                    "path": ref,
                    "label": label,
                    "patient_id": nih.group(1) if nih and label != "Covid-19" else "",
                    "source": "ieee8023 covid-chestxray-dataset" if label == "Covid-19" else "NIH ChestX-ray14",
                }
                prepared.add(out, row, data, image)
    return prepared


def _read_table(data: bytes, where: str) -> list[dict[str, str]]:
    try:
        return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{where}: not a readable CSV ({exc})") from None


def _top_file(archive: Archive, name: str) -> PurePosixPath | None:
    """``name`` at the top of the archive or of its one top folder (GitHub archives)."""
    return next((m for m in archive.members if m.name == name and len(m.parts) <= 2), None)


def prepare_hannover(entry: CatalogEntry, files: Files, out: Path) -> Prepared:
    """Hannover's ``png/<image_id>.png`` with ``data.csv`` (patient, projection, modality)."""
    path = files["hannover.zip"]
    prepared = Prepared(["path", "label", "patient_id", "projection", "modality"])

    def wanted(m: PurePosixPath) -> bool:
        return m.name == "data.csv" or (is_image(m) and m.parent.name == "png")

    with open_archive(path, wanted, spool=out) as archive:
        table = _top_file(archive, "data.csv")
        _need(table is not None, f"{path}: no data.csv: not the covid-19-image-repository archive")
        images = {m.stem: m for m in archive.members if is_image(m)}
        rows = _read_table(archive.read(table), f"{path}:{table}")  # type: ignore[arg-type]
        _need(bool(rows) and "image_id" in rows[0], f"{path}:{table}: no image_id column")
        for row in sorted(rows, key=lambda r: r.get("patient_id", "")):  # by patient, data.csv order within
            member = images.get(row["image_id"])
            if member is None:
                continue
            data, image = prepared_image(archive.read(member), str(member), "PNG")
            prepared.add(
                out,
                {
                    "path": f"{row['image_id']}.png",
                    "label": "COVID-19",
                    "patient_id": row.get("patient_id", ""),
                    "projection": row.get("projection", ""),
                    "modality": row.get("modality", ""),
                },
                data,
                image,
            )
    _need(bool(prepared.rows), f"{path}: none of data.csv's images found under png/")
    return prepared


def prepare_cxnet(entry: CatalogEntry, files: Files, out: Path) -> Prepared:
    """COVID-CXNet's ``chest_xray_images/covid19/`` -> grey PNG; ``metadata.csv`` gives the
    patient and the age (``pediatric_flag``: under 18)."""
    path = files["cxnet.zip"]
    prepared = Prepared(["path", "label", "patient_id", "pediatric_flag"])

    def wanted(m: PurePosixPath) -> bool:
        return m.name == "metadata.csv" or (
            is_image(m) and m.parent.name == "covid19" and "chest_xray_images" in m.parts
        )

    with open_archive(path, wanted, spool=out) as archive:
        images = sorted(m for m in archive.members if is_image(m))
        _need(bool(images), f"{path}: no chest_xray_images/covid19/ images: not the COVID-CXNet repository")
        table = _top_file(archive, "metadata.csv")
        meta = {}
        if table is not None:
            for row in _read_table(archive.read(table), f"{path}:{table}"):
                meta[PurePosixPath(row.get("filename", "")).stem] = row
        for member in images:
            ref = f"covid19/{member.stem}.png"
            if ref in prepared.paths():
                continue
            data, image = prepared_image(archive.read(member), str(member), "PNG")
            row = meta.get(member.stem, {})
            try:
                pediatric = "1" if row.get("age") and float(row["age"]) < 18 else "0"
            except ValueError:
                pediatric = "0"
            prepared.add(
                out,
                {
                    "path": ref,
                    "label": "COVID-19",
                    "patient_id": row.get("patient_id", ""),
                    "pediatric_flag": pediatric,
                },
                data,
                image,
            )
    return prepared


def prepare_not_cxr(entry: CatalogEntry, files: Files, out: Path) -> Prepared:
    """MedNIST's non-chest-radiograph classes: the images numbered 0, 50, 100, ... (100 per class)."""
    path = files["MedNIST.tar.gz"]
    every, per_class, classes = entry.options["every"], entry.options["per_class"], entry.options["classes"]

    def wanted(m: PurePosixPath) -> bool:
        return (
            is_image(m)
            and len(m.parts) >= 2
            and m.parts[-2] in classes
            and m.stem.isdigit()
            and int(m.stem) % every == 0
            and int(m.stem) < every * per_class
        )

    prepared = Prepared(["path", "label", "source"])
    with open_archive(path, wanted, spool=out) as archive:
        for label in classes:
            members = sorted(m for m in archive.members if m.parts[-2] == label)
            _need(bool(members), f"{path}: no {label}/ images: not the MedNIST archive")
            for member in members:
                data, image = prepared_image(archive.read(member), str(member), "JPEG")
                prepared.add(out, {"path": f"{label}/{member.name}", "label": label, "source": "MedNIST"}, data, image)
    return prepared


def prepare_cxr_corpus(entry: CatalogEntry, files: Files, out: Path) -> Prepared:
    """COVID and Normal radiographs of the COVID-19 Radiography Database (128×128 JPEG q90)
    and MedNIST's CXR class (64×64 JPEG, as published), unlabelled for pre-training."""
    prepared = Prepared(["path", "source", "label"])
    side = entry.options["radiography_side"]
    classes = entry.options["radiography_classes"]
    path = files["covid19-radiography-database.zip"]

    def radiograph(m: PurePosixPath) -> bool:
        # the database's layout: COVID-19_Radiography_Dataset/<Class>/images/<Class>-<n>.png (masks/ left out)
        return is_image(m) and "masks" not in m.parts and any(p in classes for p in m.parts[:-1])

    with open_archive(path, radiograph, spool=out) as archive:
        _need(bool(archive.members), f"{path}: no {'/'.join(classes)} images: not the COVID-19 Radiography Database")

        def order(m: PurePosixPath) -> tuple[int, list[Any]]:
            label = next(p for p in m.parts[:-1] if p in classes)
            return classes.index(label), natural_key(m.stem)

        for member in sorted(archive.members, key=order):
            label = next(p for p in member.parts[:-1] if p in classes)
            ref = f"radiography/{label}/{member.stem}.jpg"
            if ref in prepared.paths():
                continue
            data, image = prepared_image(archive.read(member), str(member), "JPEG", size=(side, side))
            prepared.add(out, {"path": ref, "source": "covid19_radiography", "label": label}, data, image)
    mednist = files["MedNIST.tar.gz"]
    with open_archive(
        mednist, lambda m: is_image(m) and len(m.parts) >= 2 and m.parts[-2] == "CXR", spool=out
    ) as archive:
        _need(bool(archive.members), f"{mednist}: no CXR/ images: not the MedNIST archive")
        for member in sorted(archive.members):
            data, image = prepared_image(archive.read(member), str(member), "JPEG")
            prepared.add(out, {"path": f"mednist_cxr/{member.name}", "source": "mednist_nih", "label": ""}, data, image)
    return prepared


# person1000_bacteria_2931 -> person1000 (bacteria); IM-0429-0001-0002, NORMAL2-IM-1427-0001 -> IM-0429, NORMAL2-IM-1427
KERMANY_NAME = re.compile(r"^(?:(person\d+)_(bacteria|virus)_.*|((?:NORMAL2-)?IM-\d+)-.*)$")


def prepare_kermany(entry: CatalogEntry, files: Files, out: Path) -> Prepared:
    """ChestXRay2017's ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}`` -> 224×224 grey JPEG; the file
    names give the patient (``person12``, ``IM-0115``) and the pneumonia type. The 16-image
    ``val`` split is left out, as in ../shared/data."""
    path = files["ChestXRay2017.zip"]
    side = entry.options["side"]

    def wanted(m: PurePosixPath) -> bool:
        return (
            is_image(m)
            and len(m.parts) >= 3
            and m.parts[-3] in ("train", "test")
            and m.parts[-2] in ("NORMAL", "PNEUMONIA")
        )

    prepared = Prepared(["path", "label", "patient_id", "split", "pneumonia_type"])
    with open_archive(path, wanted, spool=out) as archive:
        _need(bool(archive.members), f"{path}: no chest_xray/train|test/NORMAL|PNEUMONIA images: not ChestXRay2017")
        for member in sorted(archive.members, key=lambda m: (m.parts[-3] != "train", m.parts[-2], m.name)):
            split, folder = member.parts[-3], member.parts[-2]
            match = KERMANY_NAME.match(member.stem)
            patient = (match.group(1) or match.group(3)) if match else member.stem
            data, image = prepared_image(archive.read(member), str(member), "JPEG", size=(side, side))
            prepared.add(
                out,
                {
                    "path": f"{split}/{folder}/{member.stem}.jpeg",
                    "label": folder.lower(),
                    "patient_id": f"{split}-{patient}",
                    "split": split,
                    "pneumonia_type": (match.group(2) or "") if match else "",
                },
                data,
                image,
            )
    return prepared


Preparation = Callable[[CatalogEntry, Files, Path], Prepared | None]


def preparation(entry: CatalogEntry) -> Preparation:
    """The ``prepare_*`` function of this module that ``entry.prepare`` names."""
    found = globals().get(entry.prepare) if entry.prepare.startswith("prepare_") else None
    if not callable(found):
        raise DataError(f"dataset {entry.name!r}: no preparation {entry.prepare!r} in {__name__}")
    return cast(Preparation, found)
