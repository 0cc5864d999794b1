"""Data inspection: what a reader needs to know about a source before trusting a result.

:func:`inspect_source` reads every image of an :class:`~sslmed.data.sources.ImageSource` once
and reports images per split and class, patients, image sizes, modes and formats,
unreadable files, exact (md5) and near-duplicate (16×16 average hash) images, and the
duplicates or patients shared between splits (a leak report). :func:`contact_sheet`
draws a few images per class; :func:`format_report` turns the report into text.
``sslmed data inspect`` is the command over it.
"""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image, ImageDraw

from sslmed.core.errors import ImageLoadError
from sslmed.data.imaging import ImageInfo, decode
from sslmed.data.sources import ImageRecord, ImageSource
from sslmed.data.splits import patients_in_several_splits

#: side of the average hash: 16×16 = 256 bits
HASH_SIDE = 16


@dataclass
class ImageFacts:
    """What inspection learns about one image."""

    ref: str
    split: str
    label: str
    patient: str | None
    record_ref: Any = None
    info: ImageInfo | None = None
    md5: str | None = None
    ahash: np.ndarray | None = None
    error: str | None = None


def average_hash(image: Image.Image, side: int = HASH_SIDE) -> np.ndarray:
    """``side²`` bits: each pixel of the ``side×side`` grey thumbnail above its mean."""
    small = np.asarray(image.convert("L").resize((side, side), Image.Resampling.BOX), dtype=np.float32)
    return (small > small.mean()).reshape(-1)


def _examine(source: ImageSource, split: str, record: ImageRecord) -> ImageFacts:
    facts = ImageFacts(str(record.ref), split, source.label_name(record), record.patient_id, record.ref)
    path = source.path_of(record)
    try:
        if path is not None:
            facts.md5 = hashlib.md5(path.read_bytes()).hexdigest()
            image, facts.info = decode(path)
        else:
            image = source.read(record.ref, "L")
            facts.md5 = hashlib.md5(np.asarray(image).tobytes()).hexdigest()
            facts.info = ImageInfo(image.width, image.height, image.mode, "array", 8)
        facts.ahash = average_hash(image)
    except ImageLoadError as exc:
        text = str(exc)
        facts.error = text[len(str(path)) + 2 :] if path is not None and text.startswith(f"{path}: ") else text
    except OSError as exc:
        facts.error = f"cannot be read ({exc.strerror or exc})"
    return facts


def hamming_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """``(i, j, distance)`` for every pair ``i < j`` of bit rows at most ``max_distance`` apart."""
    packed = np.packbits(hashes.astype(bool), axis=1)
    popcount = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint16)
    pairs = []
    for start in range(0, len(packed), 256):
        block = packed[start : start + 256]
        distance = popcount[block[:, None, :] ^ packed[None, :, :]].sum(axis=2)
        rows, cols = np.nonzero(distance <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=False):
            i = start + r
            if i < c:
                pairs.append((i, c, int(distance[r, c])))
    return pairs


def _groups(n: int, pairs: Sequence[tuple[int, int]]) -> list[list[int]]:
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        parent[find(i)] = find(j)
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    return [sorted(g) for g in members.values() if len(g) > 1]


def _stats(values: list[int]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}


