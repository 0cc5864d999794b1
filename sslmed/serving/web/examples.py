"""The page's examples: images the model can be checked on, each with its true label.

In order of preference:

1. the run's own test split: the run folder records every image's split
   (``splits/<alias>.csv``, :func:`sslmed.data.splits.split_file_text`) and its recipe the
   data root and the data set's folder, so a few test images per class are found again
   wherever the data is present;
2. otherwise images of ``../shared/data`` (the data root) whose label is one of the
   model's classes: the data set the model names first (its test split when the
   ``labels.csv`` has one), then the ``samples`` folder;
3. a folder given with ``--examples``: its files, less every labelled one of a class
   the model does not have.

An example of a class the model lacks is never offered: its answer would be wrong by
construction. Each :class:`Example` has a content hash, so that the page can tell the
true label of an example however Gradio hands the file over.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslmed.artifacts.rundir import RunDir
from sslmed.data.roots import resolve_data_root

DEFAULT_PER_CLASS = 3
_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".dcm", ".dicom")


@dataclass
class Example:
    """One example file with its true label (in the model's classes) when known."""

    path: Path
    label: str | None
    origin: str  # "test split of <alias>", "<folder> (data root)", "examples folder"

    @property
    def caption(self) -> str:
        return f"{self.path.name} (true: {self.label})" if self.label else self.path.name

    def digest(self) -> str:
        return file_digest(self.path)


def file_digest(path: str | Path) -> str:
    """The SHA-256 of a file's content (the key the page looks examples up by)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _class_of(label: str, classes: list[str]) -> str | None:
    """``label`` as one of ``classes`` (case-insensitive), or ``None``."""
    by_lower = {c.lower(): c for c in classes}
    return by_lower.get(str(label).strip().lower())


def _spread(items: list[Any], count: int) -> list[Any]:
    """``count`` items spread evenly over ``items`` (deterministic)."""
    if len(items) <= count:
        return items
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


def run_examples(model_dir: Path, meta: dict[str, Any], per_class: int = DEFAULT_PER_CLASS) -> list[Example]:
    """Test-split images of the run that made the model export in ``model_dir``, a few
    per class; empty when the run folder, its split file or the images are absent."""
    run = RunDir(Path(model_dir).parent)
    alias = str(meta.get("data", ""))
    classes = list(meta.get("classes", []))
    split_file = run.split_file(alias) if alias and "/" not in alias else None
    if split_file is None or not split_file.is_file():
        return []
    document = run.read_recipe_document()
    spec = (document.get("data") or {}).get(alias) or {}
    folder = spec.get("path") if isinstance(spec, dict) else None
    if not isinstance(folder, str):
        return []  # e.g. a union of several sets: no one folder to find the images in
    root = Path(folder).expanduser()
    if not root.is_absolute():
        root = resolve_data_root(document.get("data_root")) / root
    bases = [root / spec["images"]] if spec.get("images") else [root / "images", root]
    by_class: dict[str, list[Path]] = {c: [] for c in classes}
    with open(split_file, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row.get("split") != "test":
                continue
            label = _class_of(row.get("label", ""), classes)
            if label is None:
                continue
            by_class[label].append(Path(row["path"]))
    found: list[Example] = []
    for label in classes:
        chosen = []
        for ref in _spread(by_class[label], per_class * 4):
            path = next((base / ref for base in bases if (base / ref).is_file()), None)
            if path is not None and path.suffix.lower() in _SUFFIXES:
                chosen.append(Example(path.resolve(), label, f"test split of {alias}"))
            if len(chosen) == per_class:
                break
        found += chosen
    return found


def data_root_examples(
    meta: dict[str, Any], data_root: Path | None = None, per_class: int = DEFAULT_PER_CLASS
) -> list[Example]:
    """Images of the data root labelled with one of the model's classes: the data set the
    model names (its test split when recorded), else the ``samples`` folder."""
    root = Path(data_root) if data_root is not None else resolve_data_root()
    classes = list(meta.get("classes", []))
    named = str(meta.get("data", "")).split(" ")[0]
    for folder in ([root / named] if named else []) + [root / "samples"]:
        examples = labelled_examples(folder, classes, per_class, origin=f"{folder.name} (data root)")
        if examples:
            return examples
    return []


def labelled_examples(folder: Path, classes: list[str], per_class: int, origin: str) -> list[Example]:
    """Up to ``per_class`` images of each class from ``folder/labels.csv`` (test split first)."""
    table = folder / "labels.csv"
    if not table.is_file():
        return []
    images = folder / "images" if (folder / "images").is_dir() else folder
    by_class: dict[str, list[tuple[bool, Path]]] = {c: [] for c in classes}
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            label = _class_of(row.get("label") or "", classes)
            if label is None or not row.get("path"):
                continue
            by_class[label].append((row.get("split", "test") != "test", images / row["path"]))
    found = []
    for label in classes:
        ordered = [path for _, path in sorted(by_class[label], key=lambda item: item[0])]
        test_only = [p for (other, p) in by_class[label] if not other] or ordered
        chosen = [p for p in _spread(test_only, per_class * 4) if p.is_file() and p.suffix.lower() in _SUFFIXES]
        found += [Example(p.resolve(), label, origin) for p in chosen[:per_class]]
    return found


def folder_examples(folder: Path, classes: list[str]) -> list[Example]:
    """Every image of ``folder`` (sorted), less the labelled ones of classes the model lacks."""
    labels: dict[str, str] = {}
    if (folder / "labels.csv").is_file():
        with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if row.get("path") and row.get("label"):
                    labels[row["path"]] = row["label"]
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _SUFFIXES):
        if path.name in labels:
            label = _class_of(labels[path.name], classes)
            if label is None:
                continue  # a class the model does not have
            found.append(Example(path.resolve(), label, "examples folder"))
        else:
            found.append(Example(path.resolve(), None, "examples folder"))
    return found


def find_examples(
    model_dir: Path,
    meta: dict[str, Any],
    examples_dir: str | Path | None = None,
    data_root: Path | None = None,
    per_class: int = DEFAULT_PER_CLASS,
) -> list[Example]:
    """The examples for the page (see the module's docstring for the order)."""
    if examples_dir is not None:
        folder = Path(examples_dir)
        return folder_examples(folder, list(meta.get("classes", []))) if folder.is_dir() else []
    return run_examples(model_dir, meta, per_class) or data_root_examples(meta, data_root, per_class)
