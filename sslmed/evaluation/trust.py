"""Calibration and the out-of-distribution score for a fitted linear probe.

Evaluation calls :func:`fit_trust` once it has the probe that goes into the model
export: the temperature is fitted on the validation split's logits and scored on the
test split; the OOD score's class means come from the probe's training features and
its threshold from the validation split. Without a validation split both use the
training split, out of fold (5-fold: each image scored by a probe, or class means,
fitted without it), so neither is fitted on the images it is checked on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import Pipeline

from sslmed.core.tasks import linear_head_from_probe
from sslmed.evaluation.calibration import Calibration, calibrate
from sslmed.evaluation.ood import DEFAULT_QUANTILE, FeatureDistance, InputGate, fit_feature_distance, fit_input_gate

log = logging.getLogger(__name__)

OUT_OF_FOLD = 5


def probe_logits(probe: Pipeline, features: np.ndarray, n_classes: int) -> np.ndarray:
    """Logits over all ``n_classes`` of a standardised logistic-regression probe: the
    same numbers the exported linear head computes (softmax of them = ``predict_proba``)."""
    weight, bias = linear_head_from_probe(probe, n_classes)
    return np.asarray(features, dtype=np.float64) @ weight.double().numpy().T + bias.double().numpy()


@dataclass
class TrustFit:
    """What goes into the model export and the results besides the probe."""

    calibration: Calibration | None
    ood: FeatureDistance
    test_scores: np.ndarray
    #: the input-statistics gate (an image is flagged by either score), when fitted
    gate: InputGate | None = None
    test_gate_scores: np.ndarray | None = None

    def test_flags(self) -> np.ndarray:
        """Which test images the export flags (feature distance or input gate)."""
        flags = self.ood.flag(self.test_scores)
        if self.gate is not None and self.test_gate_scores is not None:
            flags = flags | (np.asarray(self.test_gate_scores) > self.gate.threshold)
        return flags

    def results(self) -> dict[str, Any]:
        """``results.json``'s ``calibration`` and ``ood`` entries."""
        scores = self.test_scores
        ood = {
            **self.ood.meta(),
            "test_flagged": float(self.test_flags().mean()) if len(scores) else float("nan"),
            "test_images": int(len(scores)),
        }
        if self.gate is not None:
            ood["gate"] = self.gate.meta()
        return {"calibration": self.calibration.as_dict() if self.calibration else None, "ood": ood}


def _folds(labels: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    counts = np.bincount(labels)
    splits = int(min(OUT_OF_FOLD, counts[counts > 0].min()))
    if splits < 2:
        return []
    return list(StratifiedKFold(splits, shuffle=True, random_state=seed).split(np.zeros(len(labels)), labels))


def fit_trust(
    probe: Pipeline,
    n_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    seed: int = 0,
    quantile: float = DEFAULT_QUANTILE,
    statistics: dict[str, np.ndarray] | None = None,
) -> TrustFit:
    """Temperature (scored on ``test``) and OOD score (threshold on ``val``) for ``probe``.

    Each split is ``(features, class indices)``; features are the backbone's pooled
    output, as the probe was fitted on. ``statistics`` (``{"train", "test"[, "val"]}``:
    :func:`sslmed.evaluation.ood.input_statistics` of each split's model inputs) adds the
    input gate, fitted on train with its threshold on val (else out of fold on train).
    """
    fit = _fit_trust(probe, n_classes, train, test, val, seed=seed, quantile=quantile)
    if statistics is not None:
        if "val" in statistics and len(statistics["val"]):
            fit.gate = fit_input_gate(statistics["train"], statistics["val"], quantile=quantile)
        else:
            stats = statistics["train"]
            held = np.zeros(len(stats))
            for fit_index, held_index in _folds(train[1], seed) or [(np.arange(len(stats)), np.arange(len(stats)))]:
                held[held_index] = fit_input_gate(stats[fit_index], stats[held_index]).score(stats[held_index])
            fit.gate = fit_input_gate(stats, stats[:1], quantile=quantile)
            fit.gate.threshold = float(np.quantile(held, quantile))
        fit.test_gate_scores = fit.gate.score(statistics["test"])
    return fit


def _fit_trust(
    probe: Pipeline,
    n_classes: int,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    seed: int = 0,
    quantile: float = DEFAULT_QUANTILE,
) -> TrustFit:
    train_x, train_y = train
    test_x, test_y = test
    if val is not None and len(val[1]):
        val_x, val_y = val
        ood = fit_feature_distance(train_x, train_y, val_x, quantile=quantile, fitted_on="val")
        calibration = calibrate(
            probe_logits(probe, val_x, n_classes), val_y, probe_logits(probe, test_x, n_classes), test_y
        )
    else:
        folds = _folds(train_y, seed)
        if not folds:
            log.warning("calibration: too few training images per class for out-of-fold fitting; skipped")
            ood = fit_feature_distance(train_x, train_y, train_x, quantile=quantile, fitted_on="train (in-sample)")
            return TrustFit(None, ood, ood.score(test_x))
        logits = np.zeros((len(train_y), n_classes))
        scores = np.zeros(len(train_y))
        for fit_index, held_index in folds:
            fold_probe = clone(probe).fit(train_x[fit_index], train_y[fit_index])
            logits[held_index] = probe_logits(fold_probe, train_x[held_index], n_classes)
            fold_ood = fit_feature_distance(train_x[fit_index], train_y[fit_index], train_x[held_index])
            scores[held_index] = fold_ood.score(train_x[held_index])
        fitted_on = f"train ({len(folds)}-fold out-of-fold)"
        ood = fit_feature_distance(train_x, train_y, train_x[:1], quantile=quantile, fitted_on=fitted_on)
        ood.threshold = float(np.quantile(scores, quantile))
        calibration = calibrate(logits, train_y, probe_logits(probe, test_x, n_classes), test_y, fitted_on=fitted_on)
    test_scores = ood.score(test_x)
    return TrustFit(calibration, ood, test_scores)
