"""Dataset adapters ``image_folder``, ``csv`` and ``medmnist_npz``.

The file-based ones share the loading and split options of :mod:`sslmed.data.adapters`
(``on_error``, ``verify``, ``test_size``, ``split_seed``, ``split_file``...).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sslmed.core.errors import DataError
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.data.adapters import (
    IMAGE_SUFFIXES,
    UNLABELLED,
    ArrayReader,
    ImageRecord,
    ImageSource,
    SplitArgs,
    file_reader,
    finish_source,
    listed,
    read_csv_rows,
    resolve_path,
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
        description="folder the path column is relative to, under path (default: images/ if it exists, else "
        "path itself)",
    )
    path_column: str = Field("path", description="column with each image's path")
    label_column: str | None = Field(
        "label",
        description="column with each image's class (an empty cell: an unlabelled image, used for pre-training and "
        "left out of probes); null when no image has a label",
    )
    patient_column: str | None = Field(None, description="patient id column, for patient-wise splits")
    split_column: str | None = Field(None, description="a column giving each image's split (train/val/test)")
    classes: list[str] | None = Field(None, description="class order (default: sorted labels)")


class MedMnistArgs(BaseModel):
    """An official MedMNIST ``.npz`` file (keys ``train_images``, ``train_labels``, ...)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the .npz file, absolute or under the data root")
    classes: list[str] | None = Field(None, description="class names (default: '0', '1', ...)")


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
            f"{table}: image folder {image_dir} not found (set images: to the folder the "
            f"{args.path_column!r} column is relative to)"
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
    if args.label_column:  # an empty label is an unlabelled image (pre-training only, left out of probes)
        bad = [
            f"line {line}: {row[args.label_column]!r}"
            for line, row in enumerate(rows, start=2)
            if (row[args.label_column] or "").strip() and row[args.label_column] not in classes
        ]
        if bad:
            raise DataError(f"{table}: {len(bad)} label(s) not in the class list {classes}: {listed(bad)}")
    records: list[ImageRecord] = []
    given: dict[str, list[ImageRecord]] = {}
    for line, row in enumerate(rows, start=2):
        ref = (row[args.path_column] or "").strip()
        if not ref:
            raise DataError(f"{table}: line {line}: empty {args.path_column!r}")
        text = (row[args.label_column] or "").strip() if args.label_column else ""
        label = classes.index(row[args.label_column]) if text and args.label_column else UNLABELLED
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
def register_datasets(register: Register) -> None:
    register("image_folder", build_image_folder, args=ImageFolderArgs)
    register("csv", build_csv, args=CsvArgs)
    register("medmnist_npz", build_medmnist, args=MedMnistArgs)
