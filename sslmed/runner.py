"""The multi-step schedule: steps in order, ``init_from`` hand-off, the run folder.

``runs/<recipe>/<timestamp>/`` holds ``recipe.yaml`` (resolved), ``manifest.json``,
``steps/<step>/`` (Lightning checkpoints, logs, the backbone export),
``results.{json,csv,md}`` and ``model/`` (the classifier that predict and the demo use).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml

from sslmed import __version__
from sslmed.checkpoints import (
    atomic_write_json,
    atomic_write_text,
    load_backbone_weights,
    load_tensors,
    read_backbone_meta,
    remove_partial_files,
)
from sslmed.data import ImageSource, resolve_data_root, write_run_data
from sslmed.engine import backbone_identity, is_worker_process, step_is_done, train_step
from sslmed.errors import DataError, RecipeError, UsageError
from sslmed.evaluation import (
    RAW_PIXELS,
    FeatureSet,
    LabelledSplit,
    extract_features,
    metrics,
    predictions,
    probe_rows,
    supervised_proba,
)
from sslmed.plugins import get_registry, plugin_infos
from sslmed.predict import export_classifier
from sslmed.recipe import Recipe, load_raw, validate
from sslmed.registry import Registry

log = logging.getLogger(__name__)

RUN_DIR_ENV = "SSLMED_RUN_DIR"  # hands the run folder to DDP worker processes


@dataclass
class RunResult:
    """A finished run: its folder and its results rows."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""


def load_recipe_file(path: str | Path, overrides: tuple[str, ...] = ()) -> tuple[Recipe, Registry]:
    """Load and validate a recipe; relative ``data_root`` resolves from the recipe's folder."""
    registry = get_registry()
    data, lines = load_raw(path, overrides)
    recipe = validate(data, registry, lines, source=str(path))
    root = resolve_data_root(recipe.data_root, Path(path).resolve().parent)
    return recipe.model_copy(update={"data_root": str(root.resolve())}), registry


def build_sources(recipe: Recipe, registry: Registry, only: set[str] | None = None) -> dict[str, ImageSource]:
    """Every data source the recipe uses, checked before training; all problems at once."""
    root = Path(recipe.data_root or resolve_data_root())
    used = {s.data for s in recipe.steps} | ({recipe.evaluation.data} if recipe.evaluation else set())
    sources, problems = {}, []
    for alias, spec in recipe.data.items():
        if alias not in used or (only is not None and alias not in only):
            continue
        try:
            sources[alias] = registry.build("dataset", spec.spec(), data_root=root)
        except DataError as exc:
            problems.append(f"data.{alias} ({spec.name}): {exc}")
    if problems:
        raise DataError("; ".join(problems) if len(problems) == 1 else "data problems:\n  " + "\n  ".join(problems))
    for step in recipe.steps:
        if step.data in sources:
            sources[step.data].records(step.split)  # raises for an unknown split
    if recipe.evaluation:
        source = sources[recipe.evaluation.data]
        for split in (recipe.evaluation.train_split, recipe.evaluation.test_split):
            records = source.records(split)
            if any(not r.is_labelled for r in records):
                raise DataError(
                    f"evaluation data {recipe.evaluation.data!r} split {split!r} has unlabelled images; the probe needs labels"
                )
    return sources


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        commit = out.stdout.strip()
        return commit if out.returncode == 0 and len(commit) == 40 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    found = {}
    for package in ("torch", "torchvision", "lightning", "lightly", "scikit-learn", "pydantic", "pluggy"):
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found


def manifest(recipe: Recipe, sources: dict[str, ImageSource]) -> dict[str, Any]:
    """What a reader needs to reproduce the run."""
    return {
        "sslmed": __version__,
        "created": datetime.now().astimezone().isoformat(timespec="seconds"),
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "host": platform.node(),
        "packages": _versions(),
        "plugins": [{"name": p.name, "version": p.version} for p in plugin_infos() if not p.error],
        "data": {alias: {"fingerprint": s.fingerprint(), **s.summary()} for alias, s in sources.items()},
        "seeds": {s.name: s.seed for s in recipe.steps},
    }


