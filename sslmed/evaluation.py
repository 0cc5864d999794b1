"""Frozen features -> probes (linear, kNN) -> metrics, with reference rows.

Every results table shows the pre-trained backbone next to the same backbone at
random initialisation, a probe on raw pixels and a supervised-from-scratch model, so
a reader sees what pre-training bought. Probe settings are chosen on the validation
split when the data has one; the test split is only ever scored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, recall_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from sslmed.data import ImageDataset, ImageRecord, ImageSource, targets_matrix
from sslmed.models import Backbone
from sslmed.recipe import EvaluationSettings, SupervisedSettings
from sslmed.transforms import eval_transform, image_mode

log = logging.getLogger(__name__)

PROBE_C_GRID = (0.01, 0.1, 1.0, 10.0)


def device() -> torch.device:
    """The device evaluation runs on: a GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class LabelledSplit:
    """Images of one split as model inputs: a loader factory, labels."""

    source: ImageSource
    records: list[ImageRecord]

    @property
    def labels(self) -> np.ndarray:
        """Class indices (``N``), or for multi-label sources targets (``N×findings``, nan: unknown)."""
        if self.source.task == "multilabel":
            return targets_matrix(self.records, len(self.source.classes))
        return np.array([r.label for r in self.records])

    def loader(
        self, transform: Callable, in_channels: int, batch_size: int, shuffle: bool = False
    ) -> torch.utils.data.DataLoader:
        # labels come from the records: an unreadable file may not be replaced by another
        dataset = ImageDataset(
            self.source, self.records, transform, mode=image_mode(in_channels), substitute_unreadable=False
        )
        return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle)


RAW_PIXELS = None  # in ``extract_features``' models: flattened input pixels, no model


@torch.inference_mode()
def extract_features(
    models: Mapping[str, Backbone | None],
    split: LabelledSplit,
    image_size: int,
    in_channels: int,
    batch_size: int = 128,
) -> dict[str, np.ndarray]:
    """Pooled features of every image of ``split`` for each model, in one pass over the
    images (each is decoded once, however many models look at it). A model given as
    ``RAW_PIXELS`` yields the flattened normalised pixels: the no-learning reference."""
    run_on = device()
    for model in models.values():
        if model is not None:
            model.to(run_on).eval()
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for images, _labels in split.loader(eval_transform(image_size, in_channels), in_channels, batch_size):
        batch = images.to(run_on)
        for name, model in models.items():
            out = batch.flatten(1) if model is None else model(batch)
            chunks[name].append(out.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in chunks.items()}


