"""The ``simclr`` view augmentation (lightly), tuned for grey radiographs.

Two implementations of the same augmentation: lightly's ``SimCLRTransform`` per image
in the loader workers (the reference), and :class:`BatchedSimCLRViews`, which makes
the views of a whole uint8 batch on the training device with independent random
parameters per image, drawn from the same distributions (crop scale and aspect ratio
as torchvision's ``RandomResizedCrop``, flips, brightness/contrast/saturation jitter
in a random order as ``ColorJitter``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from lightly.transforms import SimCLRTransform
from pydantic import BaseModel, ConfigDict, Field

from sslmed.core.hookspecs import Register, hookimpl
from sslmed.training.transforms import MEAN, STD, normalize_values


class SimCLRViewArgs(BaseModel):
    """Arguments of the ``simclr`` views. Defaults suit grey chest X-rays: no hue or
    saturation jitter, no grey-scale conversion, horizontal flips allowed."""

    model_config = ConfigDict(extra="forbid")
    min_scale: float = Field(0.2, gt=0, le=1, description="smallest crop, as a fraction of the image area")
    cj_prob: float = Field(0.8, ge=0, le=1, description="probability of brightness/contrast jitter")
    cj_strength: float = Field(0.5, ge=0)
    cj_bright: float = Field(0.8, ge=0)
    cj_contrast: float = Field(0.8, ge=0)
    cj_sat: float = Field(0.0, ge=0, description="saturation jitter (0 for grey images)")
    cj_hue: float = Field(0.0, ge=0, le=0.5, description="hue jitter (0 for grey images)")
    gaussian_blur: float = Field(0.0, ge=0, le=1, description="probability of Gaussian blur")
    hf_prob: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vf_prob: float = Field(0.0, ge=0, le=1)
    rr_prob: float = Field(0.0, ge=0, le=1, description="probability of a random rotation")
    rr_degrees: float | None = Field(None, ge=0, le=180)


def lightly_view_kwargs(
    args: SimCLRViewArgs, *, input_size: int, in_channels: int, min_scale: float | None = None
) -> dict[str, Any]:
    """The keyword arguments of lightly's ``SimCLRTransform`` / ``SimCLRViewTransform`` for
    these views at ``input_size`` (no grey-scale conversion; sslmed's normalisation);
    ``min_scale`` replaces ``args.min_scale`` (multi-crop's local views)."""
    return {
        "input_size": input_size,
        "min_scale": args.min_scale if min_scale is None else min_scale,
        "cj_prob": args.cj_prob,
        "cj_strength": args.cj_strength,
        "cj_bright": args.cj_bright,
        "cj_contrast": args.cj_contrast,
        "cj_sat": args.cj_sat,
        "cj_hue": args.cj_hue,
        "random_gray_scale": 0.0,
        "gaussian_blur": args.gaussian_blur,
        "hf_prob": args.hf_prob,
        "vf_prob": args.vf_prob,
        "rr_prob": args.rr_prob,
        "rr_degrees": args.rr_degrees,
        "normalize": normalize_values(in_channels),
    }


def build_simclr_views(args: SimCLRViewArgs, *, image_size: int, in_channels: int, **_context: Any) -> SimCLRTransform:
    """Two SimCLR views per image (lightly's SimCLRTransform): crop, flip, jitter."""
    return SimCLRTransform(**lightly_view_kwargs(args, input_size=image_size, in_channels=in_channels))


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None, device: Any) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def crop_params(
    n: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    device: Any = "cpu",
    attempts: int = 10,
) -> torch.Tensor:
    """``n×4`` crops ``(top, left, h, w)`` drawn as torchvision's ``RandomResizedCrop``:
    area fraction uniform in ``scale``, log aspect ratio uniform, up to ``attempts``
    tries per image, then the centre crop of the clamped ratio."""
    area = height * width
    target = area * _uniform(n * attempts, scale[0], scale[1], generator, device).view(n, attempts)
    log_ratio = _uniform(n * attempts, math.log(ratio[0]), math.log(ratio[1]), generator, device).view(n, attempts)
    aspect = torch.exp(log_ratio)
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    valid = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.argmax(valid.int(), dim=1, keepdim=True)  # the first attempt that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    u = torch.rand(n, 2, generator=generator, device=device)
    top = torch.floor(u[:, 0] * (height - h + 1))
    left = torch.floor(u[:, 1] * (width - w + 1))
    # no attempt fits: torchvision's fallback, the centre crop with the ratio clamped
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        fh, fw = height, round(height * ratio[1])
    else:
        fw, fh = width, height
    none = ~valid.any(dim=1)
    h = torch.where(none, torch.full_like(h, fh), h)
    w = torch.where(none, torch.full_like(w, fw), w)
    top = torch.where(none, torch.full_like(top, (height - fh) // 2), top)
    left = torch.where(none, torch.full_like(left, (width - fw) // 2), left)
    return torch.stack([top, left, h, w], dim=1)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Crop ``boxes`` (``top, left, h, w`` per image) out of a float ``B×C×H×W`` batch,
    resize each to ``size²`` (bilinear) and mirror where ``flip`` is set, in one
    ``grid_sample``."""
    batch, _channels, height, width = images.shape
    top, left, h, w = boxes.to(images.dtype).unbind(1)
    sign = 1.0 - 2.0 * flip.to(images.dtype)
    theta = torch.zeros(batch, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [batch, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _grey(images: torch.Tensor) -> torch.Tensor:
    if images.shape[1] == 1:
        return images
    weights = torch.tensor([0.2989, 0.587, 0.114], dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


class BatchedSimCLRViews:
    """The ``simclr`` views of a uint8 ``B×C×H×W`` batch, made on the batch's device.

    Each image gets its own crop, flip and jitter parameters (not one draw per batch).
    Returns two normalised float views, as lightly's transform does per image.
    """

    def __init__(self, args: SimCLRViewArgs, image_size: int, in_channels: int) -> None:
        self.args = args
        self.size = image_size
        self.scale = (args.min_scale, 1.0)  # crop area fraction (multi-crop's local views use another)
        self.in_channels = in_channels
        strength = args.cj_strength
        self.brightness = strength * args.cj_bright
        self.contrast = strength * args.cj_contrast
        self.saturation = strength * args.cj_sat if in_channels == 3 else 0.0
        self.n_ops = sum(factor > 0 for factor in (self.brightness, self.contrast, self.saturation))

    def __repr__(self) -> str:
        return f"BatchedSimCLRViews({self.args!r}, size={self.size})"

    def sample_params(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None, device: Any = "cpu"
    ) -> dict[str, torch.Tensor]:
        """The random parameters of ``n`` views: crop boxes, flips, whether jitter applies,
        its factors, and the order of brightness and contrast (``0``: brightness first)."""
        a = self.args
        boxes = crop_params(n, height, width, self.scale, (3 / 4, 4 / 3), generator, device)
        u = torch.rand(n, 4, generator=generator, device=device)
        return {
            "boxes": boxes,
            "hflip": u[:, 0] < a.hf_prob,
            "vflip": u[:, 1] < a.vf_prob,
            "jitter": u[:, 2] < a.cj_prob,
            "order": torch.rand(n, self.n_ops, generator=generator, device=device).argsort(dim=1),
            "brightness": _uniform(n, max(0.0, 1 - self.brightness), 1 + self.brightness, generator, device),
            "contrast": _uniform(n, max(0.0, 1 - self.contrast), 1 + self.contrast, generator, device),
            "saturation": _uniform(n, max(0.0, 1 - self.saturation), 1 + self.saturation, generator, device),
        }

    def view(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One normalised view of each image of a uint8 (or [0, 1] float) batch."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        batch, _c, height, width = images.shape
        p = self.sample_params(batch, height, width, generator, images.device)
        out = resized_crops(images, p["boxes"], self.size, p["hflip"])
        if self.args.vf_prob > 0:
            out = torch.where(p["vflip"].view(-1, 1, 1, 1), out.flip(-2), out)
        out = self._jitter(out, p)
        return (out - MEAN) / STD

    def _jitter(self, images: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
        """Brightness, contrast and saturation in a random order per image (as ``ColorJitter``)."""
        one = (-1, 1, 1, 1)
        bright, contrast, saturation = (p[k].view(one) for k in ("brightness", "contrast", "saturation"))
        ops = []
        if self.brightness > 0:
            ops.append(lambda x: (x * bright).clamp(0, 1))
        if self.contrast > 0:
            ops.append(
                lambda x: (contrast * x + (1 - contrast) * _grey(x).mean(dim=(1, 2, 3), keepdim=True)).clamp(0, 1)
            )
        if self.saturation > 0:
            ops.append(lambda x: (saturation * x + (1 - saturation) * _grey(x)).clamp(0, 1))
        out = images
        for position in range(len(ops)):  # at each position, every image applies the op its order puts there
            step = out
            for index, op in enumerate(ops):
                chosen = (p["order"][:, position] == index).view(one)
                step = torch.where(chosen, op(out), step)
            out = step
        return torch.where(p["jitter"].view(one), out, images)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        return [self.view(images, generator), self.view(images, generator)]


def build_batched_simclr_views(
    args: SimCLRViewArgs, *, image_size: int, in_channels: int, **_context: Any
) -> BatchedSimCLRViews:
    """The ``simclr`` views on the training device; refuses what it does not implement."""
    missing = [
        name
        for name, value in (("cj_hue", args.cj_hue), ("gaussian_blur", args.gaussian_blur), ("rr_prob", args.rr_prob))
        if value > 0
    ]
    if missing:
        raise NotImplementedError(f"simclr on the device does not implement {', '.join(missing)} > 0")
    return BatchedSimCLRViews(args, image_size, in_channels)


@hookimpl
def register_augmentations(register: Register) -> None:
    register("simclr", build_simclr_views, args=SimCLRViewArgs, stage="views", batched=build_batched_simclr_views)
