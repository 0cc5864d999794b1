"""Temperature scaling, ECE, Brier and the reliability diagram (sslmed.evaluation.calibration)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmed.evaluation.calibration import (
    brier_score,
    calibrate,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    reliability_figure,
    softmax,
)


def sampled_logits(n: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is calibrated, multiplied by ``scale`` (>1: over-confident):
    labels are drawn from the calibrated probabilities, so temperature ``scale`` is right."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(scale=2.0, size=(n, 3))
    p = softmax(true_logits)
    labels = np.array([rng.choice(3, p=row) for row in p])
    return true_logits * scale, labels


def test_fitted_temperature_undoes_over_confidence() -> None:
    logits, labels = sampled_logits(4000, scale=3.0, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)
    logits, labels = sampled_logits(4000, scale=0.5, seed=1)  # under-confident: T < 1
    assert fit_temperature(logits, labels) == pytest.approx(0.5, rel=0.1)


def test_calibration_lowers_ece_and_brier_without_changing_predictions() -> None:
    val_logits, val_labels = sampled_logits(2000, scale=4.0, seed=2)
    test_logits, test_labels = sampled_logits(2000, scale=4.0, seed=3)
    result = calibrate(val_logits, val_labels, test_logits, test_labels)
    assert result.ece_before > 0.1 and result.ece_after < 0.03
    assert result.brier_after < result.brier_before
    before, after = softmax(test_logits), softmax(test_logits, result.temperature)
    assert (before.argmax(1) == after.argmax(1)).all()
    assert sum(b["count"] for b in result.reliability_after) == len(test_labels)


def test_ece_and_brier_on_hand_computed_cases() -> None:
    proba = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins (0.8667, 0.9333]: conf 0.9, acc 0.5; (0.5333, 0.6]: 0.6 vs 1; (0.6667, 0.7333]: 0.7 vs 1
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert expected_calibration_error(proba, labels) == pytest.approx(expected)
    assert brier_score(proba, labels) == pytest.approx((0.02 + 1.62 + 0.32 + 0.18) / 4)
    perfect = np.eye(2)[labels]
    assert expected_calibration_error(perfect, labels) == 0.0 and brier_score(perfect, labels) == 0.0
    assert [b["count"] for b in reliability_bins(proba, labels)] == [1, 1, 2]


def test_reliability_figure_is_a_png(tmp_path: Path) -> None:
    logits, labels = sampled_logits(300, scale=3.0, seed=4)
    path = reliability_figure(calibrate(logits, labels, logits, labels), tmp_path / "r.png", "test")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 400
    assert not list(tmp_path.glob(".*tmp"))  # written atomically: no temporary file left
