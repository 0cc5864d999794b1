"""Contrast-limited adaptive histogram equalisation (CLAHE) in NumPy.

The image is cut into ``tile_grid × tile_grid`` tiles. Each tile gets its own
equalising look-up table, built from the tile's histogram after clipping every bin
at ``clip_limit`` times the mean bin height (the clipped excess is spread evenly over
all bins). Each pixel is then mapped through the tables of its four nearest tile
centres, blended bilinearly, so no tile borders show.
"""

from __future__ import annotations

import numpy as np


def clahe(image: np.ndarray, clip_limit: float = 2.0, tile_grid: int = 8) -> np.ndarray:
    """Equalise an ``H×W`` uint8 array; returns a new uint8 array of the same shape.

    ``clip_limit`` is a multiple of the mean histogram bin height: higher values
    allow more contrast. The limit, the tile layout and the rounding follow OpenCV's
    ``createCLAHE``, so the two agree to within one grey level.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected an H×W uint8 array, got {image.dtype} {image.shape}")
    height, width = image.shape
    grid_y, grid_x = min(tile_grid, height), min(tile_grid, width)
    tile_h, tile_w = -(-height // grid_y), -(-width // grid_x)  # ceiling division

    # pad to whole tiles (mirrored), then one 256-bin histogram per tile
    padded = np.pad(image, ((0, tile_h * grid_y - height), (0, tile_w * grid_x - width)), mode="reflect")
    tiles = padded.reshape(grid_y, tile_h, grid_x, tile_w).transpose(0, 2, 1, 3).reshape(grid_y * grid_x, -1)
    offsets = np.arange(grid_y * grid_x)[:, None] * 256
    hist = np.bincount((tiles + offsets).ravel(), minlength=grid_y * grid_x * 256)
    hist = hist.reshape(grid_y * grid_x, 256).astype(np.float64)

    # clip each histogram and spread the excess evenly
    area = tile_h * tile_w
    limit = max(1, int(clip_limit * area / 256))
    excess = np.clip(hist - limit, 0, None).sum(axis=1, keepdims=True)
    hist = np.minimum(hist, limit) + excess // 256
    remainder = excess - (excess // 256) * 256  # the last few go to evenly spaced bins
    step = np.maximum(256 // np.maximum(remainder, 1), 1)
    bins = np.arange(256)[None, :]
    hist += (bins % step == 0) & (bins // step < remainder)

    # one look-up table per tile: the scaled cumulative histogram
    lut = np.clip(np.rint(np.cumsum(hist, axis=1) * (255.0 / area)), 0, 255).reshape(grid_y, grid_x, 256)

    # bilinear blend of the four nearest tiles' tables
    def neighbours(size: int, tile: int, grid: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        position = np.arange(size) / tile - 0.5
        low = np.floor(position).astype(int)
        weight = position - low
        return np.clip(low, 0, grid - 1), np.clip(low + 1, 0, grid - 1), np.clip(weight, 0, 1)

    y0, y1, wy = neighbours(height, tile_h, grid_y)
    x0, x1, wx = neighbours(width, tile_w, grid_x)
    y0, y1, wy = y0[:, None], y1[:, None], wy[:, None]
    top = lut[y0, x0, image] * (1 - wx) + lut[y0, x1, image] * wx
    bottom = lut[y1, x0, image] * (1 - wx) + lut[y1, x1, image] * wx
    return np.rint(top * (1 - wy) + bottom * wy).astype(np.uint8)
