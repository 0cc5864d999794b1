"""Frozen features -> probes (linear, kNN) -> metrics, with reference rows.

Every results table shows the pre-trained backbone next to the same backbone at
random initialisation, a probe on raw pixels and a supervised-from-scratch model, so
a reader sees what pre-training bought. Probe settings are chosen on the validation
split when the data has one; the test split is only ever scored.

:func:`evaluate` is the one call: it returns the rows and the fitted linear probe;
:mod:`sslmed.results` writes them and :mod:`sslmed.export` exports the probe. What
differs between multi-class and multi-label data is asked of the data's
:class:`~sslmed.tasks.Task`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from torchvision.transforms import v2

from sslmed.checkpoints import load_backbone_weights
from sslmed.data import ImageDataset, ImageRecord, ImageSource
from sslmed.engine import backbone_identity
from sslmed.models import Backbone
from sslmed.recipe import EvaluationSettings, Recipe, SupervisedSettings
from sslmed.registry import Registry
from sslmed.rundir import StepDir
from sslmed.tasks import MULTICLASS, Task, task_for
from sslmed.transforms import eval_transform, image_mode
from sslmed.trust import TrustFit, fit_trust

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
    def task(self) -> Task:
        return task_for(self.source.task)

    @property
    def labels(self) -> np.ndarray:
        """Class indices (``N``), or for multi-label sources targets (``N×findings``, nan: unknown)."""
        return self.task.labels(self.records, len(self.source.classes))

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


def linear_probe(c: float, seed: int) -> Pipeline:
    """Standardised features -> (multinomial) logistic regression."""
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000, random_state=seed))


def knn_probe(k: int) -> KNeighborsClassifier:
    """Cosine-distance-weighted k nearest neighbours."""
    return KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance")


@dataclass
class FeatureSet:
    """Features of the train, (optional) val and test splits for one model."""

    model: str
    train: np.ndarray
    test: np.ndarray
    val: np.ndarray | None = None


def fit_linear(
    task: Task,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray] | None,
    classes: list[str],
    seed: int,
) -> tuple[Any, float]:
    """A linear probe with its regularisation chosen on ``val`` by the task's selection
    score (C=1 without one); ties go to the C nearest 1."""
    best_c = 1.0
    if val is not None and len(val[1]):
        scores = {}
        for c in PROBE_C_GRID:
            probe = task.fit_probe(lambda c=c: linear_probe(c, seed), *train)
            scores[c] = task.selection_score(val[1], task.probe_proba(probe, val[0], len(classes)), classes)
        best_c = max(scores, key=lambda c: (scores[c], -abs(np.log10(c))))
    return task.fit_probe(lambda: linear_probe(best_c, seed), *train), best_c


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
                model, c = fit_linear(task, (x, y), val, classes, settings.seed)
                extra: dict[str, Any] = {"C": c}
            else:
                k = min(settings.knn_k, len(y))
                model = task.fit_probe(lambda k=k: knn_probe(k), x, y)
                extra = {"k": k}
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


class SupervisedModule(L.LightningModule):
    """Backbone + linear layer trained with the task's loss: the supervised reference."""

    def __init__(self, backbone: Backbone, n_classes: int, lr: float, task: Task | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.feature_dim, n_classes)
        self.lr = lr
        self.task = task or task_for(None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, _index: int) -> torch.Tensor:
        images, labels = batch
        loss = self.task.loss(self(images), labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    weight_decay = 1e-4

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups: one learning rate for all here."""
        return [{"params": self.parameters(), "lr": self.lr}]

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(self.param_groups(), weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(1, int(self.trainer.estimated_stepping_batches))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def training_loader(
    train: LabelledSplit,
    fraction: float,
    seed: int,
    image_size: int,
    in_channels: int,
    batch_size: int,
    min_scale: float = 0.6,
) -> torch.utils.data.DataLoader:
    """A shuffled, augmented loader over a class-stratified ``fraction`` of ``train``
    (random-resized crop and flip): what end-to-end training of a backbone reads."""
    chosen = train.task.subsample(train.labels, fraction, seed)
    subset = LabelledSplit(train.source, [train.records[i] for i in chosen])
    augment = v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            eval_transform(image_size, in_channels),
        ]
    )
    return subset.loader(augment, in_channels, min(batch_size, len(subset.records)), shuffle=True)


def evaluation_trainer(epochs: int, max_steps: int, **options: Any) -> L.Trainer:
    """A one-device Trainer that writes nothing (no logs, checkpoints or progress bar):
    what end-to-end evaluation training (supervised reference, fine-tuning) runs on."""
    return L.Trainer(
        max_epochs=epochs,
        max_steps=max_steps,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **options,
    )


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
    task = train.task
    loader = training_loader(train, fraction, seed, image_size, in_channels, settings.batch_size)
    module = SupervisedModule(backbone, n_classes, settings.lr, task)
    trainer = evaluation_trainer(settings.epochs, settings.max_steps)
    trainer.fit(module, loader)
    module.eval().to(device())
    chunks = []
    with torch.inference_mode():
        for images, _labels in test.loader(eval_transform(image_size, in_channels), in_channels, 128):
            chunks.append(task.activate(module(images.to(device())).float()).cpu().numpy())
    return np.concatenate(chunks)


@dataclass
class Evaluation:
    """What :func:`evaluate` found: the results rows, and the pre-trained backbone with the
    linear probe fitted on all its training labels (None without a linear probe)."""

    rows: list[dict[str, Any]]
    classes: list[str]
    task: Task
    backbone: Backbone
    linear: Any = None
    model: str = ""
    #: the linear probe's temperature and OOD score (multi-class only; see :mod:`sslmed.trust`)
    trust: TrustFit | None = None


def evaluate(recipe: Recipe, registry: Registry, step_dir: StepDir, source: ImageSource) -> Evaluation:
    """Probe the backbone exported in ``step_dir`` (the recipe's probed step) and its
    references on ``source``, as the recipe's ``evaluation`` section says."""
    settings = recipe.evaluation
    assert settings is not None  # callers check; the message is theirs
    step = recipe.probed_step()
    task = task_for(source.task)

    def labelled(split: str) -> LabelledSplit:  # unlabelled images are for pre-training only
        return LabelledSplit(source, [r for r in source.records(split) if r.is_labelled])

    splits = {"train": labelled(settings.train_split), "test": labelled(settings.test_split)}
    if "val" in source.splits and settings.train_split != "val" and settings.test_split != "val":
        splits["val"] = labelled("val")
    labels = {name: split.labels for name, split in splits.items()}
    size, channels, batch = step.image_size, step.in_channels, settings.batch_size

    def build_backbone() -> Any:
        L.seed_everything(settings.seed, verbose=False)
        return registry.build("backbone", step.backbone.spec(), in_channels=channels)

    pretrained = build_backbone()
    load_backbone_weights(step_dir.path, pretrained, expect=backbone_identity(step))
    log.info("evaluation: probing step %s on %s", step.name, settings.data)
    name = f"sslmed:{step.name}"
    models: dict[str, Backbone | None] = {name: pretrained}
    if "random_init" in settings.baselines:
        models["random_init"] = build_backbone()
    if "raw_pixels" in settings.baselines:
        models["raw_pixels"] = RAW_PIXELS
    per_split = {k: extract_features(models, s, size, channels, batch) for k, s in splits.items()}
    result = Evaluation([], source.classes, task, pretrained, model=name)
    for model in models:
        features = FeatureSet(
            model, per_split["train"][model], per_split["test"][model], per_split.get("val", {}).get(model)
        )
        probed = probe_rows(features, labels, source.classes, settings, task)
        result.rows += probed.rows
        if model == name:
            result.linear = probed.linear
            if settings.trust and probed.linear is not None and task.name == MULTICLASS.name:
                log.info("evaluation: calibrating the linear probe and fitting the out-of-distribution score")
                result.trust = fit_trust(
                    probed.linear,
                    len(source.classes),
                    (features.train, labels["train"]),
                    (features.test, labels["test"]),
                    (features.val, labels["val"]) if features.val is not None else None,
                    seed=settings.seed,
                )
    if "supervised" in settings.baselines and not task.supervised_reference:
        log.warning("evaluation: the supervised reference is not available for multi-label data yet; skipped")
    elif "supervised" in settings.baselines:
        log.info("evaluation: training the supervised reference")
        for fraction in settings.label_fractions:
            proba = supervised_proba(
                build_backbone(),
                splits["train"],
                splits["test"],
                len(source.classes),
                size,
                channels,
                settings.supervised,
                settings.seed,
                fraction,
            )
            row = {
                "model": "supervised",
                "probe": "end-to-end",
                "label_fraction": fraction,
                "train_images": int(len(splits["train"].records) * fraction),
                **task.metrics(labels["test"], proba, source.classes),
            }
            kept = task.predictions(labels["test"], proba)
            if kept is not None:
                row["test_predictions"] = kept
            result.rows.append(row)
    if settings.finetune is not None and task.supervised_reference:
        from sslmed.finetune import finetune_rows  # it builds on this module

        def pretrained_copy() -> Backbone:
            backbone = build_backbone()
            load_backbone_weights(step_dir.path, backbone, expect=backbone_identity(step))
            return backbone

        tuned = {name: pretrained_copy, "random_init": build_backbone}  # same network, same seed, same schedule
        result.rows += finetune_rows(tuned, splits, source.classes, size, channels, settings)
    return result
