"""Dataset adapters ``image_folder``, ``csv`` and ``medmnist_npz``."""

from __future__ import annotations

import csv as csv_module
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from sslmed.data import UNLABELLED, ArrayReader, ImageRecord, ImageSource, file_reader, resolve_path, split_records
from sslmed.errors import DataError
from sslmed.hookspecs import hookimpl

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".dcm", ".dicom"}


class SplitArgs(BaseModel):
    """How images without a given split are divided (patient-wise, stratified)."""

    model_config = ConfigDict(extra="forbid")
    test_size: float = Field(0.2, ge=0, lt=1, description="fraction held out for testing")
    val_size: float = Field(0.1, ge=0, lt=1, description="fraction held out for validation")
    split_seed: int = Field(0, description="seed of the split (fixed, so runs compare)")


class ImageFolderArgs(SplitArgs):
    """A folder with one sub-folder of images per class (``root/<class>/<image>``)."""

    path: str = Field(description="the folder, absolute or under the data root")
    classes: list[str] | None = Field(None, description="class order (default: sorted sub-folder names)")


class CsvArgs(SplitArgs):
    """A CSV listing images: a path column, a label column, optionally patient and split."""

    path: str = Field(description="the dataset folder, absolute or under the data root")
    csv: str = Field("labels.csv", description="the CSV file, relative to path")
    images: str = Field("images", description="folder that the path column is relative to, under path")
    path_column: str = "path"
    label_column: str | None = Field("label", description="None for unlabelled images")
    patient_column: str | None = Field(None, description="patient id column, for patient-wise splits")
    split_column: str | None = Field(None, description="a column giving each image's split (train/val/test)")
    classes: list[str] | None = Field(None, description="class order (default: sorted labels)")


class MedMnistArgs(BaseModel):
    """An official MedMNIST ``.npz`` file (keys ``train_images``, ``train_labels``, ...)."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="the .npz file, absolute or under the data root")
    classes: list[str] | None = Field(None, description="class names (default: '0', '1', ...)")


def _split(records: list[ImageRecord], args: SplitArgs) -> dict[str, list[ImageRecord]]:
    if args.test_size == 0 and args.val_size == 0:
        return {"train": records}
    return split_records(records, args.test_size, args.val_size, args.split_seed)


def build_image_folder(args: ImageFolderArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """Class-per-folder images, split patient-wise (each image its own patient)."""
    root = resolve_path(args.path, data_root, "image folder")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = args.classes or found
    missing = [c for c in classes if c not in found]
    if missing:
        raise DataError(f"{root}: no sub-folder for class(es) {', '.join(missing)} (found: {', '.join(found) or 'none'})")
    if not classes:
        raise DataError(f"{root}: expected one sub-folder per class, found none")
    records = []
    for index, name in enumerate(classes):
        for file in sorted((root / name).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                records.append(ImageRecord(str(file.relative_to(root)), index))
    if not records:
        raise DataError(f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders")
    return ImageSource(args.path, classes, _split(records, args), file_reader(root), root=root)


def build_csv(args: CsvArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """Images listed in a CSV, with optional patient ids and splits."""
    root = resolve_path(args.path, data_root, "dataset folder")
    table = resolve_path(str(root / args.csv), data_root, "CSV file")
    image_dir = root / args.images
    with open(table, newline="", encoding="utf-8") as handle:
        reader = csv_module.DictReader(handle)
        columns = reader.fieldnames or []
        rows = list(reader)
    wanted = [c for c in (args.path_column, args.label_column, args.patient_column, args.split_column) if c]
    absent = [c for c in wanted if c not in columns]
    if absent:
        raise DataError(f"{table}: missing column(s) {', '.join(absent)} (columns: {', '.join(columns)})")
    labels_seen = sorted({row[args.label_column] for row in rows}) if args.label_column else []
    classes = args.classes or labels_seen
    unknown = sorted(set(labels_seen) - set(classes))
    if unknown:
        raise DataError(f"{table}: label(s) {', '.join(unknown)} not in the class list {classes}")
    records, splits_given, missing_files = [], {}, []
    for line, row in enumerate(rows, start=2):
        ref = row[args.path_column]
        if not (image_dir / ref).is_file():
            missing_files.append(f"line {line}: {image_dir / ref}")
            continue
        label = classes.index(row[args.label_column]) if args.label_column else UNLABELLED
        patient = row.get(args.patient_column or "", "") or None
        record = ImageRecord(ref, label, patient)
        records.append(record)
        if args.split_column:
            splits_given.setdefault(row[args.split_column], []).append(record)
    if missing_files:
        shown = "; ".join(missing_files[:5]) + (f"; and {len(missing_files) - 5} more" if len(missing_files) > 5 else "")
        raise DataError(f"{table}: {len(missing_files)} listed image(s) not found: {shown}")
    if not records:
        raise DataError(f"{table}: lists no images")
    splits = splits_given if args.split_column else _split(records, args)
    return ImageSource(args.path, classes, splits, file_reader(image_dir), root=image_dir)


def build_medmnist(args: MedMnistArgs, *, data_root: Path, **_context: Any) -> ImageSource:
    """A MedMNIST ``.npz`` file with its official train/val/test splits."""
    path = resolve_path(args.path, data_root, "MedMNIST file")
    try:
        arrays = np.load(path)
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
        labels = arrays[f"{split}_labels"].reshape(len(split_images), -1)[:, 0].astype(int) if f"{split}_labels" in keys else np.full(len(split_images), UNLABELLED)
        n_classes = max(n_classes, int(labels.max()) + 1)
        splits[split] = [ImageRecord(offset + i, int(label)) for i, label in enumerate(labels)]
        images.append(split_images)
        offset += len(split_images)
    classes = args.classes or [str(i) for i in range(n_classes)]
    if len(classes) < n_classes:
        raise DataError(f"{path}: labels go up to {n_classes - 1} but only {len(classes)} class names were given")
    return ImageSource(args.path, classes, splits, ArrayReader(np.concatenate(images)))


@hookimpl
def register_datasets(register: Any) -> None:
    register("image_folder", build_image_folder, args=ImageFolderArgs)
    register("csv", build_csv, args=CsvArgs)
    register("medmnist_npz", build_medmnist, args=MedMnistArgs)
