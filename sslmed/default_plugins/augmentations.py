"""The ``simclr`` view augmentation (lightly), tuned for grey radiographs."""

from __future__ import annotations

from typing import Any

from lightly.transforms import SimCLRTransform
from pydantic import BaseModel, ConfigDict, Field

from sslmed.hookspecs import hookimpl
from sslmed.transforms import normalize_values


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


def build_simclr_views(args: SimCLRViewArgs, *, image_size: int, in_channels: int, **_context: Any) -> SimCLRTransform:
    """Two SimCLR views per image (lightly's SimCLRTransform): crop, flip, jitter."""
    return SimCLRTransform(
        input_size=image_size,
        min_scale=args.min_scale,
        cj_prob=args.cj_prob,
        cj_strength=args.cj_strength,
        cj_bright=args.cj_bright,
        cj_contrast=args.cj_contrast,
        cj_sat=args.cj_sat,
        cj_hue=args.cj_hue,
        random_gray_scale=0.0,
        gaussian_blur=args.gaussian_blur,
        hf_prob=args.hf_prob,
        vf_prob=args.vf_prob,
        rr_prob=args.rr_prob,
        rr_degrees=args.rr_degrees,
        normalize=normalize_values(in_channels),
    )


@hookimpl
def register_augmentations(register: Any) -> None:
    register("simclr", build_simclr_views, args=SimCLRViewArgs, stage="views")