def inspect_source(
    source: ImageSource, max_distance: int = 8, workers: int | None = None, name: str | None = None
) -> tuple[dict[str, Any], list[ImageFacts]]:
    """Read every image of ``source`` once; return the report and the per-image facts."""
    jobs = [(split, record) for split, records in source.splits.items() for record in records]
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        facts = list(pool.map(lambda job: _examine(source, *job), jobs, chunksize=32))
    good = [f for f in facts if f.error is None]
    report: dict[str, Any] = {
        "source": name or source.name,
        "task": source.task,
        "images": len(facts) + len(source.skipped),
    }
    if source.task == "multilabel":
        report["findings"] = source.summary()["splits"]
    else:
        counts = Counter(f.label or "(unlabelled)" for f in facts)
        report["classes"] = {c: counts.get(c, 0) for c in source.classes} or dict(counts)
    report["splits"] = {split: info for split, info in source.summary()["splits"].items()}
    report["split_origin"] = source.split_origin
    with_id = [f for f in facts if f.patient]
    per_class: dict[str, dict[str, int]] = {}
    for label in sorted({f.label for f in facts}):
        of_label = [f for f in facts if f.label == label]
        per_class[label or "(unlabelled)"] = {
            "images": len(of_label),
            "with_patient_id": sum(1 for f in of_label if f.patient),
            "patients": len({f.patient for f in of_label if f.patient}),
        }
    report["patients"] = {
        "patients": len({f.patient for f in with_id}),
        "images_with_id": len(with_id),
        "images_without_id": len(facts) - len(with_id),
        "per_class": per_class,
    }
    infos = [f.info for f in good if f.info is not None]
    report["image_sizes"] = {
        "width": _stats([i.width for i in infos]),
        "height": _stats([i.height for i in infos]),
        "most_common": [[f"{w}x{h}", n] for (w, h), n in Counter(i.size for i in infos).most_common(5)],
    }
    report["modes"] = dict(Counter(i.mode for i in infos).most_common())
    report["formats"] = dict(Counter(i.format for i in infos).most_common())
    report["bit_depths"] = {str(k): v for k, v in Counter(i.bits for i in infos).most_common()}
    unreadable = [{"path": s.ref, "split": s.split, "reason": s.reason} for s in source.skipped]
    unreadable += [{"path": f.ref, "split": f.split, "reason": f.error} for f in facts if f.error]
    report["unreadable"] = unreadable

    def describe(group: list[int]) -> list[dict[str, Any]]:
        return [
            {"path": good[i].ref, "split": good[i].split, "label": good[i].label, "patient_id": good[i].patient}
            for i in group
        ]

    by_md5: dict[str, list[int]] = {}
    for i, f in enumerate(good):
        by_md5.setdefault(f.md5 or "", []).append(i)
    exact = [g for g in by_md5.values() if len(g) > 1]
    near_pairs = hamming_pairs(np.stack([cast(np.ndarray, f.ahash) for f in good]), max_distance) if good else []
    near_groups = [
        g for g in _groups(len(good), [(i, j) for i, j, _ in near_pairs]) if not any(set(g) == set(e) for e in exact)
    ]
    report["exact_duplicates"] = [describe(g) for g in exact]
    report["near_duplicates"] = {
        "max_hamming_distance": max_distance,
        "hash": f"average hash {HASH_SIDE}x{HASH_SIDE}",
        "groups": [describe(g) for g in near_groups],
    }
    leaks = []
    for kind, groups in (("exact", exact), ("near", near_groups)):
        for g in groups:
            if len({good[i].split for i in g}) > 1:
                leaks.append({"kind": kind, "images": describe(g)})
    report["leaks"] = {
        "duplicates_across_splits": leaks,
        "patients_in_several_splits": patients_in_several_splits(source.splits),
    }
    return report, facts


