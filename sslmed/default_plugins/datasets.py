"""Dataset adapters ``image_folder``, ``csv`` and ``medmnist_npz``.

File-based adapters share two groups of options:

* loading (:class:`LoadingArgs`): every file is decoded once when the source is built
  (``verify``), and an unreadable one either stops the run before training, naming
  every bad file and the reason (``on_error: error``), or is left out and listed in
  the run folder's ``skipped/<alias>.csv`` (``on_error: skip``);
* splitting (:class:`SplitArgs`): patient-grouped, class-stratified splits fixed by
  ``split_seed``, or pinned by a ``split_file`` (as ``sslmed data split`` writes and
  as every run records in ``splits/<alias>.csv``).
"""

from __future__ import annotations

import csv as csv_module
import os
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sslmed.data import (
    UNLABELLED,
    ArrayReader,
    ImageRecord,
    ImageSource,
    Task,
    apply_failures,
    apply_split_file,
    file_reader,
    resolve_path,
    split_records,
    verify_source,
)
from sslmed.errors import DataError
from sslmed.hookspecs import hookimpl

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


class LoadingArgs(BaseModel):
    """What happens to files that cannot be read."""

    model_config = ConfigDict(extra="forbid")
    on_error: Literal["error", "skip"] = Field(
        "error",
        description="unreadable or missing image files: 'error' stops before training naming each file and "
        "the reason; 'skip' leaves them out and lists them in the run folder (skipped/<alias>.csv)",
    )
    verify: bool = Field(
        True,
        description="decode every image once when the data is loaded, so a bad file stops the run before "
        "training (a few seconds per thousand 256 px PNGs); false only checks that the files exist",
    )


class SplitArgs(LoadingArgs):
    """How images without a given split are divided (patient-wise, stratified)."""

    test_size: float = Field(0.2, ge=0, lt=1, description="fraction held out for testing")
    val_size: float = Field(0.1, ge=0, lt=1, description="fraction held out for validation")
    split_seed: int = Field(0, description="seed of the split (fixed, so runs compare)")
    split_file: str | None = Field(
        None,
        description="a split file (CSV path,split,...) that pins each image's split, as written by "
        "`sslmed data split` or a run's splits/<alias>.csv; relative to the working folder or the data root",
    )


class ImageFolderArgs(SplitArgs):
    """A folder with one sub-folder of images per class (``root/<class>/<image>``)."""

    path: str = Field(description="the folder, absolute or under the data root")
    classes: list[str] | None = Field(None, description="class order (default: sorted sub-folder names)")
    patient_pattern: str | None = Field(
        None,
        description="regular expression on the path relative to the folder whose first group (or whole "
        r"match) is the patient id, e.g. '(\d{8})_\d{3}' for NIH file names; default: each image its own patient",
    )

    @field_validator("patient_pattern")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class CsvArgs(SplitArgs):
    """A CSV listing images: a path column, a label column, optionally patient and split."""

    path: str = Field(description="the dataset folder, absolute or under the data root")
    csv: str = Field("labels.csv", description="the CSV file, relative to path")
    images: str | None = Field(
        None,
        description="folder the path column is relative to, under path (default: images/ if it exists, else path itself)",
    )
    path_column: str = Field("path", description="column with each image's path")
    label_column: str | None = Field("label", description="column with each image's class; null for unlabelled images")
    patient_column: str | None = Field(None, description="patient id column, for patient-wise splits")
    split_column: str | None = Field(None, description="a column giving each image's split (train/val/test)")
    classes: list[str] | None = Field(None, description="class order (default: sorted labels)")


