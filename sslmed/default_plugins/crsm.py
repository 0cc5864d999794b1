"""The ``crsm`` objective: SimCLR plus reconstruction of the un-erased view.

CRSM (contrastive learning with reconstruction of the erased image) trains the encoder
on two losses at once: NT-Xent between the two (erased) views, as SimCLR, and a
decoder that rebuilds the *clean* view, before erasing, from the erased view's last
feature map. To fill the erased regions the encoder must keep local anatomy, not only
what tells two images apart. The backbone that comes out is an ordinary backbone: the
probe, ``init_from`` and export treat it like any other; the decoder is exported beside
it (``decoder.safetensors``) for the demo's reconstructions.

The view pipeline provides the clean views as ``batch["clean"]`` whenever a tensor-stage
augmentation (``mdre``, ``random_erasing``) runs; without one, CRSM reconstructs the
views themselves (an auto-encoder term).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal

import torch
from pydantic import Field

from sslmed.core.backbone import Backbone
from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import Register, hookimpl
from sslmed.core.registry import Nested
from sslmed.default_plugins.simclr import SimCLRArgs, SimCLRMethod


class CRSMArgs(SimCLRArgs):
    """Arguments of the ``crsm`` objective (the SimCLR ones, plus the reconstruction)."""

    decoder: Annotated[dict[str, Any], Nested("decoder")] = Field(
        {"name": "resnet_decoder"},
        description="the decoder, a component spec {name: ..., <its arguments>} (see `sslmed list decoder`)",
    )
    reconstruction_weight: float = Field(1.0, ge=0, description="λ: loss = NT-Xent + λ · reconstruction")
    reconstruction_loss: Literal["mse", "l1"] = Field(
        "mse", description="pixel loss between reconstruction and clean view"
    )
    warmup_steps: int = Field(
        0, ge=0, description="raise λ linearly from 0 over this many optimiser steps (0: full λ from the start)"
    )
    reconstruct: Literal["both", "first"] = Field(
        "both", description="reconstruct both views, or only the first (cheaper)"
    )


class CRSMMethod(SimCLRMethod):
    """SimCLR + a decoder rebuilding the clean view from the erased view's feature map."""

    decoder: torch.nn.Module  # always there (SSLMethod's is optional)

    def __init__(
        self, backbone: Backbone, args: CRSMArgs, decoder: torch.nn.Module, image_size: int, out_channels: int
    ) -> None:
        super().__init__(backbone, args)
        self.args = args
        self.decoder = decoder
        self.image_size = image_size
        self.out_channels = out_channels
        self._pool_from_map = type(backbone).forward is Backbone.forward

    def reconstruction_weight(self) -> float:
        """λ at the current optimiser step (after the linear warm-up, the recipe's λ)."""
        weight, warmup = self.args.reconstruction_weight, self.args.warmup_steps
        if warmup <= 0:
            return weight
        return weight * min(1.0, (self.global_step + 1) / warmup)

    def encode_map(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Last feature map and pooled features of ``x``, from one pass where possible."""
        feature_map = self.backbone.forward_features(x)
        if self._pool_from_map:
            pooled = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(feature_map, 1), 1)
        else:  # a backbone with its own pooling
            pooled = self.backbone(x)
        return feature_map, pooled

    def compute_losses(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        views = batch["views"][:2]
        clean = batch.get("clean") or views
        feature_map, pooled = self.encode_map(torch.cat(views))
        contrastive = self.contrastive_loss(self.projection_head(pooled))
        if self.args.reconstruct == "first":
            feature_map, target = feature_map[: views[0].shape[0]], clean[0]
        else:
            target = torch.cat(clean[:2])
        reconstruction = self.decoder(feature_map)
        if self.args.reconstruction_loss == "l1":
            pixel_loss = torch.nn.functional.l1_loss(reconstruction.float(), target.float())
        else:
            pixel_loss = torch.nn.functional.mse_loss(reconstruction.float(), target.float())
        loss = contrastive + self.reconstruction_weight() * pixel_loss
        return {"loss": loss, "contrastive": contrastive.detach(), "reconstruction": pixel_loss.detach()}

    def extra_exports(self) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
        """The decoder, with what rebuilds it (``registry.build("decoder", spec, ...)``)."""
        return {
            "decoder": (
                self.decoder,
                {
                    "kind": "decoder",
                    "spec": dict(self.args.decoder),
                    "image_size": self.image_size,
                    "out_channels": self.out_channels,
                },
            )
        }


def build_crsm(
    args: CRSMArgs, *, backbone: Backbone, build: Callable[..., Any], image_size: int, in_channels: int, **_context: Any
) -> CRSMMethod:
    """CRSM: SimCLR plus reconstruction of the un-erased view (NT-Xent + λ·reconstruction)."""
    spec = dict(args.decoder)  # a named decoder spec: the argument model checked it
    decoder = build("decoder", spec, backbone=backbone, image_size=image_size, out_channels=in_channels)
    if not isinstance(decoder, torch.nn.Module):
        raise UsageError(f"objective 'crsm': decoder {spec['name']!r} did not build a torch module")
    return CRSMMethod(backbone, args, decoder, image_size, in_channels)


@hookimpl
def register_objectives(register: Register) -> None:
    register("crsm", build_crsm, args=CRSMArgs)
