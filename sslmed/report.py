"""Runs -> one comparison report: tables with 95% confidence intervals, and figures.

``build_report(run_dirs, out)`` reads finished run folders (``results.json``,
``recipe.yaml``, ``manifest.json``, ``timings.json``, ``steps/<step>/logs/metrics.csv``
and the step exports) and writes ``report.md`` and ``report.html`` with PNG figures
beside them:

* one table per target set: one row per method (random init and supervised references,
  then each recipe's linear probe), with accuracy, balanced accuracy, macro AUC and
  per-class recall, each with a 95% CI: the mean and a t-interval over runs that differ
  only by seed, or, for a single run, a percentile bootstrap over the test images
  (from the per-image predictions each results row keeps);
* training loss curves (both CRSM terms), MDRE next to plain random erasing on real
  images, CRSM reconstructions (input, erased view, reconstruction), confusion
  matrices, and a label-fraction curve when several fractions were run;
* the runs themselves: machine, commit, steps, epochs and wall time.
"""

from __future__ import annotations

import copy
import csv
import html
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sslmed.errors import UsageError
from sslmed.metrics import metric_values
from sslmed.rundir import RESULTS_JSON, RunDir, atomic_write_text

log = logging.getLogger(__name__)

#: display names and order of the thesis's methods (other recipes follow, by name)
METHOD_NAMES = {
    "simclr": "SimCLR",
    "simclr_erasing": "SimCLR + erasing",
    "simclr_mdre": "SimCLR + MDRE",
    "crsm": "CRSM",
    "crsm_multistep": "CRSM multi-step",
    "crsm_transfer": "CRSM transfer",
}
BASELINE_NAMES = {"random_init": "random init", "raw_pixels": "raw pixels", "supervised": "supervised (from scratch)"}


@dataclass
class Run:
    """One finished run folder."""

    path: Path
    recipe: dict[str, Any]
    results: dict[str, Any]
    manifest: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return str(self.recipe.get("name") or self.results.get("recipe") or self.path.parent.name)

    @property
    def target(self) -> str:
        return str((self.recipe.get("evaluation") or {}).get("data", "?"))

    @property
    def classes(self) -> list[str]:
        return list(self.results.get("classes", []))

    def identity(self) -> str:
        """The recipe without its seeds: runs with equal identities differ only by seed."""
        doc = copy.deepcopy(self.recipe)
        for step in doc.get("steps", []):
            step.pop("seed", None)
        if doc.get("evaluation"):
            doc["evaluation"].pop("seed", None)
        return json.dumps(doc, sort_keys=True, default=str)

    def seed(self) -> tuple[Any, ...]:
        return tuple(s.get("seed") for s in self.recipe.get("steps", [])) + (
            (self.recipe.get("evaluation") or {}).get("seed"),
        )


def find_runs(paths: Iterable[str | Path]) -> list[Path]:
    """Run folders: each path itself if it has ``results.json``, else any below it."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"{path}: no such folder")
        if RunDir(path).has_results():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob(RESULTS_JSON) if RunDir(p.parent).is_run())
        if not below:
            raise UsageError(
                f"{path}: not a run folder and no run folder below it (no results.json; did the run's evaluation finish?)"
            )
        found += below
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique


def load_run(path: Path) -> Run:
    """Read what the report needs from a run folder (plain documents: a run is reported
    even when a plugin it used is no longer installed)."""
    run = RunDir(path)
    return Run(path, run.read_recipe_document(), run.read_results(), run.read_manifest(), run.read_timings())


# ------------------------------------------------------------------- statistics


def bootstrap_ci(
    y_true: Sequence[int], proba: Sequence[Sequence[float]], n_classes: int, samples: int = 1000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """``metric -> (value, low, high)``: the value on the test set and a 95% percentile
    bootstrap interval from resampling the test images."""
    truth, scores = np.asarray(y_true, dtype=int), np.asarray(proba, dtype=float)
    point = metric_values(truth, scores, n_classes)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in point}
    for _ in range(samples):
        index = rng.integers(0, len(truth), len(truth))
        for key, value in metric_values(truth[index], scores[index], n_classes).items():
            draws[key].append(value)
    out = {}
    for key, value in point.items():
        values = np.array([v for v in draws[key] if not math.isnan(v)])
        low, high = np.percentile(values, [2.5, 97.5]) if len(values) else (float("nan"), float("nan"))
        out[key] = (value, float(low), float(high))
    return out


def seed_ci(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and a 95% t-interval over runs that differ only by seed."""
    from scipy.stats import t

    data = np.array([v for v in values if not math.isnan(v)], dtype=float)
    if len(data) == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(data.mean())
    if len(data) == 1:
        return mean, float("nan"), float("nan")
    half = float(t.ppf(0.975, len(data) - 1) * data.std(ddof=1) / math.sqrt(len(data)))
    return mean, mean - half, mean + half


