"""Training a network end to end on labels: the supervised-from-scratch reference, and the
loader, optimiser set-up and Trainer that fine-tuning shares with it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torchvision.transforms import v2

from sslmed.core.backbone import Backbone
from sslmed.core.recipe import SupervisedSettings
from sslmed.core.tasks import Task, task_for
from sslmed.evaluation.features import LabelledSplit, device
from sslmed.training.transforms import eval_transform


class SupervisedModule(L.LightningModule):
    """Backbone + linear layer trained with the task's loss: the supervised reference."""

    def __init__(
        self,
        backbone: Backbone,
        n_classes: int,
        lr: float,
        task: Task | None = None,
        class_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.feature_dim, n_classes)
        self.lr = lr
        self.task = task or task_for(None)
        #: one loss weight per class (None: every image alike); see :func:`loss_weights`
        self.class_weight = class_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def training_step(self, batch: Any, _index: int) -> torch.Tensor:
        images, labels = batch
        loss = self.task.loss(self(images), labels, self.class_weight)
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


def loss_weights(
    train: LabelledSplit, fraction: float, seed: int, n_classes: int, class_weight: str
) -> torch.Tensor | None:
    """The class weights of the loss for ``evaluation.class_weight``: balanced over the
    ``fraction`` of ``train`` that :func:`training_loader` reads, or None for ``"none"``."""
    if class_weight == "none":
        return None
    chosen = train.task.subsample(train.labels, fraction, seed)
    return train.task.class_weights(train.labels[chosen], n_classes)


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
    class_weight: str = "balanced",
) -> np.ndarray:
    """Train ``backbone`` from scratch on the labels, return test probabilities;
    ``class_weight``: ``"balanced"`` or ``"none"`` (see :func:`loss_weights`)."""
    L.seed_everything(seed, workers=True, verbose=False)
    task = train.task
    loader = training_loader(train, fraction, seed, image_size, in_channels, settings.batch_size)
    weight = loss_weights(train, fraction, seed, n_classes, class_weight)
    module = SupervisedModule(backbone, n_classes, settings.lr, task, weight)
    trainer = evaluation_trainer(settings.epochs, settings.max_steps)
    trainer.fit(module, loader)
    module.eval().to(device())
    chunks = []
    with torch.inference_mode():
        for images, _labels in test.loader(eval_transform(image_size, in_channels), in_channels, 128):
            chunks.append(task.activate(module(images.to(device())).float()).cpu().numpy())
    return np.concatenate(chunks)
