"""The ``vicreg`` objective: variance, invariance and covariance regularisation.

VICReg, Bardes, Ponce and LeCun 2022, "VICReg: Variance-Invariance-Covariance
Regularization for Self-Supervised Learning", ICLR (arXiv:2105.04906). An expander
head maps both views; the loss pulls the two embeddings together (invariance, MSE),
keeps every dimension's standard deviation above 1 over the batch (variance) and
decorrelates the dimensions (covariance). No negatives and no momentum encoder, but
the variance and covariance are batch statistics: under DDP the embeddings of every
process are gathered first, so the loss is that of the whole global batch.

Exported backbone: the only one (student).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod, gather_batch


class VICRegArgs(BaseModel):
    """Arguments of the ``vicreg`` objective (the paper's weights; a narrower expander for small batches)."""

    model_config = ConfigDict(extra="forbid")
    projection_hidden_dim: int = Field(2048, ge=8, description="hidden width of the expander (paper: 8192)")
    projection_dim: int = Field(2048, ge=8, description="output size of the expander (paper: 8192)")
    num_layers: int = Field(3, ge=2, le=4, description="layers of the expander (paper: 3)")
    invariance_weight: float = Field(25.0, ge=0, description="λ, the invariance term (paper: 25)")
    variance_weight: float = Field(25.0, ge=0, description="μ, the variance term (paper: 25)")
    covariance_weight: float = Field(1.0, ge=0, description="ν, the covariance term (paper: 1)")


class VICRegMethod(SSLMethod):
    """VICReg: expander head + variance/invariance/covariance loss on the global batch."""

    exported_backbone = "student"

    def __init__(self, backbone: Backbone, args: VICRegArgs) -> None:
        super().__init__(backbone)
        self.args = args
        self.projection_head = VICRegProjectionHead(
            backbone.feature_dim, args.projection_hidden_dim, args.projection_dim, num_layers=args.num_layers
        )
        self.criterion = VICRegLoss(
            lambda_param=args.invariance_weight,
            mu_param=args.variance_weight,
            nu_param=args.covariance_weight,
            gather_distributed=False,  # gathered here, with the invariance term on the same batch
        )

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        z0, z1 = self.projection_head(self.encode(batch["views"][:2])).chunk(2)
        return {"loss": self.criterion(gather_batch(z0), gather_batch(z1))}


def build_vicreg(args: VICRegArgs, *, backbone: Backbone, **_context: Any) -> VICRegMethod:
    """VICReg: variance-invariance-covariance regularisation between two views."""
    return VICRegMethod(backbone, args)


@hookimpl
def register_objectives(register: Register) -> None:
    register("vicreg", build_vicreg, args=VICRegArgs)
