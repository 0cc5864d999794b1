"""Fine-tuning evaluation: the backbone trained end to end with a classifier head.

Beside the frozen-feature probes, a reviewer asks what the pre-trained weights are
worth as a starting point: the backbone and a linear head are trained together on
1%, 10% or 100% of the labels, the backbone at a fraction of the head's learning rate
(so the pre-trained features are adjusted, not overwritten), with early stopping on the
validation split (the best epoch's weights are kept; the test split is only scored).
The same network and schedule from random initialisation is the reference row. With a
validation split, each row also reports temperature scaling fitted there (``calibration``:
ECE and Brier score on the test split before and after; see :mod:`sslmed.evaluation.calibration`).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from sslmed.core.backbone import Backbone
from sslmed.core.recipe import EvaluationSettings, FineTuneSettings, SupervisedSettings
from sslmed.core.tasks import MULTICLASS
from sslmed.evaluation.calibration import calibrate
from sslmed.evaluation.features import LabelledSplit, device
from sslmed.evaluation.supervised import SupervisedModule, evaluation_trainer, loss_weights, training_loader
from sslmed.training.transforms import eval_transform

log = logging.getLogger(__name__)


class FineTuneModule(SupervisedModule):
    """Backbone + linear head; the backbone learns at ``backbone_lr_ratio`` times the
    head's rate; the weights of the best validation epoch are kept."""

    def __init__(
        self,
        backbone: Backbone,
        n_classes: int,
        settings: FineTuneSettings,
        class_weight: torch.Tensor | None = None,
    ) -> None:
        # multi-class: softmax, (class-weighted) cross-entropy
        super().__init__(backbone, n_classes, settings.lr, class_weight=class_weight)
        self.settings = settings
        self.weight_decay = settings.weight_decay
        self.best_score = -np.inf
        self.best_state: dict[str, torch.Tensor] | None = None
        self._val: list[tuple[torch.Tensor, torch.Tensor]] = []

    def validation_step(self, batch: Any, _index: int) -> None:
        images, labels = batch
        self._val.append((self(images).argmax(dim=1).cpu(), labels.cpu()))

    def on_validation_epoch_end(self) -> None:
        predicted = torch.cat([p for p, _ in self._val]).numpy()
        truth = torch.cat([t for _, t in self._val]).numpy()
        self._val.clear()
        score = float(balanced_accuracy_score(truth, predicted))
        self.log("val/balanced_accuracy", score)
        if score > self.best_score and not self.trainer.sanity_checking:
            self.best_score = score
            self.best_state = copy.deepcopy(self.state_dict())

    def param_groups(self) -> list[dict[str, Any]]:
        return [
            {"params": self.backbone.parameters(), "lr": self.settings.lr * self.settings.backbone_lr_ratio},
            {"params": self.head.parameters(), "lr": self.settings.lr},
        ]


