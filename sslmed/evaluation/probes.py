"""Probes on frozen features (linear, kNN) -> metrics rows.

The linear probe weights the classes as ``evaluation.class_weight`` says (balanced by
default: medical sets are imbalanced, and an unweighted probe calls most images the
majority class); kNN is a vote of neighbours and is not weighted. Each row says which.

Probe settings are chosen on the validation split when the data has one; the test
split is only ever scored. What differs between multi-class and multi-label data is
asked of the data's :class:`~sslmed.core.tasks.Task`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from sslmed.core.recipe import EvaluationSettings
from sslmed.core.tasks import Task, task_for
from sslmed.evaluation.features import FeatureSet

log = logging.getLogger(__name__)


PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)


def linear_probe(c: float, seed: int, class_weight: str = "balanced") -> Pipeline:
    """Standardised features -> (multinomial) logistic regression; ``class_weight``
    ``"balanced"`` weights each class in inverse proportion to its training images (in a
    multi-label probe: the positives and negatives of each finding), ``"none"`` weights
    every image alike."""
    weight = "balanced" if class_weight == "balanced" else None
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed, class_weight=weight)
    )


def knn_probe(k: int) -> KNeighborsClassifier:
    """Cosine-distance-weighted k nearest neighbours."""
    return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")


def fit_linear(
    task: Task,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    classes: list[str],
    seed: int,
    class_weight: str = "balanced",
) -> tuple[Any, float]:
    """A linear probe with its regularisation chosen on ``val`` by the task's selection
    score (C=1 without one); ties go to the C nearest 1. ``class_weight``: see
    :func:`linear_probe` (the test split is never looked at)."""
    best_c = 1.0
    if val is not None and len(val[1]):
        scores = {}
        for c in PROBE_C_GRID:
            probe = task.fit_probe(partial(linear_probe, c, seed, class_weight), *train)
            scores[c] = task.selection_score(val[1], task.probe_proba(probe, val[0], len(classes)), classes)
        best_c = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    return task.fit_probe(partial(linear_probe, best_c, seed, class_weight), *train), best_c


@dataclass
class Probed:
    """What :func:`probe_rows` fitted: the rows, and the linear probe on all labels."""

    rows: list[dict[str, Any]]
    linear: Any = None


def probe_rows(
    features: FeatureSet,
    labels: dict[str, np.ndarray],
    classes: list[str],
    settings: EvaluationSettings,
    task: Task | None = None,
) -> Probed:
    """One row per probe and label fraction for one model's features; ``task`` defaults
    to multi-label for ``N×findings`` labels, else multi-class."""
    task = task or task_for("multilabel" if labels["train"].ndim == 2 else "multiclass")
    probed = Probed([])
    val = (features.val, labels["val"]) if features.val is not None and "val" in labels else None
    for fraction in settings.label_fractions:
        chosen = task.subsample(labels["train"], fraction, settings.seed)
        x, y = features.train[chosen], labels["train"][chosen]
        for probe_name in settings.probes:
            if probe_name == "linear":
                model, c = fit_linear(task, (x, y), val, classes, settings.seed, settings.class_weight)
                extra: dict[str, Any] = {"C": c, "class_weight": settings.class_weight}
            else:
                k = min(settings.knn_k, len(y))
                model = task.fit_probe(partial(knn_probe, k), x, y)
                extra = {"k": k, "class_weight": "none"}  # a vote of neighbours: never weighted
            proba = task.probe_proba(model, features.test, len(classes))
            row = {
                "model": features.model,
                "probe": probe_name,
                "label_fraction": fraction,
                "train_images": int(len(y)),
                **extra,
                **task.metrics(labels["test"], proba, classes),
            }
            kept = task.predictions(labels["test"], proba)
            if kept is not None:
                row["test_predictions"] = kept
            probed.rows.append(row)
            if probe_name == "linear" and fraction == 1.0:
                probed.linear = model
    return probed
