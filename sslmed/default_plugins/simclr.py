"""The ``simclr`` objective: projection head and NT-Xent loss from lightly."""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod


class SimCLRArgs(BaseModel):
    """Arguments of the ``simclr`` objective."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.5, gt=0, description="NT-Xent temperature")
    projection_hidden_dim: int | None = Field(
        None, ge=8, description="hidden width of the projection head (default: the backbone's feature size)"
    )
    projection_dim: int = Field(128, ge=8, description="output size of the projection head")


class SimCLRMethod(SSLMethod):
    """SimCLR (Chen et al. 2020): two views, projection head, NT-Xent.

    Negatives are gathered across processes under DDP (``gather_distributed``).
    """

    def __init__(self, backbone: Backbone, args: SimCLRArgs) -> None:
        super().__init__(backbone)
        hidden = args.projection_hidden_dim or backbone.feature_dim
        self.projection_head = SimCLRProjectionHead(backbone.feature_dim, hidden, args.projection_dim)
        self.criterion = NTXentLoss(temperature=args.temperature, gather_distributed=True)

    def embed(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pooled features and projections of both views, in one forward pass."""
        features = self.encode(views[:2])
        return features, self.projection_head(features)

    def contrastive_loss(self, projections: torch.Tensor) -> torch.Tensor:
        z0, z1 = projections.chunk(2)
        return self.criterion(z0, z1)

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        _features, projections = self.embed(batch["views"])
        loss = self.contrastive_loss(projections)
        return {"loss": loss}


def build_simclr(args: SimCLRArgs, *, backbone: Backbone, **_context: Any) -> SimCLRMethod:
    """SimCLR: contrastive learning between two augmented views (NT-Xent)."""
    return SimCLRMethod(backbone, args)


@hookimpl
def register_objectives(register: Register) -> None:
    register("simclr", build_simclr, args=SimCLRArgs)
