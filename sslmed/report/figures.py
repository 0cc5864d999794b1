"""Figures of a report (PNG, matplotlib): loss curves, augmentations and reconstructions
on real test images, confusion matrices, label-fraction curves. Each returns whether
it drew anything (a figure whose inputs are absent is left out of the report)."""

from __future__ import annotations

import csv
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sslmed.artifacts.exports import load_backbone_weights, load_tensors, read_backbone_meta
from sslmed.artifacts.rundir import RunDir
from sslmed.core.plugins import get_registry
from sslmed.report.labels import BASELINE_NAMES, Labels
from sslmed.report.runs import Run
from sslmed.report.stats import Entry
from sslmed.training.transforms import MEAN, STD, eval_transform, image_mode

log = logging.getLogger(__name__)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_").lower()


def read_losses(run: Run) -> dict[str, list[tuple[int, float]]]:
    """``term -> [(step, value)]`` over all steps of a run, steps placed one after another."""
    out: dict[str, list[tuple[int, float]]] = {}
    offset = 0
    for step in run.recipe.get("steps", []):
        file = RunDir(run.path).step(step["name"]).metrics_csv
        if not file.is_file():
            continue
        with open(file, newline="") as handle:
            rows = list(csv.DictReader(handle))
        last = offset
        for row in rows:
            for key, value in row.items():
                match = re.fullmatch(r"train/(\w+?)_step", key or "")
                if match and value not in (None, ""):
                    position = offset + int(row.get("step") or 0)
                    out.setdefault(match.group(1), []).append((position, float(value)))
                    last = max(last, position)
        offset = last + 1
    return out


def loss_figure(runs: list[Run], path: Path, labels: Labels | None = None) -> bool:
    """Total loss of every run, and each further logged loss term, against the optimiser step."""
    labels = labels or Labels()
    curves = [(f"{labels.method(r.name)} → {r.target}", read_losses(r)) for r in runs]
    curves = [(label, c) for label, c in curves if c.get("loss")]
    if not curves:
        return False
    plt = _pyplot()
    terms = ["loss"] + sorted({term for _, c in curves for term in c if term != "loss"})
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, len(terms), figsize=(5.4 * len(terms), 4.5), squeeze=False)
    axes = axes[0]
    for axis, term in zip(axes, terms, strict=False):
        for index, (label, c) in enumerate(curves):  # one colour per run in every panel
            if c.get(term):
                steps, values = zip(*c[term], strict=False)
                axis.plot(steps, values, label=label, linewidth=1, color=colours(index % 20))
        axis.set_title("training loss (total)" if term == "loss" else f"loss term: {term}")
        axis.set_xlabel("optimiser step (steps of a multi-step run in sequence)")
        axis.grid(alpha=0.3)
    for axis in axes:
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _to_image(tensor: Any) -> np.ndarray:

    array = (tensor.detach().float().cpu().numpy() * STD + MEAN).clip(0, 1)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _test_images(run: Run, count: int, size: int, in_channels: int) -> list[Any]:
    """``count`` real test images of the run's target set as normalised tensors."""

    evaluation = run.recipe.get("evaluation") or {}
    spec = (run.recipe.get("data") or {}).get(evaluation.get("data"))
    if spec is None:
        return []
    source = get_registry().build("dataset", spec, data_root=Path(run.recipe.get("data_root") or "."))
    records = source.records(evaluation.get("test_split", "test"))
    chosen = [records[i] for i in np.linspace(0, len(records) - 1, count).astype(int)]
    transform = eval_transform(size, in_channels)
    return [transform(source.read(r.ref, image_mode(in_channels))) for r in chosen]


def _always(registry: Any, spec: dict[str, Any]) -> Any:
    """The augmentation of ``spec`` applied every time (``p: 1``) and, where it takes a
    seed, reproducibly, so the figure shows what it does."""
    fields = registry.get("augmentation", spec["name"]).args.model_fields
    fixed = {k: v for k, v in (("p", 1.0), ("seed", 0)) if k in fields}
    return registry.build("augmentation", {**spec, **fixed})


