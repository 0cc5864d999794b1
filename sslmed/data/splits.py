"""Reproducible splits: patient-wise, class-stratified ``train``/``val``/``test`` splits
fixed by a seed (:func:`split_records`), and the split files that record them
(:func:`write_split_file`, pinned again with :func:`apply_split_file`).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sslmed.core.errors import DataError
from sslmed.core.files import atomic_write_text
from sslmed.data.sources import ImageRecord, ImageSource
from sslmed.data.verify import log

#: columns of a split file (``sslmed data split`` writes it, ``split_file:`` pins it)
SPLIT_FILE_COLUMNS = ("path", "split", "label", "patient_id")


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


def skipped_file_text(source: ImageSource) -> str:
    """``path,split,reason`` for each file left out of ``source``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("path", "split", "reason"))
    for item in source.skipped:
        writer.writerow((item.ref, item.split, item.reason))
    return buffer.getvalue()
