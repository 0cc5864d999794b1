"""Augmentation on the device: the batched views and erasings draw from the same
distributions as the per-image CPU path (the reference), per image, reproducibly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torchvision.transforms import v2

from sslmed.core.plugins import get_registry
from sslmed.default_plugins.augmentations import (
    BatchedSimCLRViews,
    SimCLRViewArgs,
    build_batched_simclr_views,
    build_simclr_views,
)
from sslmed.default_plugins.erasing import (
    BatchedMdre,
    BatchedRandomErasing,
    MdreArgs,
    MultiDirectionalRandomErasing,
    RandomErasingArgs,
)
from sslmed.training.transforms import MEAN, STD, BatchedViewPipeline, build_batched_pipeline

N = 3000  # draws per side: a KS test then tells apart distributions that differ by ~4% in CDF
ALPHA = 0.001  # the draws are seeded, so a pass is reproducible; this keeps it robust to a seed change


def _lightly_parts(args: SimCLRViewArgs, size: int):
    """The RandomResizedCrop and ColorJitter objects inside lightly's SimCLR transform."""
    compose = build_simclr_views(args, image_size=size, in_channels=1).transforms[0].transform
    crop = next(t for t in compose.transforms if isinstance(t, v2.RandomResizedCrop))
    apply = next(t for t in compose.transforms if isinstance(t, v2.RandomApply))
    return crop, apply.transforms[0], apply.p


def _batch(n: int = 8, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


def test_crop_scale_and_aspect_ratio_match_torchvision():
    args = SimCLRViewArgs(min_scale=0.3)
    crop, _jitter, _p = _lightly_parts(args, 64)
    torch.manual_seed(0)
    reference = [crop.make_params([torch.zeros(1, 64, 64)]) for _ in range(N)]
    ref_scale = np.array([p["height"] * p["width"] / 64**2 for p in reference])
    ref_ratio = np.array([p["width"] / p["height"] for p in reference])
    boxes = BatchedSimCLRViews(args, 64, 1).sample_params(N, 64, 64, torch.Generator().manual_seed(0))["boxes"]
    scale = (boxes[:, 2] * boxes[:, 3] / 64**2).numpy()
    ratio = (boxes[:, 3] / boxes[:, 2]).numpy()
    assert stats.ks_2samp(ref_scale, scale).pvalue > ALPHA
    assert stats.ks_2samp(ref_ratio, ratio).pvalue > ALPHA
    # every crop lies inside the image
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 64).all()


def test_jitter_factors_flips_and_rates_match_lightly():
    args = SimCLRViewArgs(min_scale=0.3)
    _crop, jitter, p_jitter = _lightly_parts(args, 64)
    torch.manual_seed(0)
    reference = [jitter.make_params([torch.zeros(1, 8, 8)]) for _ in range(N)]
    params = BatchedSimCLRViews(args, 64, 1).sample_params(N, 64, 64, torch.Generator().manual_seed(0))
    for name in ("brightness", "contrast"):
        ref = np.array([p[f"{name}_factor"] for p in reference])
        assert stats.ks_2samp(ref, params[name].numpy()).pvalue > ALPHA, name
    # brightness before contrast in half of the images, as ColorJitter's random order
    ref_first = np.mean([list(p["fn_idx"]).index(0) < list(p["fn_idx"]).index(1) for p in reference])
    assert abs(ref_first - 0.5) < 0.04 and abs(float((params["order"][:, 0] == 0).float().mean()) - 0.5) < 0.04
    for rate, expected in ((params["jitter"], p_jitter), (params["hflip"], args.hf_prob)):
        assert stats.binomtest(int(rate.sum()), N, expected).pvalue > ALPHA


def _cpu_mdre_fractions(args: MdreArgs, size: int) -> np.ndarray:
    erase = MultiDirectionalRandomErasing(args)
    torch.manual_seed(0)
    ones = torch.ones(1, size, size)
    return np.array([float((erase(ones) == 0).float().mean()) for _ in range(N)])