def _row_values(row: dict[str, Any], classes: list[str]) -> dict[str, float]:
    out = {"accuracy": row["accuracy"], "balanced_accuracy": row["balanced_accuracy"], "macro_auc": row["macro_auc"]}
    for index, name in enumerate(classes):
        out[f"recall:{index}"] = (row.get("recall") or {}).get(name, float("nan"))
    return {k: float("nan") if v is None else float(v) for k, v in out.items()}


def summarise(
    rows: list[dict[str, Any]], classes: list[str], samples: int
) -> tuple[dict[str, tuple[float, float, float]], str]:
    """One table entry from the rows of one method (one per seed): values with CIs, and how."""
    if len(rows) > 1:
        per_run = [_row_values(r, classes) for r in rows]
        return {k: seed_ci([v[k] for v in per_run]) for k in per_run[0]}, f"mean over {len(rows)} seeds, t-interval"
    row = rows[0]
    predictions = row.get("test_predictions")
    if predictions and samples > 0:
        return bootstrap_ci(
            predictions["y_true"], predictions["proba"], len(classes), samples
        ), f"bootstrap over {len(predictions['y_true'])} test images"
    return {
        k: (v, float("nan"), float("nan")) for k, v in _row_values(row, classes).items()
    }, "no CI (no per-image predictions)"


def _cell(value: tuple[float, float, float]) -> str:
    point, low, high = value
    if math.isnan(point):
        return "n/a"
    if math.isnan(low):
        return f"{point:.3f}"
    return f"{point:.3f} [{low:.3f}, {high:.3f}]"


# ----------------------------------------------------------------------- tables


@dataclass
class Entry:
    """One table row: a method on one target set, from one or more runs."""

    label: str
    rows: list[dict[str, Any]]
    runs: list[Run]
    values: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    how: str = ""


def _order(name: str) -> tuple[int, str]:
    names = list(METHOD_NAMES)
    return (names.index(name) if name in names else len(names), name)


def _pick(rows: list[dict[str, Any]], model: str | None, probe: str, fraction: float = 1.0) -> dict[str, Any] | None:
    for row in rows:
        if (
            (model is None or row["model"] == model or (model == "sslmed" and str(row["model"]).startswith("sslmed:")))
            and row["probe"] == probe
            and abs(float(row["label_fraction"]) - fraction) < 1e-9
        ):
            return row
    return None


def entries_for_target(
    runs: list[Run], probe: str = "linear", fraction: float = 1.0, samples: int = 1000
) -> list[Entry]:
    """The rows of one target's table: references first, then the methods in order."""
    classes = runs[0].classes
    entries: list[Entry] = []
    for baseline, title in BASELINE_NAMES.items():
        chosen: dict[Any, tuple[dict[str, Any], Run]] = {}
        for run in runs:
            row = _pick(
                run.results.get("rows", []), baseline, "end-to-end" if baseline == "supervised" else probe, fraction
            )
            if row is not None and run.seed() not in chosen:
                chosen[run.seed()] = (row, run)
        if chosen:
            entries.append(Entry(title, [r for r, _ in chosen.values()], [run for _, run in chosen.values()]))
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.identity(), []).append(run)
    labelled: list[tuple[tuple[int, str], Entry]] = []
    seen_labels: dict[str, int] = {}
    for group in groups.values():
        name = group[0].name
        label = METHOD_NAMES.get(name, name)
        seen_labels[label] = seen_labels.get(label, 0) + 1
        if seen_labels[label] > 1:
            label = f"{label} ({group[0].path.name})"
        rows = [
            r for r in (_pick(run.results.get("rows", []), "sslmed", probe, fraction) for run in group) if r is not None
        ]
        if rows:
            labelled.append((_order(name), Entry(label, rows, group)))
    entries += [e for _, e in sorted(labelled, key=lambda item: item[0])]
    for entry in entries:
        entry.values, entry.how = summarise(entry.rows, classes, samples)
    return entries


