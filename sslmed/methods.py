"""The base LightningModule of every self-supervised method.

An objective plugin returns a subclass of :class:`SSLMethod` that implements
:meth:`SSLMethod.compute_losses`. The base class owns what every method shares: the
backbone, the optimiser and learning-rate schedule from the recipe step, and the
logging of every loss term.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from sslmed.models import Backbone
from sslmed.recipe import OptimizerSettings, ScheduleSettings


class SSLMethod(L.LightningModule):
    """A self-supervised method: a backbone plus whatever heads its objective needs."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_settings = OptimizerSettings()
        self.schedule_settings = ScheduleSettings()

    def configure_training(self, optimizer: OptimizerSettings, schedule: ScheduleSettings) -> None:
        """Take the step's optimiser and schedule (called by the engine before fitting)."""
        self.optimizer_settings = optimizer
        self.schedule_settings = schedule

    def extra_exports(self) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
        """Modules besides the backbone worth exporting, by name: ``(module, description)``.

        The description must let a reader rebuild the module, e.g. for a decoder
        ``{"kind": "decoder", "spec": {...}, "image_size": 64, "out_channels": 1}``.
        The engine writes each as ``<name>.safetensors`` beside the backbone export and
        evaluation copies them into the model export (the demo shows a CRSM decoder's
        reconstruction this way).
        """
        return {}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; ``"loss"`` is the one optimised."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        views, _labels = batch
        losses = self.compute_losses(views)
        batch_size = views["views"][0].shape[0]
        self.log_dict(
            {f"train/{name}": value.detach() for name, value in losses.items()},
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=batch_size,
            sync_dist=False,
        )
        return losses["loss"]

    def configure_optimizers(self) -> Any:
        settings = self.optimizer_settings
        params = [p for p in self.parameters() if p.requires_grad]
        if settings.name == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
            )
        elif settings.name == "adam":
            optimizer = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = int(self.schedule_settings.warmup_epochs * steps_per_epoch)
        cosine = self.schedule_settings.name == "cosine"

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
