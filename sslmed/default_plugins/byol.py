"""The ``byol`` objective: an online network predicts a momentum (target) network.

BYOL, Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to Self-Supervised
Learning", NeurIPS (arXiv:2006.07733). The online backbone and projection head feed a
prediction head whose output is pulled (negative cosine similarity) towards the target
network's projection of the other view, symmetrised over the two views. The target
network is an exponential moving average of the online one (``SSLMethod.momentum_copy``),
its momentum rising from ``momentum`` to 1 on a cosine schedule. No negatives, so any
batch size works and nothing is gathered under DDP.

Exported backbone: the online (student) one, which the paper evaluates.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod


class BYOLArgs(BaseModel):
    """Arguments of the ``byol`` objective (the paper's heads; momentum for small batches)."""

    model_config = ConfigDict(extra="forbid")
    projection_hidden_dim: int = Field(4096, ge=8, description="hidden width of the projection head (paper: 4096)")
    projection_dim: int = Field(256, ge=8, description="output size of the projection head (paper: 256)")
    prediction_hidden_dim: int = Field(4096, ge=8, description="hidden width of the prediction head (paper: 4096)")
    momentum: float = Field(
        0.99, ge=0, le=1, description="EMA momentum of the target network at the start (paper: 0.996 at batch 4096)"
    )
    momentum_end: float = Field(1.0, ge=0, le=1, description="EMA momentum at the last step (cosine schedule)")


class BYOLMethod(SSLMethod):
    """BYOL: online backbone + projection + prediction against a momentum target network."""

    exported_backbone = "student"

    def __init__(self, backbone: Backbone, args: BYOLArgs) -> None:
        super().__init__(backbone)
        self.args = args
        self.projection_head = BYOLProjectionHead(backbone.feature_dim, args.projection_hidden_dim, args.projection_dim)
        self.prediction_head = BYOLPredictionHead(args.projection_dim, args.prediction_hidden_dim, args.projection_dim)
        self.teacher_backbone = self.momentum_copy(self.backbone)
        self.teacher_projection_head = self.momentum_copy(self.projection_head)
        self.momentum, self.momentum_end = args.momentum, args.momentum_end
        self.criterion = NegativeCosineSimilarity()

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        views = batch["views"][:2]
        p0, p1 = self.prediction_head(self.projection_head(self.encode(views))).chunk(2)
        with torch.no_grad():
            z0, z1 = self.teacher_projection_head(self.teacher_backbone(torch.cat(views))).chunk(2)
        loss = 0.5 * (self.criterion(p0, z1) + self.criterion(p1, z0))
        return {"loss": loss}


def build_byol(args: BYOLArgs, *, backbone: Backbone, **_context: Any) -> BYOLMethod:
    """BYOL: predict a momentum network's projection of the other view (no negatives)."""
    return BYOLMethod(backbone, args)


@hookimpl
def register_objectives(register: Register) -> None:
    register("byol", build_byol, args=BYOLArgs)
