"""The ``union`` dataset: several sources pooled into one unlabelled pre-training corpus.

Each source is an ordinary dataset spec (``{name: csv, path: covid3, ...}``) built
through the registry, with the split(s) to take from it. Images of an excluded split of
another source (typically the target set's test split) are removed, matched by resolved
file path (or array index, for array-backed sets), by patient id, and by content (the
16x16 average hash: the same radiograph stored twice, under another name or in another
collection), so that no test image and no test patient reaches pre-training. The
corpus has one split, ``train``; its records are unlabelled and refer to their source
as ``"<source index>:<ref>"``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.errors import DataError
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.core.registry import Nested
from sslmed.data.inspection import average_hash
from sslmed.data.sources import UNLABELLED, ImageRecord, ImageSource

log = logging.getLogger(__name__)


class UnionPart(BaseModel):
    """One source of the corpus, or one split to exclude from it."""

    model_config = ConfigDict(extra="forbid")
    dataset: Annotated[dict[str, Any], Nested("dataset", exclude=("union",))] = Field(
        description="a dataset spec, e.g. {name: csv, path: covid3, patient_column: patient_id}"
    )
    split: str = Field("all", description="which split of it ('all': every split)")


class UnionArgs(BaseModel):
    """Arguments of ``union``: the sources to pool and the splits to keep out."""

    model_config = ConfigDict(extra="forbid")
    sources: list[UnionPart] = Field(min_length=1, description="the datasets pooled, each with the split taken from it")
    exclude: list[UnionPart] = Field(
        [], description="splits whose images and patients must not be in the corpus (e.g. the target's test split)"
    )
    exclude_patients: bool = Field(True, description="also drop every image of a patient found in an excluded split")
    exclude_duplicates: bool = Field(
        True,
        description="also drop every image whose 16x16 average hash equals an excluded image's "
        "(the same radiograph under another name; costs one read of every image)",
    )


def content_key(source: ImageSource, ref: str | int) -> bytes | None:
    """The 16x16 average hash of an image, packed; ``None`` for an image that cannot be
    read (the training loader reports it, with its file, when it reaches it)."""
    try:
        return np.packbits(average_hash(source.read(ref, "L"))).tobytes()
    except (OSError, ValueError, DataError):
        return None


def record_key(source: ImageSource, ref: str | int) -> str:
    """What identifies an image across sources: its resolved file path, or for
    array-backed sets (no root) the set's name and the index."""
    if source.root is not None:
        return str((Path(source.root) / str(ref)).resolve())
    return f"{source.name}#{ref}"


class UnionReader:
    """``read("<i>:<ref>")`` -> the image ``ref`` of source ``i``."""

    def __init__(self, readers: list[Callable[..., Image.Image]]) -> None:
        self.readers = readers

    def __call__(self, ref: str | int, mode: str = "L") -> Image.Image:
        index, _, inner = str(ref).partition(":")
        return self.readers[int(index)](inner, mode)


@dataclass
class UnionSource(ImageSource):
    """An :class:`ImageSource` whose summary also says what was pooled and excluded."""

    def summary(self) -> dict[str, Any]:
        out = super().summary()
        out["union"] = self.details
        return out


def _build(build: Callable[..., Any], spec: dict[str, Any], data_root: Path, where: str) -> ImageSource:
    # the argument model already checked that ``spec`` is a named dataset other than a union
    try:
        return build("dataset", spec, data_root=data_root)
    except DataError as exc:
        raise DataError(f"union {where} ({spec['name']}): {exc}") from None


def build_union(args: UnionArgs, *, data_root: Path, build: Callable[..., Any], **_context: Any) -> UnionSource:
    """Several datasets pooled into one unlabelled corpus, an excluded split removed."""
    excluded_keys: set[str] = set()
    excluded_patients: set[str] = set()
    excluded_content: set[bytes] = set()
    for index, part in enumerate(args.exclude):
        source = _build(build, part.dataset, data_root, f"exclude[{index}]")
        for record in source.records(part.split):
            excluded_keys.add(record_key(source, record.ref))
            if record.patient_id:
                excluded_patients.add(str(record.patient_id))
            if args.exclude_duplicates and (content := content_key(source, record.ref)) is not None:
                excluded_content.add(content)
    records, readers, parts = [], [], []
    dropped_path = dropped_patient = dropped_content = 0
    for index, part in enumerate(args.sources):
        source = _build(build, part.dataset, data_root, f"sources[{index}]")
        readers.append(source.read)
        kept = 0
        for record in source.records(part.split):
            if record_key(source, record.ref) in excluded_keys:
                dropped_path += 1
                continue
            if args.exclude_patients and record.patient_id and str(record.patient_id) in excluded_patients:
                dropped_patient += 1
                continue
            if excluded_content and content_key(source, record.ref) in excluded_content:
                dropped_content += 1
                continue
            records.append(ImageRecord(f"{index}:{record.ref}", UNLABELLED, record.patient_id))
            kept += 1
        parts.append(
            {"dataset": part.dataset.get("name"), "path": part.dataset.get("path"), "split": part.split, "images": kept}
        )
    if not records:
        raise DataError("union: every image was excluded; the corpus is empty")
    details = {
        "sources": parts,
        "excluded_by_path": dropped_path,
        "excluded_by_patient": dropped_patient,
        "excluded_by_content": dropped_content,
        "excluded_split_images": len(excluded_keys),
        "excluded_split_patients": len(excluded_patients),
    }
    name = "union(" + "+".join(str(p["path"] or p["dataset"]) for p in parts) + ")"
    log.info(
        "%s: %d images; excluded %d by path, %d more by patient id, %d more by content",
        name,
        len(records),
        dropped_path,
        dropped_patient,
        dropped_content,
    )
    return UnionSource(name, [], {"train": records}, UnionReader(readers), root=None, details=details)


@hookimpl
def register_datasets(register: Register) -> None:
    register("union", build_union, args=UnionArgs)