class MedMnistArgs(BaseModel):
    """An official MedMNIST ``.npz`` file (keys ``train_images``, ``train_labels``, ...)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the .npz file, absolute or under the data root")
    classes: list[str] | None = Field(None, description="class names (default: '0', '1', ...)")


# ------------------------------------------------------------------------ shared


def resolve_split_file(value: str, data_root: Path) -> Path:
    """A split file given in a recipe: absolute, or relative to the working folder, or
    under the data root."""
    path = Path(os.path.expanduser(value))
    if path.is_absolute():
        candidates = [path]
    else:
        candidates = [Path.cwd() / path, data_root / path]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise DataError(
        f"split file not found: {value} (looked in {', '.join(str(c) for c in candidates)}; write one with `sslmed data split`)"
    )


def finish_source(
    name: str,
    classes: list[str],
    records: list[ImageRecord],
    read: Any,
    root: Path | None,
    args: LoadingArgs,
    *,
    data_root: Path,
    given: dict[str, list[ImageRecord]] | None = None,
    task: Task = "multiclass",
    details: dict[str, Any] | None = None,
) -> ImageSource:
    """Verify the files (``args.on_error``) and split the records.

    ``given``: splits the data defines itself (a split column, official files); a
    ``split_file`` in ``args`` overrides them, else ``args`` splits patient-wise by seed.
    """
    source = ImageSource(
        name,
        classes,
        given if given is not None else {"all": records},
        read,
        root=root,
        task=task,
        details=details or {},
    )
    if args.verify:
        source = verify_source(source, args.on_error)
    else:  # at least every file must exist
        missing = [
            (split, r, source.path_of(r), "file not found")
            for split, rs in source.splits.items()
            for r in rs
            if source.path_of(r) is not None and not source.path_of(r).is_file()
        ]  # type: ignore[union-attr]
        source = apply_failures(source, missing, args.on_error)  # type: ignore[arg-type]
        if args.on_error == "skip":  # files that exist but do not decode are left out while training
            source.details["skip_unreadable"] = True
    kept = [r for rs in source.splits.values() for r in rs]
    if not kept:
        raise DataError(f"data {name!r}: no readable images left ({len(source.skipped)} skipped)")
    split_file = getattr(args, "split_file", None)
    if split_file:
        path = resolve_split_file(split_file, data_root)
        splits = apply_split_file(kept, path, ignore={s.ref for s in source.skipped})
        source.splits, source.split_origin = splits, f"file {path}"
    elif given is None:
        assert isinstance(args, SplitArgs)
        if args.test_size == 0 and args.val_size == 0:
            source.splits, source.split_origin = {"train": kept}, "all in train"
        else:
            source.splits = split_records(kept, args.test_size, args.val_size, args.split_seed)
            source.split_origin = (
                f"patient-wise, class-stratified, seed {args.split_seed} (test {args.test_size}, val {args.val_size})"
            )
    return source


def _listed(items: list[str], limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


# ---------------------------------------------------------------------- adapters


def build_image_folder(args: ImageFolderArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """Class-per-folder images, split patient-wise (patients from ``patient_pattern``)."""
    root = resolve_path(args.path, data_root, "image folder")
    if not root.is_dir():
        raise DataError(f"image folder {root} is a file, not a folder (use the csv adapter for a CSV)")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = args.classes or found
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(
            f"{root}: no sub-folder for class(es) {', '.join(missing)} (found: {', '.join(found) or 'none'})"
        )
    if not classes:
        raise DataError(f"{root}: expected one sub-folder per class, found none")
    pattern = re.compile(args.patient_pattern) if args.patient_pattern else None
    records = []
    for index, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                ref = file.relative_to(root).as_posix()
                patient = None
                if pattern is not None:
                    match = pattern.search(ref)
                    patient = (match.group(1) if match.groups() else match.group(0)) if match else None
                records.append(ImageRecord(ref, index, patient))
    if not records:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    return finish_source(args.path, classes, records, file_reader(root), root, args, data_root=data_root)


def read_csv_rows(table: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV file, or a :class:`DataError` saying why it cannot be read."""
    try:
        with open(table, newline="", encoding="utf-8-sig") as handle:
            reader = csv_module.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise DataError(f"{table}: not a UTF-8 text CSV file ({exc.reason} at byte {exc.start})") from None
    except csv_module.Error as exc:
        raise DataError(f"{table}: not a valid CSV file ({exc})") from None
    except OSError as exc:
        raise DataError(f"{table}: cannot be read ({exc.strerror or exc})") from None
    if not columns:
        raise DataError(f"{table}: the CSV file is empty (no header line)")
    return columns, rows


