"""The base LightningModule of every self-supervised method.

An objective plugin returns a subclass of :class:`SSLMethod` that implements
:meth:`SSLMethod.compute_losses`. The base class owns what every method shares: the
backbone, the optimiser and learning-rate schedule from the recipe step, and the
logging of every loss term.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from sslmed.core.backbone import Backbone
from sslmed.core.recipe import OptimizerSettings, ScheduleSettings


class SSLMethod(L.LightningModule):
    """A self-supervised method: a backbone plus whatever heads its objective needs."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.optimizer_settings = OptimizerSettings()
        self.schedule_settings = ScheduleSettings()
        self.device_views: Callable[..., dict[str, Any]] | None = None
        self._views_seed = 0
        self._views_generator: torch.Generator | None = None

    def set_device_views(self, pipeline: Callable[..., dict[str, Any]] | None, seed: int = 0) -> None:
        """Make the views on the training device from uint8 batches (None: the loader makes them).

        Each process draws from its own generator, seeded from ``seed`` and its global
        rank, so a run is reproducible and ranks do not repeat each other's draws."""
        self.device_views = pipeline
        self._views_seed = seed
        self._views_generator = None

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Augment a uint8 batch on the device when :meth:`set_device_views` asked for it."""
        if self.device_views is None or not isinstance(batch, (list, tuple)) or not torch.is_tensor(batch[0]):
            return batch
        images, labels = batch
        if self._views_generator is None or self._views_generator.device != images.device:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._views_generator = torch.Generator(device=images.device).manual_seed(
                self._views_seed + 7919 * (rank + 1)
            )
        return self.device_views(images, self._views_generator), labels

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
