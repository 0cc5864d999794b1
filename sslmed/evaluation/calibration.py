"""Probabilities that mean what they say: temperature scaling, ECE, Brier, reliability.

A classifier's softmax is often over- or under-confident. Temperature scaling (Guo et
al. 2017) divides the logits by one number ``T`` fitted on the validation split, which
changes no prediction (the arg-max stays) but makes the top probability match how
often the model is right. :func:`calibrate` fits ``T`` and reports expected
calibration error (ECE) and Brier score before and after on the test split, with the
reliability-diagram bins; :func:`reliability_figure` draws them.

Any model with logits can use it (linear probe, fine-tuned network): pass validation
logits and labels, store :attr:`Calibration.temperature` with the model, and divide
its logits by it at prediction time (:func:`softmax`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslmed.core.files import atomic_write_bytes

DEFAULT_BINS = 15
#: temperatures are kept in this range: beyond it the validation split is too small or degenerate
TEMPERATURE_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (numerically stable)."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """The ``T`` that minimises the negative log-likelihood of ``softmax(logits / T)``.

    Optimised over ``log T`` with L-BFGS (one parameter, so it converges in a few
    steps); returns 1.0 when there are no labels to fit on.
    """
    labels = np.asarray(labels)
    if len(labels) == 0:
        return 1.0
    z = torch.tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    low, high = TEMPERATURE_RANGE
    return float(np.clip(log_t.exp().item(), low, high))


def reliability_bins(proba: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> list[dict[str, float]]:
    """Equal-width bins of the top-class probability: for each non-empty bin its range,
    image count, mean confidence and accuracy (what a reliability diagram plots)."""
    confidence = proba.max(axis=1)
    correct = (proba.argmax(axis=1) == np.asarray(labels)).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 goes to the first
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    out = []
    for i in range(bins):
        chosen = index == i
        if chosen.any():
            out.append(
                {
                    "lower": float(edges[i]),
                    "upper": float(edges[i + 1]),
                    "count": int(chosen.sum()),
                    "confidence": float(confidence[chosen].mean()),
                    "accuracy": float(correct[chosen].mean()),
                }
            )
    return out


def expected_calibration_error(proba: np.ndarray, labels: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE: the image-weighted mean gap between confidence and accuracy over
    equal-width confidence bins (0 is perfect; Guo et al. 2017 use 15 bins)."""
    n = len(labels)
    if n == 0:
        return float("nan")
    return float(
        sum(b["count"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability_bins(proba, labels, bins))
    )


def brier_score(proba: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of ``sum_k (p_k - [y = k])^2`` (0 to 2, lower is better)."""
    labels = np.asarray(labels)
    if len(labels) == 0:
        return float("nan")
    onehot = np.zeros_like(proba, dtype=np.float64)
    onehot[np.arange(len(labels)), labels] = 1.0
    return float(((proba - onehot) ** 2).sum(axis=1).mean())


@dataclass
class Calibration:
    """A fitted temperature and what it did on the test split."""

    temperature: float
    fitted_on: str
    fitted_images: int
    bins: int
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    test_images: int
    reliability_before: list[dict[str, float]] = field(default_factory=list)
    reliability_after: list[dict[str, float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``results.json`` and ``model.json``."""
        return asdict(self)

    def summary(self) -> dict[str, Any]:
        """The numbers without the bins (for the model card and tables)."""
        return {k: v for k, v in self.as_dict().items() if not k.startswith("reliability")}


def calibrate(
    val_logits: np.ndarray,
    val_labels: np.ndarray,
    test_logits: np.ndarray,
    test_labels: np.ndarray,
    *,
    fitted_on: str = "val",
    bins: int = DEFAULT_BINS,
) -> Calibration:
    """Fit the temperature on ``val_*`` and score test probabilities before and after."""
    temperature = fit_temperature(val_logits, val_labels)
    before, after = softmax(test_logits), softmax(test_logits, temperature)
    return Calibration(
        temperature=temperature,
        fitted_on=fitted_on,
        fitted_images=int(len(val_labels)),
        bins=bins,
        ece_before=expected_calibration_error(before, test_labels, bins),
        ece_after=expected_calibration_error(after, test_labels, bins),
        brier_before=brier_score(before, test_labels),
        brier_after=brier_score(after, test_labels),
        test_images=int(len(test_labels)),
        reliability_before=reliability_bins(before, test_labels, bins),
        reliability_after=reliability_bins(after, test_labels, bins),
    )


def reliability_figure(calibration: Calibration | dict[str, Any], path: Path, title: str = "") -> Path:
    """A reliability diagram (accuracy against confidence per bin, before and after
    temperature scaling) as a PNG, written atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = calibration.as_dict() if isinstance(calibration, Calibration) else calibration
    figure, axes = plt.subplots(1, 2, figsize=(8, 4), sharey=True)
    for ax, key, name in (
        (axes[0], "before", "before (T = 1)"),
        (axes[1], "after", f"after (T = {data['temperature']:.2f})"),
    ):
        bins = data[f"reliability_{key}"]
        width = 1.0 / data["bins"]
        ax.bar(
            [b["lower"] for b in bins],
            [b["accuracy"] for b in bins],
            width=width,
            align="edge",
            edgecolor="black",
            color="#4c72b0",
            label="accuracy",
        )
        ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="#dd8452", ms=4)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-class probability)")
        ax.set_title(f"{name}\nECE {data[f'ece_{key}']:.3f}, Brier {data[f'brier_{key}']:.3f}", fontsize=9)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="lower right", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)