@pytest.mark.parametrize("size", [32, 64])
def test_mdre_erased_area_matches_the_per_image_version(size):
    args = MdreArgs(p=1.0)
    reference = _cpu_mdre_fractions(args, size)
    masks, count = BatchedMdre(args).masks(N, size, size, torch.Generator().manual_seed(0))
    batched = masks.float().mean(dim=(1, 2)).numpy()
    assert stats.ks_2samp(reference, batched).pvalue > ALPHA, (reference.mean(), batched.mean())
    assert int(count.min()) == args.min_count and int(count.max()) == args.max_count


def test_random_erasing_area_and_rate_match_torchvision():
    args = RandomErasingArgs(p=0.5)
    torch.manual_seed(0)
    eraser = v2.RandomErasing(p=1.0, scale=(args.min_area, args.max_area), ratio=(args.min_ratio, args.max_ratio))
    reference = [eraser.make_params([torch.zeros(1, 32, 32)]) for _ in range(N)]
    ref_area = np.array([p["h"] * p["w"] / 32**2 for p in reference if p["h"] < 32])
    boxes, found = BatchedRandomErasing(args).boxes(N, 32, 32, torch.Generator().manual_seed(0))
    area = (boxes[found, 2] * boxes[found, 3] / 32**2).numpy()
    assert stats.ks_2samp(ref_area, area).pvalue > ALPHA
    erased = BatchedRandomErasing(args)(torch.ones(N, 1, 32, 32), torch.Generator().manual_seed(1))
    rate = int((erased == 0).flatten(1).any(dim=1).sum())
    assert stats.binomtest(rate, N, args.p * found.float().mean().item()).pvalue > ALPHA


def _pipeline(specs, size=32) -> BatchedViewPipeline:
    pipeline = build_batched_pipeline(specs, get_registry(), size, 1)
    assert isinstance(pipeline, BatchedViewPipeline), pipeline
    return pipeline


def test_views_have_the_training_shape_and_normalised_range():
    out = _pipeline([{"name": "simclr"}, {"name": "mdre"}], size=24)(_batch(), torch.Generator().manual_seed(0))
    assert len(out["views"]) == 2 and len(out["clean"]) == 2
    for view in out["views"] + out["clean"]:
        assert view.shape == (8, 1, 24, 24) and view.dtype == torch.float32
        assert view.min() >= (0 - MEAN) / STD - 1e-6 and view.max() <= (1 - MEAN) / STD + 1e-6
    # erasing changes the views and leaves the clean ones alone
    assert not torch.equal(out["views"][0], out["clean"][0])


def test_same_seed_same_views_and_each_image_draws_its_own_parameters():
    pipeline = _pipeline([{"name": "simclr"}, {"name": "random_erasing"}])
    first = pipeline(_batch(), torch.Generator().manual_seed(3))
    again = pipeline(_batch(), torch.Generator().manual_seed(3))
    other = pipeline(_batch(), torch.Generator().manual_seed(4))
    assert all(torch.equal(a, b) for a, b in zip(first["views"], again["views"], strict=True))
    assert not torch.equal(first["views"][0], other["views"][0])
    same_image = _batch(1).expand(8, -1, -1, -1).contiguous()
    views = pipeline(same_image, torch.Generator().manual_seed(3))["views"][0]
    assert len({views[i].sum().item() for i in range(8)}) == 8  # not one draw per batch


def test_an_augmentation_without_a_batched_version_keeps_the_cpu_path():
    reason = build_batched_pipeline([{"name": "simclr", "gaussian_blur": 0.5}], get_registry(), 32, 1)
    assert isinstance(reason, str) and "gaussian_blur" in reason
    with pytest.raises(NotImplementedError):
        build_batched_simclr_views(SimCLRViewArgs(rr_prob=0.5), image_size=32, in_channels=1)


def test_device_views_match_the_cpu_pixels_for_the_identity_crop():
    """With full-image crops and no jitter or flip the device view is the normalised image."""
    args = SimCLRViewArgs(min_scale=1.0, cj_prob=0.0, hf_prob=0.0)
    images = _batch(4, 16)
    view = BatchedSimCLRViews(args, 16, 1).view(images, torch.Generator().manual_seed(0))
    # scale 1 can still draw a non-square ratio that does not fit; the fallback is the whole image
    expected = (images.float() / 255 - MEAN) / STD
    assert torch.allclose(view, expected, atol=1e-5)
    assert math.isclose(float(view.mean()), float(expected.mean()), rel_tol=1e-5)
