"""The ``barlow_twins`` objective: the cross-correlation of two views towards the identity.

Barlow Twins, Zbontar et al. 2021, "Barlow Twins: Self-Supervised Learning via
Redundancy Reduction", ICML (arXiv:2103.03230). A projector maps both views; each
dimension is standardised over the batch, and the cross-correlation matrix of the two
views is pushed towards the identity (diagonal to 1, off-diagonal to 0, weighted by λ).
The standardisation and the correlation are batch statistics: under DDP the projections
of every process are gathered first, so the loss and its gradients are those of the
whole global batch. (lightly's own ``gather_distributed`` standardises per process and
sums the per-process matrices, which is another loss; ``tests/training/test_methods_ddp.py``
shows the difference.)

Exported backbone: the only one (student).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod, gather_batch


class BarlowTwinsArgs(BaseModel):
    """Arguments of the ``barlow_twins`` objective (the paper's λ; a narrower projector for small batches)."""

    model_config = ConfigDict(extra="forbid")
    projection_hidden_dim: int = Field(2048, ge=8, description="hidden width of the projector (paper: 8192)")
    projection_dim: int = Field(2048, ge=8, description="output size of the projector (paper: 8192)")
    redundancy_weight: float = Field(
        0.0051, ge=0, description="λ, the weight of the off-diagonal (redundancy) term (paper: 0.0051)"
    )


class BarlowTwinsMethod(SSLMethod):
    """Barlow Twins: projector + cross-correlation loss on the global batch."""

    exported_backbone = "student"

    def __init__(self, backbone: Backbone, args: BarlowTwinsArgs) -> None:
        super().__init__(backbone)
        self.args = args
        self.projection_head = BarlowTwinsProjectionHead(
            backbone.feature_dim, args.projection_hidden_dim, args.projection_dim
        )
        self.criterion = BarlowTwinsLoss(lambda_param=args.redundancy_weight, gather_distributed=False)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        z0, z1 = self.projection_head(self.encode(batch["views"][:2])).chunk(2)
        return {"loss": self.criterion(gather_batch(z0), gather_batch(z1))}


def build_barlow_twins(args: BarlowTwinsArgs, *, backbone: Backbone, **_context: Any) -> BarlowTwinsMethod:
    """Barlow Twins: drive the cross-correlation of two views' projections to the identity."""
    return BarlowTwinsMethod(backbone, args)


@hookimpl
def register_objectives(register: Register) -> None:
    register("barlow_twins", build_barlow_twins, args=BarlowTwinsArgs)