def recipe_document(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (what ``recipe.yaml`` in the run folder holds)."""
    return recipe.model_dump(mode="json")


def _new_run_dir(runs_dir: Path, name: str) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = runs_dir / name / stamp, 1
    while candidate.exists():
        n += 1
        candidate = runs_dir / name / f"{stamp}-{n}"
    return candidate


def resolve_resume(recipe: Recipe, runs_dir: Path, resume: str) -> Path:
    """The run folder to continue: ``latest`` under ``runs/<recipe>/``, or a given path."""
    if resume == "latest":
        runs = sorted(p for p in (runs_dir / recipe.name).glob("*") if (p / "recipe.yaml").is_file())
        if not runs:
            raise UsageError(f"--resume: no earlier run of recipe {recipe.name!r} under {runs_dir / recipe.name}")
        run_dir = runs[-1]
    else:
        run_dir = Path(resume)
        if not (run_dir / "recipe.yaml").is_file():
            raise UsageError(f"--resume {resume}: not a run folder (no recipe.yaml)")
    for folder in (run_dir, run_dir / "model"):  # results or a model export killed before its rename
        remove_partial_files(folder)
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    current = recipe_document(recipe)
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        raise UsageError(
            f"--resume: the recipe differs from the one {run_dir} started with (changed: {', '.join(changed)}); start a new run instead"
        )
    return run_dir


def run_recipe(
    path: str | Path,
    overrides: tuple[str, ...] = (),
    runs_dir: str | Path = "runs",
    resume: str | None = None,
    progress: bool = True,
    run_dir: str | Path | None = None,
) -> RunResult | None:
    """Run a recipe: every step, then evaluation. Returns None in DDP worker processes.

    ``run_dir`` names the run folder instead of a new timestamped one under
    ``runs_dir``: a new run starts there, or the run already there continues (its
    recipe must match). Every machine of a multi-node job is given the same one.
    """
    recipe, registry = load_recipe_file(path, overrides)
    sources = build_sources(recipe, registry)
    runs_dir = Path(runs_dir)
    if is_worker_process() and os.environ.get(RUN_DIR_ENV):
        run_dir = Path(os.environ[RUN_DIR_ENV])  # DDP worker: the folder rank 0 made
    elif run_dir is not None:
        run_dir = Path(run_dir)
        if not is_worker_process() and (run_dir / "recipe.yaml").is_file():
            run_dir = resolve_resume(recipe, runs_dir, str(run_dir))  # same recipe, or an error
    elif resume:
        run_dir = resolve_resume(recipe, runs_dir, resume)
        log.info("resuming %s", run_dir)
    else:
        run_dir = _new_run_dir(runs_dir, recipe.name)
    if not is_worker_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe_document(recipe), sort_keys=False))
        if not (run_dir / "manifest.json").exists():
            atomic_write_json(run_dir / "manifest.json", manifest(recipe, sources))
            write_run_data(run_dir, sources)  # splits/<alias>.csv (pinnable) and skipped/<alias>.csv
        os.environ[RUN_DIR_ENV] = str(run_dir.resolve())
        log.info("run folder: %s", run_dir)

    timings = {}
    try:
        for step in recipe.steps:
            step_dir = run_dir / "steps" / step.name
            if step_is_done(step_dir):
                log.info("step %s: already done, skipped", step.name)
                continue
            init = run_dir / "steps" / step.init_from if step.init_from else None
            log.info(
                "step %s: %s on %s (%s), %d epoch(s)",
                step.name,
                step.objective.name,
                step.data,
                step.split,
                step.epochs,
            )
            started = time.perf_counter()
            train_step(step, sources[step.data], step_dir, registry, init_from=init, progress=progress)
            timings[step.name] = round(time.perf_counter() - started, 1)
    finally:
        if not is_worker_process():
            os.environ.pop(RUN_DIR_ENV, None)
    if is_worker_process():
        return None
    result = RunResult(run_dir)
    if recipe.evaluation is not None:
        result = evaluate_run(run_dir, recipe, registry, sources)
    if timings:
        atomic_write_json(run_dir / "timings.json", {"steps_seconds": timings})
    return result


def load_run(run_dir: Path) -> tuple[Recipe, Registry]:
    """The resolved recipe a run was made with."""
    path = run_dir / "recipe.yaml"
    if not path.is_file():
        raise UsageError(f"{run_dir}: not a run folder (no recipe.yaml)")
    registry = get_registry()
    try:
        return validate(yaml.safe_load(path.read_text()), registry, source=str(path)), registry
    except RecipeError as exc:
        raise UsageError(f"{run_dir}: its recipe no longer validates (a plugin missing?):\n{exc}") from None


def evaluate_run(
    run_dir: Path,
    recipe: Recipe | None = None,
    registry: Registry | None = None,
    sources: dict[str, ImageSource] | None = None,
) -> RunResult:
    """Probe the run's backbone and the reference rows; write results and the model export."""
    if recipe is None or registry is None:
        recipe, registry = load_run(run_dir)
    settings = recipe.evaluation
    if settings is None:
        raise UsageError(f"recipe {recipe.name!r} has no evaluation section")
    if sources is None:
        sources = build_sources(recipe, registry, only={settings.data})
    step = recipe.probed_step()
    step_dir = run_dir / "steps" / step.name
    if not step_is_done(step_dir):
        raise UsageError(f"{run_dir}: step {step.name!r} has not finished (resume the run first)")
    source = sources[settings.data]
    splits = {
        "train": LabelledSplit(source, source.records(settings.train_split)),
        "test": LabelledSplit(source, source.records(settings.test_split)),
    }
    if "val" in source.splits and settings.train_split != "val" and settings.test_split != "val":
        splits["val"] = LabelledSplit(source, source.records("val"))
    labels = {name: split.labels for name, split in splits.items()}
    size, channels, batch = step.image_size, step.in_channels, settings.batch_size

    def build_backbone() -> Any:
        L.seed_everything(settings.seed, verbose=False)
        return registry.build("backbone", step.backbone.spec(), in_channels=channels)

    rows: list[dict[str, Any]] = []
    pretrained = build_backbone()
    load_backbone_weights(step_dir, pretrained, expect=backbone_identity(step))
    log.info("evaluation: probing step %s on %s", step.name, settings.data)
    models = {f"sslmed:{step.name}": pretrained}
    if "random_init" in settings.baselines:
        models["random_init"] = build_backbone()
    if "raw_pixels" in settings.baselines:
        models["raw_pixels"] = RAW_PIXELS
    per_split = {k: extract_features(models, s, size, channels, batch) for k, s in splits.items()}
    feature_sets = {
        name: FeatureSet(
            name,
            per_split["train"][name],
            per_split["test"][name],
            per_split["val"][name] if "val" in per_split else None,
        )
        for name in models
    }
    for feature_set in feature_sets.values():
        rows += probe_rows(feature_set, labels, source.classes, settings)
    features = feature_sets[f"sslmed:{step.name}"]
    if "supervised" in settings.baselines and source.task == "multilabel":
        log.warning("evaluation: the supervised reference is not available for multi-label data yet; skipped")
    elif "supervised" in settings.baselines:
        log.info("evaluation: training the supervised reference")
        for fraction in settings.label_fractions:
            proba = supervised_proba(
                build_backbone(),
                splits["train"],
                splits["test"],
                len(source.classes),
                size,
                channels,
                settings.supervised,
                settings.seed,
                fraction,
            )
            rows.append(
                {
                    "model": "supervised",
                    "probe": "end-to-end",
                    "label_fraction": fraction,
                    "train_images": int(len(splits["train"].records) * fraction),
                    **metrics(labels["test"], proba, source.classes),
                    "test_predictions": predictions(labels["test"], proba),
                }
            )

    if "linear" in features.probes:
        extras = read_backbone_meta(step_dir).get("extras", {})
        export_classifier(
            run_dir / "model",
            pretrained,
            features.probes["linear"],
            {
                "extras": extras,
                "recipe": recipe.name,
                "step": step.name,
                "backbone": step.backbone.spec(),
                "in_channels": channels,
                "image_size": size,
                "classes": source.classes,
                "data": settings.data,
                "metrics": {
                    k: v
                    for k, v in next(
                        r
                        for r in rows
                        if r["model"] == features.model and r["probe"] == "linear" and r["label_fraction"] == 1.0
                    ).items()
                    if k != "test_predictions"
                },
            },
            extra_tensors={name: load_tensors(step_dir / f"{name}.safetensors") for name in extras},
        )
    return write_results(run_dir, recipe, rows, source.classes)


def results_table(rows: list[dict[str, Any]], classes: list[str]) -> str:
    """A Markdown table: one row per model, probe and label fraction."""
    per = "auc" if rows and "auc" in rows[0] else "recall"  # multi-label rows: AUC per finding
    head = ["model", "probe", "labels", "accuracy", "bal. accuracy", "macro AUC"] + [f"{per} {c}" for c in classes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [
            row["model"],
            row["probe"],
            f"{row['label_fraction']:.0%}",
            f"{row['accuracy']:.3f}",
            f"{row['balanced_accuracy']:.3f}",
            "n/a" if np.isnan(row["macro_auc"]) else f"{row['macro_auc']:.3f}",
        ] + [f"{row[per][c]:.3f}" for c in classes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(run_dir: Path, recipe: Recipe, rows: list[dict[str, Any]], classes: list[str]) -> RunResult:
    """``results.json`` (everything), ``results.csv`` (flat) and ``results.md`` (the table)."""
    atomic_write_json(run_dir / "results.json", {"recipe": recipe.name, "classes": classes, "rows": rows})
    buffer = io.StringIO()
    fields = ["model", "probe", "label_fraction", "train_images", "accuracy", "balanced_accuracy", "macro_auc"] + [
        f"recall_{c}" for c in classes
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **{f"recall_{c}": row["recall"][c] for c in classes}})
    atomic_write_text(run_dir / "results.csv", buffer.getvalue())
    table = results_table(rows, classes)
    evaluation = recipe.evaluation
    title = f"# {recipe.name}: probe on {evaluation.data if evaluation else '?'} ({evaluation.test_split if evaluation else ''} split)\n\n"
    atomic_write_text(run_dir / "results.md", title + table + "\n")
    return RunResult(run_dir, rows, table)
