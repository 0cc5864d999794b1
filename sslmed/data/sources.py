"""Image sources: which images, with which labels and patients, in which split.

A dataset adapter (a plugin component of kind ``dataset``) returns an
:class:`ImageSource`; the engine reads a split of it through
:class:`sslmed.data.readers.ImageDataset`; evaluation reads labels from the same records.

Two kinds of labels:

* ``task="multiclass"``: each record has one class index ``label`` (``-1``: none);
* ``task="multilabel"`` (e.g. CheXpert findings): each record has ``targets``, one
  value per entry of ``classes``: ``1.0`` present, ``0.0`` absent, ``nan`` unknown
  (left out of the loss and the metrics for that finding). ``label`` is ``-1``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

from sslmed.core.errors import UsageError
from sslmed.core.tasks import task_for

UNLABELLED = -1


SPLIT_NAMES = ("train", "val", "test")


#: the ``task`` of a source (the behaviour of each is a :class:`sslmed.core.tasks.Task`)
TaskName = Literal["multiclass", "multilabel"]


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
    task: TaskName = "multiclass"
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

        task = task_for(self.task)
        for split, records in self.splits.items():
            entry: dict[str, Any] = {"images": len(records), **task.counts(records, self.classes)}
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
