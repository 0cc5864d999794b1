"""Grad-CAM on a classifier's deepest useful backbone stage, and images for people to look at.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the last feature map by the
mean gradient of a class score with respect to it, sums, keeps the positive part and
upsamples: a coarse map of where the evidence for that class lies. A 1×1 or 2×2 map
cannot localise anything, so the map is taken from the deepest stage of
``backbone.stages()`` whose output has at least :data:`MIN_CAM_SIDE` positions on each
side (an earlier stage when the last one is smaller); when none has, there is no map.
It is computed here with a forward hook on that stage and ``torch.autograd.grad`` on
that stage's output only, so no parameter gradients are made and the shared model
is not changed. The hook acts only in the thread that registered it, so Grad-CAM
can run while other threads predict with the same model.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from PIL import Image

from sslmed.core.backbone import Backbone, GradCamUnavailable
from sslmed.training.transforms import MEAN, STD

# anchors of a perceptually ordered colour map (dark blue -> cyan -> yellow -> red)
_COLOUR_ANCHORS = np.array(
    [
        [0.00, 0, 0, 80],
        [0.25, 0, 90, 255],
        [0.50, 0, 230, 200],
        [0.75, 255, 220, 0],
        [1.00, 220, 0, 0],
    ],
    dtype=np.float64,
)

_lock = threading.Lock()

#: a Grad-CAM map needs at least this many positions on each side to localise anything
MIN_CAM_SIDE = 4


@dataclass
class GradCam:
    """The result of :func:`grad_cam`."""

    #: the class the map explains (index into the model's classes)
    class_index: int
    #: the class probabilities of the same forward pass
    probabilities: np.ndarray
    #: the map in 0..1, ``h×w`` of the stage's feature map (before upsampling); ``None``
    #: when no stage has at least ``MIN_CAM_SIDE``×``MIN_CAM_SIDE`` positions
    cam: np.ndarray | None
    #: the stage the map comes from (its name in ``backbone.stages()``), or ``None``
    layer: str | None = None
    #: ``(h, w)`` of that stage's output; of the largest stage when there is no map
    size: tuple[int, int] = (0, 0)
    #: why the backbone has no map at all (its ``last_stage`` refused), or ``None``
    reason: str | None = None

    def caption(self) -> str:
        """One sentence for the page: which layer the map comes from, or why there is none."""
        if self.reason is not None:
            return f"**Grad-CAM not shown:** {self.reason}."
        if self.cam is None:
            return (
                f"**Grad-CAM not shown:** no backbone stage has {MIN_CAM_SIDE}×{MIN_CAM_SIDE} positions at this "
                f"input size (the largest is {self.size[0]}×{self.size[1]}), so a map could not localise anything."
            )
        return f"Grad-CAM on layer `{self.layer}` ({self.size[0]}×{self.size[1]} positions), top class."


def stage_sizes(model: torch.nn.Module, x: torch.Tensor) -> list[tuple[str, torch.nn.Module, tuple[int, int]]]:
    """Each stage of ``model.backbone.stages()`` with the spatial size of its output for ``x``."""
    stages = cast(Backbone, model.backbone).stages()
    sizes: dict[int, tuple[int, int]] = {}
    owner = threading.get_ident()
    handles = []
    for index, (_name, module) in enumerate(stages):

        def record(_module: Any, _inputs: Any, output: torch.Tensor, index: int = index) -> None:
            if threading.get_ident() == owner and output.dim() == 4:
                sizes[index] = (int(output.shape[-2]), int(output.shape[-1]))

        handles.append(module.register_forward_hook(record))
    try:
        with torch.inference_mode():
            cast(Backbone, model.backbone)(x[:1])
    finally:
        for handle in handles:
            handle.remove()
    return [(name, module, sizes.get(i, (0, 0))) for i, (name, module) in enumerate(stages)]


def choose_stage(
    sized: list[tuple[str, torch.nn.Module, tuple[int, int]]],
) -> tuple[str, torch.nn.Module, tuple[int, int]] | None:
    """The deepest stage whose output has at least ``MIN_CAM_SIDE`` positions each side."""
    for name, module, size in reversed(sized):
        if min(size) >= MIN_CAM_SIDE:
            return name, module, size
    return None


def _no_map(
    model: torch.nn.Module,
    x: torch.Tensor,
    class_index: int | None,
    size: tuple[int, int] = (0, 0),
    reason: str | None = None,
) -> GradCam:
    """The probabilities and no map."""
    with torch.inference_mode():
        logits = model(x)
    probabilities = torch.softmax(logits.float(), dim=1)[0].cpu().numpy()
    index = int(probabilities.argmax()) if class_index is None else int(class_index)
    return GradCam(index, probabilities, None, None, size, reason)


def grad_cam(model: torch.nn.Module, x: torch.Tensor, class_index: int | None = None) -> GradCam:
    """Grad-CAM of ``model`` (a :class:`sslmed.serving.predict.Classifier`) for one input.

    ``x`` is the normalised ``1×C×H×W`` model input; ``class_index`` defaults to the
    predicted class. The map is relative (its maximum is 1); a map that is zero
    everywhere means no positive evidence was found at this stage. ``cam`` is ``None``
    when no stage is large enough (see :func:`choose_stage`) or when the backbone has no
    map that explains its features (``reason`` says why, e.g. a ViT pooling its class token).
    """
    try:
        sized = stage_sizes(model, x)
    except GradCamUnavailable as exc:
        return _no_map(model, x, class_index, reason=str(exc).rstrip("."))
    chosen = choose_stage(sized)
    if chosen is None:
        largest = max((size for _, _, size in sized), key=lambda s: s[0] * s[1], default=(0, 0))
        return _no_map(model, x, class_index, size=largest)
    layer, stage, size = chosen
    owner = threading.get_ident()
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != owner:  # another thread's prediction: leave it alone
            return None
        activation = output.detach().requires_grad_(True)
        captured["activation"] = activation
        return activation

    with _lock, torch.inference_mode(False), torch.enable_grad():
        handle = stage.register_forward_hook(hook)
        try:
            logits = model(x.clone())
        finally:
            handle.remove()
        if "activation" not in captured:
            raise RuntimeError(f"{type(stage).__name__}: stage {layer} did not run in the model's forward pass")
        activation = captured["activation"]
        probabilities = torch.softmax(logits.detach().float(), dim=1)[0].cpu().numpy()
        index = int(probabilities.argmax()) if class_index is None else int(class_index)
        (gradient,) = torch.autograd.grad(logits[0, index], activation)
    weights = gradient[0].mean(dim=(1, 2))  # one weight per channel
    cam = torch.relu((weights[:, None, None] * activation[0].detach()).sum(dim=0))
    peak = float(cam.max())
    cam = cam / peak if peak > 0 else torch.zeros_like(cam)
    return GradCam(index, probabilities, cam.float().cpu().numpy(), layer, size)


def colourise(values: np.ndarray) -> np.ndarray:
    """A ``h×w`` map in 0..1 as ``h×w×3`` uint8 colours (blue low, red high)."""
    values = np.clip(values, 0.0, 1.0)
    channels = [np.interp(values, _COLOUR_ANCHORS[:, 0], _COLOUR_ANCHORS[:, c]) for c in (1, 2, 3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def overlay(image: Image.Image, cam: np.ndarray, alpha: float = 0.45, max_side: int = 512) -> Image.Image:
    """The map laid over ``image`` (RGB, at most ``max_side`` on its longer side).

    The map is in the coordinates of the square model input; since the model input is
    the whole image resized (not cropped), resizing the map to the image's size puts
    every cell back over the pixels it came from.
    """
    base = image.convert("RGB")
    if max(base.size) > max_side:
        base.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    heat = Image.fromarray((np.clip(cam, 0, 1) * 255).astype(np.uint8)).resize(base.size, Image.Resampling.BILINEAR)
    colours = Image.fromarray(colourise(np.asarray(heat, dtype=np.float64) / 255.0))
    return Image.blend(base, colours, alpha)


def tensor_to_image(x: torch.Tensor, min_side: int = 256) -> Image.Image:
    """A normalised ``C×H×W`` (or ``1×C×H×W``) tensor back to an 8-bit image, as a
    person would see it; small images are enlarged with nearest-neighbour sampling so
    that each model pixel stays visible as a square."""
    if x.dim() == 4:
        x = x[0]
    pixels = (x.detach().float().cpu() * STD + MEAN).clamp(0, 1).mul(255).round().byte()
    array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels[:3].permute(1, 2, 0).numpy()
    image = Image.fromarray(array)
    if min(image.size) < min_side:
        factor = -(-min_side // min(image.size))  # ceil
        image = image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)
    return image
