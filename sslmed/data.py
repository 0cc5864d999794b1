"""Image sources: which images, with which labels and patients, in which split.

A dataset adapter (a plugin component of kind ``dataset``) returns an
:class:`ImageSource`. The engine turns a split of it into a torch ``Dataset`` with
:class:`ImageDataset`; evaluation reads labels from the same records.

Two kinds of labels:

* ``task="multiclass"``: each record has one class index ``label`` (``-1``: none);
* ``task="multilabel"`` (e.g. CheXpert findings): each record has ``targets``, one
  value per entry of ``classes``: ``1.0`` present, ``0.0`` absent, ``nan`` unknown
  (left out of the loss and the metrics for that finding). ``label`` is ``-1``.

This module also holds what makes a run's data reproducible: patient-wise,
class-stratified splits fixed by a seed (:func:`split_records`), split files that
record them (:func:`write_split_file`, pinned again with :func:`apply_split_file`),
and the decode check of every file before training (:func:`verify_source`), which
either stops with every unreadable file named or leaves them out and lists them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from sslmed.errors import DataError, ImageLoadError, UsageError
from sslmed.imaging import check_image, load_image

log = logging.getLogger(__name__)

DATA_ENV = "SSLMED_DATA"
UNLABELLED = -1
SPLIT_NAMES = ("train", "val", "test")
#: columns of a split file (``sslmed data split`` writes it, ``split_file:`` pins it)
SPLIT_FILE_COLUMNS = ("path", "split", "label", "patient_id")

Task = Literal["multiclass", "multilabel"]
OnError = Literal["error", "skip"]


@dataclass(frozen=True)
class ImageRecord:
    """One image: where to read it, its class index (or -1), its patient (if known).

    ``targets`` is set for multi-label data only: one value per class of the source,
    ``1.0``/``0.0``, or ``nan`` where the label is unknown or ignored.
    """

    ref: str | int
    label: int = UNLABELLED
    patient_id: str | None = None
    targets: tuple[float, ...] | None = None

    @property
    def is_labelled(self) -> bool:
        """True when the record carries a class or at least one known target."""
        if self.targets is not None:
            return any(not math.isnan(t) for t in self.targets)
        return self.label >= 0


@dataclass(frozen=True)
class SkippedFile:
    """A file left out because it could not be read (``on_error: skip``)."""

    ref: str
    split: str
    reason: str


@dataclass
class ImageSource:
    """Images of one dataset, split into named parts (``train``, ``val``, ``test``).

    ``read(ref, mode)`` returns a PIL image for a record's ``ref`` (a path relative to
    ``root``, or an index into an array). ``task`` says whether records carry one
    class (``label``) or several findings (``targets``, one per entry of ``classes``).
    ``skipped`` lists the files left out as unreadable; ``split_origin`` says how the
    splits were made (``given``, ``seed <n>``, ``file <path>``).
    """

    name: str
    classes: list[str]
    splits: dict[str, list[ImageRecord]]
    read: Callable[..., Image.Image]
    root: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)
    task: Task = "multiclass"
    skipped: list[SkippedFile] = field(default_factory=list)
    split_origin: str = "given"

    def records(self, split: str) -> list[ImageRecord]:
        """The records of ``split``; ``all`` joins every split."""
        if split == "all":
            return [r for records in self.splits.values() for r in records]
        if split not in self.splits:
            raise UsageError(f"data {self.name!r} has no split {split!r} (splits: {', '.join(self.splits)}, all)")
        return self.splits[split]

    def path_of(self, record: ImageRecord) -> Path | None:
        """The file a record is read from, or None for in-memory arrays."""
        if self.root is None or not isinstance(record.ref, str):
            return None
        return self.root / record.ref

    def label_name(self, record: ImageRecord) -> str:
        """The class name of a record (``""`` when it has none); multi-label: the
        positive findings joined by ``|``."""
        if record.targets is not None:
            return "|".join(c for c, t in zip(self.classes, record.targets, strict=False) if t == 1.0)
        return self.classes[record.label] if 0 <= record.label < len(self.classes) else ""

    def fingerprint(self) -> str:
        """A short hash of every record (ref, label, targets, split), to tell data apart in manifests."""
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for record in self.splits[split]:
                line = f"{split}\t{record.ref}\t{record.label}"
                if record.targets is not None:
                    line += "\t" + ",".join("nan" if math.isnan(t) else f"{t:g}" for t in record.targets)
                digest.update((line + "\n").encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Counts per split and class (per finding: positive/negative/unknown), for manifests and logs."""
        out: dict[str, Any] = {
            "task": self.task,
            "classes": self.classes,
            "splits": {},
            "split_origin": self.split_origin,
        }
        for split, records in self.splits.items():
            entry: dict[str, Any] = {"images": len(records)}
            if self.task == "multilabel":
                matrix = targets_matrix(records, len(self.classes))
                entry["per_finding"] = {
                    c: {
                        "positive": int(np.sum(matrix[:, i] == 1)),
                        "negative": int(np.sum(matrix[:, i] == 0)),
                        "unknown": int(np.sum(np.isnan(matrix[:, i]))),
                    }
                    for i, c in enumerate(self.classes)
                }
            else:
                labels = [r.label for r in records]
                entry["per_class"] = {c: labels.count(i) for i, c in enumerate(self.classes)}
            unlabelled = sum(not r.is_labelled for r in records)
            if unlabelled and self.classes:  # a partly labelled source: these are for pre-training only
                entry["unlabelled"] = unlabelled
            patients = {r.patient_id for r in records if r.patient_id}
            if patients:
                entry["patients"] = len(patients)
            out["splits"][split] = entry
        if self.skipped:
            out["skipped"] = len(self.skipped)
        return out


