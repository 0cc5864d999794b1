"""Paired statistics on test predictions (sslmed.evaluation.comparisons)."""

from __future__ import annotations

import numpy as np
import pytest

from sslmed.core.metrics import metrics
from sslmed.evaluation.comparisons import Comparison, compare, gain_lines, interval


def _proba(y: np.ndarray, correct: float, rng: np.random.Generator, n_classes: int = 2) -> np.ndarray:
    """Probabilities that put the most mass on the true class for a ``correct`` share of images."""
    right = rng.random(len(y)) < correct
    predicted = np.where(right, y, (y + 1 + rng.integers(0, n_classes - 1, len(y))) % n_classes)
    proba = np.full((len(y), n_classes), 0.1 / max(1, n_classes - 1))
    proba[np.arange(len(y)), predicted] = 0.9
    return proba


def test_a_clearly_better_model_is_called_better_with_a_small_p():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good = [_proba(y, 0.9, rng) for _ in range(3)]
    poor = [_proba(y, 0.6, rng) for _ in range(3)]
    result = compare(y, good, poor, samples=300)
    assert result.verdict == "better" and result.p_value < 0.01
    assert 0.2 < result.difference < 0.4 and result.low < result.difference < result.high
    assert compare(y, poor, good, samples=300).verdict == "worse"


def test_two_equally_good_models_show_no_clear_difference():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    a = [_proba(y, 0.7, rng, 3) for _ in range(3)]
    b = [_proba(y, 0.7, rng, 3) for _ in range(3)]
    result = compare(y, a, b, samples=300)
    assert result.low < 0 < result.high and result.verdict == "no clear difference"
    assert result.p_value > 0.05


def test_a_verdict_needs_the_interval_and_the_p_value_to_agree():
    # the headline recipe printed this one as "better" (issue 22): its interval just
    # clears zero while the permutation test does not reject "no difference"
    edge = Comparison("balanced_accuracy", 0.070, 0.002, 0.140, 0.074, 1, 225)
    assert edge.verdict == "no clear difference"
    assert Comparison("balanced_accuracy", 0.035, 0.002, 0.066, 0.038, 1, 624).verdict == "better"
    assert Comparison("balanced_accuracy", -0.057, -0.093, -0.019, 0.002, 1, 624).verdict == "worse"
    assert Comparison("balanced_accuracy", -0.05, -0.09, 0.01, 0.01, 1, 624).verdict == "no clear difference"


def test_interval_covers_the_mean_over_seeds_and_narrows_with_more_images():
    rng = np.random.default_rng(2)
    small_y, big_y = rng.integers(0, 2, 100), rng.integers(0, 2, 2000)
    small = interval(small_y, [_proba(small_y, 0.8, rng) for _ in range(3)], samples=300)
    big = interval(big_y, [_proba(big_y, 0.8, rng) for _ in range(3)], samples=300)
    for mean, low, high in (small, big):
        assert low <= mean <= high and abs(mean - 0.8) < 0.1
    assert big[2] - big[1] < small[2] - small[1]


def test_compare_refuses_unpaired_inputs():
    y = np.array([0, 1, 0, 1])
    p = np.eye(2)[y]
    with pytest.raises(ValueError, match="same seeds"):
        compare(y, [p, p], [p])
    with pytest.raises(ValueError, match="for 3 images, but 4 test labels"):
        compare(y, [p[:3]], [p[:3]])


def test_gain_lines_name_the_gain_over_each_reference():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    classes = ["normal", "pneumonia"]

    def row(model: str, correct: float) -> dict:
        proba = _proba(y, correct, rng)
        return {
            "model": model,
            "probe": "linear",
            "label_fraction": 1.0,
            **metrics(y, proba, classes),
            "test_predictions": {"y_true": y.tolist(), "proba": proba.tolist()},
        }

    lines = gain_lines([row("sslmed:corpus", 0.9), row("random_init", 0.6), row("raw_pixels", 0.9)], samples=200)
    assert lines[0].startswith("Gain of pre-training in balanced accuracy")
    assert "over random init (better)" in lines[1] and "over raw pixels (no clear difference)" in lines[1]


def test_binary_metrics_report_sensitivity_and_specificity():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    predicted = np.array([0, 0, 0, 1, 1, 1, 1, 1, 1, 0])
    out = metrics(y, np.eye(2)[predicted], ["normal", "pneumonia"])
    assert out["sensitivity"] == pytest.approx(5 / 6) and out["specificity"] == pytest.approx(3 / 4)
    assert "sensitivity" not in metrics(np.array([0, 1, 2]), np.eye(3), ["a", "b", "c"])


def test_fast_metrics_agree_with_the_report():
    from sslmed.core.metrics import metric_values
    from sslmed.evaluation.comparisons import _value

    rng = np.random.default_rng(4)
    y = rng.integers(0, 3, 200)
    proba = rng.dirichlet(np.ones(3), 200)
    for metric in ("accuracy", "balanced_accuracy"):
        assert _value(y, proba, metric) == pytest.approx(metric_values(y, proba, 3)[metric])
