"""Erasing augmentations on normalised tensor views: ``mdre`` and ``random_erasing``.

``mdre`` (multi-directional random erasing) blanks several *small* regions per view
instead of one large rectangle: horizontal and vertical strips, strips along both
diagonals and near-squares, spread over the image (one region per cell of a grid), so
that no single erasure hides a whole lesion. ``random_erasing`` is torchvision's
classic random erasing (Zhong et al. 2017), registered so that an ablation compares
the two under the same pipeline (stage ``tensor``: after the SimCLR views, per view).

Both take ``C×H×W`` or ``B×C×H×W`` tensors (each image of a batch is erased
independently) and never modify their input: the view pipeline keeps the un-erased
views as ``clean`` for objectives that reconstruct them (``crsm``).

:class:`BatchedMdre` and :class:`BatchedRandomErasing` are the same two augmentations
for a whole batch on the training device: every image still gets its own random
regions, drawn from the same distributions, but all masks are computed at once with
tensor operations instead of one image at a time in Python.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torchvision.transforms import v2

from sslmed.core.errors import UsageError
from sslmed.core.hookspecs import Register, hookimpl

Direction = Literal["horizontal", "vertical", "diagonal", "antidiagonal", "square"]

#: the angle (degrees, image coordinates: x right, y down) of each direction's long side
ANGLES = {"horizontal": 0.0, "vertical": 90.0, "diagonal": 45.0, "antidiagonal": 135.0}


class MdreArgs(BaseModel):
    """Arguments of ``mdre``. Areas are fractions of the image area; the aspect ratio is
    a strip's length over its width."""

    model_config = ConfigDict(extra="forbid")
    p: float = Field(0.5, ge=0, le=1, description="probability that a view is erased at all")
    min_count: int = Field(3, ge=1, le=64, description="fewest regions erased per view")
    max_count: int = Field(8, ge=1, le=64, description="most regions erased per view")
    min_area: float = Field(0.005, gt=0, lt=1, description="smallest area of one region (fraction of the image)")
    max_area: float = Field(0.04, gt=0, lt=1, description="largest area of one region (fraction of the image)")
    min_aspect: float = Field(2.0, ge=1, description="smallest length/width of a strip")
    max_aspect: float = Field(5.0, ge=1, description="largest length/width of a strip")
    directions: list[Direction] = Field(
        ["horizontal", "vertical", "diagonal", "antidiagonal", "square"],
        min_length=1,
        description="region shapes, used in turn from a random start so one view mixes directions",
    )
    fill: Literal["zero", "mean", "noise"] = Field(
        "zero",
        description="zero (the dataset mean after normalisation), mean (the view's own mean per channel) or "
        "noise (standard normal)",
    )
    seed: int | None = Field(None, description="seed of the erasing's own random generator (None: torch's global one)")

    @model_validator(mode="after")
    def _check_ranges(self) -> MdreArgs:
        if self.min_count > self.max_count:
            raise ValueError(f"min_count ({self.min_count}) must not exceed max_count ({self.max_count})")
        if self.min_area > self.max_area:
            raise ValueError(f"min_area ({self.min_area}) must not exceed max_area ({self.max_area})")
        if self.min_aspect > self.max_aspect:
            raise ValueError(f"min_aspect ({self.min_aspect}) must not exceed max_aspect ({self.max_aspect})")
        if self.max_count * self.max_area > 0.6:
            raise ValueError(
                f"max_count × max_area = {self.max_count * self.max_area:.2f} could erase most of the image; "
                "keep it at or below 0.6 (MDRE erases several small regions)"
            )
        return self


