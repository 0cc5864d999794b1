"""How unlike the training images is a new image? A feature-distance OOD score.

The score is the Mahalanobis distance (Lee et al. 2018) of an image's pooled backbone
features to the nearest class mean of the probe's training images, under one shared
covariance estimated with Ledoit-Wolf shrinkage (well conditioned even with fewer
images than feature dimensions). Features are L2-normalised first, so the score
looks at the direction of the feature vector, not its length (which follows the
image's contrast). The threshold is a quantile (by default the 99th percentile) of
the validation split's scores: about 1% of in-distribution images are flagged.

Beside it, :class:`InputGate` scores the model input's intensity statistics (a CT slice
or a hand radiograph differs from a chest radiograph there whatever the encoder learnt);
an export with both flags an image when either is above its threshold
(``bench/ood_candidates.py`` compares the candidates, docs/benchmarks.md has the numbers).

Stored with the model export as tensors (``ood.means``, ``ood.precision``) and a few
numbers in ``model.json`` (``ood``: threshold, quantile, what it was fitted on);
:meth:`FeatureDistance.score` needs only numpy at prediction time (scikit-learn only to fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

DEFAULT_QUANTILE = 0.99
TENSOR_PREFIX = "ood"


def _normalise(features: np.ndarray | torch.Tensor) -> Any:
    if isinstance(features, torch.Tensor):
        return torch.nn.functional.normalize(features.double(), dim=1)
    features = np.asarray(features, dtype=np.float64)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


@dataclass
class FeatureDistance:
    """Class means and shared precision of normalised features, and the flag threshold."""

    means: np.ndarray  # classes × features
    precision: np.ndarray  # features × features
    threshold: float = float("inf")
    quantile: float = DEFAULT_QUANTILE
    fitted_on: str = "val"

    def score(self, features: np.ndarray | torch.Tensor) -> np.ndarray:
        """Distance of each row of ``features`` (``N×D``, pooled backbone output) to
        the nearest class mean; larger is further from the training images."""
        z = _normalise(features)
        if isinstance(z, torch.Tensor):
            z = z.cpu().numpy()
        diff = z[:, None, :] - self.means[None, :, :]  # N × C × D
        squared = np.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return np.sqrt(np.maximum(squared.min(axis=1), 0.0))

    def flag(self, scores: np.ndarray) -> np.ndarray:
        """True where a score is above the threshold."""
        return np.asarray(scores) > self.threshold

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors for the model export (under the ``ood.`` prefix there)."""
        return {
            "means": torch.tensor(self.means, dtype=torch.float64),
            "precision": torch.tensor(self.precision, dtype=torch.float64),
        }

    def meta(self) -> dict[str, Any]:
        """What ``model.json`` records about the score."""
        return {
            "score": "mahalanobis-l2norm-shared-ledoitwolf",
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
            "fitted_on": self.fitted_on,
        }

    @classmethod
    def from_export(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> FeatureDistance:
        """Rebuild from a model export's ``ood.*`` tensors and ``model.json``'s ``ood``."""
        return cls(
            means=tensors[f"{TENSOR_PREFIX}.means"].double().numpy(),
            precision=tensors[f"{TENSOR_PREFIX}.precision"].double().numpy(),
            threshold=float(meta["threshold"]),
            quantile=float(meta.get("quantile", DEFAULT_QUANTILE)),
            fitted_on=str(meta.get("fitted_on", "?")),
        )


def fit_feature_distance(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    threshold_features: np.ndarray,
    *,
    quantile: float = DEFAULT_QUANTILE,
    fitted_on: str = "val",
) -> FeatureDistance:
    """Class means and Ledoit-Wolf shared covariance from the training features, the
    threshold as the ``quantile`` of the scores of ``threshold_features`` (the
    validation split: images the means were not fitted on)."""
    from sklearn.covariance import LedoitWolf  # here: predict loads this module without scikit-learn

    z = _normalise(train_features)
    labels = np.asarray(train_labels)
    classes = sorted(set(labels.tolist()))
    means = np.stack([z[labels == c].mean(axis=0) for c in classes])
    centred = z - means[np.searchsorted(classes, labels)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    model = FeatureDistance(means=means, precision=precision, quantile=quantile, fitted_on=fitted_on)
    model.threshold = float(np.quantile(model.score(threshold_features), quantile))
    return model


def at_most_flagged(in_scores: np.ndarray, share: float) -> float:
    """The lowest threshold at which at most ``share`` of ``in_scores`` lie above it."""
    ordered = np.sort(np.asarray(in_scores))
    allowed = int(np.floor(share * len(ordered)))  # images that may be flagged
    return float(ordered[len(ordered) - allowed - 1])


def detection_summary(in_scores: np.ndarray, out_scores: np.ndarray, threshold: float) -> dict[str, float]:
    """How well a score separates in-distribution (``in_scores``) from other images:
    AUROC (other = positive), the share of other images flagged at ``threshold``, the
    share of in-distribution images flagged there, and the share of other images
    flagged at the lowest threshold that flags at most 5% of in-distribution images."""
    from sklearn.metrics import roc_auc_score

    in_scores, out_scores = np.asarray(in_scores), np.asarray(out_scores)
    truth = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    at_5 = at_most_flagged(in_scores, 0.05)
    return {
        "auroc": float(roc_auc_score(truth, np.r_[in_scores, out_scores])),
        "flagged_other": float((out_scores > threshold).mean()),
        "flagged_in": float((in_scores > threshold).mean()),
        "flagged_other_at_5pct_in": float((out_scores > at_5).mean()),
        "threshold_5pct_in": at_5,
        "threshold": float(threshold),
    }


#: the intensity statistics the input gate looks at: 16-bin histogram, mean, spread, dark and bright share
GATE_BINS = 16
GATE_TENSOR_PREFIX = "ood_gate"


def intensity_statistics(x: torch.Tensor) -> torch.Tensor:
    """``N×20`` float32 intensity statistics of normalised model inputs ``N×C×H×W`` (values
    in about -1..1): a 16-bin histogram over -1..1 (values outside in the end bins), mean,
    standard deviation, share below -0.9 and above 0.9.

    Written with comparisons and sums only, so that the ONNX graph computes exactly what
    :func:`input_statistics` does: each bin is the difference of two counts of pixels at or
    below an edge (whole numbers, exact in float32), as ``torch.bucketize`` would sort them."""
    flat = x.float().flatten(1)
    pixels = flat.shape[1]
    edges = torch.linspace(-1.0, 1.0, GATE_BINS + 1)[1:-1].tolist()  # the 15 inner edges
    at_most = torch.stack([(flat <= edge).float().sum(1) for edge in edges], dim=1)
    counts = torch.diff(
        at_most, dim=1, prepend=torch.zeros_like(at_most[:, :1]), append=torch.full_like(at_most[:, :1], pixels)
    )
    extra = [flat.mean(1), flat.std(1), (flat < -0.9).float().mean(1), (flat > 0.9).float().mean(1)]
    return torch.cat([counts / pixels, torch.stack(extra, dim=1)], dim=1)


def input_statistics(x: torch.Tensor) -> np.ndarray:
    """:func:`intensity_statistics` as a float64 array, the input gate's features.

    A CT or MRI slice (black surround, another grey-level distribution) or a hand radiograph
    (mostly black background) differs from a chest radiograph here whatever the encoder
    learnt, so this catches what a feature distance of a small encoder misses."""
    with torch.no_grad():
        return intensity_statistics(x.detach().cpu()).double().numpy()


class InputStatistics(torch.nn.Module):
    """:func:`input_statistics` as a module, so the feature extraction computes it beside the backbones."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(input_statistics(x)).float()


@dataclass
class InputGate:
    """Mahalanobis distance of an input's intensity statistics to the training images'."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float = float("inf")
    quantile: float = DEFAULT_QUANTILE

    def score(self, statistics: np.ndarray) -> np.ndarray:
        d = np.asarray(statistics, dtype=np.float64) - self.mean[None, :]
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", d, self.precision, d), 0.0))

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": torch.tensor(self.mean, dtype=torch.float64),
            "precision": torch.tensor(self.precision, dtype=torch.float64),
        }

    def meta(self) -> dict[str, Any]:
        return {
            "score": "mahalanobis-input-intensity-statistics-ledoitwolf",
            "threshold": float(self.threshold),
            "quantile": float(self.quantile),
        }

    @classmethod
    def from_export(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> InputGate:
        return cls(
            mean=tensors[f"{GATE_TENSOR_PREFIX}.mean"].double().numpy(),
            precision=tensors[f"{GATE_TENSOR_PREFIX}.precision"].double().numpy(),
            threshold=float(meta["threshold"]),
            quantile=float(meta.get("quantile", DEFAULT_QUANTILE)),
        )


def fit_input_gate(
    train_statistics: np.ndarray, threshold_statistics: np.ndarray, *, quantile: float = DEFAULT_QUANTILE
) -> InputGate:
    """Mean and Ledoit-Wolf precision of the training inputs' statistics; the threshold
    the ``quantile`` of ``threshold_statistics``' scores (images the mean was not fitted on)."""
    from sklearn.covariance import LedoitWolf  # here: predict loads this module without scikit-learn

    stats = np.asarray(train_statistics, dtype=np.float64)
    gate = InputGate(stats.mean(0), LedoitWolf().fit(stats).precision_, quantile=quantile)
    gate.threshold = float(np.quantile(gate.score(threshold_statistics), quantile))
    return gate