def metrics(y_true: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro one-vs-rest AUC, per-class recall, confusion matrix."""
    labels = list(range(len(classes)))
    y_pred = proba.argmax(axis=1)
    present = sorted(set(y_true.tolist()))
    try:
        if len(classes) == 2:
            auc = float(roc_auc_score(y_true, proba[:, 1]))
        elif len(present) == len(classes):
            auc = float(roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=labels))
        else:
            auc = float("nan")
    except ValueError:
        auc = float("nan")
    recalls = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    return {
        "accuracy": float((y_pred == y_true).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_auc": auc,
        "recall": {c: float(r) for c, r in zip(classes, recalls, strict=False)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def predictions(y_true: np.ndarray, proba: np.ndarray) -> dict[str, Any]:
    """Per-image test labels and class probabilities, kept in results for bootstrap CIs."""
    return {"y_true": [int(y) for y in y_true], "proba": np.round(proba, 5).tolist()}


def subsample(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Indices of a class-stratified ``fraction`` of the labels (at least one per class)."""
    indices = np.arange(len(labels))
    if fraction >= 1.0:
        return indices
    n_classes = len(set(labels.tolist()))
    size = max(n_classes, int(round(fraction * len(labels))))
    chosen, _rest = train_test_split(indices, train_size=size, stratify=labels, random_state=seed)
    return np.sort(chosen)


def _full_proba(model: Any, features: np.ndarray, n_classes: int) -> np.ndarray:
    """Probabilities over all classes, even if the probe saw only some of them."""
    proba = np.zeros((len(features), n_classes))
    proba[:, model.classes_] = model.predict_proba(features)
    return proba


def linear_probe(c: float, seed: int) -> Pipeline:
    """Standardised features -> multinomial logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))


def fit_linear(
    train_x: np.ndarray, train_y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None, seed: int
) -> tuple[Pipeline, float]:
    """A linear probe with its regularisation chosen on ``val`` (C=1 without one)."""
    best_c = 1.0
    if val is not None and len(val[1]):
        scores = {}
        for c in PROBE_C_GRID:
            probe = linear_probe(c, seed).fit(train_x, train_y)
            scores[c] = balanced_accuracy_score(val[1], probe.predict(val[0]))
        best_c = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    return linear_probe(best_c, seed).fit(train_x, train_y), best_c


@dataclass
class FeatureSet:
    """Features of the train, (optional) val and test splits for one model."""

    model: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None
    probes: dict[str, Any] = field(default_factory=dict)


def probe_rows(
    features: FeatureSet, labels: dict[str, np.ndarray], classes: list[str], settings: EvaluationSettings
) -> list[dict[str, Any]]:
    """One row per probe and label fraction for one model's features."""
    if labels["train"].ndim == 2:  # multi-label targets (e.g. CheXpert findings)
        return multilabel_probe_rows(features, labels, classes, settings)
    rows = []
    val = (features.val, labels["val"]) if features.val is not None else None
    for fraction in settings.label_fractions:
        chosen = subsample(labels["train"], fraction, settings.seed)
        x, y = features.train[chosen], labels["train"][chosen]
        for probe_name in settings.probes:
            if probe_name == "linear":
                model, c = fit_linear(x, y, val, settings.seed)
                extra = {"C": c}
            else:
                k = min(settings.knn_k, len(y))
                model = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance").fit(x, y)
                extra = {"k": k}
            proba = _full_proba(model, features.test, len(classes))
            rows.append(
                {
                    "model": features.model,
                    "probe": probe_name,
                    "label_fraction": fraction,
                    "train_images": int(len(y)),
                    **extra,
                    **metrics(labels["test"], proba, classes),
                    "test_predictions": predictions(labels["test"], proba),
                }
            )
            if probe_name == "linear" and fraction == 1.0:
                features.probes["linear"] = model
    return rows


class SupervisedModule(L.LightningModule):
    """Backbone + linear layer trained with cross-entropy: the supervised reference."""

    def __init__(self, backbone: Backbone, n_classes: int, lr: float) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.feature_dim, n_classes)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, _index: int) -> torch.Tensor:
        images, labels = batch
        loss = torch.nn.functional.cross_entropy(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=1e-4)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(self.trainer.estimated_stepping_batches))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def supervised_proba(
    backbone: Backbone,
    train: LabelledSplit,
    test: LabelledSplit,
    n_classes: int,
    image_size: int,
    in_channels: int,
    settings: SupervisedSettings,
    seed: int,
    fraction: float = 1.0,
) -> np.ndarray:
    """Train ``backbone`` from scratch on the labels, return test probabilities."""
    L.seed_everything(seed, workers=True, verbose=False)
    chosen = subsample(train.labels, fraction, seed)
    subset = LabelledSplit(train.source, [train.records[i] for i in chosen])
    augment = v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            eval_transform(image_size, in_channels),
        ]
    )
    batch_size = min(settings.batch_size, len(subset.records))
    loader = subset.loader(augment, in_channels, batch_size, shuffle=True)
    module = SupervisedModule(backbone, n_classes, settings.lr)
    trainer = L.Trainer(
        max_epochs=settings.epochs,
        max_steps=settings.max_steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, loader)
    module.eval().to(device())
    chunks = []
    with torch.inference_mode():
        for images, _labels in test.loader(eval_transform(image_size, in_channels), in_channels, 128):
            chunks.append(torch.softmax(module(images.to(device())), dim=1).float().cpu().numpy())
    return np.concatenate(chunks)


# ------------------------------------------------------------------ multi-label


