"""A run's evaluation, end to end: probe (:func:`sslmed.evaluation.evaluate`), export the
classifier (:mod:`sslmed.serving.export`) and write ``results.{json,csv,md}``.

``sslmed run`` calls :func:`evaluate_run` once after its last step; ``sslmed eval RUN``
calls it on a finished run folder.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslmed.app.prepare import build_sources, load_run_recipe
from sslmed.artifacts.exports import load_tensors, read_backbone_meta
from sslmed.artifacts.rundir import RELIABILITY, RunDir
from sslmed.core.errors import UsageError
from sslmed.core.files import atomic_write_json, atomic_write_text
from sslmed.core.recipe import Recipe
from sslmed.core.registry import Registry
from sslmed.data.roots import resolve_data_root
from sslmed.data.sources import ImageSource
from sslmed.evaluation.calibration import reliability_figure
from sslmed.evaluation.comparisons import gain_lines
from sslmed.evaluation.evaluate import Evaluation, evaluate
from sslmed.serving.detection import measure_and_record
from sslmed.serving.export import export_classifier

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """A finished run: its folder and its results rows."""

    run_dir: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    table: str = ""


def evaluate_run(
    run_dir: str | Path | RunDir,
    recipe: Recipe | None = None,
    registry: Registry | None = None,
    sources: dict[str, ImageSource] | None = None,
) -> RunResult:
    """Probe the run's backbone and the reference rows; write results and the model export.

    Without ``recipe`` the run's own ``recipe.yaml`` is loaded; without ``sources`` the
    evaluation data is built from it.
    """
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    if recipe is None or registry is None:
        recipe, registry = load_run_recipe(run)
    settings = recipe.evaluation
    if settings is None:
        raise UsageError(f"recipe {recipe.name!r} has no evaluation section")
    if sources is None:
        sources = build_sources(recipe, registry, only={settings.data})
    step = recipe.probed_step()
    step_dir = run.step(step.name)
    if not step_dir.is_done():
        raise UsageError(f"{run.path}: step {step.name!r} has not finished (resume the run first)")
    found = evaluate(recipe, registry, step_dir, sources[settings.data])
    if found.trust is not None and found.trust.calibration is not None:
        title = f"{recipe.name}: linear probe on {settings.data} ({settings.test_split} split)"
        reliability_figure(found.trust.calibration, run.reliability_figure, title)
    if found.linear is not None:
        export_model(run, recipe, found)
    trust = found.trust.results() if found.trust is not None else None
    return write_results(run, recipe, found.rows, found.classes, trust)


def export_model(run: RunDir, recipe: Recipe, found: Evaluation) -> None:
    """``model/``: the probed backbone with its linear probe as the head (or, with
    ``export: fine-tuned``, the fine-tuned network), and its metrics row."""
    settings, step = recipe.evaluation, recipe.probed_step()
    assert settings is not None
    step_dir = run.step(step.name)
    extras = read_backbone_meta(step_dir.path).get("extras", {})
    row = next(
        r for r in found.rows if r["model"] == found.model and r["probe"] == found.probe and r["label_fraction"] == 1.0
    )
    export_classifier(
        run.model_dir,
        found.backbone,
        found.linear,
        {
            "extras": extras,
            "recipe": recipe.name,
            "step": step.name,
            "backbone": step.backbone.spec(),
            "in_channels": step.in_channels,
            "image_size": step.image_size,
            "classes": found.classes,
            "data": settings.data,
            "metrics": {k: v for k, v in row.items() if k != "test_predictions"},
        },
        extra_tensors={name: load_tensors(step_dir.extra_weights(name)) for name in extras},
        task=found.task,
        trust=found.trust,
    )
    if found.trust is not None:  # how well its OOD check works, measured on the export itself
        measured = measure_and_record(run.model_dir, found.trust.test_flags(), resolve_data_root(recipe.data_root))
        if measured is None:
            log.info("model export: no not_cxr images in the data root; its OOD check is not measured")


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


def class_weight_line(rows: list[dict[str, Any]]) -> str:
    """What the rows' class weighting was, as a sentence ('' when no row records one):
    e.g. ``Class weights: balanced (linear, fine-tune); none (knn).``"""
    by_weight: dict[str, list[str]] = {}
    for row in rows:
        weight = row.get("class_weight")
        if weight is not None and row["probe"] not in by_weight.setdefault(weight, []):
            by_weight[weight].append(row["probe"])
    if not by_weight:
        return ""
    parts = [f"{weight} ({', '.join(probes)})" for weight, probes in by_weight.items()]
    return (
        "Class weights: " + "; ".join(parts) + " (balanced: each class in inverse proportion to its "
        "training images; kNN is never weighted; set by evaluation.class_weight)."
    )


def trust_markdown(trust: dict[str, Any] | None, split: str = "test") -> str:
    """The calibration and OOD lines under the results table ('' without them);
    ``split`` is the split the evaluation scores (``evaluation.test_split``)."""
    if not trust:
        return ""
    lines = [""]
    cal = trust.get("calibration")
    if cal:
        lines.append(
            f"Calibration of the exported model: temperature {cal['temperature']:.3f} fitted on "
            f"{cal['fitted_on']} ({cal['fitted_images']} images); on the {split} split ({cal['test_images']} images) "
            f"ECE {cal['ece_before']:.3f} -> {cal['ece_after']:.3f}, Brier {cal['brier_before']:.3f} -> "
            f"{cal['brier_after']:.3f} ({cal['bins']} bins; reliability diagram: {RELIABILITY})."
        )
    ood = trust.get("ood")
    if ood:
        lines.append(
            f"Out-of-distribution threshold {ood['threshold']:.3f} "
            f"({ood['quantile']:.0%} quantile of {ood['fitted_on']}); "
            f"{split} images flagged: {ood['test_flagged']:.1%} of {ood['test_images']}."
        )
    return "\n".join(lines) + "\n"


def write_results(
    run_dir: str | Path | RunDir,
    recipe: Recipe,
    rows: list[dict[str, Any]],
    classes: list[str],
    trust: dict[str, Any] | None = None,
) -> RunResult:
    """``results.json`` (everything), ``results.csv`` (flat) and ``results.md`` (the table);
    ``trust`` (calibration and OOD score of the exported probe) goes into the JSON and
    under the table."""
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    evaluation = recipe.evaluation
    weighting = {"class_weight": evaluation.class_weight} if evaluation else {}
    atomic_write_json(
        run.results_json, {"recipe": recipe.name, "classes": classes, **weighting, "rows": rows, **(trust or {})}
    )
    buffer = io.StringIO()
    fields = ["model", "probe", "label_fraction", "train_images", "accuracy", "balanced_accuracy", "macro_auc"] + [
        f"recall_{c}" for c in classes
    ]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **{f"recall_{c}": row["recall"][c] for c in classes}})
    atomic_write_text(run.results_csv, buffer.getvalue())
    table = results_table(rows, classes)
    gains = gain_lines(rows, samples=500)  # what pre-training bought, with its interval, under the table
    if gains:
        table += "\n\n" + "\n".join(gains)
    weights = class_weight_line(rows)
    if weights:
        table += "\n\n" + weights
    where = f"{evaluation.data} ({evaluation.test_split} split)" if evaluation else "? ( split)"
    title = f"# {recipe.name}: probe on {where}\n\n"
    split = evaluation.test_split if evaluation else "test"
    atomic_write_text(run.results_md, title + table + "\n" + trust_markdown(trust, split))
    return RunResult(run.path, rows, table)
