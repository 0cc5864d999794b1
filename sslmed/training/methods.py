"""The base LightningModule of every self-supervised method.

An objective plugin returns a subclass of :class:`SSLMethod` that implements
:meth:`SSLMethod.compute_losses`. The base class owns what every method shares: the
backbone, the optimiser and learning-rate schedule from the recipe step, the logging
of every loss term, and three things a method opts into:

- **momentum encoders** (:meth:`SSLMethod.momentum_copy`): a frozen copy of a module,
  updated after every optimiser step as an exponential moving average of the original,
  its momentum following lightly's ``cosine_schedule`` from ``momentum`` to
  ``momentum_end`` over the step's optimiser steps. The copies are submodules, so they
  are in every checkpoint and a resumed step continues them exactly;
- **the exported backbone** (:meth:`SSLMethod.export_backbone`): the student by
  default, a method's teacher where its paper evaluates that one (DINO);
- **reconstruction** (:meth:`SSLMethod.add_reconstruction`, the recipe step's
  ``reconstruction:``): a decoder rebuilding the clean global views from the feature
  maps that :meth:`SSLMethod.encode` computed for the objective anyway, its loss added
  with a weight to whatever the objective optimises.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightly.models.utils import update_momentum
from lightly.utils import dist as lightly_dist
from lightly.utils.scheduler import cosine_schedule

from sslmed.core.backbone import Backbone
from sslmed.core.errors import TrainingDiverged
from sslmed.core.recipe import OptimizerSettings, ReconstructionSettings, ScheduleSettings


def gather_batch(z: torch.Tensor) -> torch.Tensor:
    """``z`` of every process, concatenated in rank order (``z`` itself on one process).

    Gradients flow back to each process's own part (lightly's ``GatherLayer``), so a loss
    computed on the gathered batch on every process gives, after DDP averages the
    gradients, the gradient of the same loss computed by one process on the whole batch.
    Losses of batch statistics (Barlow Twins, VICReg) need this; per-sample losses do not.
    """
    if lightly_dist.world_size() == 1:
        return z
    return torch.cat(lightly_dist.gather(z), dim=0)


def pixel_loss(kind: str, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The reconstruction loss between a decoder's output and its target (``mse`` or ``l1``)."""
    if kind == "l1":
        return torch.nn.functional.l1_loss(output.float(), target.float())
    return torch.nn.functional.mse_loss(output.float(), target.float())


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
        self.momentum_pairs: list[tuple[torch.nn.Module, torch.nn.Module]] = []
        self.momentum = 0.99
        self.momentum_end = 1.0
        self.reconstruction: ReconstructionSettings | None = None
        self.decoder: torch.nn.Module | None = None
        self._decoder_description: dict[str, Any] = {}
        self._encoded: list[tuple[list[torch.Tensor], torch.Tensor]] = []
        self._last_loss: torch.Tensor | None = None  # this optimiser step's, for the finiteness check

    # ---- momentum encoders
    def momentum_copy(self, module: torch.nn.Module, fresh: torch.nn.Module | None = None) -> torch.nn.Module:
        """A frozen copy of ``module`` that follows it as an exponential moving average
        (updated after every optimiser step; see :meth:`momentum_at`).

        ``fresh``: a newly built module of the same shape to hold the copy, for modules
        that cannot be deep-copied (``torch.nn.utils.weight_norm``)."""
        if fresh is None:
            teacher = copy.deepcopy(module)
        else:
            teacher = fresh
            teacher.load_state_dict(module.state_dict())
        for parameter in teacher.parameters():
            parameter.requires_grad = False
        self.momentum_pairs.append((module, teacher))
        return teacher

    def momentum_at(self, step: int) -> float:
        """The EMA momentum after optimiser step ``step``: cosine from ``momentum`` to
        ``momentum_end`` over the step's optimiser steps (lightly's ``cosine_schedule``)."""
        if self._trainer is None:  # outside a fit: the starting momentum
            return self.momentum
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return float(cosine_schedule(min(step, total), total, self.momentum, self.momentum_end))

    @torch.no_grad()
    def update_momentum_encoders(self, step: int) -> None:
        """Move every momentum copy towards its module, with the momentum of ``step``."""
        if not self.momentum_pairs:
            return
        m = self.momentum_at(step)
        for module, teacher in self.momentum_pairs:
            update_momentum(module, teacher, m)

    @torch.no_grad()
    def backbone_initialised(self) -> None:
        """The student's weights were replaced (``init_from``): the copies start from them again."""
        for module, teacher in self.momentum_pairs:
            teacher.load_state_dict(module.state_dict())

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.update_momentum_encoders(self.trainer.global_step)

    # ---- the backbone that is exported
    #: which of the method's backbones :meth:`export_backbone` returns, for the run's metadata
    exported_backbone = "student"

    def export_backbone(self) -> Backbone:
        """The backbone written to ``backbone.safetensors`` (the one the paper evaluates)."""
        return self.backbone

    # ---- encoding, and reconstruction on top of any objective
    def encode(self, views: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled student features of ``views`` (same size, concatenated in order), in one
        backbone pass. With reconstruction on, the feature maps are kept for it."""
        x = torch.cat(list(views))
        if self.reconstruction is None:
            return self.backbone(x)
        feature_map = self.backbone.forward_features(x)
        if type(self.backbone).forward is Backbone.forward:
            pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)
        else:  # a backbone with its own pooling
            pooled = self.backbone(x)
        self._encoded.append((list(views), feature_map))
        return pooled

    def add_reconstruction(
        self, decoder: torch.nn.Module, settings: ReconstructionSettings, image_size: int, out_channels: int
    ) -> None:
        """Add ``settings.weight`` × the pixel loss of ``decoder`` rebuilding the clean
        global views from their feature maps to the objective's loss."""
        self.decoder = decoder
        self.reconstruction = settings
        self._decoder_description = {
            "kind": "decoder",
            "spec": settings.decoder.spec(),
            "image_size": image_size,
            "out_channels": out_channels,
        }

    def reconstruction_weight(self) -> float:
        """λ at the current optimiser step (after the linear warm-up, the recipe's λ)."""
        assert self.reconstruction is not None
        weight, warmup = self.reconstruction.weight, self.reconstruction.warmup_steps
        if warmup <= 0:
            return weight
        return weight * min(1.0, (self.global_step + 1) / warmup)

    def reconstruction_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        """The pixel loss of the decoder on the global views :meth:`encode` saw this batch."""
        assert self.reconstruction is not None and self.decoder is not None
        views = batch["views"]
        clean = batch.get("clean") or views
        wanted = 1 if self.reconstruction.reconstruct == "first" else 2
        maps, targets = [], []
        for encoded, feature_map in self._encoded:
            for index, part in enumerate(feature_map.split([v.shape[0] for v in encoded])):
                view = encoded[index]
                position = next((i for i in range(wanted) if views[i] is view), None)
                if position is not None:
                    maps.append(part)
                    targets.append(clean[position])
        self._encoded = []
        if not maps:
            raise RuntimeError(
                f"{type(self).__name__} computes no feature map through SSLMethod.encode, "
                "so reconstruction has nothing to decode"
            )
        return pixel_loss(self.reconstruction.loss, self.decoder(torch.cat(maps)), torch.cat(targets))

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
        if self.decoder is None:
            return {}
        return {"decoder": (self.decoder, dict(self._decoder_description))}

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Loss terms for one batch; ``"loss"`` is the one optimised."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_index: int) -> torch.Tensor:
        views, _labels = batch
        self._encoded = []
        losses = self.compute_losses(views)
        if self.reconstruction is not None:  # the step's reconstruction (crsm adds its own in compute_losses)
            reconstruction = self.reconstruction_loss(views)
            losses = {
                **losses,
                "loss": losses["loss"] + self.reconstruction_weight() * reconstruction,
                "objective": losses["loss"].detach(),
                "reconstruction": reconstruction.detach(),
            }
        self._last_loss = losses["loss"].detach()  # checked with the gradients, in one sync per step
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

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        # the loss and one fused norm over every gradient, read in one host sync (milliseconds
        # against a step's hundreds): a non-finite gradient would make every weight NaN at this
        # optimiser step, and the loss shows it only steps later
        if self._trainer is not None and str(self.trainer.precision).startswith("16"):
            return  # fp16's loss scaler expects overflowing gradients now and then: it skips those steps
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        loss = self._last_loss if self._last_loss is not None else torch.zeros((), device=self.device)
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros_like(loss)
        if torch.isfinite(torch.stack([loss.float(), norm.float()])).all():
            return
        if not torch.isfinite(loss):
            raise self.diverged(f"the loss is {loss.item()}")
        named = self.named_parameters()
        bad = next(name for name, p in named if p.grad is not None and not p.grad.isfinite().all())
        raise self.diverged(f"the gradient of {bad} is not finite")

    def diverged(self, what: str) -> TrainingDiverged:
        """The error that stops a step whose training stopped being finite, with the likely cause."""
        precision = str(self.trainer.precision) if self._trainer is not None else "32-true"
        hint = "lower the learning rate, or clip gradients"
        if precision.startswith("bf16") and self.device.type == "cpu":
            # measured (torch 2.14.1, oneDNN, AVX-512 BF16): the weight gradient of a strided
            # 3x3 convolution over a 1x1 map is left partly uninitialised under bf16, e.g.
            # ResNet-18's layer4 for inputs under 17 px (DINO's local crops at image_size 32)
            hint = (
                "on a CPU, bf16 convolution gradients are wrong where a feature map is 1x1 "
                "(ResNet inputs under 17 px, e.g. local crops at image_size 32): "
                "use precision: 32-true or a larger image_size, or " + hint
            )
        return TrainingDiverged(
            f"training diverged at optimiser step {self.global_step} (precision {precision}): {what}; "
            f"nothing of this step was exported; {hint}"
        )

    def configure_optimizers(self) -> Any:
        settings = self.optimizer_settings
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer: torch.optim.Optimizer
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