@dataclass(frozen=True)
class Region:
    """One erased region: a ``length × width`` rectangle centred at ``(cy, cx)`` whose long
    side lies at ``angle`` degrees, rasterised to the pixels ``mask[y0:y1, x0:x1]``."""

    direction: str
    cy: float
    cx: float
    length: float
    width: float
    angle: float
    box: tuple[int, int, int, int]  # y0, y1, x0, x1
    patch: np.ndarray | None  # bool over the box; None: the whole box

    @property
    def pixels(self) -> int:
        """How many pixels the region erases."""
        y0, y1, x0, x1 = self.box
        return int(self.patch.sum()) if self.patch is not None else (y1 - y0) * (x1 - x0)

    def mask(self, height: int, width: int) -> np.ndarray:
        """The region as an ``H×W`` boolean mask."""
        out = np.zeros((height, width), dtype=bool)
        self.paint(out)
        return out

    def paint(self, mask: np.ndarray) -> None:
        """Mark the region's pixels in ``mask`` (in place)."""
        y0, y1, x0, x1 = self.box
        if self.patch is None:
            mask[y0:y1, x0:x1] = True
        else:
            mask[y0:y1, x0:x1] |= self.patch


@functools.lru_cache(maxsize=65536)
def _oblique_patch(fy: float, fx: float, length: float, thick: float, angle: float) -> tuple[int, int, np.ndarray, int]:
    """The rotated rectangle centred at ``(iy + fy, ix + fx)`` as ``(ry0, rx0, patch, pixels)``:
    a boolean patch whose top-left pixel is ``(iy + ry0, ix + rx0)`` (cached: the arguments
    are snapped to half pixels)."""
    rad = math.radians(angle)
    cos, sin = math.cos(rad), math.sin(rad)
    half_h = 0.5 * (abs(length * sin) + abs(thick * cos))
    half_w = 0.5 * (abs(length * cos) + abs(thick * sin))
    ry0, ry1 = int(math.floor(fy - half_h)), int(math.ceil(fy + half_h)) + 1
    rx0, rx1 = int(math.floor(fx - half_w)), int(math.ceil(fx + half_w)) + 1
    ys = np.arange(ry0, ry1, dtype=np.float32)[:, None] + (0.5 - fy)
    xs = np.arange(rx0, rx1, dtype=np.float32)[None, :] + (0.5 - fx)
    patch = (np.abs(xs * cos + ys * sin) <= length / 2) & (np.abs(ys * cos - xs * sin) <= thick / 2)
    patch.setflags(write=False)
    return ry0, rx0, patch, int(patch.sum())


def _rasterise(
    height: int, width: int, cy: float, cx: float, length: float, thick: float, angle: float
) -> tuple[tuple[int, int, int, int], np.ndarray | None, int]:
    """The pixels whose centres lie inside the rotated rectangle: a box, for oblique angles
    a boolean patch over it (None: the whole box), and the pixel count."""
    if angle in (0.0, 90.0):
        h, w = (thick, length) if angle == 0.0 else (length, thick)
        h, w = max(1, min(height, int(round(h)))), max(1, min(width, int(round(w))))
        y0 = min(max(0, int(round(cy - h / 2))), height - h)
        x0 = min(max(0, int(round(cx - w / 2))), width - w)
        return (y0, y0 + h, x0, x0 + w), None, h * w
    length, thick = round(length * 2) / 2, max(1.0, round(thick * 2) / 2)
    half = 0.5 * (length + thick) * math.sqrt(0.5)  # half extent of the box at 45°/135°
    cy = min(max(cy, half), height - half) if height > 2 * half else height / 2  # keep it inside
    cx = min(max(cx, half), width - half) if width > 2 * half else width / 2
    iy, ix = int(cy), int(cx)
    ry0, rx0, patch, pixels = _oblique_patch(round((cy - iy) * 2) / 2, round((cx - ix) * 2) / 2, length, thick, angle)
    y0, x0 = iy + ry0, ix + rx0
    y1, x1 = y0 + patch.shape[0], x0 + patch.shape[1]
    if y0 < 0 or x0 < 0 or y1 > height or x1 > width:  # only on images smaller than the shape
        patch = patch[
            max(0, -y0) : patch.shape[0] - max(0, y1 - height), max(0, -x0) : patch.shape[1] - max(0, x1 - width)
        ]
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(height, y1), min(width, x1)
        pixels = int(patch.sum())
    return (y0, y1, x0, x1), patch, pixels


