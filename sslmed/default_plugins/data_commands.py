"""``sslmed data inspect`` and ``sslmed data split``: look at data before training on it.

``inspect`` reads every image of a source once and reports what a reader needs before
trusting a result: images per split and class, patients, image sizes, modes and
formats, unreadable files, exact (md5) and near-duplicate (16×16 average hash)
images, and the duplicates or patients shared between splits (a leak report). It
writes ``report.json`` and a PNG contact sheet of a few images per class.

``split`` writes the patient-wise split file (``path,split,label,patient_id``) that a
recipe pins with ``split_file:``.

A SOURCE is a recipe's data alias (``--recipe R --data ALIAS``) or a path: a folder
with ``labels.csv`` (csv adapter; ``patient_id``/``split`` columns used when present),
a folder of class folders (image_folder), a CheXpert release, a ``.csv`` file or a
MedMNIST ``.npz``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import statistics
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import numpy as np
from PIL import Image, ImageDraw

from sslmed.data import ImageRecord, ImageSource, patients_in_several_splits, write_split_file
from sslmed.errors import DataError, ImageLoadError, UsageError
from sslmed.hookspecs import hookimpl
from sslmed.imaging import ImageInfo, decode

HASH_SIDE = 16
PATIENT_COLUMNS = ("patient_id", "patient", "PatientID", "Patient ID", "subject_id")
SPLIT_COLUMNS = ("split", "fold")
LABEL_COLUMNS = ("label", "class", "Finding Labels")


# ------------------------------------------------------------------ source lookup


def _adapter_spec_for_path(path: Path) -> dict[str, Any]:
    """The dataset spec an unconfigured path most likely means."""
    from sslmed.default_plugins.chexpert import RELEASE_FOLDERS
    from sslmed.default_plugins.datasets import IMAGE_SUFFIXES

    if not path.exists():
        raise DataError(f"data not found: {path}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return {"name": "medmnist_npz", "path": str(path)}
        if path.suffix.lower() != ".csv":
            raise UsageError(f"{path}: give a data folder, a .csv or a .npz file (or --recipe R --data ALIAS)")
        header = _csv_header(path)
        if "Path" in header and "Frontal/Lateral" in header:
            return {"name": "chexpert", "path": str(path.parent), "frontal_only": False}
        return _csv_spec(path.parent, path.name, header)
    chexpert_here = (path / "train.csv").is_file() and "Frontal/Lateral" in _csv_header(path / "train.csv")
    if chexpert_here or any((path / n).is_dir() for n in RELEASE_FOLDERS):
        return {"name": "chexpert", "path": str(path), "frontal_only": False}
    if (path / "labels.csv").is_file():
        return _csv_spec(path, "labels.csv", _csv_header(path / "labels.csv"))
    folders = [p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if folders and any(f.suffix.lower() in IMAGE_SUFFIXES for d in folders for f in d.rglob("*")):
        return {"name": "image_folder", "path": str(path)}
    raise DataError(
        f"{path}: no labels.csv, no class sub-folders with images and no CheXpert release: not a data source sslmed recognises"
    )


def _csv_header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return next(csv.reader(handle), [])


def _csv_spec(folder: Path, name: str, header: list[str]) -> dict[str, Any]:
    path_column = next((c for c in ("path", "Path", "filename", "file", "image") if c in header), None)
    if path_column is None:
        raise DataError(
            f"{folder / name}: no path column (one of path, Path, filename, file, image; columns: {', '.join(header)})"
        )
    spec: dict[str, Any] = {
        "name": "csv",
        "path": str(folder),
        "csv": name,
        "path_column": path_column,
        "label_column": next((c for c in LABEL_COLUMNS if c in header), None),
    }
    patient = next((c for c in PATIENT_COLUMNS if c in header), None)
    if patient:
        spec["patient_column"] = patient
    split = next((c for c in SPLIT_COLUMNS if c in header), None)
    if split:
        spec["split_column"] = split
    return spec


def _relaxed(spec: dict[str, Any], registry: Any, **changes: Any) -> dict[str, Any]:
    """``spec`` with the changes its component accepts (e.g. no decode check: inspect decodes itself)."""
    fields = registry.get("dataset", spec["name"]).args.model_fields
    return {**spec, **{k: v for k, v in changes.items() if k in fields}}


def build_source(
    source: str | None, recipe: Path | None, alias: str | None, **changes: Any
) -> tuple[ImageSource, dict[str, Any], str]:
    """The source to look at, its spec, and a short name; ``changes`` override its args."""
    from sslmed.data import resolve_data_root
    from sslmed.plugins import get_registry

    registry = get_registry()
    if recipe is not None:
        from sslmed.runner import load_recipe_file

        loaded, registry = load_recipe_file(recipe)
        if alias is None:
            raise UsageError(f"--recipe needs --data ALIAS (data in {recipe}: {', '.join(loaded.data)})")
        if alias not in loaded.data:
            raise UsageError(f"no data {alias!r} in {recipe} (data: {', '.join(loaded.data)})")
        if source is not None:
            raise UsageError("give either SOURCE or --recipe/--data, not both")
        spec = loaded.data[alias].spec()
        root, name = Path(loaded.data_root or resolve_data_root()), alias
    else:
        if alias is not None:
            raise UsageError("--data ALIAS needs --recipe R (the recipe that defines it)")
        if source is None:
            raise UsageError("give a SOURCE (a data folder, .csv or .npz) or --recipe R --data ALIAS")
        path = Path(source).expanduser().resolve()
        spec, root, name = _adapter_spec_for_path(path), path.parent, path.stem if path.is_file() else path.name
    spec = _relaxed(spec, registry, **changes)
    return registry.build("dataset", spec, data_root=root), spec, name


# ------------------------------------------------------------------- inspection


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
    near_pairs = hamming_pairs(np.stack([f.ahash for f in good]), max_distance) if good else []
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
        f"patients: {p['patients']} ids over {p['images_with_id']} images; {p['images_without_id']} images without a patient id"
    )
    for label, info in p["per_class"].items():
        lines.append(
            f"  {label}: {info['images']} images, {info['patients']} patients ({info['with_patient_id']} images with an id)"
        )
    sizes = report["image_sizes"]
    if sizes["width"]:
        lines.append(
            f"image sizes: width {sizes['width']['min']}-{sizes['width']['max']} (median {sizes['width']['median']}), "
            f"height {sizes['height']['min']}-{sizes['height']['max']} (median {sizes['height']['median']}); most common "
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
        f"leaks across splits: {len(leaks['duplicates_across_splits'])} duplicate group(s), {len(leaks['patients_in_several_splits'])} patient(s) in several splits"
    )
    lines += [
        "  " + f"{leak['kind']}: " + " ~ ".join(f"{m['path']} [{m['split']}]" for m in leak["images"])
        for leak in leaks["duplicates_across_splits"][:limit]
    ]
    if report.get("contact_sheet"):
        lines.append(f"contact sheet: {report['contact_sheet']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- commands


_source_options = [
    click.argument("source", required=False),
    click.option(
        "--recipe",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Take the data from this recipe (with --data).",
    ),
    click.option("--data", "alias", help="The recipe's data alias to use."),
]


def _with_source_options(func: Any) -> Any:
    for option in reversed(_source_options):
        func = option(func)
    return func


@click.group(name="data")
def data_group() -> None:
    """Look at data before training on it: inspect a source, write split files, build the image cache."""


@data_group.command(name="inspect")
@_with_source_options
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for report.json and contact_sheet.png (default: inspect/<name>).",
)
@click.option("--per-class", default=6, show_default=True, help="Images per class on the contact sheet.")
@click.option(
    "--max-distance",
    default=8,
    show_default=True,
    help="Largest Hamming distance (of 256 hash bits) for near duplicates.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
def inspect_command(
    source: str | None,
    recipe: Path | None,
    alias: str | None,
    out: Path | None,
    per_class: int,
    max_distance: int,
    as_json: bool,
) -> None:
    """Report on SOURCE: counts, classes, patients, sizes, unreadable files, duplicates and leaks."""
    built, spec, name = build_source(source, recipe, alias, verify=False, on_error="skip")
    click.echo(f"inspecting {name} ({spec['name']}, {sum(len(r) for r in built.splits.values())} images)...", err=True)
    report, facts = inspect_source(built, max_distance, name=name)
    report["adapter"] = spec
    out = out or Path("inspect") / name
    out.mkdir(parents=True, exist_ok=True)
    if any(f.error is None for f in facts):
        sheet_path = out / "contact_sheet.png"
        contact_sheet(built, facts, per_class).save(sheet_path)
        report["contact_sheet"] = str(sheet_path)
    from sslmed.checkpoints import atomic_write_json

    atomic_write_json(out / "report.json", report)
    click.echo(json.dumps(report, indent=2, default=str) if as_json else format_report(report))
    click.echo(f"report: {out / 'report.json'}", err=True)


@data_group.command(name="split")
@_with_source_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The split file to write (default: splits/<name>.csv).",
)
@click.option("--test-size", type=float, help="Fraction of patients held out for testing (default: the source's).")
@click.option("--val-size", type=float, help="Fraction held out for validation (default: the source's).")
@click.option("--seed", type=int, help="Seed of the split (default: the source's split_seed).")
def split_command(
    source: str | None,
    recipe: Path | None,
    alias: str | None,
    out: Path | None,
    test_size: float | None,
    val_size: float | None,
    seed: int | None,
) -> None:
    """Write the patient-wise, class-stratified split file of SOURCE, for a recipe's split_file."""
    changes = {
        k: v for k, v in {"test_size": test_size, "val_size": val_size, "split_seed": seed}.items() if v is not None
    }
    built, spec, name = build_source(source, recipe, alias, split_file=None, **changes)
    shared = patients_in_several_splits(built.splits)
    if shared:
        raise DataError(
            f"{name}: {len(shared)} patient(s) would be in several splits (e.g. {next(iter(shared))}); the data's own split column mixes patients"
        )
    out = out or Path("splits") / f"{name}.csv"
    write_split_file(built, out)
    for split, records in built.splits.items():
        patients = len({r.patient_id for r in records if r.patient_id})
        click.echo(f"{split}: {len(records)} images" + (f", {patients} patients" if patients else ""), err=True)
    if built.skipped:
        click.echo(f"{len(built.skipped)} unreadable file(s) left out", err=True)
    click.echo(f"wrote {out} ({built.split_origin}); pin it in a recipe's data section with  split_file: {out}")