CLAIMS = [
    ("SimCLR + MDRE", "SimCLR + erasing", "MDRE beats classic random erasing"),
    ("SimCLR + erasing", "SimCLR", "random erasing beats no erasing"),
    ("CRSM", "SimCLR", "CRSM beats SimCLR"),
    ("CRSM multi-step", "CRSM", "multi-step pre-training beats a single step"),
    ("CRSM transfer", "random init", "transfer works: pre-training on other data beats random init"),
]


def claim_lines(entries: list[Entry], metric: str = "balanced_accuracy") -> list[str]:
    """The thesis's claims, checked on one target's table: held (better, intervals apart),
    direction only (better, intervals overlap) or not held."""
    by_label = {e.label: e.values.get(metric) for e in entries}
    lines = []
    for better, worse, claim in CLAIMS:
        a, b = by_label.get(better), by_label.get(worse)
        if not a or not b or math.isnan(a[0]) or math.isnan(b[0]):
            continue
        if a[0] > b[0] and not math.isnan(a[1]) and not math.isnan(b[2]) and a[1] > b[2]:
            verdict = "held (the 95% intervals do not overlap)"
        elif a[0] > b[0]:
            verdict = "direction only: higher, but the 95% intervals overlap"
        else:
            verdict = "did NOT hold"
        lines.append(f"- {claim}: {better} {a[0]:.3f} vs {worse} {b[0]:.3f} ({metric.replace('_', ' ')}): {verdict}.")
    return lines