def targets_matrix(records: Sequence[ImageRecord], n_classes: int) -> np.ndarray:
    """``N×n_classes`` float array of the records' targets (``nan`` where unknown)."""
    matrix = np.full((len(records), n_classes), np.nan)
    for row, record in enumerate(records):
        if record.targets is not None:
            matrix[row] = record.targets
    return matrix


def file_reader(root: Path) -> Callable[..., Image.Image]:
    """A picklable ``read`` function for images stored as files under ``root``."""
    return FileReader(root)


class FileReader:
    """``read(ref, mode)`` for files under ``root`` (picklable, for DataLoader workers)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __call__(self, ref: str | int, mode: str = "L") -> Image.Image:
        return load_image(self.root / str(ref), mode=mode)  # type: ignore[arg-type]


class ArrayReader:
    """A picklable ``read`` function over an ``N×H×W`` uint8 array (e.g. MedMNIST)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, ref: str | int, mode: str = "L") -> Image.Image:
        return Image.fromarray(self.images[int(ref)]).convert(mode)


class ImageDataset(torch.utils.data.Dataset):
    """``(transform(image), label)`` for each record of one split.

    For multi-label sources the second item is the float ``targets`` tensor (``nan``
    where unknown) instead of the class index.
    """

    def __init__(
        self,
        source: ImageSource,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any],
        mode: str = "L",
        substitute_unreadable: bool | None = None,
    ) -> None:
        self.source = source
        self.records = list(records)
        self.transform = transform
        self.mode = mode
        # a source with on_error: skip but verify: false finds bad files only while training:
        # use the next readable image instead of stopping (never where labels are read
        # from the records, as evaluation does)
        self.substitute_unreadable = (
            bool(source.details.get("skip_unreadable")) if substitute_unreadable is None else substitute_unreadable
        )
        self._unreadable: set[int] = set()

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> tuple[int, Image.Image]:
        """The image of ``index``, or of the next readable record when substituting."""
        for offset in range(len(self.records)):
            position = (index + offset) % len(self.records)
            if position in self._unreadable:
                continue
            try:
                return position, self.source.read(self.records[position].ref, self.mode)
            except ImageLoadError as exc:
                if not self.substitute_unreadable:
                    raise
                self._unreadable.add(position)
                log.warning("data %r: %s; left out (on_error: skip), the next image is used", self.source.name, exc)
        raise DataError(f"data {self.source.name!r}: none of its {len(self.records)} images can be read")

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        index, raw = self._read(index)
        record = self.records[index]
        image = self.transform(raw)
        if record.targets is not None:
            return image, torch.tensor(record.targets, dtype=torch.float32)
        return image, record.label


# ------------------------------------------------------------------ data roots


