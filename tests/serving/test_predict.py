"""The predictor on every real sample file and on the other formats it accepts;
clear errors for bad files and for model exports that do not fit."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmed.core.errors import CheckpointError, ImageLoadError
from sslmed.serving.predict import Predictor
from sslmed.testing.models import shared_model_export

SAMPLE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".dcm"}


@pytest.fixture(scope="module")
def model_dir(data_dir: Path) -> Path:
    return shared_model_export(data_dir, decoder=True)


@pytest.fixture(scope="module")
def predictor(model_dir: Path) -> Predictor:
    return Predictor(model_dir, device="cpu")


@pytest.fixture(scope="module")
def samples(data_dir: Path) -> list[Path]:
    folder = data_dir / "samples"
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in SAMPLE_SUFFIXES)
    if not files:
        pytest.skip(f"no sample images in {folder}")
    return files


def check_probabilities(result: dict[str, float], classes: list[str]) -> None:
    assert list(result) == classes
    assert all(0.0 <= p <= 1.0 for p in result.values())
    assert math.isclose(sum(result.values()), 1.0, abs_tol=1e-4)


def write_dicom(path: Path, pixels: np.ndarray, bits: int = 16) -> None:
    """A minimal uncompressed MONOCHROME2 DICOM file with ``pixels`` (grey)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.SOPClassUID, dataset.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    dataset.Modality = "DX"
    dataset.Rows, dataset.Columns = pixels.shape
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated = dataset.BitsStored = bits
    dataset.HighBit, dataset.PixelRepresentation = bits - 1, 0
    dataset.PixelData = pixels.astype(np.uint16 if bits == 16 else np.uint8).tobytes()
    dataset.save_as(str(path), enforce_file_format=True)


def test_every_real_sample_gives_probabilities(predictor: Predictor, samples: list[Path]) -> None:
    modes = set()
    for path in samples:
        with Image.open(path) as image:
            modes.add((image.format, image.mode))
        check_probabilities(predictor.predict([path])[0], predictor.classes)
    assert len(modes) >= 3, f"expected grey PNG, RGB JPEG and RGBA PNG among the samples, got {modes}"


def test_batch_equals_one_by_one(predictor: Predictor, samples: list[Path]) -> None:
    together = predictor.predict(samples[:4])
    for path, result in zip(samples[:4], together, strict=False):
        alone = predictor.predict([path])[0]
        assert all(math.isclose(alone[c], result[c], abs_tol=1e-5) for c in predictor.classes)


def test_lossless_formats_agree_with_the_original(predictor: Predictor, samples: list[Path], tmp_path: Path) -> None:
    """A real radiograph saved as WebP (lossless), TIFF (8 and 16 bit) and DICOM gets the
    probabilities of the original PNG: one loader, one preprocessing path."""
    original = next(p for p in samples if p.suffix == ".png" and Image.open(p).mode == "L")
    with Image.open(original) as image:
        grey = np.asarray(image.resize((256, 256)))  # smaller: lossless WebP is slow to encode
    stretched = grey.astype(np.float64)
    stretched = (stretched - stretched.min()) / (stretched.max() - stretched.min())
    grey8 = np.round(stretched * 255).astype(np.uint8)  # full range, so 16-bit scaling is exact
    Image.fromarray(grey8).save(tmp_path / "x.png")
    Image.fromarray(grey8).save(tmp_path / "x.webp", lossless=True, method=0)
    Image.fromarray(grey8).save(tmp_path / "x.tif")
    Image.fromarray(grey8.astype(np.uint16) * 257).save(tmp_path / "x16.tif")
    write_dicom(tmp_path / "x.dcm", grey8.astype(np.uint16) * 257)
    reference = predictor.predict([tmp_path / "x.png"])[0]
    for name in ("x.webp", "x.tif", "x16.tif", "x.dcm"):
        result = predictor.predict([tmp_path / name])[0]
        check_probabilities(result, predictor.classes)
        for label in predictor.classes:
            assert result[label] == pytest.approx(reference[label], abs=1e-4), name
    bytes_result = predictor.predict([(tmp_path / "x.dcm").read_bytes()])[0]  # DICOM recognised by content
    assert bytes_result[predictor.classes[0]] == pytest.approx(reference[predictor.classes[0]], abs=1e-4)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.png", b"", "empty"),
        ("notes.png", b"these are notes, not pixels\n" * 20, "not an image"),
        ("random.jpg", bytes(range(256)) * 8, "not an image"),
    ],
)
def test_bad_files_are_refused_by_name(
    predictor: Predictor, tmp_path: Path, name: str, content: bytes, message: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageLoadError, match=message) as info:
        predictor.predict([path])
    assert name in str(info.value)


def test_truncated_and_missing_files(predictor: Predictor, samples: list[Path], tmp_path: Path) -> None:
    png = next(p for p in samples if p.suffix == ".png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(png.read_bytes()[: len(png.read_bytes()) // 3])
    with pytest.raises(ImageLoadError, match="truncated.png"):
        predictor.predict([truncated])
    with pytest.raises(ImageLoadError, match="not found"):
        predictor.predict([tmp_path / "absent.png"])
    with pytest.raises(ImageLoadError, match="directory"):
        predictor.predict([tmp_path])


def test_export_from_another_backbone_is_refused(model_dir: Path, tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    shutil.copytree(model_dir, foreign)
    meta = json.loads((foreign / "model.json").read_text())
    meta["backbone"] = {"name": "resnet34", "small_input": True}  # weights are resnet18's
    (foreign / "model.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit backbone"):
        Predictor(foreign, device="cpu")


def test_missing_and_corrupt_exports(model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        Predictor(tmp_path / "nowhere", device="cpu")
    with pytest.raises(CheckpointError, match="no exported model"):
        Predictor(tmp_path, device="cpu")
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(CheckpointError, match="safetensors"):
        Predictor(broken, device="cpu")


def test_run_folder_and_model_json_are_accepted(model_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(model_dir, run / "model")
    for target in (run, run / "model", run / "model" / "model.json"):
        assert Predictor(target, device="cpu").model_dir == run / "model"