def finetune_proba(
    backbone: Backbone,
    train: LabelledSplit,
    val: LabelledSplit | None,
    test: LabelledSplit,
    n_classes: int,
    image_size: int,
    in_channels: int,
    settings: FineTuneSettings,
    seed: int,
    fraction: float = 1.0,
    class_weight: str = "balanced",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Fine-tune ``backbone`` (pre-trained or freshly initialised) with a head on a
    class-stratified ``fraction`` of ``train``; return test probabilities and what
    happened (epochs run, best validation balanced accuracy, the class weighting).
    ``class_weight``: ``"balanced"`` or ``"none"`` (see :func:`~sslmed.evaluation.supervised.loss_weights`)."""
    _module, proba, info = finetune_model(
        backbone, train, val, test, n_classes, image_size, in_channels, settings, seed, fraction, class_weight
    )
    return proba, info


def finetune_model(
    backbone: Backbone,
    train: LabelledSplit,
    val: LabelledSplit | None,
    test: LabelledSplit,
    n_classes: int,
    image_size: int,
    in_channels: int,
    settings: FineTuneSettings,
    seed: int,
    fraction: float = 1.0,
    class_weight: str = "balanced",
) -> tuple[FineTuneModule, np.ndarray, dict[str, Any]]:
    """:func:`finetune_proba`, also returning the fine-tuned module (backbone + head, with
    the weights of its best validation epoch)."""
    L.seed_everything(seed, workers=True, verbose=False)
    loader = training_loader(train, fraction, seed, image_size, in_channels, settings.batch_size, settings.min_scale)
    val_loader = val.loader(eval_transform(image_size, in_channels), in_channels, 256) if val else None
    weight = loss_weights(train, fraction, seed, n_classes, class_weight)
    module = FineTuneModule(backbone, n_classes, settings, weight)
    callbacks = []
    if val_loader is not None:
        # checked after each validation only; strict=False: a run cut short by max_steps may never validate
        stop = EarlyStopping(
            "val/balanced_accuracy",
            mode="max",
            patience=settings.patience,
            strict=False,
            check_on_train_epoch_end=False,
        )
        callbacks.append(stop)
    trainer = evaluation_trainer(settings.epochs, settings.max_steps, callbacks=callbacks, num_sanity_val_steps=0)
    trainer.fit(module, loader, val_loader)
    if module.best_state is not None:  # early stopping: score the best validation epoch, not the last
        module.load_state_dict(module.best_state)
    module.eval().to(device())
    test_logits = split_logits(module, test, image_size, in_channels)
    info: dict[str, Any] = {
        "epochs_run": int(trainer.current_epoch),
        "val_balanced_accuracy": None if val_loader is None else round(float(module.best_score), 5),
        "backbone_lr": settings.lr * settings.backbone_lr_ratio,
        "class_weight": class_weight,
    }
    if val is not None and module.task.name == MULTICLASS.name and len(val.records):
        # temperature scaling on the validation split, as for the exported linear probe
        val_logits = split_logits(module, val, image_size, in_channels)
        info["calibration"] = calibrate(val_logits, val.labels, test_logits, test.labels).summary()
    return module, module.task.activate(torch.from_numpy(test_logits)).numpy(), info


def head_as_probe(head: torch.nn.Linear) -> Pipeline:
    """A fine-tuned multi-class head as the fitted ``StandardScaler`` + ``LogisticRegression``
    pipeline the export, the calibration and the OOD fit take (identity scaler), giving
    the same probabilities: softmax of the head's logits."""
    weight = head.weight.detach().double().cpu().numpy()
    bias = head.bias.detach().double().cpu().numpy()
    if len(bias) == 2:  # scikit-learn's binary form: p(class 1) = sigmoid((w1 - w0) x + b1 - b0)
        weight, bias = (weight[1] - weight[0])[None], np.array([bias[1] - bias[0]])
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = (
        np.zeros(head.in_features),
        np.ones(head.in_features),
        np.ones(head.in_features),
    )
    scaler.n_features_in_ = head.in_features
    logistic = LogisticRegression()
    logistic.coef_, logistic.intercept_, logistic.classes_ = weight, bias, np.arange(head.out_features)
    logistic.n_features_in_ = head.in_features
    return Pipeline([("standardscaler", scaler), ("logisticregression", logistic)])


def supervised_schedule(settings: SupervisedSettings) -> FineTuneSettings:
    """The supervised-from-scratch reference as a fine-tuning schedule: the whole network at
    one learning rate, early-stopped on validation (``patience``) within ``epochs``."""
    return FineTuneSettings(
        epochs=settings.epochs,
        max_steps=settings.max_steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        backbone_lr_ratio=1.0,
        patience=settings.patience,
    )


def split_logits(module: torch.nn.Module, split: LabelledSplit, image_size: int, in_channels: int) -> np.ndarray:
    """The model's logits for every image of ``split`` (evaluation transform)."""
    chunks = []
    with torch.inference_mode():
        for images, _labels in split.loader(eval_transform(image_size, in_channels), in_channels, 256):
            chunks.append(module(images.to(device())).float().cpu().numpy())
    return np.concatenate(chunks)


def finetune_rows(
    models: dict[str, Callable[[], Backbone]],
    splits: dict[str, LabelledSplit],
    classes: list[str],
    image_size: int,
    in_channels: int,
    settings: EvaluationSettings,
    fractions: list[float] | None = None,
    keep: dict[tuple[str, float], FineTuneModule | None] | None = None,
) -> list[dict[str, Any]]:
    """One ``fine-tune`` results row per model and label fraction (``fractions``, else
    ``finetune.label_fractions``, else the evaluation's). ``models`` maps a row name to a
    factory of a fresh backbone (pre-trained weights loaded, or random init), so each
    fraction starts from the same weights. Each ``(name, fraction)`` key of ``keep`` gets
    that fine-tuned module (backbone + head, its best validation epoch), e.g. for the model export."""
    assert settings.finetune is not None
    rows = []
    for fraction in fractions or settings.finetune.label_fractions or settings.label_fractions:
        for name, make in models.items():
            log.info("evaluation: fine-tuning %s on %.0f%% of the labels", name, 100 * fraction)
            module, proba, info = finetune_model(
                make(),
                splits["train"],
                splits.get("val"),
                splits["test"],
                len(classes),
                image_size,
                in_channels,
                settings.finetune,
                settings.seed,
                fraction,
                settings.class_weight,
            )
            test, task = splits["test"], splits["test"].task
            rows.append(
                {
                    "model": name,
                    "probe": "fine-tune",
                    "label_fraction": fraction,
                    "train_images": len(task.subsample(splits["train"].labels, fraction, settings.seed)),
                    **info,
                    **task.metrics(test.labels, proba, classes),
                    "test_predictions": task.predictions(test.labels, proba),
                }
            )
            if keep is not None and (name, fraction) in keep:
                keep[(name, fraction)] = module
    return rows