def markdown_table(entries: list[Entry], classes: list[str]) -> str:
    head = ["method", "accuracy", "balanced accuracy", "macro AUC"] + [f"recall {c}" for c in classes] + ["CI"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for entry in entries:
        cells = [entry.label] + [_cell(entry.values[k]) for k in ("accuracy", "balanced_accuracy", "macro_auc")]
        cells += [_cell(entry.values.get(f"recall:{i}", (float("nan"),) * 3)) for i in range(len(classes))]
        lines.append("| " + " | ".join(cells + [entry.how]) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------- figures


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
        file = run.path / "steps" / step["name"] / "logs" / "metrics.csv"
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


def loss_figure(runs: list[Run], path: Path) -> bool:
    """Total loss of every run, and CRSM's two terms, against the optimiser step."""
    curves = [(f"{METHOD_NAMES.get(r.name, r.name)} → {r.target}", read_losses(r)) for r in runs]
    curves = [(label, c) for label, c in curves if c.get("loss")]
    if not curves:
        return False
    plt = _pyplot()
    terms = ["loss", "contrastive", "reconstruction"]
    colours = plt.get_cmap("tab20")
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for axis, term in zip(axes, terms, strict=False):
        for index, (label, c) in enumerate(curves):  # one colour per run in every panel
            if c.get(term):
                steps, values = zip(*c[term], strict=False)
                axis.plot(steps, values, label=label, linewidth=1, color=colours(index % 20))
        axis.set_title(
            {
                "loss": "training loss (total)",
                "contrastive": "CRSM: NT-Xent term",
                "reconstruction": "CRSM: reconstruction term",
            }[term]
        )
        axis.set_xlabel("optimiser step (steps of a multi-step run in sequence)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    if any(c.get("reconstruction") for _, c in curves):
        axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _to_image(tensor: Any) -> np.ndarray:
    from sslmed.transforms import MEAN, STD

    array = (tensor.detach().float().cpu().numpy() * STD + MEAN).clip(0, 1)
    return array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0)


def _test_images(run: Run, count: int, size: int, in_channels: int) -> list[Any]:
    """``count`` real test images of the run's target set as normalised tensors."""
    from sslmed.plugins import get_registry
    from sslmed.transforms import eval_transform, image_mode

    evaluation = run.recipe.get("evaluation") or {}
    spec = (run.recipe.get("data") or {}).get(evaluation.get("data"))
    if spec is None:
        return []
    source = get_registry().build("dataset", spec, data_root=Path(run.recipe.get("data_root") or "."))
    records = source.records(evaluation.get("test_split", "test"))
    chosen = [records[i] for i in np.linspace(0, len(records) - 1, count).astype(int)]
    transform = eval_transform(size, in_channels)
    return [transform(source.read(r.ref, image_mode(in_channels))) for r in chosen]


def _augmentation_spec(runs: list[Run], name: str) -> dict[str, Any]:
    for run in runs:
        for step in run.recipe.get("steps", []):
            for spec in step.get("augmentations", []):
                if spec.get("name") == name:
                    return dict(spec)
    return {"name": name}


def erasing_figure(runs: list[Run], path: Path, size: int = 128) -> bool:
    """Real test images: original, two MDRE draws, two random-erasing draws."""
    import torch

    from sslmed.plugins import get_registry

    registry = get_registry()
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
    mdre = registry.build("augmentation", {**_augmentation_spec(runs, "mdre"), "p": 1.0, "seed": 0})
    erasing = registry.build("augmentation", {**_augmentation_spec(runs, "random_erasing"), "p": 1.0})
    torch.manual_seed(0)
    columns = ["original", "MDRE", "MDRE", "random erasing", "random erasing"]
    plt = _pyplot()
    fig, axes = plt.subplots(len(images), len(columns), figsize=(2.2 * len(columns), 2.2 * len(images)))
    for row, image in enumerate(images):
        shown = [image, mdre(image), mdre(image), erasing(image), erasing(image)]
        for col, tensor in enumerate(shown):
            axis = axes[row][col]
            axis.imshow(_to_image(tensor), cmap="gray", vmin=0, vmax=1)
            axis.set_xticks([]), axis.set_yticks([])
            if row == 0:
                axis.set_title(columns[col], fontsize=9)
    fig.suptitle("MDRE (several small regions, several directions) vs random erasing (one rectangle), p=1", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def reconstruction_figure(run: Run, path: Path, count: int = 4) -> bool:
    """For a run whose last step exported a decoder: input, erased view, reconstruction."""
    import torch

    from sslmed.checkpoints import load_backbone_weights, load_tensors, read_backbone_meta
    from sslmed.plugins import get_registry

    registry = get_registry()
    steps = run.recipe.get("steps", [])
    for step in reversed(steps):
        directory = run.path / "steps" / step["name"]
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
            registry.build("augmentation", {**spec, "p": 1.0, **({"seed": 0} if spec["name"] == "mdre" else {})})
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
        fig.suptitle(f"{METHOD_NAMES.get(run.name, run.name)} ({step['name']}) on {run.target} test images", fontsize=9)
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


def fraction_figure(runs: list[Run], path: Path, probe: str = "linear") -> bool:
    """Balanced accuracy against the fraction of training labels, when several were run."""
    series: dict[str, dict[float, list[float]]] = {}
    for run in runs:
        for row in run.results.get("rows", []):
            model = str(row["model"])
            if model.startswith("sslmed:") and row["probe"] == probe:
                label = METHOD_NAMES.get(run.name, run.name)
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


# ----------------------------------------------------------------------- report


def runs_table(runs: list[Run]) -> str:
    """Where and how each run was made."""
    lines = [
        "| run | recipe | target | host | commit | steps (epochs, optimiser steps) | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        parts = []
        for step in run.recipe.get("steps", []):
            meta_file = run.path / "steps" / step["name"] / "backbone.json"
            meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
            parts.append(
                f"{step['name']}: {step.get('data')} {step.get('image_size')}px, {meta.get('epochs', '?')} ep / {meta.get('global_step', '?')} st"
            )
        seconds = sum((run.timings.get("steps_seconds") or {}).values()) if run.timings else None
        commit = (run.manifest.get("git_commit") or "?")[:10]
        lines.append(
            f"| {run.path.name} | {run.name} | {run.target} | {run.manifest.get('host', '?')} | {commit} | {'; '.join(parts)} | {seconds if seconds is not None else '?'} |"
        )
    return "\n".join(lines)


def _markdown_to_html(text: str) -> str:
    """The report's own Markdown (headings, tables, images, paragraphs) as HTML."""
    out, table = [], []

    def flush() -> None:
        if table:
            cells = [
                [html.escape(c.strip()) for c in line.strip().strip("|").split("|")]
                for line in table
                if not re.fullmatch(r"\|(---\|)+", line.strip())
            ]
            out.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in cells[0])
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in cells[1:])
                + "</table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        image = re.fullmatch(r"!\[(.*)\]\((.*)\)", line.strip())
        heading = re.match(r"(#+) (.*)", line)
        if image:
            out.append(
                f'<p><img src="{html.escape(image.group(2))}" alt="{html.escape(image.group(1))}" style="max-width:100%"></p>'
            )
        elif heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{html.escape(heading.group(2))}</h{level}>")
        elif line.strip():
            out.append(f"<p>{html.escape(line)}</p>")
    flush()
    style = "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px}"
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>sslmed report</title><style>{style}</style></head><body>\n"
        + "\n".join(out)
        + "\n</body></html>\n"
    )


def build_report(
    run_dirs: Sequence[str | Path],
    out: str | Path,
    samples: int = 1000,
    figures: bool = True,
    title: str = "sslmed comparison report",
    command: str | None = None,
) -> Path:
    """Write ``report.md``, ``report.html`` and the figures for ``run_dirs`` into ``out``."""
    runs = [load_run(p) for p in find_runs(run_dirs)]
    runs = [r for r in runs if r.results.get("rows")]
    if not runs:
        raise UsageError("no run with results to report on (run the recipes' evaluation first)")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    if command:
        lines += [f"Made with: `{command}`", ""]
    lines += [
        f"{len(runs)} run(s). Linear probe on frozen features, all training labels. 95% CIs: mean and "
        "t-interval over runs that differ only by seed, or a percentile bootstrap over the test images "
        f"({samples} resamples) for a single run. Probe settings were chosen on the validation split where the "
        "data has one; the test split is only scored.",
        "",
    ]
    by_target: dict[str, list[Run]] = {}
    for run in runs:
        by_target.setdefault(run.target, []).append(run)
    for target, target_runs in by_target.items():
        classes = target_runs[0].classes
        entries = entries_for_target(target_runs, samples=samples)
        lines += [f"## Target: {target}", "", markdown_table(entries, classes), ""]
        checked = claim_lines(entries)
        if checked:
            lines += ["Claims of the thesis on this target:", ""] + checked + [""]
        if figures:
            name = f"confusion_{_slug(target)}.png"
            if confusion_figure(entries, classes, out / name):
                lines += [
                    "Confusion matrices (rows: true class; numbers: test images).",
                    "",
                    f"![confusion matrices {target}]({name})",
                    "",
                ]
            name = f"label_fractions_{_slug(target)}.png"
            if fraction_figure(target_runs, out / name):
                lines += [
                    "Balanced accuracy against the fraction of labels the probe (or the supervised model) was trained on.",
                    "",
                    f"![label fractions {target}]({name})",
                    "",
                ]
    if figures:
        lines += ["## Figures", ""]
        if loss_figure(runs, out / "loss_curves.png"):
            lines += [
                "Training losses (the CRSM panels show its two terms).",
                "",
                "![loss curves](loss_curves.png)",
                "",
            ]
        try:
            if erasing_figure(runs, out / "erasing_examples.png"):
                lines += [
                    "MDRE next to random erasing on real test images.",
                    "",
                    "![erasing examples](erasing_examples.png)",
                    "",
                ]
        except Exception as exc:
            log.warning("report: erasing figure skipped: %s", exc)
        for run in runs:
            name = f"reconstructions_{_slug(run.name)}_{_slug(run.target)}_{_slug(run.path.name)}.png"
            try:
                made = reconstruction_figure(run, out / name)
            except Exception as exc:
                log.warning("report: reconstructions of %s skipped: %s", run.path, exc)
                made = False
            if made:
                lines += [
                    f"CRSM reconstructions: {METHOD_NAMES.get(run.name, run.name)} → {run.target}.",
                    "",
                    f"![reconstructions]({name})",
                    "",
                ]
    lines += ["## Runs", "", runs_table(runs), ""]
    text = "\n".join(lines)
    atomic_write_text(out / "report.md", text)
    atomic_write_text(out / "report.html", _markdown_to_html(text))
    return out / "report.md"
