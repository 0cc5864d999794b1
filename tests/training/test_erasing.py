"""MDRE and random erasing: regions, area bounds, directions, determinism, shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sslmed.core.errors import UsageError
from sslmed.core.plugins import get_registry
from sslmed.default_plugins.erasing import MdreArgs, MultiDirectionalRandomErasing, RandomErasing, RandomErasingArgs
from sslmed.training.transforms import build_view_pipeline


def mdre(**kwargs) -> MultiDirectionalRandomErasing:
    return get_registry().build("augmentation", {"name": "mdre", **kwargs})


@pytest.fixture(scope="module")
def real_views(data_dir: Path) -> torch.Tensor:
    """Eight real covid3 radiographs as normalised 64 px tensors (1 channel)."""
    from sslmed.data.imaging import load_image
    from sslmed.training.transforms import eval_transform

    files = sorted((data_dir / "covid3" / "images").rglob("*.png"))[::140][:8]
    transform = eval_transform(64, 1)
    return torch.stack([transform(load_image(f, mode="L")) for f in files])


def test_registered_with_stage_tensor():
    registry = get_registry()
    for name in ("mdre", "random_erasing"):
        assert registry.get("augmentation", name).metadata["stage"] == "tensor"


@pytest.mark.parametrize("size", [28, 64, 224])
def test_configured_count_and_area_bounds(size: int):
    args = MdreArgs(p=1.0, min_count=3, max_count=6, min_area=0.005, max_area=0.04)
    eraser = MultiDirectionalRandomErasing(args)
    generator = torch.Generator().manual_seed(1)
    total = size * size
    counts = set()
    for _ in range(40):
        regions = eraser.sample_regions(size, size, generator)
        counts.add(len(regions))
        assert 3 <= len(regions) <= 6
        for region in regions:
            assert np.ceil(args.min_area * total) <= region.pixels <= np.floor(args.max_area * total), (region, size)
            assert region.mask(size, size).sum() == region.pixels
    assert len(counts) > 1  # the count is drawn, not fixed


def test_regions_run_in_several_directions_and_spread_out():
    eraser = MultiDirectionalRandomErasing(MdreArgs(p=1.0, min_count=4, max_count=4))
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        regions = eraser.sample_regions(64, 64, generator)
        assert len({r.direction for r in regions}) >= 2
        # one region per cell of a 2×2 grid: the centres fall in four different quadrants
        assert len({(int(r.cy // 32), int(r.cx // 32)) for r in regions}) == 4
    angles = set()
    for _ in range(20):
        angles |= {r.angle for r in eraser.sample_regions(64, 64, generator)}
    assert {0.0, 90.0, 45.0, 135.0} <= angles


def test_erases_real_view_but_never_the_whole_image(real_views: torch.Tensor):
    eraser = mdre(p=1.0, min_count=8, max_count=8, max_area=0.04, fill="zero", seed=3)
    for view in real_views:
        out = eraser(view)
        erased = (out == 0) & (view != 0)
        assert 0 < erased.float().mean() <= 8 * 0.04
        assert (out != 0).any()
        assert out.shape == view.shape
        assert not torch.equal(out, view)


def test_input_untouched_and_p_zero_is_identity(real_views: torch.Tensor):
    view = real_views[0].clone()
    mdre(p=1.0, seed=0)(view)
    assert torch.equal(view, real_views[0])
    assert torch.equal(mdre(p=0.0)(view), view)


def test_deterministic_with_seed(real_views: torch.Tensor):
    first = [mdre(p=0.7, fill="noise", seed=11)(v) for v in real_views]
    second = [mdre(p=0.7, fill="noise", seed=11)(v) for v in real_views]
    other = [mdre(p=0.7, fill="noise", seed=12)(v) for v in real_views]
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=False))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=False))


@pytest.mark.parametrize("fill", ["zero", "mean", "noise"])
def test_one_and_three_channels_and_batches(real_views: torch.Tensor, fill: str):
    eraser = mdre(p=1.0, fill=fill, seed=5)
    rgb = real_views.repeat(1, 3, 1, 1)
    for batch in (real_views, rgb):
        out = eraser(batch)
        assert out.shape == batch.shape
        changed = (out != batch).any(dim=1)  # B×H×W: where any channel changed
        for image in range(len(batch)):
            assert changed[image].any()
        # each image of a batch gets its own regions
        assert not torch.equal(changed[0], changed[1])
        if batch.shape[1] == 3 and fill != "noise":  # channels erased together
            assert torch.equal((out != batch)[:, 0] | (out != batch)[:, 1], (out != batch)[:, 0] | (out != batch)[:, 2])
    single = eraser(rgb[0])
    assert single.shape == rgb[0].shape


def test_bad_input_and_bad_arguments_are_clear():
    with pytest.raises(UsageError, match="C×H×W"):
        mdre()(torch.zeros(64, 64))
    with pytest.raises(UsageError, match="min_count"):
        mdre(min_count=9, max_count=3)
    with pytest.raises(UsageError, match="most of the image"):
        mdre(max_count=40, max_area=0.5)
    with pytest.raises(UsageError, match="unknown|Extra"):
        mdre(colour="red")


def test_random_erasing_is_per_image_and_registered(real_views: torch.Tensor):
    eraser = get_registry().build("augmentation", {"name": "random_erasing", "p": 1.0})
    assert isinstance(eraser, RandomErasing)
    out = eraser(real_views)
    changed = out != real_views
    assert all(changed[i].any() for i in range(len(out)))
    assert not torch.equal(changed[0], changed[1])
    assert RandomErasing(RandomErasingArgs(p=1.0))(real_views[0]).shape == real_views[0].shape


def test_composes_with_simclr_views_and_keeps_clean(data_dir: Path):
    from sslmed.data.imaging import load_image

    registry = get_registry()
    pipeline = build_view_pipeline([{"name": "simclr"}, {"name": "mdre", "p": 1.0, "seed": 0}], registry, 32, 1)
    image = load_image(next((data_dir / "covid3" / "images").rglob("*.png")), mode="L")
    out = pipeline(image)
    assert len(out["views"]) == len(out["clean"]) == 2
    for erased, clean in zip(out["views"], out["clean"], strict=False):
        assert erased.shape == clean.shape == (1, 32, 32)
        assert not torch.equal(erased, clean)
