"""sslmed-clahe: CLAHE contrast enhancement as an sslmed augmentation plugin.

Registers the augmentation ``clahe`` (stage ``image``: PIL image in, PIL image out,
applied before the views are made).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from sslmed.hookspecs import hookimpl
from sslmed_clahe.equalize import clahe

__version__ = "0.1.0"


class ClaheArgs(BaseModel):
    """Arguments of the ``clahe`` augmentation."""

    model_config = ConfigDict(extra="forbid")
    clip_limit: float = Field(
        2.0,
        gt=0,
        le=40,
        description="contrast limit, as a multiple of the mean histogram bin height: higher allows more contrast",
    )
    tile_grid: int = Field(8, ge=1, le=64, description="tiles per side; each tile is equalised on its own")
    p: float = Field(1.0, ge=0, le=1, description="probability of applying it to an image")


class Clahe:
    """CLAHE on a grey (``L``) or ``RGB`` PIL image; RGB images are equalised on their
    luminance so that colours keep their hue."""

    def __init__(self, clip_limit: float = 2.0, tile_grid: int = 8, p: float = 1.0) -> None:
        self.clip_limit = clip_limit
        self.tile_grid = tile_grid
        self.p = p

    def __call__(self, image: Image.Image) -> Image.Image:
        if self.p < 1 and random.random() >= self.p:
            return image
        if image.mode == "L":
            return Image.fromarray(clahe(np.asarray(image), self.clip_limit, self.tile_grid))
        if image.mode == "RGB":
            y, cb, cr = image.convert("YCbCr").split()
            y = Image.fromarray(clahe(np.asarray(y), self.clip_limit, self.tile_grid))
            return Image.merge("YCbCr", (y, cb, cr)).convert("RGB")
        raise ValueError(f"clahe expects an L or RGB image, got mode {image.mode!r}")

    def __repr__(self) -> str:
        return f"Clahe(clip_limit={self.clip_limit}, tile_grid={self.tile_grid}, p={self.p})"


def build_clahe(args: ClaheArgs, **_context: Any) -> Clahe:
    """CLAHE contrast enhancement (contrast-limited adaptive histogram equalisation)."""
    return Clahe(args.clip_limit, args.tile_grid, args.p)


@hookimpl
def register_augmentations(register: Any) -> None:
    register("clahe", build_clahe, args=ClaheArgs, stage="image")