# ------------------------------------------------------------------ data cache


@data_group.command(name="cache")
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value (repeatable).")
@click.option("--step", "step_names", multiple=True, help="Only this step (repeatable; default: every step).")
def cache_command(recipe: Path, overrides: tuple[str, ...], step_names: tuple[str, ...]) -> None:
    """Build the decode-once image cache of RECIPE's steps ahead of training.

    Each step whose cache: setting uses a cache gets its data decoded at the step's
    image size (once per data and size; a cache already complete is reused). Prints
    the cache folder of each step.
    """
    from sslmed.cache import AUTO_MIN_IMAGES, cache_root, ensure_cache, wants_cache
    from sslmed.runner import build_sources, load_recipe_file

    loaded, registry = load_recipe_file(recipe, overrides)
    steps = [loaded.step(name) for name in step_names] if step_names else loaded.steps
    needed = {s.data for s in steps} | ({loaded.evaluation.data} if loaded.evaluation else set())
    sources = build_sources(loaded, registry, only=needed)
    for step in steps:
        source = sources[step.data]
        if not wants_cache(step.cache, source, len(source.records(step.split))):
            why = "cache: off" if step.cache == "off" else f"cache: auto and under {AUTO_MIN_IMAGES:,} images"
            click.echo(f"step {step.name}: no cache ({why}; set cache: on to build one)", err=True)
            continue
        cache = ensure_cache(source, step.image_size, step.in_channels, cache_root(step.cache))
        meta = cache.meta
        click.echo(f"step {step.name}: {len(meta['refs'])} images of {step.data} at {step.image_size}px", err=True)
        click.echo(str(cache.folder))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(data_group)