def _tensor_augmentations(runs: list[Run], registry: Any, extra: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The tensor-stage augmentation specs the runs used (first of each name), then ``extra`` ones."""
    found: dict[str, dict[str, Any]] = {}
    for run in runs:
        for step in run.recipe.get("steps", []):
            for spec in step.get("augmentations", []):
                name = spec.get("name")
                if name in registry.names("augmentation") and name not in found:
                    if registry.get("augmentation", name).metadata.get("stage") == "tensor":
                        found[name] = dict(spec)
    for name in extra:
        found.setdefault(name, {"name": name})
    return list(found.values())


def erasing_figure(runs: list[Run], path: Path, size: int = 128, labels: Labels | None = None) -> bool:
    """Real test images: the original, then two draws of each tensor-stage augmentation
    the runs used (and those ``labels.figure_augmentations`` names)."""
    import torch

    registry = get_registry()
    specs = _tensor_augmentations(runs, registry, (labels or Labels()).figure_augmentations)
    if not specs:
        return False
    images = []
    for run in runs:
        try:
            images = _test_images(run, 4, size, 1)
        except Exception as exc:  # data moved or missing: the figure is optional
            log.warning("report: no real images for the erasing figure from %s (%s)", run.path, exc)
        if images:
            break
    if not images:
        return False
    augmentations = [(spec["name"], _always(registry, spec)) for spec in specs]
    torch.manual_seed(0)
    columns = ["original"] + [name for name, _ in augmentations for _ in range(2)]
    plt = _pyplot()
    fig, axes = plt.subplots(len(images), len(columns), figsize=(2.2 * len(columns), 2.2 * len(images)), squeeze=False)
    for row, image in enumerate(images):
        shown = [image] + [augment(image) for _, augment in augmentations for _ in range(2)]
        for col, tensor in enumerate(shown):
            axis = axes[row][col]
            axis.imshow(_to_image(tensor), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[col], fontsize=9)
    fig.suptitle("tensor-stage augmentations on test images (two draws each, p=1)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def reconstruction_figure(run: Run, path: Path, count: int = 4, labels: Labels | None = None) -> bool:
    """For a run whose last step exported a decoder: input, erased view, reconstruction."""
    import torch

    registry = get_registry()
    steps = run.recipe.get("steps", [])
    for step in reversed(steps):
        directory = RunDir(run.path).step(step["name"]).path
        if not (directory / "backbone.json").is_file():
            continue
        extras = read_backbone_meta(directory).get("extras", {})
        if "decoder" not in extras:
            continue
        description = extras["decoder"]
        channels = int(step.get("in_channels", 1))
        backbone = registry.build("backbone", step["backbone"], in_channels=channels)
        load_backbone_weights(directory, backbone)
        decoder = registry.build(
            "decoder",
            description["spec"],
            backbone=backbone,
            image_size=description["image_size"],
            out_channels=description["out_channels"],
        )
        decoder.load_state_dict(load_tensors(directory / "decoder.safetensors"))
        backbone.eval(), decoder.eval()
        images = _test_images(run, count, int(description["image_size"]), channels)
        if not images:
            return False
        erasers = [
            _always(registry, spec)
            for spec in step.get("augmentations", [])
            if registry.get("augmentation", spec["name"]).metadata.get("stage") == "tensor"
        ]
        plt = _pyplot()
        fig, axes = plt.subplots(len(images), 3, figsize=(6.6, 2.2 * len(images)))
        with torch.no_grad():
            for row, image in enumerate(images):
                erased = image
                for eraser in erasers:
                    erased = eraser(erased)
                rebuilt = decoder(backbone.forward_features(erased.unsqueeze(0)))[0]
                for col, (tensor, title) in enumerate(
                    ((image, "input"), (erased, "erased view"), (rebuilt, "reconstruction"))
                ):
                    axis = axes[row][col]
                    axis.imshow(_to_image(tensor), cmap="gray", vmin=0, vmax=1)
                    axis.set_xticks([]), axis.set_yticks([])
                    if row == 0:
                        axis.set_title(title, fontsize=9)
        title = f"{(labels or Labels()).method(run.name)} ({step['name']}) on {run.target} test images"
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return True
    return False


def confusion_figure(entries: list[Entry], classes: list[str], path: Path) -> bool:
    """Confusion matrices (rows: truth; colour: fraction of the row) of each method's first run."""
    shown = [
        (e.label, np.array(e.rows[0]["confusion_matrix"]))
        for e in entries
        if e.rows and e.rows[0].get("confusion_matrix")
    ]
    if not shown:
        return False
    plt = _pyplot()
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.2 * rows), squeeze=False)
    for axis in axes.flat[len(shown) :]:
        axis.axis("off")
    for axis, (label, matrix) in zip(axes.flat, shown, strict=False):
        fractions = matrix / np.maximum(1, matrix.sum(axis=1, keepdims=True))
        axis.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                axis.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if fractions[i, j] > 0.6 else "black",
                )
        axis.set_xticks(range(len(classes)), classes, rotation=30, fontsize=7)
        axis.set_yticks(range(len(classes)), classes, fontsize=7)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("predicted", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def fraction_figure(runs: list[Run], path: Path, probe: str = "linear", labels: Labels | None = None) -> bool:
    """Balanced accuracy against the fraction of training labels, when several were run."""
    series: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        for row in run.results.get("rows", []):
            model = str(row["model"])
            if model.startswith("sslmed:") and row["probe"] == probe:
                label = (labels or Labels()).method(run.name)
            elif model == "supervised":
                label = BASELINE_NAMES["supervised"]
            elif model == "random_init" and row["probe"] == probe:
                label = BASELINE_NAMES["random_init"]
            else:
                continue
            series.setdefault(label, {}).setdefault(float(row["label_fraction"]), []).append(
                float(row["balanced_accuracy"])
            )
    if not any(len(points) > 1 for points in series.values()):
        return False
    plt = _pyplot()
    fig, axis = plt.subplots(figsize=(6.5, 4.2))
    for label, points in series.items():
        if len(points) < 2:
            continue
        xs = sorted(points)
        axis.plot([x * 100 for x in xs], [float(np.mean(points[x])) for x in xs], marker="o", label=label)
    axis.set_xscale("log")
    axis.set_xlabel("labelled training images used (%)")
    axis.set_ylabel("balanced accuracy (test)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