def build_csv(args: CsvArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """Images listed in a CSV, with optional patient ids and splits."""
    root = resolve_path(args.path, data_root, "dataset folder")
    if root.is_file():
        raise DataError(f"csv: path {root} is a file; give the dataset folder as path and the CSV's name as csv")
    table = resolve_path(str(root / args.csv), data_root, "CSV file")
    image_dir = (
        root / args.images if args.images is not None else (root / "images" if (root / "images").is_dir() else root)
    )
    if not image_dir.is_dir():
        raise DataError(
            f"{table}: image folder {image_dir} not found (set images: to the folder the {args.path_column!r} column is relative to)"
        )
    columns, rows = read_csv_rows(table)
    wanted = [c for c in (args.path_column, args.label_column, args.patient_column, args.split_column) if c]
    absent = [c for c in wanted if c not in columns]
    if absent:
        raise DataError(
            f"{table}: missing column(s) {', '.join(repr(c) for c in absent)} (columns: {', '.join(columns)})"
        )
    labels_seen = sorted({row[args.label_column] or "" for row in rows}) if args.label_column else []
    classes = list(args.classes or [label for label in labels_seen if label])
    if args.label_column:
        bad = [
            f"line {line}: {row[args.label_column]!r}" + (" (empty)" if not row[args.label_column] else "")
            for line, row in enumerate(rows, start=2)
            if (row[args.label_column] or "") not in classes
        ]
        if bad:
            raise DataError(f"{table}: {len(bad)} label(s) not in the class list {classes}: {_listed(bad)}")
    records, given = [], {}
    for line, row in enumerate(rows, start=2):
        ref = (row[args.path_column] or "").strip()
        if not ref:
            raise DataError(f"{table}: line {line}: empty {args.path_column!r}")
        label = classes.index(row[args.label_column]) if args.label_column else UNLABELLED
        patient = None
        if args.patient_column:
            patient = (row[args.patient_column] or "").strip() or None
        record = ImageRecord(ref, label, patient)
        records.append(record)
        if args.split_column:
            split = (row[args.split_column] or "").strip()
            if not split:
                raise DataError(f"{table}: line {line}: empty split in column {args.split_column!r} for {ref!r}")
            given.setdefault(split, []).append(record)
    if not records:
        raise DataError(f"{table}: lists no images")
    return finish_source(
        args.path,
        classes,
        records,
        file_reader(image_dir),
        image_dir,
        args,
        data_root=data_root,
        given=given if args.split_column else None,
    )


def build_medmnist(args: MedMnistArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """A MedMNIST ``.npz`` file with its official train/val/test splits."""
    path = resolve_path(args.path, data_root, "MedMNIST file")
    try:
        arrays = np.load(path, allow_pickle=False)
        keys = set(arrays.files)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    if "train_images" not in keys:
        raise DataError(f"{path}: no 'train_images' array (keys: {', '.join(sorted(keys))})")
    images, splits, offset = [], {}, 0
    n_classes = 0
    for split in ("train", "val", "test"):
        if f"{split}_images" not in keys:
            continue
        split_images = arrays[f"{split}_images"]
        labels = (
            arrays[f"{split}_labels"].reshape(len(split_images), -1)[:, 0].astype(int)
            if f"{split}_labels" in keys
            else np.full(len(split_images), UNLABELLED)
        )
        n_classes = max(n_classes, int(labels.max()) + 1)
        splits[split] = [ImageRecord(offset + i, int(label)) for i, label in enumerate(labels)]
        images.append(split_images)
        offset += len(split_images)
    classes = args.classes or [str(i) for i in range(n_classes)]
    if len(classes) < n_classes:
        raise DataError(f"{path}: labels go up to {n_classes - 1} but only {len(classes)} class names were given")
    return ImageSource(args.path, classes, splits, ArrayReader(np.concatenate(images)), split_origin="official")


@hookimpl
def register_datasets(register: Any) -> None:
    register("image_folder", build_image_folder, args=ImageFolderArgs)
    register("csv", build_csv, args=CsvArgs)
    register("medmnist_npz", build_medmnist, args=MedMnistArgs)
