"""The one metric implementation: evaluation's results rows and the report's bootstrap
intervals both compute accuracy, balanced accuracy, AUC and recall here.

AUC is the Mann-Whitney rank statistic (ties averaged), the same value as
``sklearn.metrics.roc_auc_score``, and fast enough to recompute a thousand times for a
bootstrap.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata


def auc(truth: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of binary ``truth`` (0/1) against ``score``; nan if one class is absent."""
    truth = np.asarray(truth).astype(int)
    positives = int(truth.sum())
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[truth == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def metric_values(y_true: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, float]:
    """Multi-class scores as flat numbers: ``accuracy``, ``balanced_accuracy`` (mean
    recall over the classes present), ``macro_auc`` (one-vs-rest, macro; nan unless every
    class is present) and ``recall:<class index>`` (nan for a class absent from ``y_true``)."""
    predicted = proba.argmax(axis=1)
    out: dict[str, float] = {"accuracy": float((predicted == y_true).mean())}
    recalls = []
    for c in range(n_classes):
        members = y_true == c
        recall = float((predicted[members] == c).mean()) if members.any() else float("nan")
        out[f"recall:{c}"] = recall
        if members.any():
            recalls.append(recall)
    out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else float("nan")
    if n_classes == 2:
        out["macro_auc"] = auc((y_true == 1).astype(int), proba[:, 1])
    else:
        aucs = [auc((y_true == c).astype(int), proba[:, c]) for c in range(n_classes)]
        out["macro_auc"] = float(np.mean(aucs)) if not any(math.isnan(a) for a in aucs) else float("nan")
    return out


def confusion(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> list[list[int]]:
    """``matrix[true][predicted]`` counts."""
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix.tolist()


def metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """A multi-class results row's scores: accuracy, balanced accuracy, macro one-vs-rest
    AUC, ``recall`` per class name (0 for a class absent from the test labels) and the
    confusion matrix; for two classes also ``sensitivity`` and ``specificity`` (the
    second class is the positive one, the finding)."""
    values = metric_values(y_true, proba, len(classes))
    recall = {c: values[f"recall:{i}"] for i, c in enumerate(classes)}
    out: dict[str, Any] = {
        "accuracy": values["accuracy"],
        "balanced_accuracy": values["balanced_accuracy"],
        "macro_auc": values["macro_auc"],
        "recall": {c: 0.0 if math.isnan(r) else r for c, r in recall.items()},
        "confusion_matrix": confusion(y_true, proba.argmax(axis=1), len(classes)),
    }
    if len(classes) == 2:  # as clinical papers report a finding (e.g. pneumonia vs normal)
        out["sensitivity"], out["specificity"] = out["recall"][classes[1]], out["recall"][classes[0]]
    return out


def multilabel_metrics(
    y_true: np.ndarray, proba: np.ndarray, findings: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per-finding AUC, sensitivity and accuracy over the images whose label is known
    (``nan`` in ``y_true`` is left out); the summary keys are means over findings.

    The keys match :func:`metrics` (``accuracy``, ``balanced_accuracy``, ``macro_auc``,
    ``recall`` per finding) so results tables take both; ``auc`` and ``positives`` are
    per finding.
    """
    aucs, recall, accuracy, balanced, positives = {}, {}, {}, {}, {}
    for j, finding in enumerate(findings):
        known = ~np.isnan(y_true[:, j])
        truth, score = y_true[known, j].astype(int), proba[known, j]
        predicted = (score >= threshold).astype(int)
        positives[finding] = int(truth.sum())
        aucs[finding] = auc(truth, score)
        recall[finding] = float(predicted[truth == 1].mean()) if (truth == 1).any() else float("nan")
        specificity = float((1 - predicted[truth == 0]).mean()) if (truth == 0).any() else float("nan")
        accuracy[finding] = float((predicted == truth).mean()) if len(truth) else float("nan")
        balanced[finding] = float(np.nanmean([recall[finding], specificity])) if len(truth) else float("nan")
    return {
        "accuracy": nan_mean(accuracy.values()),
        "balanced_accuracy": nan_mean(balanced.values()),
        "macro_auc": nan_mean(aucs.values()),
        "recall": recall,
        "auc": aucs,
        "positives": positives,
    }


def nan_mean(values: Any) -> float:
    """The mean of the finite values; nan if there are none."""
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else float("nan")