def repository_data_dir() -> Path:
    """``../shared/data`` next to the repository this package was installed from."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


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


# ----------------------------------------------------------------------- splits


def split_records(
    records: Sequence[ImageRecord], test_size: float, val_size: float, seed: int
) -> dict[str, list[ImageRecord]]:
    """Patient-wise, class-stratified ``train``/``val``/``test`` splits.

    Records without a patient id are each their own group. No patient lands in two
    splits; class proportions are kept as far as the groups allow
    (scikit-learn ``StratifiedGroupKFold``, one fold held out per carve; for data too
    small to stratify, ``GroupShuffleSplit``). The same records and seed always give
    the same splits.
    """
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    records = list(records)
    groups = np.array([r.patient_id if r.patient_id else f"__image_{i}" for i, r in enumerate(records)])
    labels = np.array([_stratum(r) for r in records])

    def carve(indices: np.ndarray, fraction: float, salt: int, what: str) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0 or len(indices) == 0:
            return indices, np.array([], dtype=int)
        folds = max(2, round(1 / fraction))
        n_groups = len(set(groups[indices].tolist()))
        if n_groups < folds:
            raise DataError(
                f"cannot hold out a {what} fraction of {fraction:.2f}: only {n_groups} patient group(s) "
                f"for {len(indices)} image(s), at least {folds} needed (lower test_size/val_size or add data)"
            )
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + salt)
        try:
            with warnings.catch_warnings():  # "least populated class has only n members": expected for rare classes
                warnings.simplefilter("ignore", UserWarning)
                keep, held = next(splitter.split(np.zeros(len(indices)), labels[indices], groups[indices]))
        except ValueError:  # every class smaller than the number of folds: group-wise only
            log.info(
                "too few images per class to stratify a %s fraction of %.2f; splitting by patient only", what, fraction
            )
            shuffle = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed + salt)
            keep, held = next(shuffle.split(np.zeros(len(indices)), groups=groups[indices]))
        return indices[keep], indices[held]

    everything = np.arange(len(records))
    rest, test = carve(everything, test_size, 0, "test")
    train, val = carve(rest, val_size / max(1e-9, 1 - test_size), 1, "validation")
    out = {
        "train": [records[i] for i in sorted(train)],
        "val": [records[i] for i in sorted(val)],
        "test": [records[i] for i in sorted(test)],
    }
    return {name: recs for name, recs in out.items() if recs or name == "train"}


def _stratum(record: ImageRecord) -> int:
    """The class a split stratifies on: the label, or for multi-label the first positive finding."""
    if record.targets is not None:
        positives = [i for i, t in enumerate(record.targets) if t == 1.0]
        return positives[0] if positives else -1
    return record.label


def patients_in_several_splits(splits: Mapping[str, Sequence[ImageRecord]]) -> dict[str, list[str]]:
    """Patient ids that appear in more than one split, with the splits (should be empty)."""
    where: dict[str, set[str]] = {}
    for split, records in splits.items():
        for record in records:
            if record.patient_id:
                where.setdefault(record.patient_id, set()).add(split)
    return {patient: sorted(found) for patient, found in where.items() if len(found) > 1}


# ------------------------------------------------------------------ split files


def split_file_text(source: ImageSource) -> str:
    """The CSV that records a source's splits: ``path,split,label,patient_id``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(SPLIT_FILE_COLUMNS)
    for split, records in source.splits.items():
        for record in records:
            writer.writerow([record.ref, split, source.label_name(record), record.patient_id or ""])
    return buffer.getvalue()


def write_split_file(source: ImageSource, path: Path) -> Path:
    """Write :func:`split_file_text` to ``path`` atomically; returns the path."""
    from sslmed.checkpoints import atomic_write_text

    atomic_write_text(Path(path), split_file_text(source))
    return Path(path)


