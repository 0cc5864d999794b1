"""The ``dino`` objective: self-distillation with no labels, on a CNN backbone.

DINO, Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers",
ICCV (arXiv:2104.14294); the paper trains ResNet-50 too, as here. A student (backbone +
DINO head) is trained to match, by cross-entropy, the sharpened and centred softmax of a
teacher, an exponential moving average of the student, across views: the teacher sees
the global views, the student every view (``multicrop``: 2 global + N local crops; with
the two ``simclr`` views it is plain two-view DINO). The centre is a moving average of
the teacher's outputs, averaged over processes under DDP (lightly's ``DINOLoss``), and is
kept in checkpoints with the teacher.

Exported backbone: the teacher, which the paper evaluates (it is the better one).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod


class DINOArgs(BaseModel):
    """Arguments of the ``dino`` objective (the paper's ResNet settings; a smaller output for small data)."""

    model_config = ConfigDict(extra="forbid")
    hidden_dim: int = Field(2048, ge=8, description="hidden width of the DINO head (paper: 2048)")
    bottleneck_dim: int = Field(256, ge=8, description="bottleneck before the last layer (paper: 256)")
    output_dim: int = Field(4096, ge=8, description="prototypes (paper: 65536 on ImageNet; fewer for small data)")
    batch_norm: bool = Field(True, description="batch norm in the head (the paper's ResNet-50 setting)")
    teacher_temp: float = Field(0.04, gt=0, description="teacher temperature after the warm-up (paper: 0.04)")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature at the start (paper: 0.04)")
    warmup_teacher_temp_steps: int = Field(0, ge=0, description="optimiser steps of linear temperature warm-up")
    student_temp: float = Field(0.1, gt=0, description="student temperature (paper: 0.1)")
    center_momentum: float = Field(0.9, ge=0, le=1, description="momentum of the teacher centre (paper: 0.9)")
    freeze_last_layer_steps: int = Field(
        0, ge=0, description="optimiser steps the head's last layer stays frozen (paper: one epoch)"
    )
    momentum: float = Field(0.996, ge=0, le=1, description="EMA momentum of the teacher at the start (paper: 0.996)")
    momentum_end: float = Field(1.0, ge=0, le=1, description="EMA momentum at the last step (cosine schedule)")


def same_size_runs(views: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``views`` cut into runs of consecutive views of one shape."""
    runs: list[list[torch.Tensor]] = []
    for view in views:
        if runs and runs[-1][0].shape == view.shape:
            runs[-1].append(view)
        else:
            runs.append([view])
    return runs


class DINOMethod(SSLMethod):
    """DINO: a student matching a momentum teacher's centred, sharpened outputs across crops."""

    exported_backbone = "teacher"

    def __init__(self, backbone: Backbone, args: DINOArgs) -> None:
        super().__init__(backbone)
        self.args = args
        self.head = self.make_head(backbone.feature_dim)
        self.teacher_backbone = self.momentum_copy(self.backbone)
        self.teacher_head = self.momentum_copy(self.head, fresh=self.make_head(backbone.feature_dim))
        self.momentum, self.momentum_end = args.momentum, args.momentum_end
        self.criterion = DINOLoss(
            output_dim=args.output_dim,
            warmup_teacher_temp=args.warmup_teacher_temp,
            teacher_temp=args.teacher_temp,
            warmup_teacher_temp_epochs=1,
            student_temp=args.student_temp,
            center_momentum=args.center_momentum,
        )

    def make_head(self, feature_dim: int) -> DINOProjectionHead:
        a = self.args
        return DINOProjectionHead(feature_dim, a.hidden_dim, a.bottleneck_dim, a.output_dim, batch_norm=a.batch_norm)

    def export_backbone(self) -> Backbone:
        return cast(Backbone, self.teacher_backbone)  # a momentum copy of the backbone

    def teacher_temperature(self) -> float:
        a = self.args
        if a.warmup_teacher_temp_steps <= 0:
            return a.teacher_temp
        progress = min(1.0, self.global_step / a.warmup_teacher_temp_steps)
        return a.warmup_teacher_temp + progress * (a.teacher_temp - a.warmup_teacher_temp)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        views = batch["views"]
        global_views, local_views = views[:2], views[2:]
        student = list(self.head(self.encode(global_views)).chunk(2))
        for group in same_size_runs(local_views):  # one backbone pass per crop size
            student += list(self.head(self.encode(group)).chunk(len(group)))
        with torch.no_grad():
            teacher = list(self.teacher_head(self.teacher_backbone(torch.cat(global_views))).chunk(2))
        loss = self.criterion(teacher, student, teacher_temp=self.teacher_temperature())
        return {"loss": loss}

    def on_after_backward(self) -> None:
        if self.global_step < self.args.freeze_last_layer_steps:
            for parameter in self.head.last_layer.parameters():
                parameter.grad = None


def build_dino(args: DINOArgs, *, backbone: Backbone, **_context: Any) -> DINOMethod:
    """DINO: self-distillation from a momentum teacher across global and local crops."""
    return DINOMethod(backbone, args)


@hookimpl
def register_objectives(register: Register) -> None:
    register("dino", build_dino, args=DINOArgs)