def contact_sheet(
    source: ImageSource, facts: Sequence[ImageFacts], per_class: int = 6, thumb: int = 128
) -> Image.Image:
    """A grid with one row per class (multi-label: per finding present) of up to ``per_class`` images."""
    rows: dict[str, list[ImageFacts]] = {}
    readable = [f for f in facts if f.error is None]
    if source.task == "multilabel":
        for finding in source.classes:
            rows[finding] = [f for f in readable if finding in f.label.split("|")]
    else:
        for f in readable:
            rows.setdefault(f.label or "(unlabelled)", []).append(f)
    label_width = 160
    sheet = Image.new("L", (label_width + per_class * (thumb + 4), max(1, len(rows)) * (thumb + 20) + 4), 0)
    draw = ImageDraw.Draw(sheet)
    for row, (label, members) in enumerate(sorted(rows.items())):
        top = row * (thumb + 20) + 4
        draw.text((4, top + thumb // 2 - 12), f"{label}\n({len(members)} images)", fill=255)
        picks = [
            members[round(k * (len(members) - 1) / max(1, per_class - 1))] for k in range(min(per_class, len(members)))
        ]
        for column, f in enumerate(picks):
            image = source.read(f.record_ref, "L")
            image.thumbnail((thumb, thumb))
            left = label_width + column * (thumb + 4)
            sheet.paste(image, (left + (thumb - image.width) // 2, top + (thumb - image.height) // 2))
            draw.text((left, top + thumb + 2), Path(f.ref).name[:20], fill=200)
    return sheet


def format_report(report: dict[str, Any], limit: int = 10) -> str:
    """The report as text for a person."""
    lines = [f"source: {report['source']} ({report['images']} images, {report['task']})"]
    if "classes" in report:
        lines.append("classes: " + ", ".join(f"{c} {n}" for c, n in report["classes"].items()))
    lines.append(f"splits ({report['split_origin']}):")
    for split, info in report["splits"].items():
        counts = info.get("per_class") or {f: v["positive"] for f, v in info.get("per_finding", {}).items()}
        detail = ", ".join(f"{c} {n}" for c, n in counts.items())
        lines.append(
            f"  {split}: {info['images']} images"
            + (f", {info['patients']} patients" if info.get("patients") else "")
            + (f" ({detail})" if detail else "")
            + (" [positives]" if "per_finding" in info else "")
        )
    p = report["patients"]
    lines.append(
        f"patients: {p['patients']} ids over {p['images_with_id']} images; "
        f"{p['images_without_id']} images without a patient id"
    )
    for label, info in p["per_class"].items():
        lines.append(
            f"  {label}: {info['images']} images, {info['patients']} patients "
            f"({info['with_patient_id']} images with an id)"
        )
    sizes = report["image_sizes"]
    if sizes["width"]:
        lines.append(
            f"image sizes: width {sizes['width']['min']}-{sizes['width']['max']} "
            f"(median {sizes['width']['median']}), "
            f"height {sizes['height']['min']}-{sizes['height']['max']} "
            f"(median {sizes['height']['median']}); most common "
            + ", ".join(f"{s} ({n})" for s, n in sizes["most_common"])
        )
    lines.append(
        "modes: "
        + ", ".join(f"{m} {n}" for m, n in report["modes"].items())
        + "; formats: "
        + ", ".join(f"{m} {n}" for m, n in report["formats"].items())
    )
    lines.append(f"unreadable files: {len(report['unreadable'])}")
    lines += [f"  {u['path']}: {u['reason']}" for u in report["unreadable"][:limit]]
    lines.append(f"exact duplicates: {len(report['exact_duplicates'])} group(s)")
    lines += ["  " + " = ".join(f"{m['path']} [{m['split']}]" for m in g) for g in report["exact_duplicates"][:limit]]
    near = report["near_duplicates"]
    lines.append(
        f"near duplicates ({near['hash']}, distance <= {near['max_hamming_distance']}): {len(near['groups'])} group(s)"
    )
    lines += ["  " + " ~ ".join(f"{m['path']} [{m['split']}]" for m in g) for g in near["groups"][:limit]]
    leaks = report["leaks"]
    lines.append(
        f"leaks across splits: {len(leaks['duplicates_across_splits'])} duplicate group(s), "
        f"{len(leaks['patients_in_several_splits'])} patient(s) in several splits"
    )
    lines += [
        "  " + f"{leak['kind']}: " + " ~ ".join(f"{m['path']} [{m['split']}]" for m in leak["images"])
        for leak in leaks["duplicates_across_splits"][:limit]
    ]
    if report.get("contact_sheet"):
        lines.append(f"contact sheet: {report['contact_sheet']}")
    return "\n".join(lines)