def read_split_file(path: Path) -> dict[str, str]:
    """``{path: split}`` from a split file, or a :class:`DataError` naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file not found: {path} (write one with `sslmed data split`)")
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("path", "split") if c not in columns]
        if missing:
            raise DataError(
                f"{path}: not a split file: missing column(s) {', '.join(missing)} (columns: "
                f"{', '.join(columns) or 'none'})"
            )
        assigned: dict[str, str] = {}
        for line, row in enumerate(reader, start=2):
            ref, split = row["path"], (row["split"] or "").strip()
            if not split:
                raise DataError(f"{path}: line {line}: empty split for {ref!r}")
            if ref in assigned and assigned[ref] != split:
                raise DataError(f"{path}: line {line}: {ref!r} is listed in two splits ({assigned[ref]}, {split})")
            assigned[ref] = split
    return assigned


def apply_split_file(
    records: Sequence[ImageRecord], path: Path, ignore: set[str] | frozenset[str] = frozenset()
) -> dict[str, list[ImageRecord]]:
    """Split ``records`` as a split file says; every record must be listed and every
    listed file must be among the records (``ignore``: refs left out as unreadable)."""
    assigned = read_split_file(path)
    splits: dict[str, list[ImageRecord]] = {}
    unlisted = []
    for record in records:
        split = assigned.get(str(record.ref))
        if split is None:
            unlisted.append(str(record.ref))
            continue
        splits.setdefault(split, []).append(record)
    known = {str(r.ref) for r in records} | set(ignore)
    absent = [ref for ref in assigned if ref not in known]
    problems = []
    if unlisted:
        problems.append(f"{len(unlisted)} image(s) of the data are not in it (e.g. {', '.join(unlisted[:3])})")
    if absent:
        problems.append(f"it lists {len(absent)} image(s) the data does not have (e.g. {', '.join(absent[:3])})")
    if problems:
        raise DataError(
            f"split file {path} does not match the data: "
            + "; ".join(problems)
            + " (was it written for other data? rewrite it with `sslmed data split`)"
        )
    return splits


# ---------------------------------------------------------------- verification


def verify_source(source: ImageSource, on_error: OnError = "error", workers: int | None = None) -> ImageSource:
    """Decode every file of ``source`` once; stop on unreadable files or leave them out.

    ``on_error="error"`` raises one :class:`DataError` naming every unreadable file
    and the reason; ``"skip"`` removes them from the splits and lists them in
    ``source.skipped``. Sources read from arrays have nothing to verify.
    """
    checks: list[tuple[str, ImageRecord, Path]] = []
    for split, records in source.splits.items():
        for record in records:
            path = source.path_of(record)
            if path is not None:
                checks.append((split, record, path))
    if not checks:
        return source
    workers = workers or min(8, os.cpu_count() or 1)

    def check(path: Path) -> str | None:
        try:
            check_image(path)
        except ImageLoadError as exc:
            text = str(exc)
            return text[len(str(path)) + 2 :] if text.startswith(f"{path}: ") else text
        return None

    if workers > 1 and len(checks) > 64:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # decoders release the GIL
            reasons = list(pool.map(check, [p for _, _, p in checks], chunksize=32))
    else:
        reasons = [check(p) for _, _, p in checks]
    pairs = zip(checks, reasons, strict=False)
    bad = [(split, record, path, reason) for (split, record, path), reason in pairs if reason]
    return apply_failures(source, bad, on_error)


def apply_failures(
    source: ImageSource, bad: Sequence[tuple[str, ImageRecord, Path, str]], on_error: OnError
) -> ImageSource:
    """Raise for (``error``) or leave out (``skip``) the ``(split, record, path, reason)`` failures."""
    if not bad:
        return source
    if on_error == "error":
        shown = "\n  ".join(f"{path}: {reason}" for _, _, path, reason in bad[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"data {source.name!r}: {len(bad)} unreadable image file(s):\n  {shown}{more}\n"
            f"fix or remove them, or set on_error: skip in the data section to leave them out"
        )
    log.warning(
        "data %r: %d unreadable file(s) left out (on_error: skip), e.g. %s: %s",
        source.name,
        len(bad),
        bad[0][2],
        bad[0][3],
    )
    dropped = {(split, id(record)) for split, record, _, _ in bad}
    splits = {split: [r for r in records if (split, id(r)) not in dropped] for split, records in source.splits.items()}
    skipped = list(source.skipped) + [SkippedFile(str(record.ref), split, reason) for split, record, _, reason in bad]
    return replace(source, splits=splits, skipped=skipped)


def skipped_file_text(source: ImageSource) -> str:
    """``path,split,reason`` for each file left out of ``source``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "split", "reason"))
    for item in source.skipped:
        writer.writerow((item.ref, item.split, item.reason))
    return buffer.getvalue()


def write_run_data(run_dir: Any, sources: Mapping[str, ImageSource]) -> None:
    """Record each source's splits (``splits/<alias>.csv``, pinnable with ``split_file:``)
    and the files it left out (``skipped/<alias>.csv``) in a run folder (a path or a
    :class:`sslmed.rundir.RunDir`)."""
    from sslmed.rundir import RunDir, atomic_write_text

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    for alias, source in sources.items():
        atomic_write_text(run.split_file(alias), split_file_text(source))
        if source.skipped:
            atomic_write_text(run.skipped_file(alias), skipped_file_text(source))