def _exact_box(height: int, width: int, pixels: int, most: int, u: float) -> tuple[int, int, int, int]:
    """An axis-aligned box of at least ``pixels`` and at most ``most`` pixels, near-square,
    at a position drawn from ``u``: the fallback when a shape rasterised at this image
    size missed the area bounds."""
    h = max(1, min(height, int(math.sqrt(pixels))))
    w = min(width, -(-pixels // h))
    while h > 1 and h * w > most:
        h -= 1
        w = min(width, -(-pixels // h))
    y0 = min(int(u * (height - h + 1)), height - h)
    x0 = min(int((1 - u) * (width - w + 1)), width - w)
    return y0, y0 + h, x0, x0 + w


class MultiDirectionalRandomErasing:
    """Erase several small, differently oriented regions spread over each image.

    The image is divided into a ``g×g`` grid (``g = ceil(sqrt(count))``) and each region
    is centred in a different, randomly chosen cell. Region ``i`` takes direction
    ``directions[(start + i) % len(directions)]`` from a random ``start``, so every view
    with two or more regions (and two or more directions configured) mixes directions.
    Each region's pixel count lies within ``[min_area, max_area]`` of the image
    (checked after rasterising; a shape that misses falls back to a box of the drawn area).
    """

    def __init__(self, args: MdreArgs) -> None:
        self.args = args
        self._seed = args.seed
        self._generator: torch.Generator | None = None
        self._worker: int | None = None
        self._grid_max = max(1, math.ceil(math.sqrt(args.max_count)))
        self._draws = 2 + self._grid_max**2 + 6 * args.max_count
        self._log_area = (math.log(args.min_area), math.log(args.max_area) - math.log(args.min_area))
        self._log_aspect = (math.log(args.min_aspect), math.log(args.max_aspect) - math.log(args.min_aspect))

    def __repr__(self) -> str:
        a = self.args
        return (
            f"MultiDirectionalRandomErasing(p={a.p}, count={a.min_count}-{a.max_count}, "
            f"area={a.min_area}-{a.max_area}, directions={a.directions}, fill={a.fill!r}, seed={a.seed})"
        )

    @property
    def generator(self) -> torch.Generator | None:
        """The own generator (seeded; re-seeded per DataLoader worker so workers differ)."""
        if self._seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else None
        if self._generator is None or worker != self._worker:
            offset = 1_000_003 * (worker + 1) if worker is not None else 0
            self._generator = torch.Generator().manual_seed(self._seed + offset)
            self._worker = worker
        return self._generator

    def sample_regions(self, height: int, width: int, generator: torch.Generator | None = None) -> list[Region]:
        """The regions one view of ``height × width`` would get (without the ``p`` draw)."""
        return [Region(*r) for r in self._regions(height, width, torch.rand(self._draws, generator=generator).tolist())]

    def _regions(self, height: int, width: int, u: list[float]) -> list[tuple[Any, ...]]:
        a = self.args
        count = min(a.max_count, a.min_count + int(u[0] * (a.max_count - a.min_count + 1)))
        start = int(u[1] * len(a.directions)) % len(a.directions)
        grid = max(1, math.ceil(math.sqrt(count)))
        keys = u[2 : 2 + grid * grid]
        cells = sorted(range(grid * grid), key=keys.__getitem__)[:count]
        offset = 2 + self._grid_max**2
        total = height * width
        lo_px, hi_px = max(1, math.ceil(a.min_area * total)), max(1, math.floor(a.max_area * total))
        regions = []
        directions, n_directions = a.directions, len(a.directions)
        area0, area1 = self._log_area
        aspect0, aspect1 = self._log_aspect
        longest = float(max(height, width))
        exp, sqrt = math.exp, math.sqrt
        cell_h, cell_w = height / grid, width / grid
        for i, cell in enumerate(cells):
            ua, ur, uy, ux, uo, uf = u[offset + 6 * i : offset + 6 * i + 6]
            direction = directions[(start + i) % n_directions]
            area = exp(area0 + ua * area1) * total
            if direction == "square":
                aspect, angle = 1.0 + 0.5 * ur, (0.0 if uo < 0.5 else 90.0)
            else:
                aspect, angle = exp(aspect0 + ur * aspect1), ANGLES[direction]
            length = min(sqrt(area * aspect), longest)
            thick = area / length if area > length else 1.0
            row, col = divmod(cell, grid)
            cy, cx = (row + uy) * cell_h, (col + ux) * cell_w
            box, patch, pixels = _rasterise(height, width, cy, cx, length, thick, angle)
            for _retry in range(2):  # rasterising missed the area: rescale the shape and retry
                if lo_px <= pixels <= hi_px:
                    break
                scale = math.sqrt(area / max(1, pixels))
                length, thick = length * scale, max(1.0, thick * scale)
                box, patch, pixels = _rasterise(height, width, cy, cx, length, thick, angle)
            if pixels < lo_px or pixels > hi_px:  # still missed (tiny images): an exact box
                box, patch = _exact_box(height, width, min(hi_px, max(lo_px, int(round(area)))), hi_px, uf), None
            regions.append((direction, cy, cx, length, thick, angle, box, patch))
        return regions

    def _erase_one(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(self._draws + 1, generator=generator).tolist()
        if u[-1] >= self.args.p:
            return image
        height, width = image.shape[-2:]
        mask_np = np.zeros((height, width), dtype=bool)
        for *_shape, (y0, y1, x0, x1), patch in self._regions(height, width, u):
            if patch is None:
                mask_np[y0:y1, x0:x1] = True
            else:
                mask_np[y0:y1, x0:x1] |= patch
        mask = torch.from_numpy(mask_np)
        if mask.device != image.device:
            mask = mask.to(image.device)
        if self.args.fill == "zero":
            return image.masked_fill(mask, 0.0)
        if self.args.fill == "mean":
            mean = image.mean(dim=(-2, -1), keepdim=True).expand_as(image)
            return torch.where(mask, mean, image)
        noise = torch.randn(image.shape, generator=generator, dtype=torch.float32).to(image.device, image.dtype)
        return torch.where(mask, noise, image)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Erase a ``C×H×W`` view, or each image of a ``B×C×H×W`` batch; returns a new tensor."""
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UsageError(f"mdre expects a C×H×W or B×C×H×W tensor (stage 'tensor', after the views), got {shape}")
        generator = self.generator
        if image.ndim == 3:
            return self._erase_one(image, generator)
        return torch.stack([self._erase_one(one, generator) for one in image])


class RandomErasingArgs(BaseModel):
    """Arguments of ``random_erasing`` (torchvision ``v2.RandomErasing``): one rectangle per view."""

    model_config = ConfigDict(extra="forbid")
    p: float = Field(0.5, ge=0, le=1, description="probability that a view is erased")
    min_area: float = Field(0.02, gt=0, lt=1, description="smallest erased area (fraction of the image)")
    max_area: float = Field(0.33, gt=0, lt=1, description="largest erased area (fraction of the image)")
    min_ratio: float = Field(0.3, gt=0, description="smallest aspect ratio (height/width)")
    max_ratio: float = Field(3.3, gt=0, description="largest aspect ratio (height/width)")
    fill: Literal["zero", "noise"] = Field("zero", description="zero (the dataset mean after normalisation) or noise")

    @model_validator(mode="after")
    def _check_ranges(self) -> RandomErasingArgs:
        if self.min_area > self.max_area:
            raise ValueError(f"min_area ({self.min_area}) must not exceed max_area ({self.max_area})")
        if self.min_ratio > self.max_ratio:
            raise ValueError(f"min_ratio ({self.min_ratio}) must not exceed max_ratio ({self.max_ratio})")
        return self


class RandomErasing:
    """torchvision's ``RandomErasing`` applied to each image of a batch independently
    (torchvision erases the same rectangle in every image of a batch)."""

    def __init__(self, args: RandomErasingArgs) -> None:
        self.args = args
        self.erase = v2.RandomErasing(
            p=args.p,
            scale=(args.min_area, args.max_area),
            ratio=(args.min_ratio, args.max_ratio),
            value=0.0 if args.fill == "zero" else "random",
        )

    def __repr__(self) -> str:
        return f"RandomErasing({self.erase!r})"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """Erase a ``C×H×W`` view, or each image of a ``B×C×H×W`` batch; returns a new tensor."""
        if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise UsageError(f"random_erasing expects a C×H×W or B×C×H×W tensor, got {shape}")
        if image.ndim == 3:
            return self.erase(image)
        return torch.stack([self.erase(one) for one in image])


def _grid(height: int, width: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre coordinates ``(y, x)``, shaped to broadcast as ``1×1×H×W``."""
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width) + 0.5
    return ys, xs


def _box_mask(
    ys: torch.Tensor, xs: torch.Tensor, y0: torch.Tensor, x0: torch.Tensor, h: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Masks of the boxes ``[y0, y0+h) × [x0, x0+w)``: shape of ``y0`` + ``H×W``."""

    def v(t: torch.Tensor) -> torch.Tensor:
        return t[..., None, None]

    rows = (ys >= v(y0)) & (ys < v(y0 + h))
    cols = (xs >= v(x0)) & (xs < v(x0 + w))
    return rows & cols


class BatchedMdre:
    """``mdre`` for a whole ``B×C×H×W`` batch on its device, one independent draw per image.

    The same draws as :class:`MultiDirectionalRandomErasing`: a region count, a random
    start in ``directions``, one grid cell per region, log-uniform area and aspect
    ratio; each region rasterised (pixel centres inside the rotated rectangle), its
    pixel count brought back into ``[min_area, max_area]`` by rescaling, and an exact
    box where that still misses.
    """

    def __init__(self, args: MdreArgs) -> None:
        self.args = args
        self.grid_max = max(1, math.ceil(math.sqrt(args.max_count)))
        direction_angles = [ANGLES.get(d, -1.0) for d in args.directions]  # -1: square
        self._angles = torch.tensor(direction_angles, dtype=torch.float32)

    def __repr__(self) -> str:
        return f"BatchedMdre({self.args!r})"

    def masks(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None, device: Any = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n×H×W`` boolean masks of the regions (without the ``p`` draw) and the region count of each."""
        a = self.args
        r_max, g_max = a.max_count, self.grid_max

        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=device)

        count = (a.min_count + torch.floor(rand(n) * (a.max_count - a.min_count + 1))).clamp(max=a.max_count).long()
        start = torch.floor(rand(n) * len(a.directions)).long() % len(a.directions)
        grid = torch.ceil(torch.sqrt(count.float())).long().clamp(min=1)
        keys = rand(n, g_max * g_max)
        cell_ids = torch.arange(g_max * g_max, device=device)
        keys = torch.where(cell_ids[None, :] < (grid * grid)[:, None], keys, torch.full_like(keys, 2.0))
        cells = keys.argsort(dim=1)[:, :r_max]  # n×R: the first `count` are used
        active = torch.arange(r_max, device=device)[None, :] < count[:, None]
        u = rand(n, r_max, 6)
        ua, ur, uy, ux, uo, uf = u.unbind(-1)
        direction = (start[:, None] + torch.arange(r_max, device=device)[None, :]) % len(a.directions)
        angle = self._angles.to(device)[direction]
        square = angle < 0
        total = height * width
        area = torch.exp(math.log(a.min_area) + ua * (math.log(a.max_area) - math.log(a.min_area))) * total
        aspect = torch.where(
            square,
            1.0 + 0.5 * ur,
            torch.exp(math.log(a.min_aspect) + ur * (math.log(a.max_aspect) - math.log(a.min_aspect))),
        )
        angle = torch.where(square, torch.where(uo < 0.5, 0.0, 90.0), angle)
        length = torch.sqrt(area * aspect).clamp(max=float(max(height, width)))
        thick = torch.where(area > length, area / length, torch.ones_like(length))
        row, col = cells // grid[:, None], cells % grid[:, None]
        cy = (row + uy) * (height / grid[:, None])
        cx = (col + ux) * (width / grid[:, None])
        lo_px, hi_px = max(1, math.ceil(a.min_area * total)), max(1, math.floor(a.max_area * total))
        # only the regions in use are rasterised, as one flat list of K regions
        owner = active.nonzero()[:, 0]
        flat = [t[active] for t in (cy, cx, length, thick, angle, area, uf)]
        cy, cx, length, thick, angle, area, uf = flat
        ys, xs = _grid(height, width, device)
        ys, xs = ys[0], xs[0]  # 1×H×1 and 1×1×W: broadcast over K regions
        mask = self._rasterise(ys, xs, height, width, cy, cx, length, thick, angle)
        for _retry in range(2):  # rasterising missed the area: rescale those shapes and retry
            pixels = mask.flatten(1).count_nonzero(dim=1).float()
            missed = ((pixels < lo_px) | (pixels > hi_px)).nonzero()[:, 0]
            if len(missed) == 0:
                break
            scale = torch.sqrt(area[missed] / pixels[missed].clamp(min=1))
            length[missed] = length[missed] * scale
            thick[missed] = (thick[missed] * scale).clamp(min=1.0)
            mask[missed] = self._rasterise(
                ys, xs, height, width, cy[missed], cx[missed], length[missed], thick[missed], angle[missed]
            )
        pixels = mask.flatten(1).count_nonzero(dim=1)
        missed = ((pixels < lo_px) | (pixels > hi_px)).nonzero()[:, 0]
        if len(missed):  # still missed (tiny images): an exact near-square box of the drawn area
            px = torch.round(area[missed]).clamp(lo_px, hi_px)
            h = torch.floor(torch.sqrt(px)).clamp(1, height)
            w = torch.ceil(px / h).clamp(max=width)
            y0 = torch.floor(uf[missed] * (height - h + 1)).clamp(max=height - h)
            x0 = torch.floor((1 - uf[missed]) * (width - w + 1)).clamp(max=width - w)
            mask[missed] = _box_mask(ys, xs, y0, x0, h, w)
        out = torch.zeros(n, height, width, dtype=torch.uint8, device=device)
        out.index_add_(0, owner, mask.to(torch.uint8))  # the union of each image's regions
        return out > 0, count

    @staticmethod
    def _rasterise(ys, xs, height, width, cy, cx, length, thick, angle) -> torch.Tensor:
        """``K×H×W`` masks of K regions: pixel centres inside each rectangle.

        0°/90° shapes are first snapped to a whole-pixel box inside the image and
        oblique ones to half pixels and kept inside, as the per-image version does;
        then one rotated-rectangle test covers both (for a snapped box it selects
        exactly the box's pixels)."""
        axis = (angle == 0.0) | (angle == 90.0)
        horizontal = angle == 0.0
        bh = torch.where(horizontal, thick, length).round().clamp(1, height)
        bw = torch.where(horizontal, length, thick).round().clamp(1, width)
        y0 = torch.minimum(torch.round(cy - bh / 2).clamp(min=0), height - bh)
        x0 = torch.minimum(torch.round(cx - bw / 2).clamp(min=0), width - bw)
        length_o = torch.round(length * 2) / 2
        thick_o = (torch.round(thick * 2) / 2).clamp(min=1.0)
        half = 0.5 * (length_o + thick_o) * math.sqrt(0.5)
        cy_o = torch.where(height > 2 * half, torch.minimum(torch.maximum(cy, half), height - half), height / 2)
        cx_o = torch.where(width > 2 * half, torch.minimum(torch.maximum(cx, half), width - half), width / 2)
        # one description for both: centre, half extents along the shape's axes, angle
        cy_all = torch.where(axis, y0 + bh / 2, cy_o)
        cx_all = torch.where(axis, x0 + bw / 2, cx_o)
        half_len = torch.where(axis, bw / 2, length_o / 2)
        half_thick = torch.where(axis, bh / 2, thick_o / 2)
        rad = torch.deg2rad(torch.where(axis, torch.zeros_like(angle), angle))
        cos, sin = torch.cos(rad).view(-1, 1, 1), torch.sin(rad).view(-1, 1, 1)
        dy, dx = ys - cy_all.view(-1, 1, 1), xs - cx_all.view(-1, 1, 1)  # K×H×1, K×1×W
        along = (dx * cos + dy * sin).abs() <= half_len.view(-1, 1, 1)
        across = (dy * cos - dx * sin).abs() <= half_thick.view(-1, 1, 1)
        return along & across

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Erase each image of a ``B×C×H×W`` batch (with probability ``p``); returns a new tensor."""
        n, _c, height, width = images.shape
        mask, _count = self.masks(n, height, width, generator, images.device)
        erase = torch.rand(n, generator=generator, device=images.device) < self.args.p
        mask = (mask & erase[:, None, None])[:, None]
        return _fill(images, mask, self.args.fill, generator)


def _fill(images: torch.Tensor, mask: torch.Tensor, fill: str, generator: torch.Generator | None) -> torch.Tensor:
    if fill == "zero":
        return images.masked_fill(mask, 0.0)
    if fill == "mean":
        return torch.where(mask, images.mean(dim=(-2, -1), keepdim=True).expand_as(images), images)
    noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
    return torch.where(mask, noise, images)


class BatchedRandomErasing:
    """``random_erasing`` for a whole batch on its device: torchvision's parameter draw
    (up to 10 tries of area and log aspect ratio; no erasure if none fits) per image."""

    def __init__(self, args: RandomErasingArgs) -> None:
        self.args = args

    def __repr__(self) -> str:
        return f"BatchedRandomErasing({self.args!r})"

    def boxes(
        self, n: int, height: int, width: int, generator: torch.Generator | None = None, device: Any = "cpu"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n×4`` boxes ``(top, left, h, w)`` and whether a box was found, per image."""
        a, attempts = self.args, 10
        u = torch.rand(n, attempts, 2, generator=generator, device=device)
        area = height * width * (a.min_area + (a.max_area - a.min_area) * u[..., 0])
        log0, log1 = math.log(a.min_ratio), math.log(a.max_ratio)
        aspect = torch.exp(log0 + (log1 - log0) * u[..., 1])
        h = torch.round(torch.sqrt(area * aspect))
        w = torch.round(torch.sqrt(area / aspect))
        valid = (h < height) & (w < width)
        first = torch.argmax(valid.int(), dim=1, keepdim=True)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        pos = torch.rand(n, 2, generator=generator, device=device)
        top = torch.floor(pos[:, 0] * (height - h + 1))
        left = torch.floor(pos[:, 1] * (width - w + 1))
        return torch.stack([top, left, h, w], dim=1), valid.any(dim=1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Erase one rectangle in each image of a ``B×C×H×W`` batch (with probability ``p``)."""
        n, _c, height, width = images.shape
        boxes, found = self.boxes(n, height, width, generator, images.device)
        erase = found & (torch.rand(n, generator=generator, device=images.device) < self.args.p)
        ys, xs = _grid(height, width, images.device)
        top, left, h, w = boxes.unbind(1)
        mask = _box_mask(ys, xs, top[:, None], left[:, None], h[:, None], w[:, None])[:, 0]
        mask = (mask & erase[:, None, None])[:, None]
        return _fill(images, mask, self.args.fill, generator)


def build_mdre(args: MdreArgs, **_context: Any) -> MultiDirectionalRandomErasing:
    """Multi-directional random erasing: several small strips/squares in different directions."""
    return MultiDirectionalRandomErasing(args)


def build_random_erasing(args: RandomErasingArgs, **_context: Any) -> RandomErasing:
    """Classic random erasing (torchvision): one large rectangle per view."""
    return RandomErasing(args)


@hookimpl
def register_augmentations(register: Register) -> None:
    register("mdre", build_mdre, args=MdreArgs, stage="tensor", batched=lambda args, **_: BatchedMdre(args))
    register(
        "random_erasing",
        build_random_erasing,
        args=RandomErasingArgs,
        stage="tensor",
        batched=lambda args, **_: BatchedRandomErasing(args),
    )
