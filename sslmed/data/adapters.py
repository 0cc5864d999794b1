"""The toolkit of dataset adapters: what a dataset plugin, built-in or third-party, imports.

A dataset factory ``factory(args, *, data_root, build) -> ImageSource`` lists the images
of each split with their labels and patient ids. Most file-based adapters need the same
pieces, so they live here rather than in any one adapter:

* loading options (:class:`LoadingArgs`): every file is decoded once when the source
  is built (``verify``), and an unreadable one either stops the run before training,
  naming every bad file and the reason (``on_error: error``), or is left out and
  listed in the run folder's ``skipped/<alias>.csv`` (``on_error: skip``);
* split options (:class:`SplitArgs`): patient-grouped, class-stratified splits fixed
  by ``split_seed``, or pinned by a ``split_file`` (as ``sslmed data split`` writes and
  as every run records in ``splits/<alias>.csv``);
* :func:`finish_source`, which applies both to the records an adapter found;
* :func:`read_csv_rows`, :data:`IMAGE_SUFFIXES`, :func:`resolve_split_file`, and, from
  :mod:`sslmed.data`, the records, sources, readers and path resolution they use.

An adapter subclasses the argument models (``class MyArgs(SplitArgs)``) and ends with
``return finish_source(...)``; see ``sslmed/default_plugins/datasets.py``.
"""

from __future__ import annotations

import csv as csv_module
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.errors import DataError
from sslmed.core.files import check_regular_file
from sslmed.data.readers import ArrayReader, file_reader
from sslmed.data.roots import resolve_path
from sslmed.data.sources import UNLABELLED, ImageRecord, ImageSource, TaskName
from sslmed.data.splits import apply_split_file, split_records
from sslmed.data.verify import apply_failures, verify_source

__all__ = [
    "IMAGE_SUFFIXES",
    "UNLABELLED",
    "ArrayReader",
    "ImageRecord",
    "ImageSource",
    "LoadingArgs",
    "SplitArgs",
    "TaskName",
    "file_reader",
    "finish_source",
    "listed",
    "read_csv_rows",
    "resolve_path",
    "resolve_split_file",
    "split_records",
]

#: file name endings the folder-walking adapters take for images
#: a label table larger than this is refused before it is read (CheXpert's is 30 MB)
MAX_CSV_BYTES = 2 * 2**30

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
    val_from_train: float = Field(
        0,
        ge=0,
        lt=1,
        description="with given splits (e.g. split_column) that have no val split: hold out this fraction of "
        "train as val, patient-wise and class-stratified (seed split_seed); the given test split is untouched",
    )
    split_file: str | None = Field(
        None,
        description="a split file (CSV path,split,...) that pins each image's split, as written by "
        "`sslmed data split` or a run's splits/<alias>.csv; relative to the working folder or the data root",
    )


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
        f"split file not found: {value} (looked in {', '.join(str(c) for c in candidates)}; write one with "
        "`sslmed data split`)"
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
    task: TaskName = "multiclass",
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
            if (path := source.path_of(r)) is not None and not path.is_file()
        ]
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
    elif given is not None and getattr(args, "val_from_train", None) and "val" not in source.splits:
        assert isinstance(args, SplitArgs)
        if "train" not in source.splits:
            raise DataError(f"data {name!r}: val_from_train needs a 'train' split (splits: {', '.join(source.splits)})")
        carved = split_records(source.splits["train"], 0, args.val_from_train, args.split_seed)
        source.splits = {**source.splits, "train": carved["train"], "val": carved.get("val", [])}
        source.split_origin = (
            f"given; val carved from train patient-wise, seed {args.split_seed} ({args.val_from_train} of train)"
        )
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


def listed(items: list[str], limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f"; and {len(items) - limit} more" if len(items) > limit else "")


def read_csv_rows(table: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Columns and rows of a CSV file, or a :class:`DataError` saying why it cannot be read."""
    # a FIFO blocks the reader for ever, /dev/zero never ends: a regular file of bounded size
    check_regular_file(table, MAX_CSV_BYTES, "CSV file", DataError)
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
