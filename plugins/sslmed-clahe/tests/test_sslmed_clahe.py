"""Tests of the sslmed-clahe plugin: the algorithm, the transform, its arguments, its registration."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pydantic
import pytest
from PIL import Image
from sslmed_clahe import Clahe, ClaheArgs, build_clahe
from sslmed_clahe.equalize import clahe

SAMPLES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "samples"


def real_xray() -> Image.Image:
    """A real 1024 px chest X-ray from the shared data (the test skips without it)."""
    path = SAMPLES / "darkcovidnet_00001304_001.png"
    if not path.is_file():
        pytest.skip(f"real data not found at {path}")
    return Image.open(path).convert("L")


@pytest.mark.parametrize("shape", [(28, 28), (3, 3), (1, 7), (33, 17), (256, 300)])
@pytest.mark.parametrize("tile_grid", [1, 4, 8])
def test_any_shape_keeps_shape_and_dtype(shape, tile_grid):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    out = clahe(image, 2.0, tile_grid)
    assert out.shape == shape and out.dtype == np.uint8


def test_constant_image_stays_constant():
    out = clahe(np.full((64, 64), 90, dtype=np.uint8))
    assert np.unique(out).size == 1


def test_rejects_non_grey_arrays():
    with pytest.raises(ValueError, match="uint8"):
        clahe(np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        clahe(np.zeros((8, 8), dtype=np.float32))


def test_raises_contrast_of_a_washed_out_real_xray():
    image = np.asarray(real_xray().resize((256, 256)))
    washed = (100 + image.astype(np.float64) * 40 / 255).astype(np.uint8)  # grey levels 100-140 only
    out = clahe(washed, clip_limit=3.0, tile_grid=8)
    assert out.std() > 2 * washed.std()
    assert int(np.ptp(out)) > 3 * int(np.ptp(washed))


def test_higher_clip_limit_means_more_contrast():
    image = np.asarray(real_xray().resize((256, 256)))
    changes = [np.abs(clahe(image, limit).astype(int) - image).mean() for limit in (1.0, 2.0, 4.0, 8.0)]
    assert changes == sorted(changes) and changes[-1] > changes[0]


def test_agrees_with_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not a dependency; install opencv-python-headless to compare")
    image = np.asarray(real_xray())
    for limit, grid in [(2.0, 8), (4.0, 4), (3.0, 5)]:
        reference = cv2.createCLAHE(clipLimit=limit, tileGridSize=(grid, grid)).apply(image)
        assert np.abs(reference.astype(int) - clahe(image, limit, grid)).max() <= 1


def test_transform_on_grey_and_rgb_images():
    grey = real_xray().resize((128, 128))
    out = Clahe()(grey)
    assert out.mode == "L" and out.size == grey.size
    assert np.asarray(out).std() > np.asarray(grey).std()
    rgb = Clahe()(grey.convert("RGB"))
    channels = np.asarray(rgb).astype(int)
    assert rgb.mode == "RGB" and rgb.size == grey.size
    assert np.abs(channels[..., 0] - channels[..., 1]).max() <= 2  # grey stays grey
    with pytest.raises(ValueError, match="mode 'I'"):
        Clahe()(grey.convert("I"))


def test_probability():
    grey = real_xray().resize((64, 64))
    assert Clahe(p=0.0)(grey) is grey
    assert Clahe(p=1.0)(grey) is not grey
    import random

    random.seed(0)
    applied = sum(Clahe(p=0.3)(grey) is not grey for _ in range(400))
    assert 80 < applied < 160


def test_transform_pickles_for_dataloader_workers():
    transform = pickle.loads(pickle.dumps(build_clahe(ClaheArgs(clip_limit=3, tile_grid=4, p=0.5))))
    assert (transform.clip_limit, transform.tile_grid, transform.p) == (3, 4, 0.5)
    assert repr(transform) == "Clahe(clip_limit=3.0, tile_grid=4, p=0.5)"


def test_arguments_are_checked():
    assert ClaheArgs().model_dump() == {"clip_limit": 2.0, "tile_grid": 8, "p": 1.0}
    for bad in ({"clip_limt": 2}, {"clip_limit": 0}, {"tile_grid": 0}, {"tile_grid": 65}, {"p": 1.5}):
        with pytest.raises(pydantic.ValidationError):
            ClaheArgs.model_validate(bad)


def test_registered_as_an_image_stage_augmentation():
    from sslmed.plugins import get_registry

    component = get_registry().get("augmentation", "clahe")
    assert component.metadata == {"stage": "image"}
    assert component.args is ClaheArgs
    assert component.plugin == "clahe"  # the entry-point name
    assert isinstance(component.factory(ClaheArgs()), Clahe)
