"""Hostile image files: DICOM decompression bombs, multi-frame files, pydicom's warnings."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import RLELossless

from sslmed.core.errors import ImageLoadError
from sslmed.data.imaging import MAX_DECODED_BYTES, load_image
from sslmed.testing.dicom import dicom_dataset


def rle_bomb(path: Path, side: int = 20000) -> Path:
    """A small RLE-compressed DICOM declaring a ``side`` x ``side`` image."""
    ds = dicom_dataset(side, side, syntax=RLELossless)
    # one RLE segment header per byte plane, then a run of zeros: tiny on disk
    segment = np.array([2, 64, 0] + [0] * 13, dtype="<u4").tobytes() + b"\x81\x00" * 8
    ds.PixelData = encapsulate([segment])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_dicom_declaring_too_many_pixels_is_refused_before_decoding(tmp_path: Path) -> None:
    path = rle_bomb(tmp_path / "bomb.dcm")
    assert path.stat().st_size < 10_000
    with pytest.raises(ImageLoadError, match=r"bomb\.dcm: image is too large \(20000x20000 pixels; the limit is"):
        load_image(path)


def test_dicom_bomb_does_not_allocate(tmp_path: Path) -> None:
    """In a fresh process, refusing the bomb stays far below the 800 MB it declares."""
    path = rle_bomb(tmp_path / "bomb.dcm")
    code = (
        "import resource, sys\n"
        "from sslmed.data.imaging import load_image\n"
        "from sslmed.core.errors import ImageLoadError\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n    load_image(sys.argv[1])\nexcept ImageLoadError:\n    pass\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True)
    grown_kb = int(out.stdout.strip())
    assert grown_kb < 100_000, f"refusing a DICOM bomb grew the process by {grown_kb / 1e3:.0f} MB"


def test_dicom_just_under_the_limit_is_not_refused_by_the_size_check(tmp_path: Path) -> None:
    rows = int((MAX_DECODED_BYTES // 2) ** 0.5)  # 16-bit grey: 2 bytes a pixel
    ds = dicom_dataset(rows, rows)
    ds.PixelData = b"\x00\x00" * 16  # far too short: decoding fails, but only after the size check
    path = tmp_path / "short.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageLoadError) as error:
        load_image(path)
    assert "too large" not in str(error.value)


def test_nonsense_dicom_header_is_named(tmp_path: Path) -> None:
    ds = dicom_dataset(8, 8, frames=1)
    ds.PixelData = b"\x00\x00" * 64
    ds.BitsAllocated = 4096
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match=r"odd\.dcm: DICOM header is invalid \(BitsAllocated 4096"):
        load_image(path)


def test_multi_frame_dicom_gives_its_first_frame(tmp_path: Path) -> None:
    frames = np.stack([np.full((8, 12), 1000 * (i + 1), dtype=np.uint16) for i in range(3)])
    frames[0, :, :6] = 0
    ds = dicom_dataset(8, 12, frames=3)
    ds.PixelData = frames.tobytes()
    path = tmp_path / "frames.dcm"
    ds.save_as(path, enforce_file_format=True)
    image = np.asarray(load_image(path))
    assert image.shape == (8, 12)
    assert (image[:, :6] == 0).all() and (image[:, 6:] == 255).all()  # the first frame's own range


def test_pydicom_warnings_do_not_reach_the_user(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = dicom_dataset(4, 4)
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    ds.WindowCenter, ds.WindowWidth = "1234", "100"
    path = tmp_path / "odd.dcm"
    ds.save_as(path, enforce_file_format=True)
    path.write_bytes(path.read_bytes().replace(b"1234", b"12a4"))  # pydicom warns about an invalid DS value
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with caplog.at_level("INFO"):
            load_image(path)
    assert [str(w.message) for w in caught] == []
    assert [r.getMessage() for r in caplog.records if r.name.startswith("pydicom")] == []


def test_broken_exif_warnings_do_not_reach_the_user() -> None:
    import io

    from PIL import Image

    buffer = io.BytesIO()  # an EXIF block that declares 5 entries and holds one, cut short
    exif = b"Exif\x00\x00II*\x00\x08\x00\x00\x00\x05\x00\x12\x01\x03\x00"
    Image.new("L", (16, 16), 128).save(buffer, "JPEG", exif=exif)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = load_image(buffer.getvalue())
    assert image.size == (16, 16)
    assert [str(w.message) for w in caught] == []


# ------------------------------------------------------------ issue 21 (7, 8)


def test_special_files_are_refused_before_reading(tmp_path: Path) -> None:
    import os

    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):  # before: open() blocked for ever / read until MemoryError
        with pytest.raises(ImageLoadError, match="not a regular file"):
            load_image(path)


def test_dicom_cap_counts_samples_per_pixel(tmp_path: Path) -> None:
    side = int((MAX_DECODED_BYTES // 2) ** 0.5) + 1  # fits as 16-bit grey, not as 3 samples
    ds = dicom_dataset(side // 2 + 1, side)
    ds.SamplesPerPixel = 3
    ds.PixelData = b"\x00" * 16
    path = tmp_path / "colour.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageLoadError, match=r"colour\.dcm: image is too large to decode .* x 3 samples"):
        load_image(path)


@pytest.mark.parametrize(
    ("mode", "dtype", "bands"), [("RGBA", np.uint8, 4), ("I;16", np.uint16, 1), ("F", np.float32, 1)]
)
def test_decoded_bytes_are_capped_by_samples_and_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, dtype: type, bands: int
) -> None:
    from PIL import Image

    import sslmed.data.imaging as imaging

    # the cap patched small: a 300x300 image of this mode is over it, a 300x300 8-bit grey one is not
    monkeypatch.setattr(imaging, "MAX_DECODED_BYTES", 300 * 300 + 10)
    shape = (300, 300, bands) if bands > 1 else (300, 300)
    image = Image.fromarray(np.zeros(shape, dtype), mode if mode != "I;16" else None)
    path = tmp_path / ("x.tif" if mode == "F" else "x.png")
    image.save(path)
    with pytest.raises(ImageLoadError, match=r"too large to decode"):
        load_image(path)
    Image.fromarray(np.zeros((300, 300), np.uint8)).save(tmp_path / "grey.png")
    assert load_image(tmp_path / "grey.png").size == (300, 300)


def test_large_images_are_decoded_reduced(tmp_path: Path) -> None:
    from PIL import Image

    from sslmed.data.imaging import decode

    Image.fromarray(np.full((1000, 1000), 128, np.uint8)).save(tmp_path / "big.png")
    image, info = decode(tmp_path / "big.png", max_side=200)
    assert info.size == (1000, 1000) and image.size == (200, 200)
