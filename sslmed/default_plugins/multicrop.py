"""The ``multicrop`` view augmentation: 2 (or more) global views and N local ones.

Multi-crop (Caron et al. 2020, SwAV, "Unsupervised Learning of Visual Features by
Contrasting Cluster Assignments", NeurIPS; used by DINO, Caron et al. 2021) makes
``global_views`` crops covering ``min_scale``..1 of the image at the step's
``image_size`` and ``local_views`` small crops covering ``local_min_scale``..``min_scale``
at ``local_size``. Each crop then gets the flips and brightness/contrast jitter of the
``simclr`` views. The views come in that order: ``batch["views"][:global_views]`` are
the global ones.

Two implementations, as for ``simclr``: lightly's ``SimCLRViewTransform`` per image in
the loader workers (the reference), and the batched one on the training device
(:class:`BatchedMultiCropViews`), each image drawing its own crops.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.transforms.multi_view_transform import MultiViewTransform
from lightly.transforms.simclr_transform import SimCLRViewTransform
from pydantic import Field, model_validator
from torchvision.transforms import v2

from sslmed.core.hookspecs import Register, hookimpl
from sslmed.default_plugins.augmentations import (
    BatchedSimCLRViews,
    SimCLRViewArgs,
    build_batched_simclr_views,
    lightly_view_kwargs,
)


class MultiCropArgs(SimCLRViewArgs):
    """Arguments of the ``multicrop`` views (the ``simclr`` ones, plus the crops)."""

    min_scale: float = Field(0.4, gt=0, le=1, description="smallest global crop; largest local crop (DINO: 0.4)")
    global_views: int = Field(2, ge=2, le=8, description="views at image_size")
    local_views: int = Field(6, ge=0, le=16, description="small views at local_size (DINO: 6 at 96 px of 224)")
    local_size: int | None = Field(
        None, ge=8, description="size of the local views (default: 3/7 of image_size, DINO's 96 of 224)"
    )
    local_min_scale: float = Field(0.05, gt=0, le=1, description="smallest local crop (DINO: 0.05)")

    @model_validator(mode="after")
    def _local_below_global(self) -> MultiCropArgs:
        if self.local_views and self.local_min_scale > self.min_scale:
            raise ValueError(f"local_min_scale {self.local_min_scale} is above min_scale {self.min_scale}")
        return self


def local_size(args: MultiCropArgs, image_size: int) -> int:
    """The size of the local views."""
    return args.local_size or max(8, round(image_size * 3 / 7))


def _view_transform(args: MultiCropArgs, size: int, scale: tuple[float, float], in_channels: int) -> v2.Compose:
    view = SimCLRViewTransform(
        **lightly_view_kwargs(args, input_size=size, in_channels=in_channels, min_scale=scale[0])
    )
    crop = next(t for t in view.transform.transforms if isinstance(t, v2.RandomResizedCrop))
    crop.scale = scale  # lightly's view crops min_scale..1; a local view stops below 1
    return view


def build_multicrop_views(
    args: MultiCropArgs, *, image_size: int, in_channels: int, **_context: Any
) -> MultiViewTransform:
    """Global and local views per image (lightly's SimCLR view transform at two scales)."""
    global_view = _view_transform(args, image_size, (args.min_scale, 1.0), in_channels)
    local_view = _view_transform(
        args, local_size(args, image_size), (args.local_min_scale, args.min_scale), in_channels
    )
    return MultiViewTransform([global_view] * args.global_views + [local_view] * args.local_views)


class BatchedMultiCropViews:
    """The ``multicrop`` views of a uint8 ``B×C×H×W`` batch, made on the batch's device."""

    def __init__(self, args: MultiCropArgs, image_size: int, in_channels: int) -> None:
        self.args = args
        self.global_view = BatchedSimCLRViews(args, image_size, in_channels)
        self.local_view = BatchedSimCLRViews(args, local_size(args, image_size), in_channels)
        self.local_view.scale = (args.local_min_scale, args.min_scale)

    def __repr__(self) -> str:
        return f"BatchedMultiCropViews({self.args!r})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        views = [self.global_view.view(images, generator) for _ in range(self.args.global_views)]
        return views + [self.local_view.view(images, generator) for _ in range(self.args.local_views)]


def build_batched_multicrop_views(
    args: MultiCropArgs, *, image_size: int, in_channels: int, **_context: Any
) -> BatchedMultiCropViews:
    """The ``multicrop`` views on the training device; refuses what it does not implement."""
    build_batched_simclr_views(args, image_size=image_size, in_channels=in_channels)  # the same checks
    return BatchedMultiCropViews(args, image_size, in_channels)


@hookimpl
def register_augmentations(register: Register) -> None:
    register(
        "multicrop", build_multicrop_views, args=MultiCropArgs, stage="views", batched=build_batched_multicrop_views
    )
