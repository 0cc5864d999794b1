"""Statistics of a report: metrics from per-image predictions, 95% intervals (bootstrap
over test images, or t-intervals over seeds), table entries and claim checks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sslmed.core.metrics import metric_values
from sslmed.report.labels import BASELINE_NAMES, Claim, Labels
from sslmed.report.runs import Run


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


@dataclass
class Entry:
    """One table row: a method on one target set, from one or more runs."""

    label: str
    rows: list[dict[str, Any]]
    runs: list[Run]
    values: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    how: str = ""


def _order(name: str, labels: Labels) -> tuple[int, str]:
    names = list(labels.methods)
    return (names.index(name) if name in names else len(names), name)


def pick_row(rows: list[dict[str, Any]], model: str | None, probe: str, fraction: float = 1.0) -> dict[str, Any] | None:
    """The first row of ``model`` (``"sslmed"``: the run's own backbone; ``None``: any),
    ``probe`` and label ``fraction``."""
    for row in rows:
        if (
            (model is None or row["model"] == model or (model == "sslmed" and str(row["model"]).startswith("sslmed:")))
            and row["probe"] == probe
            and abs(float(row["label_fraction"]) - fraction) < 1e-9
        ):
            return row
    return None


def entries_for_target(
    runs: list[Run], probe: str = "linear", fraction: float = 1.0, samples: int = 1000, labels: Labels | None = None
) -> list[Entry]:
    """The rows of one target's table: references first, then the methods in ``labels``'
    order (the others after them, by recipe name)."""
    labels = labels or Labels()
    classes = runs[0].classes
    entries: list[Entry] = []
    for baseline, title in BASELINE_NAMES.items():
        chosen: dict[Any, tuple[dict[str, Any], Run]] = {}
        for run in runs:
            row = pick_row(
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
        label = labels.method(name)
        seen_labels[label] = seen_labels.get(label, 0) + 1
        if seen_labels[label] > 1:
            label = f"{label} ({group[0].path.name})"
        rows = [
            r
            for r in (pick_row(run.results.get("rows", []), "sslmed", probe, fraction) for run in group)
            if r is not None
        ]
        if rows:
            labelled.append((_order(name, labels), Entry(label, rows, group)))
    entries += [e for _, e in sorted(labelled, key=lambda item: item[0])]
    for entry in entries:
        entry.values, entry.how = summarise(entry.rows, classes, samples)
    return entries


def claim_lines(entries: list[Entry], claims: Sequence[Claim], metric: str = "balanced_accuracy") -> list[str]:
    """``claims`` checked on one target's table: held (better, intervals apart), direction
    only (better, intervals overlap) or not held. Claims naming a row the table lacks are left out."""
    by_label = {e.label: e.values.get(metric) for e in entries}
    lines = []
    for item in claims:
        better, worse, claim = item.better, item.worse, item.claim
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
