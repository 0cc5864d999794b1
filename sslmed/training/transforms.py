"""Augmentation pipelines for pre-training, and the one evaluation transform.

A pre-training pipeline runs its augmentations by stage: ``image`` ones on the PIL
image, then the single ``views`` one that makes normalised tensor views, then
``tensor`` ones on each view. When tensor-stage augmentations (e.g. erasing) are
present, the views before them are kept as ``clean`` so that an objective can
reconstruct the un-erased image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import v2

from sslmed.core.registry import Registry

#: normalisation of 8-bit grey radiographs (per channel): x -> (x/255 - MEAN) / STD
MEAN = 0.5
STD = 0.25


def normalize_values(in_channels: int) -> dict[str, list[float]]:
    """Mean and std per channel, in the form lightly's transforms take."""
    return {"mean": [MEAN] * in_channels, "std": [STD] * in_channels}


def image_mode(in_channels: int) -> str:
    """PIL mode that gives ``in_channels`` channels (grey is copied to 3 for RGB)."""
    return "L" if in_channels == 1 else "RGB"


def eval_transform(image_size: int, in_channels: int) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic transform of evaluation, predict and the demo: resize the whole
    image to ``image_size``², to float, normalise."""
    values = normalize_values(in_channels)
    return v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=values["mean"], std=values["std"]),
        ]
    )


class ViewPipeline:
    """PIL image -> ``{"views": [tensor, ...]}`` (+ ``"clean"`` when erasing ran)."""

    def __init__(self, image_ops: Sequence[Callable], make_views: Callable, tensor_ops: Sequence[Callable]) -> None:
        self.image_ops = list(image_ops)
        self.make_views = make_views
        self.tensor_ops = list(tensor_ops)

    def __call__(self, image: Image.Image) -> dict[str, list[torch.Tensor]]:
        for op in self.image_ops:
            image = op(image)
        views = self.make_views(image)
        if not self.tensor_ops:
            return {"views": list(views)}
        clean = list(views)
        erased = []
        for view in clean:
            for op in self.tensor_ops:
                view = op(view)
            erased.append(view)
        return {"views": erased, "clean": clean}


def build_view_pipeline(
    specs: Sequence[dict[str, Any]], registry: Registry, image_size: int, in_channels: int
) -> ViewPipeline:
    """Build the augmentations of a step (a validated recipe has exactly one ``views`` stage)."""
    image_ops, tensor_ops, make_views = [], [], None
    for spec in specs:
        stage = registry.get("augmentation", spec["name"]).metadata.get("stage", "tensor")
        if stage == "views":
            make_views = registry.build("augmentation", spec, image_size=image_size, in_channels=in_channels)
        elif stage == "image":
            image_ops.append(registry.build("augmentation", spec))
        else:
            tensor_ops.append(registry.build("augmentation", spec))
    assert make_views is not None, "a validated recipe has one views augmentation"
    return ViewPipeline(image_ops, make_views, tensor_ops)


class BatchedViewPipeline:
    """A uint8 ``B×C×H×W`` batch -> ``{"views": [...]}`` (+ ``"clean"``), on the batch's device.

    The batched twin of :class:`ViewPipeline`: the ``views`` augmentation makes the
    normalised views of the whole batch, then each ``tensor`` augmentation erases each
    view; every image draws its own parameters from ``generator``.
    """

    def __init__(self, make_views: Callable, tensor_ops: Sequence[Callable]) -> None:
        self.make_views = make_views
        self.tensor_ops = list(tensor_ops)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> dict[str, list[torch.Tensor]]:
        views = self.make_views(images, generator)
        if not self.tensor_ops:
            return {"views": list(views)}
        erased = []
        for view in views:
            for op in self.tensor_ops:
                view = op(view, generator)
            erased.append(view)
        return {"views": erased, "clean": list(views)}


def build_batched_pipeline(
    specs: Sequence[dict[str, Any]], registry: Registry, image_size: int, in_channels: int
) -> BatchedViewPipeline | str:
    """The step's augmentations as a :class:`BatchedViewPipeline`, or the reason they
    cannot run batched (an augmentation without a ``batched`` version, or with
    settings its batched version does not implement)."""
    make_views, tensor_ops = None, []
    for spec in specs:
        component = registry.get("augmentation", spec["name"])
        factory = component.metadata.get("batched")
        stage = component.metadata.get("stage", "tensor")
        if factory is None:
            return f"augmentation {spec['name']!r} ({component.plugin}) has no batched version"
        args = component.parse_args({k: v for k, v in spec.items() if k != "name"})
        try:
            built = factory(args, image_size=image_size, in_channels=in_channels)
        except NotImplementedError as exc:
            return str(exc)
        if stage == "views":
            make_views = built
        elif stage == "image":
            return f"augmentation {spec['name']!r} runs on PIL images (stage 'image')"
        else:
            tensor_ops.append(built)
    assert make_views is not None, "a validated recipe has one views augmentation"
    return BatchedViewPipeline(make_views, tensor_ops)
