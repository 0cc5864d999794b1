"""The one image loader: real files of every format in ../shared/data/samples, and each
bad-input case giving one clear ImageLoadError that names the file and the reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslmed.core.errors import ImageLoadError
from sslmed.data.imaging import DEFAULT_MAX_SIDE, MAX_PIXELS, check_image, decode, load_image
from sslmed.data.roots import resolve_data_root

DATA = resolve_data_root()
SAMPLES = DATA / "samples"
COVID3 = DATA / "covid3" / "images"

needs_data = pytest.mark.needs_data


def real_grey() -> np.ndarray:
    """One real 8-bit radiograph from covid3 (256 px)."""
    return np.asarray(Image.open(COVID3 / "No_findings" / "00001281_000.png").convert("L"))


# ----------------------------------------------------------------- real files


@needs_data
@pytest.mark.parametrize(
    "name",
    sorted(p.name for p in SAMPLES.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    if SAMPLES.is_dir()
    else [],
)
def test_every_sample_loads_as_8_bit_grey_and_rgb(name: str) -> None:
    grey = load_image(SAMPLES / name, mode="L")
    rgb = load_image(SAMPLES / name, mode="RGB")
    assert grey.mode == "L" and rgb.mode == "RGB"
    assert grey.size == rgb.size and max(grey.size) <= DEFAULT_MAX_SIDE
    assert np.asarray(grey).std() > 10  # a radiograph, not a blank


@needs_data
def test_samples_cover_the_mixed_formats() -> None:
    infos = {p.name: check_image(p) for p in SAMPLES.glob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"}}
    assert {i.format for i in infos.values()} == {"PNG", "JPEG"}
    assert {"L", "RGB", "RGBA"} <= {i.mode for i in infos.values()}
    assert infos["darkcovidnet_00000211_013.png"].size == (1024, 1024)


@needs_data
def test_real_rgba_sample_is_composited_onto_black() -> None:
    path = SAMPLES / "covid_cxnet_040.png"
    raw = np.asarray(Image.open(path))
    assert raw.shape[-1] == 4
    transparent = raw[..., 3] == 0
    loaded = np.asarray(load_image(path, "L"))
    if transparent.any():
        assert loaded[transparent].max() == 0
    opaque = raw[..., 3] == 255
    expected = np.asarray(Image.fromarray(raw[..., :3]).convert("L"))
    assert np.abs(loaded[opaque].astype(int) - expected[opaque]).max() <= 1


@needs_data
def test_generated_rgba_border_turns_black_not_white(tmp_path: Path) -> None:
    grey = real_grey()
    rgba = np.zeros(grey.shape + (4,), np.uint8)
    rgba[..., :3] = grey[..., None]
    rgba[..., 3] = 255
    rgba[:20, :, 3] = 0  # a transparent band on top, white underneath
    rgba[:20, :, :3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    out = np.asarray(load_image(tmp_path / "alpha.png"))
    assert out[:20].max() == 0
    assert np.array_equal(out[20:], grey[20:])


@needs_data
def test_palette_and_la_images(tmp_path: Path) -> None:
    grey = Image.fromarray(real_grey())
    grey.convert("P").save(tmp_path / "palette.png")
    la = Image.merge("LA", (grey, Image.new("L", grey.size, 255)))
    la.save(tmp_path / "la.png")
    assert load_image(tmp_path / "palette.png").mode == "L"
    assert np.array_equal(np.asarray(load_image(tmp_path / "la.png")), np.asarray(grey))


@needs_data
def test_16_bit_png_is_scaled_to_8_bit(tmp_path: Path) -> None:
    grey = real_grey()
    sixteen = grey.astype(np.uint16) * 257  # 0..65535, same picture
    Image.fromarray(sixteen).save(tmp_path / "sixteen.png")
    info = check_image(tmp_path / "sixteen.png")
    assert info.bits == 16
    loaded = np.asarray(load_image(tmp_path / "sixteen.png"))
    low, high = int(grey.min()), int(grey.max())
    expected = np.round((grey.astype(float) - low) / (high - low) * 255)
    assert np.abs(loaded.astype(int) - expected).max() <= 1


@needs_data
def test_12_bit_values_in_16_bit_tiff_and_float_tiff(tmp_path: Path) -> None:
    grey = real_grey()
    Image.fromarray(grey.astype(np.uint16) * 16).save(tmp_path / "twelve.tif")
    Image.fromarray(grey.astype(np.float32) / 255.0).save(tmp_path / "float.tif")
    for name in ("twelve.tif", "float.tif"):
        loaded = np.asarray(load_image(tmp_path / name))
        assert (
            loaded.dtype == np.uint8 and loaded.max() == 255 and np.corrcoef(loaded.ravel(), grey.ravel())[0, 1] > 0.999
        )


@needs_data
def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    grey = Image.fromarray(real_grey()).crop((0, 0, 256, 128))  # wide: 256 x 128
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    grey.save(tmp_path / "rotated.jpg", exif=exif)
    loaded = load_image(tmp_path / "rotated.jpg")
    assert loaded.size == (128, 256)
    assert check_image(tmp_path / "rotated.jpg").size == (256, 128)  # the file as stored


@needs_data
def test_huge_images_are_downscaled(tmp_path: Path) -> None:
    big = Image.fromarray(real_grey()).resize((4800, 3600))
    big.save(tmp_path / "big.png", compress_level=1)
    big.save(tmp_path / "big.jpg", quality=80)
    for name in ("big.png", "big.jpg"):
        loaded = load_image(tmp_path / name)
        assert max(loaded.size) <= DEFAULT_MAX_SIDE and loaded.size[0] > loaded.size[1]
    assert max(load_image(tmp_path / "big.png", max_side=None).size) == 4800


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_decompression_bomb_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(20_000, 20_000))
    assert 20_000 * 20_000 > MAX_PIXELS
    with pytest.raises(ImageLoadError, match=r"bomb\.png: image is too large"):
        load_image(path)


# ----------------------------------------------------------------- bad input


@needs_data
def test_truncated_png(tmp_path: Path) -> None:
    data = (COVID3 / "No_findings" / "00001281_000.png").read_bytes()
    path = tmp_path / "truncated.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageLoadError, match=r"truncated\.png: image is corrupt or truncated"):
        load_image(path)


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.png: file is empty \(0 bytes\)"):
        load_image(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("these are my notes, not an image\n")
    with pytest.raises(
        ImageLoadError, match=r"notes\.png: is a text file, not an image \(it starts with 'these are my notes"
    ):
        load_image(path)


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "garbage.png"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ImageLoadError, match=r"garbage\.png: not an image format sslmed can read"):
        load_image(path)


def test_missing_path_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"nowhere\.png: file not found"):
        load_image(tmp_path / "nowhere.png")
    with pytest.raises(ImageLoadError, match=r"is a directory"):
        load_image(tmp_path)


@needs_data
def test_bytes_and_file_objects(tmp_path: Path) -> None:
    path = COVID3 / "No_findings" / "00001281_000.png"
    from_path = np.asarray(load_image(path))
    assert np.array_equal(np.asarray(load_image(path.read_bytes())), from_path)
    with open(path, "rb") as handle:
        assert np.array_equal(np.asarray(load_image(handle)), from_path)
    with pytest.raises(ImageLoadError, match=r"<uploaded image>: file is empty"):
        load_image(io.BytesIO(b""))


@needs_data
def test_decode_reports_the_file_before_conversion() -> None:
    image, info = decode(SAMPLES / "covid_cxnet_040.png")
    assert info.mode == "RGBA" and info.format == "PNG" and info.bits == 8
    assert image.mode == "RGB"
