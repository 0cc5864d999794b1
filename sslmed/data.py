"""Image sources: which images, with which labels and patients, in which split.

A dataset adapter (a plugin component of kind ``dataset``) returns an
:class:`ImageSource`. The engine turns a split of it into a torch ``Dataset`` with
:class:`ImageDataset`; evaluation reads labels from the same records.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, Union

import numpy as np
import torch
from PIL import Image

from sslmed.errors import DataError, UsageError
from sslmed.imaging import load_image

DATA_ENV = "SSLMED_DATA"
UNLABELLED = -1


@dataclass(frozen=True)
class ImageRecord:
    """One image: where to read it, its class index (or -1), its patient (if known)."""

    ref: Union[str, int]
    label: int = UNLABELLED
    patient_id: str | None = None


@dataclass
class ImageSource:
    """Images of one dataset, split into named parts (``train``, ``val``, ``test``).

    ``read(ref)`` returns a PIL image for a record's ``ref`` (a path relative to
    ``root``, or an index into an array).
    """

    name: str
    classes: list[str]
    splits: dict[str, list[ImageRecord]]
    read: Callable[[Union[str, int], str], Image.Image]
    root: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def records(self, split: str) -> list[ImageRecord]:
        """The records of ``split``; ``all`` joins every split."""
        if split == "all":
            return [r for records in self.splits.values() for r in records]
        if split not in self.splits:
            raise UsageError(f"data {self.name!r} has no split {split!r} (splits: {', '.join(self.splits)}, all)")
        return self.splits[split]

    def fingerprint(self) -> str:
        """A short hash of every record (ref, label, split), to tell data apart in manifests."""
        digest = hashlib.sha256()
        for split in sorted(self.splits):
            for record in self.splits[split]:
                digest.update(f"{split}\t{record.ref}\t{record.label}\n".encode())
        return digest.hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        """Counts per split and class, for manifests and logs."""
        out: dict[str, Any] = {"classes": self.classes, "splits": {}}
        for split, records in self.splits.items():
            labels = [r.label for r in records]
            out["splits"][split] = {
                "images": len(records),
                "per_class": {c: labels.count(i) for i, c in enumerate(self.classes)},
            }
        return out


def file_reader(root: Path) -> Callable[[Union[str, int], str], Image.Image]:
    """A ``read`` function for images stored as files under ``root``."""

    def read(ref: Union[str, int], mode: str = "L") -> Image.Image:
        return load_image(root / str(ref), mode=mode)  # type: ignore[arg-type]

    return read


class ArrayReader:
    """A picklable ``read`` function over an ``N×H×W`` uint8 array (e.g. MedMNIST)."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images

    def __call__(self, ref: Union[str, int], mode: str = "L") -> Image.Image:
        return Image.fromarray(self.images[int(ref)]).convert(mode)


class ImageDataset(torch.utils.data.Dataset):
    """``(transform(image), label)`` for each record of one split."""

    def __init__(self, source: ImageSource, records: Sequence[ImageRecord], transform: Callable[[Image.Image], Any], mode: str = "L") -> None:
        self.source = source
        self.records = list(records)
        self.transform = transform
        self.mode = mode

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        record = self.records[index]
        return self.transform(self.source.read(record.ref, self.mode)), record.label


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
        hint = "" if data_root.exists() else f" (data root {data_root} does not exist: set data_root in the recipe or ${DATA_ENV})"
        raise DataError(f"{what} not found: {resolved}{hint}")
    return resolved


# ----------------------------------------------------------------------- splits


def split_records(
    records: Sequence[ImageRecord], test_size: float, val_size: float, seed: int
) -> dict[str, list[ImageRecord]]:
    """Patient-wise, class-stratified ``train``/``val``/``test`` splits.

    Records without a patient id are each their own group. No patient lands in two
    splits; class proportions are kept as far as the groups allow.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    records = list(records)
    groups = np.array([r.patient_id if r.patient_id else f"__image_{i}" for i, r in enumerate(records)])
    labels = np.array([r.label for r in records])

    def carve(indices: np.ndarray, fraction: float, salt: int) -> tuple[np.ndarray, np.ndarray]:
        if fraction <= 0 or len(indices) == 0:
            return indices, np.array([], dtype=int)
        folds = max(2, round(1 / fraction))
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + salt)
        keep, held = next(splitter.split(np.zeros(len(indices)), labels[indices], groups[indices]))
        return indices[keep], indices[held]

    everything = np.arange(len(records))
    rest, test = carve(everything, test_size, 0)
    train, val = carve(rest, val_size / max(1e-9, 1 - test_size), 1)
    out = {"train": [records[i] for i in sorted(train)], "val": [records[i] for i in sorted(val)], "test": [records[i] for i in sorted(test)]}
    return {name: recs for name, recs in out.items() if recs or name == "train"}
