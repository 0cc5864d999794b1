"""The ``moco`` objective: contrast against a momentum encoder's keys, with a queue.

MoCo v2, Chen et al. 2020, "Improved Baselines with Momentum Contrastive Learning"
(arXiv:2003.04297), after He et al. 2020, "Momentum Contrast for Unsupervised Visual
Representation Learning", CVPR. A query (student backbone + MLP head) of one view is
contrasted (InfoNCE, lightly's ``NTXentLoss`` with a memory bank) with the key of the
other view from the momentum encoder, the negatives being a queue of past keys
(lightly's ``MemoryBankModule``). Under DDP the keys of every process are gathered before
they enter the queue, so every process holds the same queue. The queue is kept in
checkpoints, so a resumed step continues with the same negatives.

``queue_size: 0`` is the MoCo v3 recipe (Chen, Xie and He 2021, "An Empirical Study of
Training Self-Supervised Vision Transformers", ICCV) on a CNN: a prediction head on the
query side, a symmetrised loss, and the other keys of the batch (gathered across
processes) as negatives, with no queue.

Exported backbone: the query (student) encoder, which the papers evaluate. Shuffle-BN is
not implemented: under DDP use ``sync_batchnorm: true``.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import BYOLPredictionHead, MoCoProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod


class MoCoArgs(BaseModel):
    """Arguments of the ``moco`` objective (MoCo v2's; the queue sized for small data)."""

    model_config = ConfigDict(extra="forbid")
    projection_hidden_dim: int = Field(2048, ge=8, description="hidden width of the MLP head (v2: 2048)")
    projection_dim: int = Field(128, ge=8, description="output size of the MLP head (v2: 128)")
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature (v2: 0.2)")
    queue_size: int = Field(
        4096, ge=0, description="negatives kept from past batches (v2: 65536 on ImageNet); 0: MoCo v3 style, no queue"
    )
    symmetric: bool = Field(False, description="also contrast the second view's query (v2: no; v3 style: always)")
    prediction_hidden_dim: int = Field(4096, ge=8, description="v3 style only: hidden width of the prediction head")
    momentum: float = Field(
        0.99, ge=0, le=1, description="EMA momentum of the key encoder at the start (v2: 0.999 at batch 256)"
    )
    momentum_end: float = Field(1.0, ge=0, le=1, description="EMA momentum at the last step (cosine schedule)")


class MoCoMethod(SSLMethod):
    """MoCo: queries against momentum-encoded keys, negatives from a queue (or the batch)."""

    exported_backbone = "student"

    def __init__(self, backbone: Backbone, args: MoCoArgs) -> None:
        super().__init__(backbone)
        self.args = args
        self.projection_head = MoCoProjectionHead(backbone.feature_dim, args.projection_hidden_dim, args.projection_dim)
        self.prediction_head = None
        if args.queue_size == 0:
            self.prediction_head = BYOLPredictionHead(
                args.projection_dim, args.prediction_hidden_dim, args.projection_dim
            )
        self.teacher_backbone = self.momentum_copy(self.backbone)
        self.teacher_projection_head = self.momentum_copy(self.projection_head)
        self.momentum, self.momentum_end = args.momentum, args.momentum_end
        bank = (args.queue_size, args.projection_dim) if args.queue_size else 0
        self.criterion = NTXentLoss(temperature=args.temperature, memory_bank_size=bank, gather_distributed=True)
        if args.queue_size:  # lightly keeps the queue out of the state dict: resume needs it
            memory = self.criterion.memory_bank
            memory.register_buffer("bank", memory.bank, persistent=True)
            memory.register_buffer("bank_ptr", memory.bank_ptr, persistent=True)

    def query(self, views: list[torch.Tensor]) -> torch.Tensor:
        q = self.projection_head(self.encode(views))
        return q if self.prediction_head is None else self.prediction_head(q)

    @torch.no_grad()
    def key(self, views: list[torch.Tensor]) -> torch.Tensor:
        return self.teacher_projection_head(self.teacher_backbone(torch.cat(views)))

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        v0, v1 = batch["views"][:2]
        if self.args.queue_size and not self.args.symmetric:
            return {"loss": self.criterion(self.query([v0]), self.key([v1]))}
        q0, q1 = self.query([v0, v1]).chunk(2)
        k0, k1 = self.key([v0, v1]).chunk(2)
        return {"loss": 0.5 * (self.criterion(q0, k1) + self.criterion(q1, k0))}


def build_moco(args: MoCoArgs, *, backbone: Backbone, **_context: Any) -> MoCoMethod:
    """MoCo v2: queries against momentum-encoded keys and a queue of negatives (queue_size 0: v3 style)."""
    return MoCoMethod(backbone, args)


@hookimpl
def register_objectives(register: Register) -> None:
    register("moco", build_moco, args=MoCoArgs)
