"""The ``simsiam`` and ``fastsiam`` objectives: a predictor against a stopped gradient.

SimSiam, Chen and He 2021, "Exploring Simple Siamese Representation Learning", CVPR
(arXiv:2011.10566): one backbone and projection head for both views; a prediction head
on one view is pulled (negative cosine similarity) towards the other view's projection,
whose gradient is stopped; symmetrised. No negatives, no momentum encoder.

FastSiam, Pototzky et al. 2022, "FastSiam: Resource-Efficient Self-supervised Learning on
a Single GPU", GCPR: ``views`` views of each image (4 in the paper), each predicting the
mean projection of the others, a steadier target that lets small batches train. Give it
as many views (``multicrop`` with ``global_views: 4, local_views: 0``).

Exported backbone: the only one (student).
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.backbone import Backbone
from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.methods import SSLMethod


class SimSiamArgs(BaseModel):
    """Arguments of the ``simsiam`` objective (the paper's heads)."""

    model_config = ConfigDict(extra="forbid")
    projection_hidden_dim: int = Field(2048, ge=8, description="hidden width of the projection head (paper: 2048)")
    projection_dim: int = Field(2048, ge=8, description="output size of the projection head (paper: 2048)")
    prediction_hidden_dim: int = Field(512, ge=8, description="bottleneck of the prediction head (paper: 512)")


class FastSiamArgs(SimSiamArgs):
    """Arguments of the ``fastsiam`` objective (SimSiam's, plus the number of views)."""

    views: int = Field(4, ge=2, le=8, description="views per image, each predicting the mean of the others (paper: 4)")


class SimSiamMethod(SSLMethod):
    """SimSiam (``views`` 2) and FastSiam (``views`` > 2): predictor vs. stopped projections."""

    exported_backbone = "student"

    def __init__(self, backbone: Backbone, args: SimSiamArgs, views: int = 2, name: str = "simsiam") -> None:
        super().__init__(backbone)
        self.args = args
        self.n_views = views
        self.name = name
        self.projection_head = SimSiamProjectionHead(
            backbone.feature_dim, args.projection_hidden_dim, args.projection_dim
        )
        self.prediction_head = SimSiamPredictionHead(
            args.projection_dim, args.prediction_hidden_dim, args.projection_dim
        )
        self.criterion = NegativeCosineSimilarity()

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        views = batch["views"][: self.n_views]
        if len(views) < self.n_views or len({tuple(v.shape) for v in views}) != 1:
            raise UsageError(
                f"objective {self.name!r} needs {self.n_views} views of one size per image, got "
                f"{[tuple(v.shape[1:]) for v in batch['views']]} (e.g. multicrop with global_views: {self.n_views})"
            )
        z = self.projection_head(self.encode(views))
        p = self.prediction_head(z).chunk(self.n_views)
        z = z.detach().chunk(self.n_views)
        if self.n_views == 2:
            loss = 0.5 * (self.criterion(p[0], z[1]) + self.criterion(p[1], z[0]))
        else:
            total = torch.stack(z).sum(dim=0)
            loss = sum(self.criterion(p[i], (total - z[i]) / (self.n_views - 1)) for i in range(self.n_views))
            loss = loss / self.n_views
        return {"loss": loss}


def build_simsiam(args: SimSiamArgs, *, backbone: Backbone, **_context: Any) -> SimSiamMethod:
    """SimSiam: predict the other view's projection, its gradient stopped (no negatives, no momentum)."""
    return SimSiamMethod(backbone, args)


def build_fastsiam(args: FastSiamArgs, *, backbone: Backbone, **_context: Any) -> SimSiamMethod:
    """FastSiam: SimSiam with several views, each predicting the mean projection of the others."""
    return SimSiamMethod(backbone, args, views=args.views, name="fastsiam")


@hookimpl
def register_objectives(register: Register) -> None:
    register("simsiam", build_simsiam, args=SimSiamArgs)
    register("fastsiam", build_fastsiam, args=FastSiamArgs)
