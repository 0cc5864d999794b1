"""``sslmed.load_model``: the same answers for an image given as a path, PIL image,
numpy array or DICOM; embeddings; ``import sslmed`` stays cheap (no torch)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from test_predict import write_dicom

import sslmed
from sslmed.core.errors import CheckpointError, ImageLoadError
from sslmed.testing.models import covid3_records, shared_model_export


@pytest.fixture(scope="module")
def model(data_dir):
    return sslmed.load_model(shared_model_export(data_dir), device="cpu", batch_size=4)


def test_import_sslmed_does_not_import_torch() -> None:
    code = "import sys, sslmed; assert 'torch' not in sys.modules; print(sslmed.load_model.__module__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "sslmed.serving.api"


def test_every_image_form_gives_the_same_prediction(model, data_dir, tmp_path) -> None:
    path = covid3_records(data_dir, 1)[0][0]
    expected = model.predict(path)
    pil = Image.open(path)
    grey = np.asarray(pil.convert("L"))
    forms = {"str": str(path), "bytes": path.read_bytes(), "PIL": pil, "uint8 array": grey, "H×W×1": grey[:, :, None]}
    forms["RGB array"] = np.repeat(grey[:, :, None], 3, axis=2)  # the grey model reads it as grey again
    for name, image in forms.items():
        got = model.predict(image)
        assert got.probabilities == pytest.approx(expected.probabilities, abs=1e-6), name
        assert got.ood_flag == expected.ood_flag, name
    assert expected.calibrated and expected.ood_score is not None and set(expected.probabilities) == set(model.classes)
    # 16-bit pixels: a uint16 array and a DICOM file of them are both scaled by their own range
    wide = grey.astype(np.uint16) * 257
    write_dicom(tmp_path / "image.dcm", wide, bits=16)
    import pydicom

    dicom = model.predict(tmp_path / "image.dcm")
    for other in (model.predict(wide), model.predict(pydicom.dcmread(tmp_path / "image.dcm"))):
        assert other.probabilities == pytest.approx(dicom.probabilities, abs=1e-6)
    assert sum(dicom.probabilities.values()) == pytest.approx(1.0, abs=1e-5)


def test_lists_batches_and_embeddings(model, data_dir) -> None:
    paths = [p for p, _ in covid3_records(data_dir, 3)]  # 9 images: batches of 4, 4, 1
    together = model.predict(paths)
    for path, result in zip(paths, together, strict=True):
        assert result.probabilities == pytest.approx(model.predict(path).probabilities, abs=1e-5)
    embeddings = model.embed(paths)
    assert embeddings.shape == (9, model.feature_dim) and embeddings.dtype == np.float32
    np.testing.assert_allclose(model.embed(paths[0]), embeddings[0], atol=1e-5)
    stack = np.stack([np.asarray(Image.open(p).convert("L").resize((64, 64))) for p in paths[:2]])
    assert model.embed(stack).shape == (2, model.feature_dim)  # N×H×W: several grey images


def test_clear_errors(model, tmp_path) -> None:
    with pytest.raises(ImageLoadError, match=r"shape \(4, 4, 7\)"):
        model.predict(np.zeros((2, 4, 4, 7), dtype=np.uint8))  # two images of 7 channels
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ImageLoadError, match="bad.png"):
        model.predict(tmp_path / "bad.png")
    with pytest.raises(CheckpointError, match="no exported model here"):
        sslmed.load_model(tmp_path)