def multilabel_metrics(
    y_true: np.ndarray, proba: np.ndarray, findings: Sequence[str], threshold: float = 0.5
) -> dict[str, Any]:
    """Per-finding AUC, sensitivity and accuracy over the images whose label is known
    (``nan`` in ``y_true`` is left out); the summary keys are means over findings.

    The keys match :func:`metrics` (``accuracy``, ``balanced_accuracy``, ``macro_auc``,
    ``recall`` per finding) so results tables take both; ``auc`` and ``positives`` are
    per finding.
    """
    auc, recall, accuracy, balanced, positives = {}, {}, {}, {}, {}
    for j, finding in enumerate(findings):
        known = ~np.isnan(y_true[:, j])
        truth, score = y_true[known, j].astype(int), proba[known, j]
        predicted = (score >= threshold).astype(int)
        positives[finding] = int(truth.sum())
        auc[finding] = float(roc_auc_score(truth, score)) if 0 < truth.sum() < len(truth) else float("nan")
        recall[finding] = float(predicted[truth == 1].mean()) if (truth == 1).any() else float("nan")
        specificity = float((1 - predicted[truth == 0]).mean()) if (truth == 0).any() else float("nan")
        accuracy[finding] = float((predicted == truth).mean()) if len(truth) else float("nan")
        balanced[finding] = float(np.nanmean([recall[finding], specificity])) if len(truth) else float("nan")

    def mean(values: dict[str, float]) -> float:
        finite = [v for v in values.values() if not np.isnan(v)]
        return float(np.mean(finite)) if finite else float("nan")

    return {
        "accuracy": mean(accuracy),
        "balanced_accuracy": mean(balanced),
        "macro_auc": mean(auc),
        "recall": recall,
        "auc": auc,
        "positives": positives,
    }


class MultiLabelProbe:
    """One binary probe per finding, each fitted on the images whose label is known;
    ``predict_proba`` gives ``N×findings`` probabilities of presence."""

    def __init__(self, make: Callable[[], Any]) -> None:
        self.make = make
        self.models: list[Any] = []

    def fit(self, x: np.ndarray, y: np.ndarray) -> MultiLabelProbe:
        self.models = []
        for j in range(y.shape[1]):
            known = ~np.isnan(y[:, j])
            truth = y[known, j].astype(int)
            if len(set(truth.tolist())) < 2:  # one class only: its frequency (or 0.5 with no label)
                self.models.append(float(truth.mean()) if len(truth) else 0.5)
            else:
                model = self.make()
                if getattr(model, "n_neighbors", 0) > len(truth):
                    model.set_params(n_neighbors=len(truth))
                self.models.append(model.fit(x[known], truth))
        return self

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        columns = [
            np.full(len(x), m) if isinstance(m, float) else m.predict_proba(x)[:, list(m.classes_).index(1)]
            for m in self.models
        ]
        return np.stack(columns, axis=1)


def multilabel_probe_rows(
    features: FeatureSet, labels: dict[str, np.ndarray], findings: list[str], settings: EvaluationSettings
) -> list[dict[str, Any]]:
    """:func:`probe_rows` for multi-label targets: linear (C chosen on val by mean AUC)
    and kNN probes, one binary probe per finding, scored by per-finding AUC."""
    rows = []
    train_y = labels["train"]
    for fraction in settings.label_fractions:
        chosen = np.arange(len(train_y))
        if fraction < 1.0:
            size = max(2, int(round(fraction * len(train_y))))
            chosen = np.sort(np.random.default_rng(settings.seed).choice(len(train_y), size=size, replace=False))
        x, y = features.train[chosen], train_y[chosen]
        for probe_name in settings.probes:
            if probe_name == "linear":
                best_c = 1.0
                if features.val is not None and len(labels.get("val", [])):
                    scores = {}
                    for c in PROBE_C_GRID:
                        fitted = MultiLabelProbe(lambda c=c: linear_probe(c, settings.seed)).fit(x, y)
                        scores[c] = multilabel_metrics(labels["val"], fitted.predict_proba(features.val), findings)[
                            "macro_auc"
                        ]
                    best_c = max(scores, key=lambda c: (np.nan_to_num(scores[c], nan=-1.0), -abs(np.log10(c))))
                model = MultiLabelProbe(lambda c=best_c: linear_probe(c, settings.seed)).fit(x, y)
                extra: dict[str, Any] = {"C": best_c}
            else:
                k = min(settings.knn_k, len(y))
                model = MultiLabelProbe(
                    lambda k=k: KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")
                ).fit(x, y)
                extra = {"k": k}
            proba = model.predict_proba(features.test)
            rows.append(
                {
                    "model": features.model,
                    "probe": probe_name,
                    "label_fraction": fraction,
                    "train_images": int(len(y)),
                    **extra,
                    **multilabel_metrics(labels["test"], proba, findings),
                }
            )
    return rows
