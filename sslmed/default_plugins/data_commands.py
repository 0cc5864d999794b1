"""``sslmed data inspect`` and ``sslmed data split``: look at data before training on it.

``inspect`` reads every image of a source once and reports what a reader needs before
trusting a result (see :mod:`sslmed.data.inspection`, which does the work). It writes
``report.json`` and a PNG contact sheet of a few images per class.

``split`` writes the patient-wise split file (``path,split,label,patient_id``) that a
recipe pins with ``split_file:``.

A SOURCE is a recipe's data alias (``--recipe R --data ALIAS``) or a path: a folder
with ``labels.csv`` (csv adapter; ``patient_id``/``split`` columns used when present),
a folder of class folders (image_folder), a CheXpert release, a ``.csv`` file or a
MedMNIST ``.npz``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import click

from sslmed.core.errors import DataError, UsageError
from sslmed.core.files import atomic_write_json
from sslmed.core.hookspecs import hookimpl
from sslmed.core.plugins import get_registry
from sslmed.data.inspection import contact_sheet, format_report, inspect_source
from sslmed.data.roots import resolve_data_root
from sslmed.data.sources import ImageSource
from sslmed.data.splits import patients_in_several_splits, write_split_file
from sslmed.default_plugins.chexpert import RELEASE_FOLDERS

PATIENT_COLUMNS = ("patient_id", "patient", "PatientID", "Patient ID", "subject_id")
SPLIT_COLUMNS = ("split", "fold")
LABEL_COLUMNS = ("label", "class", "Finding Labels")


# ------------------------------------------------------------------ source lookup


def _adapter_spec_for_path(path: Path) -> dict[str, Any]:
    """The dataset spec an unconfigured path most likely means."""
    # lazily: torch loads only for the command that runs
    from sslmed.data.adapters import IMAGE_SUFFIXES

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
        f"{path}: no labels.csv, no class sub-folders with images and no CheXpert release: "
        "not a data source sslmed recognises"
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

    registry = get_registry()
    if recipe is not None:
        # lazily: torch loads only for the command that runs
        from sslmed.app.prepare import load_recipe_file

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
    """Get and look at data: fetch catalogue datasets, inspect a source, write split files, build the image cache."""


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
            f"{name}: {len(shared)} patient(s) would be in several splits (e.g. {next(iter(shared))}); "
            "the data's own split column mixes patients"
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
    # lazily: Lightning, scikit-learn and torch load only for the command that runs
    from sslmed.app.prepare import build_sources, load_recipe_file
    from sslmed.data.cache import AUTO_MIN_IMAGES, cache_root, ensure_cache, wants_cache

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
        if cache.rebuilt_because:
            click.echo(f"step {step.name}: the cache was broken ({cache.rebuilt_because}); rebuilt it", err=True)
        meta = cache.meta
        click.echo(f"step {step.name}: {len(meta['refs'])} images of {step.data} at {step.image_size}px", err=True)
        click.echo(str(cache.folder))


@hookimpl
def register_commands(cli: Any) -> None:
    cli.add_command(data_group)
