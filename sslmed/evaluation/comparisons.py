"""Paired statistics on test predictions: is model A better than model B, and by how much?

Every results row keeps its per-image test predictions, so two models scored on the
same test images (same split, and with several seeds the same seeds) can be compared
image by image:

* :func:`interval` - a row's value with a 95% interval over seeds and test images
  (hierarchical bootstrap: seeds resampled, then test images);
* :func:`compare` - the difference A - B with its 95% paired-bootstrap interval (the
  same resampled images and seeds for both) and a two-sided paired permutation
  p-value (A's and B's predictions swapped at random per image and seed);
* :func:`gain_lines` - what pre-training bought in one run: the pre-trained model
  against random init and raw pixels, per probe and label fraction.

Metrics are computed as :func:`sslmed.core.metrics.metric_values` computes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sslmed.core.metrics import metric_values

#: what the printed gain lines compare, in the order shown
REFERENCES = {"random_init": "random init", "raw_pixels": "raw pixels"}


def _value(y_true: np.ndarray, proba: np.ndarray, metric: str) -> float:
    if metric in ("sensitivity", "specificity"):
        metric = "recall:1" if metric == "sensitivity" else "recall:0"
    if metric in ("accuracy", "balanced_accuracy"):  # the fast path: thousands of resamples per comparison
        predicted = proba.argmax(axis=1)
        if metric == "accuracy":
            return float((predicted == y_true).mean())
        hits = np.bincount(y_true, weights=(predicted == y_true), minlength=proba.shape[1])
        counts = np.bincount(y_true, minlength=proba.shape[1])
        present = counts > 0
        return float((hits[present] / counts[present]).mean()) if present.any() else float("nan")
    return metric_values(y_true, proba, proba.shape[1])[metric]


def _as_arrays(y_true: Sequence[int], probas: Sequence[Any]) -> tuple[np.ndarray, list[np.ndarray]]:
    truth = np.asarray(y_true, dtype=int)
    arrays = [np.asarray(p, dtype=float) for p in probas]
    if not arrays:
        raise ValueError("no predictions given")
    for array in arrays:
        if array.shape[0] != len(truth):
            raise ValueError(f"predictions for {array.shape[0]} images, but {len(truth)} test labels")
    return truth, arrays


def interval(
    y_true: Sequence[int], probas: Sequence[Any], metric: str = "balanced_accuracy", samples: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """``(mean, low, high)``: the metric's mean over seeds (one probability matrix per
    seed, all on the same test images) and a 95% percentile interval from resampling
    seeds and test images together."""
    truth, arrays = _as_arrays(y_true, probas)
    point = float(np.mean([_value(truth, p, metric) for p in arrays]))
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        chosen = rng.integers(0, len(arrays), len(arrays)) if len(arrays) > 1 else [0]
        index = rng.integers(0, len(truth), len(truth))
        values = [_value(truth[index], arrays[s][index], metric) for s in chosen]
        if not any(math.isnan(v) for v in values):
            draws.append(float(np.mean(values)))
    if not draws:
        return point, float("nan"), float("nan")
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


#: the permutation p-value a verdict of "better" or "worse" needs to stay below
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Comparison:
    """A - B on one metric: the mean difference over seeds, its 95% paired-bootstrap
    interval, and the two-sided paired permutation p-value."""

    metric: str
    difference: float
    low: float
    high: float
    p_value: float
    seeds: int
    images: int

    @property
    def verdict(self) -> str:
        """``better`` / ``worse`` when the interval excludes 0 *and* the permutation test
        agrees (p < 0.05), else ``no clear difference``.

        The bootstrap interval and the permutation p-value are two estimates of the same
        question and can disagree near the edge (``+0.070 [+0.002, +0.140], p=0.074``);
        a verdict must not claim more than either of them."""
        if self.p_value >= SIGNIFICANCE:
            return "no clear difference"
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"

    def text(self) -> str:
        """``+0.041 [+0.012, +0.070], p=0.006``"""
        return f"{self.difference:+.3f} [{self.low:+.3f}, {self.high:+.3f}], p={self.p_value:.3g}"


def compare(
    y_true: Sequence[int],
    probas_a: Sequence[Any],
    probas_b: Sequence[Any],
    metric: str = "balanced_accuracy",
    samples: int = 1000,
    seed: int = 0,
) -> Comparison:
    """Paired comparison of A and B on the same test images; ``probas_a[i]`` and
    ``probas_b[i]`` come from the same seed (same splits, same label subset)."""
    truth, a = _as_arrays(y_true, probas_a)
    _, b = _as_arrays(y_true, probas_b)
    if len(a) != len(b):
        raise ValueError(f"paired comparison needs the same seeds for both: {len(a)} vs {len(b)} runs")
    n, k = len(truth), len(a)
    observed = float(np.mean([_value(truth, a[s], metric) - _value(truth, b[s], metric) for s in range(k)]))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(samples):
        chosen = rng.integers(0, k, k) if k > 1 else [0]
        index = rng.integers(0, n, n)
        diffs = [_value(truth[index], a[s][index], metric) - _value(truth[index], b[s][index], metric) for s in chosen]
        if not any(math.isnan(d) for d in diffs):
            boot.append(float(np.mean(diffs)))
    low, high = np.percentile(boot, [2.5, 97.5]) if boot else (float("nan"), float("nan"))
    extreme = 0
    for _ in range(samples):
        diffs = []
        for s in range(k):
            swap = rng.random(n) < 0.5  # under "no difference" A's and B's prediction of an image are exchangeable
            pa = np.where(swap[:, None], b[s], a[s])
            pb = np.where(swap[:, None], a[s], b[s])
            diffs.append(_value(truth, pa, metric) - _value(truth, pb, metric))
        extreme += abs(float(np.mean(diffs))) >= abs(observed) - 1e-12
    return Comparison(metric, observed, float(low), float(high), (extreme + 1) / (samples + 1), k, n)


def gain_lines(rows: list[dict[str, Any]], metric: str = "balanced_accuracy", samples: int = 1000) -> list[str]:
    """What pre-training bought in one run's results: for each probe and label fraction,
    the pre-trained model's gain over random init and over raw pixels (paired bootstrap
    over the test images, permutation p-value)."""
    lines = []
    keyed = {(r["model"], r["probe"], float(r["label_fraction"])): r for r in rows if r.get("test_predictions")}
    for (model, probe, fraction), row in keyed.items():
        if not str(model).startswith("sslmed:"):
            continue
        y = row["test_predictions"]["y_true"]
        if np.asarray(y).ndim != 1:  # multi-label rows: no paired test here yet
            continue
        parts = []
        for reference, title in REFERENCES.items():
            other = keyed.get((reference, probe, fraction))
            if other is None or other["test_predictions"]["y_true"] != y:
                continue
            ours, theirs = row["test_predictions"]["proba"], other["test_predictions"]["proba"]
            result = compare(y, [ours], [theirs], metric, samples)
            parts.append(f"{result.text()} over {title} ({result.verdict})")
        if parts:
            lines.append(f"- {model} {probe}, {fraction:.0%} labels: " + "; ".join(parts))
    if lines:
        lines.insert(0, f"Gain of pre-training in {metric.replace('_', ' ')} (95% paired bootstrap over test images):")
    return lines
